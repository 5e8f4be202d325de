"""Decode and prefill speed of herd's Generator against transformers' generate.

Both run the same random weights (herd's state_dict loaded into LlamaForCausalLM), in
the same dtype and thread count, greedy, decoding the same number of tokens
(transformers with min_new_tokens, herd with no stop tokens). transformers gets SDPA
attention and whichever of its dynamic and static caches is faster here. Each new token's
time is taken when its logits are ready (a logits processor in herd, a streamer in
transformers); decode speed is batch * (N - 1) tokens over the time from the first new
token to the last, prefill speed is prompt tokens over the time to the first. Achieved
bandwidth is gpt-fast's: bytes of weights read per decode step (every weight once; the
embedding table only when it is also the LM head) times steps per second.

    python benchmarks/decode.py                          # llama3.2-1b, fp32 and bf16, CPU
    python benchmarks/decode.py --device cuda --dtypes bf16 --new-tokens 128
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from dataclasses import dataclass

import torch

from herd.generation import Generator, SamplingParams
from herd.model import ModelArgs, Transformer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_SPEEDUP = 1.5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama3.2-1b", help="herd.model preset (random weights)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16, help="tokens decoded per timed run")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtypes", default=None, help="comma-separated: fp32,bf16,fp16 (default: fp32,bf16 "
                   "on CPU, bf16 on CUDA)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="compile herd's decode step with torch.compile (default on; on a CPU the first "
                   "compile takes 15-40 s per dtype and fuses the small bf16 ops between the linears)")
    p.add_argument("--cpu-gemv", action=argparse.BooleanOptionalAction, default=True,
                   help="on a CPU, herd's few-row products go to herd.generation.cpu_gemv (default on)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (the best of each run is kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true",
                   help="after timing, print torch.profiler's top kernels over one herd run (where the time goes)")
    p.add_argument("--coordinate-descent", action="store_true",
                   help="inductor's coordinate-descent tuning of its generated kernels (gpt-fast turns it on)")
    return p.parse_args()


# ------------------------------------------------------------------ models


def build_herd(preset: str, seed: int) -> Transformer:
    """Random weights, initialised the way herd initialises a model for pre-training."""
    args = ModelArgs.from_name(preset)
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device="cpu")
    if args.tie_word_embeddings:  # to_empty gives each module its own tensor: tie again
        model.lm_head.weight = model.model.embed_tokens.weight
    model.init_weights(generator=torch.Generator().manual_seed(seed))
    return model.eval()


def hf_config(args: ModelArgs):
    from transformers import LlamaConfig

    rope_scaling = None
    if args.rope_scaling is not None:
        s = args.rope_scaling
        rope_scaling = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                        "high_freq_factor": s.high_freq_factor,
                        "original_max_position_embeddings": s.original_max_position_embeddings}
    return LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads, head_dim=args.head_dim,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
        rope_scaling=rope_scaling, tie_word_embeddings=args.tie_word_embeddings,
        bos_token_id=args.bos_token_id, eos_token_id=args.eos_token_id, pad_token_id=0,
        attn_implementation="sdpa",
    )


def build_hf_twin(model: Transformer):
    """LlamaForCausalLM sharing herd's weight tensors (load_state_dict(assign=True): the
    same weights, no second copy in memory)."""
    from transformers import LlamaForCausalLM

    config = hf_config(model.args)
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    device = model.lm_head.weight.device
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False, assign=True)
    if unexpected or any("rotary" not in k for k in missing):
        raise RuntimeError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config).to(device)  # its inv_freq, off the meta device
    hf.tie_weights()
    return hf.eval()


def weight_bytes_per_token(model: Transformer) -> int:
    a = model.args
    per = model.lm_head.weight.element_size()
    params = model.num_params()
    if not a.tie_word_embeddings:
        params -= a.vocab_size * a.dim  # the embedding table is looked up, not read whole
    return params * per


def bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes one decode step reads: every persistent tensor once (tied ones once), except an
    embedding table that is not also the LM head (one row of it is looked up)."""
    embed = model.model.embed_tokens.weight
    head = getattr(model.lm_head, "weight", None)  # a quantized head (int4) has other tensors
    tied = head is not None and embed.data_ptr() == head.data_ptr()
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        key = t.data_ptr()
        if key in seen or (t is embed and not tied):
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Timestamps: the host clock after a sync on a CPU; on CUDA an event recorded on the
    stream (no sync), so that stamping a step never stalls the queue of launched work,
    read once a run has ended."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, stamps: list) -> list[float]:
        """Each stamp's time from the first, in seconds."""
        if self.cuda:
            torch.cuda.synchronize()
            return [stamps[0].elapsed_time(e) / 1e3 for e in stamps]
        return [t - stamps[0] for t in stamps]


