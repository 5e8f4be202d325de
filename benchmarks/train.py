"""Training throughput of herd's pre-training step against a plain transformers loop.

Both train the same model (herd's initial weights loaded into LlamaForCausalLM), on the
same batches of packed rows (plain causal attention: transformers has no document
masking), in the same dtype and thread count, with the same AdamW (fused where the
device has it, else foreach) and gradient clipping. transformers gets SDPA attention
and its own loss (``labels=``, which materialises the full fp32 logits); herd computes
the hidden states and the chunked linear cross-entropy (``herd.train.loss``). With
``--compile`` both are compiled (herd per block, transformers the whole model).

A step is forward + backward + clip + AdamW; tokens/s = batch * seq_len / step time,
best of ``--repeats`` timed runs of ``--steps`` steps, alternating the two so drift hits
both alike. MFU uses ``ModelArgs.flops_per_token`` (6N + 12·L·H·Q·T) and the device's
dense peak (``herd.train.metrics.peak_flops``).

    python benchmarks/train.py                                  # small model, 128K vocab, CPU fp32
    python benchmarks/train.py --device cuda --preset llama3.2-1b --dtype bf16 --batch 4 --seq-len 2048 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch

from herd.model import ModelArgs, Transformer
from herd.train.config import OptimConfig
from herd.train.distributed import DistInfo
from herd.train.loader import Batch
from herd.train.loop import accumulate_gradients
from herd.train.metrics import mfu, peak_flops
from herd.train.objective import CausalLM
from herd.train.optim import build_optimizer, clip_grad_norm, param_groups

TARGET_SPEEDUP = 1.2
TARGET_MFU = 45.0
SMALL = {"dim": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 64, "ffn_dim_multiplier": None}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="herd.model preset, or 'small' (4 x 256, full 128K vocab)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--chunk", type=int, default=None, help="herd's loss chunk (tokens; default 256 CPU, 4096 CUDA)")
    p.add_argument("--loss-mode", choices=["fused", "recompute"], default="fused", help="herd.train.loss mode")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--accum", type=int, default=1, help="micro-batches of --batch rows per optimizer step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def model_args(preset: str) -> ModelArgs:
    return ModelArgs.from_name("tiny", **SMALL) if preset == "small" else ModelArgs.from_name(preset)


def build_herd(args: ModelArgs, device: torch.device, seed: int, compile: bool) -> Transformer:
    model = Transformer(args).to(device)
    model.init_weights(0.02, torch.Generator(device).manual_seed(seed))
    if compile:
        for block in model.model.layers:
            block.compile()
    return model


def build_hf(herd_model: Transformer, device: torch.device, compile: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from herd.checkpoint import hf_config_from_args

    config = LlamaConfig.from_dict(hf_config_from_args(herd_model.args, torch.float32))
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(config)
    missing = model.load_state_dict(herd_model.state_dict(), strict=False)
    assert not missing.missing_keys or missing.missing_keys == ["lm_head.weight"], missing
    if compile:
        model = torch.compile(model)
    return model


def batches(args: ModelArgs, n: int, batch: int, seq_len: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, args.vocab_size, (batch, seq_len + 1), generator=g)
        out.append(Batch(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(),
                         torch.zeros(batch, seq_len, dtype=torch.long),
                         torch.arange(seq_len).expand(batch, seq_len).contiguous(), batch * seq_len))
    return out


def herd_step(model, optimizer, objective, micro: list[Batch], autocast) -> float:
    info = DistInfo(device=micro[0].tokens.device)
    n_targets = sum(b.n_targets for b in micro)
    loss = accumulate_gradients(model, objective, micro, n_targets=n_targets, info=info, autocast=autocast)
    clip_grad_norm(model, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss / n_targets


def hf_step(model, optimizer, micro: list[Batch], autocast) -> float:
    total = 0.0
    for batch in micro:  # equal-size micro-batches: the mean of their means is the step's mean
        # transformers shifts labels itself: give it the row (inputs + last target) as both
        tokens = torch.cat([batch.tokens, batch.labels[:, -1:]], dim=1)
        with autocast:
            loss = model(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss / len(micro)
        loss.backward()
        total += loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total)


def timed(step, data, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in data:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    a = parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype_name = a.dtype or ("bf16" if device.type == "cuda" else "fp32")
    amp = torch.bfloat16 if dtype_name == "bf16" else None
    chunk = a.chunk or (4096 if device.type == "cuda" else 512)
    args = model_args(a.preset)

    def autocast():
        return torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()

    herd_model = build_herd(args, device, a.seed, a.compile)
    hf_model = build_hf(herd_model, device, a.compile)
    fused = device.type in ("cuda", "cpu")
    herd_opt = build_optimizer(herd_model, OptimConfig(lr=1e-4, weight_decay=0.1))
    hf_opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in
                                param_groups(getattr(hf_model, "_orig_mod", hf_model), 0.1)],
                               lr=1e-4, betas=(0.9, 0.95), fused=fused)
    objective = CausalLM(chunk_size=chunk, document_masking=False, loss_mode=a.loss_mode)
    flat = [to(b, device) for b in batches(args, a.steps * a.accum, a.batch, a.seq_len, a.seed)]
    data = [flat[i:i + a.accum] for i in range(0, len(flat), a.accum)]

    def herd_run(b):
        return herd_step(herd_model, herd_opt, objective, b, autocast())

    def hf_run(b):
        return hf_step(hf_model, hf_opt, b, autocast())

    # same weights, same batch: the first losses agree (a check that both train the same thing)
    first = data[0]
    l_herd, l_hf = herd_run(first), hf_run(first)
    print(f"first-step loss: herd {l_herd:.5f}  transformers {l_hf:.5f}")
    for _ in range(max(0, a.warmup - 1)):
        herd_run(first)
        hf_run(first)

    t_herd, t_hf = [], []
    for _ in range(a.repeats):
        t_herd.append(timed(herd_run, data, device))
        t_hf.append(timed(hf_run, data, device))
    tokens = a.steps * a.accum * a.batch * a.seq_len
    tps_herd, tps_hf = tokens / min(t_herd), tokens / min(t_hf)
    fpt = args.flops_per_token(a.seq_len)
    peak = peak_flops(device, amp or torch.float32)
    mfu_herd, mfu_hf = 100 * mfu(tps_herd, fpt, peak), 100 * mfu(tps_hf, fpt, peak)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {a.threads} threads"
    print(f"model: {a.preset} ({args.num_params() / 1e6:.1f}M parameters, vocab {args.vocab_size}), "
          f"batch {a.batch} x {a.seq_len} x {a.accum} micro-batches per step, {dtype_name}, {name}, "
          f"compile={a.compile}")
    print(f"settings: herd chunked linear cross-entropy ({a.loss_mode}, chunk {chunk}), fused AdamW; "
          "transformers SDPA, labels= loss, fused AdamW; both clip at 1.0")
    print(f"herd          {tps_herd:10.1f} tokens/s   MFU {mfu_herd:5.2f} %  (peak {peak:.3g} FLOP/s)")
    print(f"transformers  {tps_hf:10.1f} tokens/s   MFU {mfu_hf:5.2f} %")
    speedup = tps_herd / tps_hf
    status = "MET" if speedup >= TARGET_SPEEDUP else "MISSED"
    print(f"figure: train_speedup_vs_transformers = {speedup:.3f} x (target >= {TARGET_SPEEDUP}) {status}")
    if device.type == "cuda":
        status = "MET" if mfu_herd >= TARGET_MFU else "MISSED"
        label = "mfu_1b_bf16" if a.preset == "llama3.2-1b" and dtype_name == "bf16" else f"mfu_{a.preset}_{dtype_name}"
        print(f"figure: {label} = {mfu_herd:.1f} % (target >= {TARGET_MFU:.0f}) {status}")


def to(batch: Batch, device: torch.device) -> Batch:
    from herd.train.loop import to_device

    return to_device(batch, device)


if __name__ == "__main__":
    main()
