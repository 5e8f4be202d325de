"""Speed of herd's quantized linear layers against the unquantized one, per shape and
number of token rows.

For each feed-forward shape of a Llama 3.1 model (w1/w3: dim -> ffn_dim, w2: back) and
each row count M (1 = batch-1 decode, a few = batched decode, thousands = prefill), the
forward of ``nn.Linear`` in the compute dtype is timed against ``Fp8RowwiseLinear`` (the
405B recipe: dynamic per-row activation scales clamped at 1200, e4m3 weights; on a GPU
with FP8 matmuls ``torch._scaled_mm``, the activation quantization included in its time),
``Int8Linear`` and ``Int4Linear`` (group 128). Timings are medians: CUDA events around
each call on a GPU (a fresh input per call from a rotating set, so caches do not help),
the host clock on a CPU. ``--compile`` compiles each layer's forward (fuses FP8's
activation quantization into a few kernels; lets inductor fuse int8/int4 dequantization
into the matmul for few rows, as gpt-fast does).

    python benchmarks/quant_speed.py --device cuda --model llama3.1-8b,llama3.1-70b
    python benchmarks/quant_speed.py --rows 1,8 --model llama3.2-1b          # CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from herd.model import ModelArgs
from herd.quant.fp8 import Fp8RowwiseLinear, has_scaled_mm
from herd.quant.int4 import Int4Linear
from herd.quant.int8 import Int8Linear

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="llama3.1-8b", help="comma-separated herd.model presets (FFN shapes)")
    p.add_argument("--rows", default=None, help="comma-separated token-row counts (default: 1,16,2048,8192 on "
                   "CUDA, 1,8 on a CPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on a CPU")
    p.add_argument("--schemes", default="fp8,int8,int4")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def timer(device: torch.device, fn, inputs: list[torch.Tensor], iters: int) -> float:
    """Median seconds per call of fn over rotating inputs, after warm-up calls."""
    for x in inputs[:3]:
        fn(x)
    times = []
    for i in range(iters):
        x = inputs[i % len(inputs)]
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def layers(linear: torch.nn.Linear, schemes: list[str], device: torch.device) -> dict[str, torch.nn.Module]:
    out: dict[str, torch.nn.Module] = {"unquantized": linear}
    for s in schemes:
        if s == "fp8":
            out[s] = Fp8RowwiseLinear.from_linear(linear)
        elif s == "int8":
            out[s] = Int8Linear.from_linear(linear)
        elif s == "int4":
            out[s] = Int4Linear.from_linear(linear, 128)
        else:
            raise SystemExit(f"unknown scheme {s!r}: use fp8, int8, int4")
    return {k: m.to(device) for k, m in out.items()}


@torch.inference_mode()
def main() -> None:
    a = parse_args()
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    dtype = DTYPES[a.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    rows = [int(r) for r in (a.rows or ("1,16,2048,8192" if device.type == "cuda" else "1,8")).split(",")]
    schemes = a.schemes.split(",")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {a.threads} threads"
    fp8_kernel = has_scaled_mm(device, dtype)
    print(f"torch {torch.__version__}, {where}, {str(dtype).removeprefix('torch.')}, compile={a.compile}; "
          f"FP8 matmul: {'torch._scaled_mm' if fp8_kernel else 'emulated in fp32'}")
    print(f"{'shape (out x in)':<22} {'M':>6} {'unquantized ms':>15} " + " ".join(f"{s + ' x':>8}" for s in schemes))
    figures: dict[str, list[float]] = {}
    g = torch.Generator(device=device).manual_seed(0)
    for preset in a.model.split(","):
        args = ModelArgs.from_name(preset)
        for n_out, n_in in ((args.ffn_dim, args.dim), (args.dim, args.ffn_dim)):
            linear = torch.nn.Linear(n_in, n_out, bias=False, device=device, dtype=dtype)
            torch.nn.init.normal_(linear.weight, std=0.02, generator=g)
            mods = layers(linear, schemes, device)
            fns = {k: (torch.compile(m) if a.compile else m) for k, m in mods.items()}
            for m in rows:
                if a.compile:  # every layer class shares one forward: start each shape afresh, no recompile limit
                    torch._dynamo.reset()
                    fns = {k: torch.compile(mod, dynamic=False) for k, mod in mods.items()}
                inputs = [torch.randn(m, n_in, device=device, dtype=dtype, generator=g) for _ in range(4)]
                base = timer(device, fns["unquantized"], inputs, a.iters)
                ratios = []
                for s in schemes:
                    t = timer(device, fns[s], inputs, a.iters)
                    ratios.append(base / t)
                    figures.setdefault(f"{s}_{'decode' if m == 1 else 'prefill' if m >= 2048 else 'batch'}",
                                       []).append(base / t)
                print(f"{preset + f' {n_out}x{n_in}':<22} {m:>6} {base * 1e3:>15.3f} "
                      + " ".join(f"{r:>8.2f}" for r in ratios))
    print("(x: the unquantized layer's time over the quantized one's: above 1 is faster)")
    for name, values in figures.items():
        gm = statistics.geometric_mean(values)
        print(f"figure: {name}_speedup_vs_{str(dtype).removeprefix('torch.')} = {gm:.2f} x "
              f"(geometric mean over {len(values)} shapes; no target)")


if __name__ == "__main__":
    main()