@dataclass
class Timing:
    prefill_tok_s: float
    decode_tok_s: float
    tokens: list[list[int]]
    warm_s: float  # the untimed first round (torch.compile happens here)


def measure(runs: dict, n_new: int, n_prompt_tokens: int, repeats: int, device: torch.device) -> dict:
    """Each ``runs[label](n)`` generates n new tokens per row and returns the token ids and
    the times (in seconds from its start) at which each new token's logits were ready (a
    logits processor in herd, a streamer in transformers; CUDA events on a GPU, the host
    clock after a sync on a CPU: ``Clock``). Decode speed is
    batch * (n - 1) tokens over the time from the first new token to the last; prefill
    speed is the prompt tokens over the time to the first. One untimed round each first
    (compilation, caches), then ``repeats`` rounds through every run in turn, so that all
    see the same machine; the best round counts."""
    warm, prefill, decode, tokens = {}, {}, {}, {}
    for label, run in runs.items():
        t = time.perf_counter()
        run(n_new)
        warm[label] = time.perf_counter() - t
    for _ in range(repeats):
        for label, run in runs.items():
            tokens[label], stamps = run(n_new)
            prefill.setdefault(label, []).append(stamps[1])
            decode.setdefault(label, []).append(stamps[-1] - stamps[1])
    out = {}
    for label in runs:
        batch = len(tokens[label])
        out[label] = Timing(n_prompt_tokens / min(prefill[label]),
                            batch * (n_new - 1) / max(min(decode[label]), 1e-9), tokens[label], warm[label])
    return out


