"""The engine's figures on this machine: batch-1 decode against transformers' generate,
16 concurrent requests against running them one after another, speculative decoding's
speed-up, and the memory bandwidth decoding reaches.

All runs use the same random weights (herd's pre-training initialisation; transformers
gets the same tensors), the same dtype and thread count, greedy decoding of a fixed
number of tokens (no stop tokens).

* batch-1 decode: tokens/s over the time N new tokens take minus the time one takes (the
  prefill cancels out), best of ``--repeats``; herd's ``Engine`` (paged cache) and, for
  reference, herd's ``Generator``; transformers with SDPA and whichever of its dynamic
  and static caches is faster;
* concurrency: 16 requests (prompts of ``--prompt-len``, N new tokens each) submitted
  together to one Engine, wall time from submission to the last completion, against the
  same 16 run one at a time (16 x the batch-1 time of a whole request: prefill + N tokens).
  The engine runs without prefix caching: the runs repeat the same prompts, and with it a
  repeat would find every prompt already computed (on both sides: the comparison would be
  of decoding alone, which ``engine_16_row_decode_step_vs_batch1_decode`` reports);
* speculative: ``SpeculativeGenerator`` against plain greedy ``Generator`` decoding, same
  N tokens (asserted identical). The draft is the target's first ``--draft-layers`` layers
  with its embeddings, final norm and head (a layer-skip draft sharing the target's
  weights: random models have no small sibling trained on the same data); the acceptance
  rate is printed;
* bandwidth: bytes of weights one decode step reads (every weight once; the embedding
  table only when it is also the head) times batch-1 engine steps per second, over the
  read bandwidth measured here (a sum over a 1 GiB tensor, best of 3).

* llama.cpp (the peer for batch-1 decode at the same precision): the same weights exported
  with ``herd.checkpoint.gguf.export_gguf`` (F16 against herd's bf16 or fp16: both two
  bytes a weight; ``--llama-cpp-q8`` adds Q8_0 against herd's ``int8+lm_head`` model: int8
  weight-only with the LM head quantized too, as Q8_0 quantizes token_embd, the head) and
  run by llama-cpp-python on ``--threads`` threads, greedy one token at a time, timed like
  the others (N new tokens minus the first) in the same rounds. The GGUF carries the
  Llama 3 tokenizer (llama-models' tokenizer.model, or ``--tokenizer``). llama-cpp-python
  is a ~15-minute source build and not in CI: without it (or without a tokenizer, or on a
  GPU) the peer is skipped with a message and no llama.cpp figure is printed.

Other workers share this machine's 2 cores: timings are noisy.

    python benchmarks/engine.py                       # llama3.2-1b shape, bf16, 2 threads
    python benchmarks/engine.py --preset llama3.2-3b --new-tokens 32
    python benchmarks/engine.py --model TRAINED_DIR --draft-model SMALLER_TRAINED_DIR
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import (  # noqa: E402  (the decode benchmark's model builders and timing)
    DTYPES,
    build_herd,
    build_hf_twin,
    bytes_per_step,
    herd_runner,
    hf_runner,
    measure,
    sync,
    weight_bytes_per_token,
)

from herd.engine import Engine  # noqa: E402
from herd.generation import Generator, SamplingParams  # noqa: E402
from herd.generation.speculative import SpeculativeGenerator  # noqa: E402
from herd.model import Transformer  # noqa: E402

print = functools.partial(print, flush=True)  # noqa: A001  (progress shows as it happens)
TARGET_VS_TRANSFORMERS = 2.0
TARGET_CONCURRENCY = 6.0
TARGET_SPECULATIVE = 1.0
TARGET_VS_LLAMA_CPP = 0.8
STEP_GB: dict[str, float] = {}  # GB a decode step reads, for runs whose weights are not the model's own


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama3.2-1b", help="herd.model preset (random weights)")
    p.add_argument("--model", default=None, help="a checkpoint directory instead of a random preset")
    p.add_argument("--draft-model", default=None, help="a checkpoint directory for the speculative draft "
                   "(same tokenizer) instead of the layer-skip draft")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16, help="tokens decoded per request")
    p.add_argument("--concurrent", type=int, default=16, help="requests submitted together")
    p.add_argument("--draft-layers", type=int, default=2, help="layers of the layer-skip draft")
    p.add_argument("--k", type=int, default=4, help="draft tokens per speculative round")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llama-cpp", action=argparse.BooleanOptionalAction, default=True,
                   help="time llama.cpp (llama-cpp-python) on the same weights exported as GGUF F16")
    p.add_argument("--llama-cpp-q8", action="store_true",
                   help="also llama.cpp Q8_0 against herd's int8+lm_head model (slow to export)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model for the GGUF (default: llama-models' "
                   "Llama 3 tokenizer)")
    return p.parse_args()


# ------------------------------------------------------------------ llama.cpp, the peer


def llama_cpp_skip_reason(opts: argparse.Namespace, device: torch.device) -> str | None:
    """Why llama.cpp cannot be measured in this run, or None."""
    if not opts.llama_cpp:
        return "--no-llama-cpp"
    if device.type != "cpu":
        return f"herd runs on {device.type}; the llama-cpp-python here is a CPU build"
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama_cpp is not importable (pip install llama-cpp-python: a ~15-minute source build)"
    if opts.tokenizer is None:
        try:
            import llama_models.llama3  # noqa: F401
        except ImportError:
            return "no tokenizer for the GGUF: pass --tokenizer or install llama-models"
    return None


def gguf_tokenizer(opts: argparse.Namespace):
    from herd.tokenizer import Tokenizer

    if opts.tokenizer is not None:
        return Tokenizer.from_file(opts.tokenizer)
    import llama_models.llama3 as ll3

    return Tokenizer.from_file(Path(ll3.__file__).parent / "tokenizer.model")


def llama_cpp_runner(model: Transformer, tokenizer, file_type: str, workdir: Path, prompt: list[int],
                     max_new: int, threads: int):
    """A ``measure`` run for llama.cpp: ``model`` exported as a GGUF of ``file_type`` and
    loaded by llama-cpp-python; greedy decoding one token per ``eval``, each token's time
    taken when ``eval`` returns (its logits are ready)."""
    import llama_cpp

    from herd.checkpoint.gguf import export_gguf

    t = time.perf_counter()
    path = export_gguf(model, workdir / f"model-{file_type}.gguf", tokenizer, file_type=file_type)
    print(f"exported {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    STEP_GB[f"llama.cpp-{file_type}"] = path.stat().st_size / 1e9  # ~ what a step reads (tied table once)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + max_new + 16, n_batch=max(512, len(prompt)),
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def last_argmax() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    def run(n: int) -> tuple[list[list[int]], list[float]]:
        llm.reset()
        start = time.perf_counter()
        stamps = [start]
        llm.eval(prompt)
        stamps.append(time.perf_counter())
        out = [last_argmax()]
        for _ in range(n - 1):
            llm.eval([out[-1]])
            stamps.append(time.perf_counter())
            out.append(last_argmax())
        return [out], [t - start for t in stamps]
    return run


def read_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    x = torch.rand(nbytes // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def layer_skip_draft(target: Transformer, n_layers: int) -> Transformer:
    """A draft made of the target's first ``n_layers`` blocks, embeddings, norm and head
    (shared tensors, no copy)."""
    if not 0 < n_layers < target.args.n_layers:
        raise SystemExit(f"--draft-layers must be in 1..{target.args.n_layers - 1}, got {n_layers}")
    with torch.device("meta"):
        draft = Transformer(target.args.replace(n_layers=n_layers))
    draft.model.embed_tokens = target.model.embed_tokens
    draft.model.layers = torch.nn.ModuleList(target.model.layers[:n_layers])
    draft.model.norm = target.model.norm
    draft.lm_head = target.lm_head
    return draft.eval()




def linear_flops_per_token(model: Transformer) -> int:
    """Multiply-adds x 2 of every linear layer (the LM head included) for one token."""
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def run_together(engine: Engine, prompts: list[list[int]], params: SamplingParams
                 ) -> tuple[list[list[int]], list[float]]:
    """All prompts submitted at once and stepped to the end: their tokens, and the times of
    the steps that decoded every request and prefilled nothing."""
    ids = [engine.add_request(p, params) for p in prompts]
    done: dict[str, list[int]] = {}
    full_steps = []
    while engine.has_unfinished():
        t = time.perf_counter()
        outputs = engine.step()
        record = engine.stats.steps[-1]
        if record.prefill_tokens == 0 and record.num_seqs == len(prompts):
            full_steps.append(time.perf_counter() - t)
        done.update((o.request_id, o.completion.token_ids) for o in outputs if o.finished)
    return [done[i] for i in ids], full_steps


def main() -> None:
    opts = parse_args()
    torch.set_num_threads(opts.threads)
    dtype = DTYPES[opts.dtype]
    device = torch.device(opts.device)
    import transformers

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {opts.threads} threads"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {where}, "
          f"{opts.dtype}; preset {opts.preset}, prompt {opts.prompt_len} tokens, {opts.new_tokens} new tokens, "
          f"greedy, best of {opts.repeats}. Other jobs may share the cores: timings are noisy.")
    bandwidth = read_bandwidth_gbs(device)
    print(f"measured read bandwidth: {bandwidth:.1f} GB/s")
    if opts.model:
        from herd.checkpoint import load_any

        model = load_any(opts.model, dtype=dtype).eval().to(device)
    else:
        model = build_herd(opts.preset, opts.seed).to(device=device, dtype=dtype)
    gbytes = weight_bytes_per_token(model) / 1e9
    print(f"model: {model.num_params() / 1e9:.2f}B parameters, {gbytes:.2f} GB read per decode step")
    g = torch.Generator().manual_seed(opts.seed + 1)
    vocab = min(model.args.vocab_size, 128000)
    prompts = [[model.args.bos_token_id] + torch.randint(0, vocab, (opts.prompt_len - 1,), generator=g).tolist()
               for _ in range(opts.concurrent)]
    n = opts.new_tokens
    per_request = opts.prompt_len + n
    engine = Engine(model, num_blocks=-(-per_request * opts.concurrent // 16) + opts.concurrent, block_size=16,
                    max_batched_tokens=max(256, opts.prompt_len), prefix_caching=False)  # every run prefills

    # 1. batch-1 decode: engine, Generator, transformers (both caches), llama.cpp (same weights as GGUF)
    skip_llama_cpp = llama_cpp_skip_reason(opts, device)
    workdir = tempfile.TemporaryDirectory(prefix="herd-bench-gguf-")
    runs = {}
    if skip_llama_cpp is None:  # exported first: int8 quantizes a copy of the model, GGUF wants the original
        tokenizer = gguf_tokenizer(opts)
        if opts.llama_cpp_q8:
            runs["llama.cpp-q8_0"] = llama_cpp_runner(model, tokenizer, "q8_0", Path(workdir.name), prompts[0], n,
                                                      opts.threads)
            import copy

            from herd.quant import quantize

            int8 = quantize(copy.deepcopy(model), "int8+lm_head")  # Q8_0 quantizes the (tied) head too
            STEP_GB["engine-int8"] = bytes_per_step(int8) / 1e9
            runs["engine-int8"] = herd_runner(Engine(int8, num_blocks=-(-per_request // 16) + 1, block_size=16,
                                                     max_batched_tokens=max(256, opts.prompt_len)),
                                              prompts[:1], device)
        runs["llama.cpp-f16"] = llama_cpp_runner(model, tokenizer, "f16", Path(workdir.name), prompts[0], n,
                                                 opts.threads)
    else:
        print(f"llama.cpp skipped: {skip_llama_cpp}")
    hf = build_hf_twin(model)
    runs = {"engine": herd_runner(engine, prompts[:1], device),
            "generator": herd_runner(Generator(model), prompts[:1], device), **runs}
    for cache in ("dynamic", "static"):
        runs[f"transformers-{cache}"] = hf_runner(hf, prompts[:1], cache, device)
    result = measure(runs, n, opts.prompt_len, opts.repeats, device)
    runs.clear()  # frees llama.cpp's contexts and the int8 copy
    workdir.cleanup()
    if any(r.decode_tok_s > 1e6 for r in result.values()):
        raise SystemExit("N new tokens took no longer than one: too few tokens to time, raise --new-tokens")
    peer_name = max(("transformers-dynamic", "transformers-static"), key=lambda k: result[k].decode_tok_s)
    same = result["engine"].tokens == result[peer_name].tokens
    print(f"\n{'batch-1 run':<24} {'decode tok/s':>12} {'GB/s':>7}  (weights a step reads x steps/s)")
    for label, r in result.items():
        print(f"{label:<24} {r.decode_tok_s:>12.2f} {r.decode_tok_s * STEP_GB.get(label, gbytes):>7.1f}")
    print(f"engine greedy tokens identical to {peer_name}: {same}")
    for label in ("llama.cpp-f16", "llama.cpp-q8_0"):
        if label in result:  # F16 rounds bf16 weights again: a near-tie may go the other way
            agree = sum(a == b for a, b in zip(result[label].tokens[0], result["engine"].tokens[0], strict=True))
            print(f"{label} greedy tokens equal to the engine's: {agree} of {n}")
    del hf

    # 2. 16 concurrent requests vs the same run one at a time
    params = SamplingParams(temperature=0, max_new_tokens=n, stop_token_ids=())
    seq_time = []
    for _ in range(opts.repeats):
        t = time.perf_counter()
        engine.generate(prompts[:1], params)
        seq_time.append(time.perf_counter() - t)
    sequential_s = opts.concurrent * min(seq_time)
    best, full_steps = float("inf"), []
    for _ in range(opts.repeats):
        steps_before = len(engine.stats.steps)
        t = time.perf_counter()
        out, decode_steps = run_together(engine, prompts, params)
        best = min(best, time.perf_counter() - t)
        batches = [s.num_seqs for s in engine.stats.steps[steps_before:]]
        full_steps.extend(decode_steps)
    assert all(len(o) == n for o in out) and engine.blocks.num_used == 0
    concurrent_tok_s = opts.concurrent * n / best
    sequential_tok_s = opts.concurrent * n / sequential_s
    print(f"\n{opts.concurrent} requests together: {best:.1f} s ({concurrent_tok_s:.1f} tok/s, {len(batches)} steps, "
          f"largest batch {max(batches)}); one at a time: {sequential_s:.1f} s ({sequential_tok_s:.1f} tok/s)")
    # where the time goes: the prompts' prefill (the same arithmetic together or one at a time,
    # compute-bound on a CPU) and the decode steps, whose rows share one pass over the weights
    flops = linear_flops_per_token(model)
    head = 2 * model.lm_head.weight.numel()  # the engine runs the head on the last prompt token only
    prefill_flops = opts.concurrent * (opts.prompt_len * (flops - head) + head)
    decode_flops = opts.concurrent * (n - 1) * flops
    print(f"arithmetic of the linear layers: prefill {prefill_flops / 1e9:.0f} GFLOP, decode {decode_flops / 1e9:.0f} "
          f"GFLOP ({flops / 1e9:.2f} GFLOP a token)")
    decode_only = None
    if full_steps:
        step_s = sorted(full_steps)[len(full_steps) // 2]
        decode_only = opts.concurrent / step_s / result["engine"].decode_tok_s
        print(f"decode steps with all {opts.concurrent} requests and no prefill: {step_s:.3f} s each (median of "
              f"{len(full_steps)}), {opts.concurrent / step_s:.1f} tok/s, {opts.concurrent * flops / step_s / 1e9:.0f} "
              f"GFLOP/s; batch-1 engine decode {result['engine'].decode_tok_s:.2f} tok/s")

    # 3. speculative decoding with a layer-skip draft
    if opts.draft_model:
        from herd.checkpoint import load_any

        draft = load_any(opts.draft_model, dtype=dtype).eval()
        draft_name = opts.draft_model
    else:
        draft = layer_skip_draft(model, opts.draft_layers)
        draft_name = f"first {opts.draft_layers} of {model.args.n_layers} layers"
    spec = SpeculativeGenerator(model, draft, k=opts.k)
    plain = Generator(model)
    spec.generate(prompts[0], params)  # warm-up
    plain.generate([prompts[0]], params)
    t_spec = t_plain = float("inf")
    for _ in range(opts.repeats):
        t = time.perf_counter()
        s = spec.generate(prompts[0], params)
        t_spec = min(t_spec, time.perf_counter() - t)
        t = time.perf_counter()
        p = plain.generate([prompts[0]], params)[0]
        t_plain = min(t_plain, time.perf_counter() - t)
    same = next((i for i, (x, y) in enumerate(zip(s.completion.token_ids, p.token_ids, strict=True)) if x != y), None)
    if same is not None and dtype == torch.float32:
        raise SystemExit(f"speculative greedy output differs from plain greedy at token {same} in fp32")
    # in bf16 the verify pass (k+1 positions at once) rounds differently from one-token steps,
    # so a near-tie may flip: reported, not asserted
    agreement = "outputs identical" if same is None else f"outputs differ from token {same} (a {opts.dtype} near-tie)"
    print(f"\nspeculative (draft: {draft_name}, k={opts.k}): "
          f"{t_spec:.2f} s vs plain {t_plain:.2f} s for {n} tokens; acceptance {s.acceptance_rate:.0%}, "
          f"{s.target_passes} target passes; {agreement}")

    speedup = result["engine"].decode_tok_s / result[peer_name].decode_tok_s
    concurrency = concurrent_tok_s / sequential_tok_s
    achieved = result["engine"].decode_tok_s * gbytes
    figures = [
        (f"engine_decode_batch1_vs_{peer_name}", speedup, "x", TARGET_VS_TRANSFORMERS),
        (f"engine_{opts.concurrent}_concurrent_vs_sequential", concurrency, "x", TARGET_CONCURRENCY),
        ("speculative_speedup_vs_plain_greedy", t_plain / t_spec, "x", TARGET_SPECULATIVE),
    ]
    if "llama.cpp-f16" in result:
        figures.insert(1, (f"engine_decode_batch1_{opts.dtype}_vs_llama.cpp_f16",
                           result["engine"].decode_tok_s / result["llama.cpp-f16"].decode_tok_s, "x",
                           TARGET_VS_LLAMA_CPP))
    if "llama.cpp-q8_0" in result:
        figures.insert(2, ("engine_decode_batch1_int8_vs_llama.cpp_q8_0",
                           result["engine-int8"].decode_tok_s / result["llama.cpp-q8_0"].decode_tok_s, "x",
                           TARGET_VS_LLAMA_CPP))
    print()
    if skip_llama_cpp is not None:
        print(f"(no llama.cpp figure: {skip_llama_cpp})")
    for name, value, unit, target in figures:
        print(f"figure: {name} = {value:.2f} {unit} (target >= {target}) {'MET' if value >= target else 'MISSED'}")
    if decode_only is not None:
        print(f"figure: engine_{opts.concurrent}_row_decode_step_vs_batch1_decode = {decode_only:.2f} x "
              "(aggregate decode tok/s, prefill excluded; no target)")
    print(f"figure: engine_decode_bandwidth_fraction = {achieved / bandwidth:.2f} of {bandwidth:.1f} GB/s "
          f"({achieved:.1f} GB/s, {result['engine'].decode_tok_s:.2f} tok/s; no target)")


if __name__ == "__main__":
    main()
