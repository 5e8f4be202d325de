"""GPTQ (Frantar et al., 2022): int4 group-wise weights chosen with calibration data.

Round-to-nearest quantizes each weight alone. GPTQ quantizes the columns of a weight
one at a time and spreads each column's rounding error over the columns not yet
quantized, weighted by the inverse Hessian ``H = 2 X^T X`` of the layer's inputs, so the
layer's *output* on real activations moves as little as possible. The blocks are done
in order, each on the outputs of the already-quantized blocks before it, so later layers
correct the errors of earlier ones. The result is the same (q, scale, zero_point) as
round-to-nearest, stored and run by ``Int4Linear``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from herd.quant.int4 import check_group_size, int4_params, int4_round

log = logging.getLogger("herd.quant")


class HessianAccumulator:
    """Running ``2/n * sum x x^T`` over the rows fed to one linear layer (fp32 products,
    as the reference implementation; the damping and Cholesky steps run in fp64), on the
    device of the first rows it sees (the model's: a GPU quantizes on the GPU)."""

    def __init__(self, in_features: int) -> None:
        self.in_features = in_features
        self.h: Tensor | None = None
        self.n = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        if self.h is None:
            self.h = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=x.device)
        x = x.to(self.h.device)
        m = x.shape[0]
        self.h *= self.n / (self.n + m)
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.h += x.t() @ x


def gptq_quantize(weight: Tensor, hessian: Tensor, group_size: int = 128, *, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ for one weight [out, in] given its input Hessian [in, in]:
    ``(q int8 [out, in], scale fp32 [out, in/g], zero_point int8 [out, in/g])``.

    By default columns go in their natural order, so groups are contiguous and the
    result is an ordinary group-wise int4 weight. A group's scale and zero point are
    chosen when its first column is reached, from the columns as updated so far. Runs on
    the weight's device; the results come back there.

    ``act_order``: columns go in descending order of the Hessian's diagonal (the inputs
    with the most energy first, while the most error can still be spread), with *static*
    groups: every group's scale and zero point come from the original weights before any
    column is quantized (AutoGPTQ's ``desc_act`` + ``static_groups``), so groups stay
    contiguous and the result loads like any group-wise int4 weight, no ``g_idx``.
    """
    out_f, in_f = weight.shape
    check_group_size(in_f, group_size)
    block_size = max(group_size, block_size - block_size % group_size)
    dev = weight.device
    w = weight.detach().to(torch.float32).clone()
    h = hessian.to(device=dev, dtype=torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.diag(torch.full((in_f,), damp * torch.diag(h).mean().item(), dtype=torch.float64, device=dev))

    groups = in_f // group_size
    scales = torch.zeros(out_f, groups, device=dev)
    zeros = torch.zeros(out_f, groups, device=dev)
    perm = None
    if act_order:
        for g in range(groups):
            scales[:, g], zeros[:, g] = int4_params(w[:, g * group_size:(g + 1) * group_size])
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    group_of = ((perm if perm is not None else torch.arange(in_f)) // group_size).tolist()
    eye = torch.eye(in_f, dtype=torch.float64, device=dev)
    hinv = torch.linalg.cholesky(torch.cholesky_solve(eye, torch.linalg.cholesky(h)), upper=True).float()

    q_all = torch.zeros(out_f, in_f, device=dev)
    for b0 in range(0, in_f, block_size):
        b1 = min(b0 + block_size, in_f)
        w1 = w[:, b0:b1].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if perm is None and col % group_size == 0:
                scales[:, col // group_size], zeros[:, col // group_size] = int4_params(w1[:, i:i + group_size])
            g = group_of[col]
            s, z = scales[:, g], zeros[:, g]
            q = int4_round(w1[:, i], s, z)
            q_all[:, col] = q
            err = (w1[:, i] - (q - z) * s) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    if perm is not None:
        q_all = q_all[:, torch.argsort(perm)]
    return q_all.to(torch.int8), scales.to(torch.float32), zeros.to(torch.int8)


class _Captured(Exception):
    pass


def _layer_hessians(layer: nn.Module, linears: dict[str, nn.Module], captured: list[tuple[tuple, dict]]
                    ) -> dict[str, HessianAccumulator]:
    """Each linear's input Hessian over the captured inputs of ``layer``; linears fed the
    same tensor (q/k/v, gate/up) share one accumulator."""
    stats: dict[str, HessianAccumulator] = {}
    seen: dict[int, tuple[Tensor, HessianAccumulator]] = {}  # holds x: no id is reused mid-forward

    def record(name: str, x: Tensor) -> None:
        if id(x) in seen:
            acc = seen[id(x)][1]
        else:
            acc = stats.get(name) or HessianAccumulator(x.shape[-1])
            seen[id(x)] = (x, acc)
            acc.add(x)
        stats[name] = acc

    hooks = [m.register_forward_hook(lambda _m, inp, _o, name=name: record(name, inp[0]))
             for name, m in linears.items()]
    try:
        for args, kwargs in captured:
            seen.clear()
            layer(*args, **kwargs)
    finally:
        for hk in hooks:
            hk.remove()
    return stats


@torch.no_grad()
def gptq_model(model: nn.Module, calibration: Iterable[Tensor], group_size: int = 128, *,
               damp: float = 0.01, skip: Iterable[str] = ("lm_head",), act_order: bool = False) -> nn.Module:
    """Quantize every linear of every decoder block of a herd ``Transformer`` with GPTQ,
    block by block, in place; ``calibration`` yields token batches (B, T).

    The inputs of block 0 are captured once; each block then sees the outputs of the
    already-quantized blocks before it.
    """
    from herd.quant.int4 import Int4Linear

    layers = model.model.layers
    captured: list[tuple[tuple, dict]] = []

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args, kwargs))
        raise _Captured

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    device = model.model.embed_tokens.weight.device
    try:
        for tokens in calibration:
            try:
                model(tokens.to(device))
            except _Captured:
                pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError("GPTQ needs calibration data: the calibration iterable was empty")
    skip = set(skip)
    for index, layer in enumerate(layers):
        linears = {name: m for name, m in layer.named_modules()
                   if isinstance(m, nn.Linear) and f"model.layers.{index}.{name}" not in skip}
        stats = _layer_hessians(layer, linears, captured)
        for name, lin in linears.items():
            if stats[name].h is None:
                raise ValueError(f"GPTQ: model.layers.{index}.{name} saw no calibration input")
            q, scale, zp = gptq_quantize(lin.weight, stats[name].h, group_size, damp=damp, act_order=act_order)
            parent_name, _, child = name.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            new = Int4Linear.from_quantized(q, scale, zp, group_size)
            setattr(parent, child, new)
        captured = [((layer(*args, **kwargs), *args[1:]), kwargs) for args, kwargs in captured]
        log.info("GPTQ: block %d of %d quantized", index + 1, len(layers))
    return model
