"""Decode speed of each quantization scheme: herd's batch-1 greedy decode of one model in
bf16 and quantized to int8 (also ``int8+lm_head``, its LM head in int8 too), int4 and FP8
row-wise, with the bytes each step reads and the fraction of the device's measured read
bandwidth that is.

Issue 6 asks for these on a GPU for an 8B-shaped model (``--device cuda``, whose default
preset is ``llama3.1-8b``); on a CPU the default is the Llama-3.2-1B shape. Every scheme is
quantized (round-to-nearest: speed does not depend on how the integers were chosen) from
the same random bf16 weights (herd's pre-training initialisation) and decodes the same
prompt with ``Generator`` (on CUDA: compiled, the decode step one captured CUDA graph; on
CPU: eager, products on ``cpu_gemv``), timed as ``benchmarks/decode.py`` times it: N new
tokens minus the first, best of ``--repeats``.

Bytes per step: every weight and scale the step reads (the quantized linears' integer
weights and scales, the norms, the LM head; the embedding table only when it is also the
head). The read bandwidth is a sum over a 1 GiB tensor in the same run, best of 3.
Which kernels run: on an x86 CPU int8 and int4 are herd's ``cpu_gemv`` / ``cpu_gemv_int4``
(elsewhere ATen's ``_weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu``); on CUDA a
dequantize + matmul, which ``torch.compile`` may fuse; FP8 is ``torch._scaled_mm`` where
the GPU has FP8 and an exact emulation elsewhere (very slow on a CPU, which has no FP8
arithmetic: ``--schemes bf16,int8,int4`` leaves it out). Other jobs sharing the cores make
CPU timings noisy.

    python benchmarks/quant_decode.py                            # CPU, 1B shape
    python benchmarks/quant_decode.py --device cuda              # GPU, 8B shape, compiled
    python benchmarks/quant_decode.py --schemes bf16,int8 --new-tokens 32
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import build_herd, bytes_per_step, herd_runner, measure  # noqa: E402
from engine import read_bandwidth_gbs  # noqa: E402

from herd.generation import Generator  # noqa: E402
from herd.model import ModelArgs, Transformer  # noqa: E402
from herd.quant import QuantScheme, quantize  # noqa: E402

print = functools.partial(print, flush=True)  # noqa: A001
SCHEMES = ("bf16", "int8", "int8+lm_head", "int4", "fp8")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default=None, help="herd.model preset (default: llama3.1-8b on CUDA, "
                                                   "llama3.2-1b on CPU)")
    p.add_argument("--schemes", default=",".join(SCHEMES),
                   help=f"comma-separated: bf16 or any herd quantize scheme (default {','.join(SCHEMES)})")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=None, help="tokens per timed run (default 128 on CUDA, "
                                                                 "16 on CPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the decode step (default: on CUDA only)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build(preset: str, seed: int, device: torch.device) -> Transformer:
    """Random bf16 weights (herd's pre-training initialisation); on a GPU made there, in
    bf16 (an 8B model in fp32 on the host would take 32 GB)."""
    if device.type == "cpu":
        return build_herd(preset, seed).to(torch.bfloat16)
    args = ModelArgs.from_name(preset)
    with torch.device("meta"):
        model = Transformer(args).to(torch.bfloat16)
    model = model.to_empty(device=device)
    if args.tie_word_embeddings:  # to_empty gives each module its own tensor: tie again
        model.lm_head.weight = model.model.embed_tokens.weight
    model.init_weights(generator=torch.Generator(device).manual_seed(seed))
    return model.eval()


def main() -> None:
    opts = parse_args()
    device = torch.device(opts.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(opts.threads)
    preset = opts.preset or ("llama3.1-8b" if cuda else "llama3.2-1b")
    n_new = opts.new_tokens or (128 if cuda else 16)
    compile_ = cuda if opts.compile is None else opts.compile
    schemes = [s.strip() for s in opts.schemes.split(",") if s.strip()]
    for scheme in schemes:
        if scheme != "bf16":
            try:
                QuantScheme.parse(scheme)
            except ValueError as e:
                raise SystemExit(f"--schemes: {e}") from None
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {opts.threads} threads"
    print(f"torch {torch.__version__}, {where}; preset {preset}, batch 1, prompt {opts.prompt_len} tokens, "
          f"{n_new} new tokens, greedy, compile={compile_}, best of {opts.repeats}")
    bandwidth = read_bandwidth_gbs(device)
    print(f"measured read bandwidth: {bandwidth:.1f} GB/s")

    t = time.perf_counter()
    base = build(preset, opts.seed, device)
    print(f"built {base.num_params() / 1e9:.2f}B-parameter model in {time.perf_counter() - t:.0f} s")
    g = torch.Generator().manual_seed(opts.seed + 1)
    prompt = [base.args.bos_token_id] + torch.randint(0, 128000, (opts.prompt_len - 1,), generator=g).tolist()

    rows = []
    for scheme in schemes:
        t = time.perf_counter()
        model = base if scheme == "bf16" else quantize(copy.deepcopy(base), scheme)
        made = time.perf_counter() - t
        gbytes = bytes_per_step(model) / 1e9
        gen = Generator(model, compile=compile_)
        result = measure({scheme: herd_runner(gen, [prompt], device)}, n_new, opts.prompt_len, opts.repeats,
                         device)[scheme]
        rows.append((scheme, result.decode_tok_s, gbytes, result.tokens[0]))
        print(f"{scheme}: {result.decode_tok_s:.2f} tok/s, {gbytes:.2f} GB a step "
              f"(quantized in {made:.0f} s, warm-up {result.warm_s:.0f} s)")
        del gen
        if model is not base:
            del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    print(f"\n{'scheme':<12} {'decode tok/s':>12} {'GB a step':>10} {'GB/s':>7} {'of bandwidth':>13} {'vs bf16':>8}"
          f" {'same tokens as bf16':>20}")
    ref = next((r for r in rows if r[0] == "bf16"), None)
    for scheme, tok_s, gbytes, tokens in rows:
        vs = f"{tok_s / ref[1]:.2f}x" if ref else "-"
        same = f"{sum(a == b for a, b in zip(tokens, ref[3], strict=True))} of {n_new}" if ref else "-"
        print(f"{scheme:<12} {tok_s:>12.2f} {gbytes:>10.2f} {tok_s * gbytes:>7.1f} "
              f"{tok_s * gbytes / bandwidth:>13.2f} {vs:>8} {same:>20}")
    print("(random weights: a quantized model's greedy tokens part from bf16's at near-ties)")
    print()
    for scheme, tok_s, gbytes, _ in rows:
        name = scheme.replace("+", "_")
        print(f"figure: decode_{name}_{preset}_tok_s = {tok_s:.2f} tok/s ({tok_s * gbytes:.1f} GB/s, "
              f"{tok_s * gbytes / bandwidth:.2f} of {bandwidth:.1f} GB/s measured; no target)")
        if ref and scheme != "bf16":
            print(f"figure: decode_{name}_vs_bf16 = {tok_s / ref[1]:.2f} x (no target)")


if __name__ == "__main__":
    main()