def herd_runner(gen: Generator, prompts: list[list[int]], device: torch.device):
    clock = Clock(device)

    def run(n: int) -> tuple[list[list[int]], list[float]]:
        stamps: list = []

        def stamp(ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if len(ids) >= len(stamps) - 1:  # once per step (the first row's call)
                if not clock.cuda:
                    sync(device)
                stamps.append(clock.now())
            return logits

        params = SamplingParams(temperature=0, max_new_tokens=n, stop_token_ids=(), logits_processors=(stamp,))
        stamps.append(clock.now())
        out = [c.token_ids for c in gen.generate(prompts, params)]
        return out, clock.seconds(stamps)
    return run


class _Stamps:
    """A transformers streamer that notes when each new token is ready (the first ``put``
    is the prompt)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.clock, self.calls = device, Clock(device), 0
        self.times = [self.clock.now()]

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls > 1:
            if not self.clock.cuda:
                sync(self.device)
            self.times.append(self.clock.now())

    def end(self) -> None:
        pass


def hf_runner(hf, prompts: list[list[int]], cache: str, device: torch.device):
    ids = torch.tensor(prompts, device=device)

    def run(n: int) -> tuple[list[list[int]], list[float]]:
        kwargs = {"cache_implementation": "static"} if cache == "static" else {}
        streamer = _Stamps(device)
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0, streamer=streamer, **kwargs)
        return out[:, ids.shape[1]:].tolist(), streamer.clock.seconds(streamer.times)
    return run


def compare_tokens(herd: list[list[int]], peer: list[list[int]], hf, prompts, device) -> str:
    """"yes", or where the greedy tokens first differ and how close transformers' own
    logits were there (a near-tie that rounding decides, or a real disagreement)."""
    for r, (x, y) in enumerate(zip(herd, peer, strict=True)):
        for i, (p, q) in enumerate(zip(x, y, strict=True)):
            if p != q:
                with torch.inference_mode():
                    ids = torch.tensor([prompts[r] + y[:i]], device=device)
                    logits = hf(ids).logits[0, -1].float()
                top2 = logits.topk(2).values
                return (f"NO, first at row {r} token {i} (herd {p}, transformers {q}); there transformers' "
                        f"top-2 logits are {top2[0] - top2[1]:.4f} apart and herd's pick is "
                        f"{logits[q] - logits[p]:.4f} below transformers' (in this dtype's rounding, a near-tie)")
    return "yes"


def profile(run, n_new: int, device: torch.device) -> None:
    """torch.profiler's view of one run: the kernels (or CPU ops) that take the time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        run(n_new)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


# ------------------------------------------------------------------ main


def main() -> None:
    opts = parse_args()
    device = torch.device(opts.device)
    torch.set_num_threads(opts.threads)
    if opts.coordinate_descent:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
    dtypes = (opts.dtypes or ("bf16" if device.type == "cuda" else "fp32,bf16")).split(",")
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{opts.threads} CPU threads")
    print(f"preset {opts.preset}, batch {opts.batch}, prompt {opts.prompt_len} tokens, "
          f"{opts.new_tokens} new tokens, greedy, best of {opts.repeats}")
    print(f"herd: Generator(compile={opts.compile}, cpu_gemv={opts.cpu_gemv}); "
          "transformers: LlamaForCausalLM.generate, sdpa attention")

    t = time.perf_counter()
    model = build_herd(opts.preset, opts.seed)
    print(f"built {model.num_params() / 1e9:.2f}B-parameter model in {time.perf_counter() - t:.0f}s")
    g = torch.Generator().manual_seed(opts.seed + 1)
    prompts = [[model.args.bos_token_id] + torch.randint(0, 128000, (opts.prompt_len - 1,),
                                                         generator=g).tolist() for _ in range(opts.batch)]
    n_prompt = opts.batch * opts.prompt_len

    rows, figures = [], []
    for name in dtypes:
        model = model.to(device=device, dtype=DTYPES[name])  # fp32 first, then cast in place
        gc.collect()
        hf = build_hf_twin(model)
        gbytes = weight_bytes_per_token(model) / 1e9

        gen = Generator(model, compile=opts.compile, cpu_gemv=opts.cpu_gemv)
        runs = {"herd": herd_runner(gen, prompts, device)}
        for cache in ("dynamic", "static"):
            runs[cache] = hf_runner(hf, prompts, cache, device)
        result = measure(runs, opts.new_tokens, n_prompt, opts.repeats, device)
        herd = result["herd"]
        rows.append((f"herd {name}", herd, gbytes))
        for cache in ("dynamic", "static"):
            rows.append((f"transformers {name} {cache} cache", result[cache], gbytes))
        if opts.profile:
            profile(runs["herd"], opts.new_tokens, device)
        cache = max(("dynamic", "static"), key=lambda c: result[c].decode_tok_s)
        peer = result[cache]
        same = compare_tokens(herd.tokens, peer.tokens, hf, prompts, device)
        print(f"[{name}] greedy tokens identical to transformers ({cache} cache): {same}")
        speedup = herd.decode_tok_s / peer.decode_tok_s
        figures.append((f"decode_speedup_{name}_vs_transformers", speedup, cache))
        prefill = herd.prefill_tok_s / peer.prefill_tok_s
        figures.append((f"prefill_speedup_{name}_vs_transformers", prefill, cache))
        del hf, gen
        gc.collect()

    print()
    print(f"{'run':<36} {'prefill tok/s':>14} {'decode tok/s':>13} {'GB/s':>7} {'warm-up s':>10}")
    for label, r, gbytes in rows:
        bandwidth = r.decode_tok_s / opts.batch * gbytes
        print(f"{label:<36} {r.prefill_tok_s:>14.1f} {r.decode_tok_s:>13.2f} {bandwidth:>7.1f} {r.warm_s:>10.1f}")
    print("(GB/s: bytes of weights read per decode step, times steps per second; warm-up: the first, "
          "untimed round, compilation included)")
    print()
    for fig, value, cache in figures:
        print(f"{fig}: {value:.2f} x against transformers with its faster ({cache}) cache")
    for fig, value, _ in figures:
        if fig.startswith("decode"):
            status = "MET" if value >= TARGET_SPEEDUP else "MISSED"
            print(f"figure: {fig} = {value:.2f} x (target >= {TARGET_SPEEDUP}) {status}")


if __name__ == "__main__":
    main()
