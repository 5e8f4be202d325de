"""FP8 row-wise quantization, as Meta serves Llama 3.1 405B (fbgemm's ``f8f8bf16_rowwise``).

Weights: float8 e4m3 with one fp32 scale per output row (``max|w_row| / 448``).
Activations: quantized on the fly, one scale per token row, the row's max clamped at
``activation_scale_ub`` (1200) before the scale ``max / 448`` is taken, so a single
outlier token cannot flatten the others' resolution. Only the feed-forward projections
of the inner layers are converted (``herd.quant.quantize`` picks them); the first and
last layers and attention stay in bf16 — Meta's recipe.

The matmul is ``torch._scaled_mm`` with row-wise scales where the device has it (Hopper
GPUs; this CPU build too) and otherwise an emulation that dequantizes both operands to
fp32 and multiplies in the order ATen's CPU ``_scaled_mm`` uses, so the emulation gives
``_scaled_mm``'s result (tests check bit-equality on CPU).

A layer split over model-parallel ranks by its input columns (``w2`` in Meta's checkpoints
of 405B, written for 8 GPUs) is quantized per rank: each rank's slice has its own row scales
and quantizes its own slice of the activations. ``Fp8RowwiseLinear(shards=n)`` keeps that
form — ``weight_scale`` [out, n], one column per slice — and computes what the n ranks do:
each slice's product in the output dtype, summed (the all-reduce).
"""

from __future__ import annotations

import torch
from torch import Tensor

from herd.quant.base import QuantizedLinear

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
ACTIVATION_SCALE_UB = 1200.0
_EPS = 1e-12  # fbgemm's lower bound on a row max (an all-zero row)


def quantize_fp8_rows(x: Tensor, scale_ub: float | None = None) -> tuple[Tensor, Tensor]:
    """fbgemm's ``quantize_fp8_per_row``: (e4m3 values, fp32 scale [rows, 1]) with
    ``x ≈ values * scale``; each row's max is clamped at ``scale_ub`` when given."""
    xf = x.detach().float()
    row_max = xf.abs().amax(dim=-1, keepdim=True)
    row_max = row_max.clamp(min=_EPS, max=scale_ub) if scale_ub is not None else row_max.clamp(min=_EPS)
    inv = FP8_MAX / row_max
    q = (xf * inv).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, inv.reciprocal()


def scaled_mm_emulated(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``a @ b.T`` of e4m3 operands with row-wise scales, computed in fp32: ``a`` [M, K],
    ``b`` [N, K], ``scale_a`` [M, 1], ``scale_b`` [N, 1]. Both operands are scaled in fp32
    and the second is laid out [K, N] contiguous before the fp32 matmul — ATen's CPU
    ``_scaled_mm`` order, so the two agree bit for bit."""
    rhs = (b.t().float() * scale_b.t()).contiguous()
    return ((a.float() * scale_a) @ rhs).to(out_dtype)


_SCALED_MM_OK: dict[tuple[str, torch.dtype], bool] = {}


def has_scaled_mm(device: torch.device, out_dtype: torch.dtype) -> bool:
    """Whether ``torch._scaled_mm`` takes e4m3 with row-wise scales on this device (tried once)."""
    key = (str(device), out_dtype)
    if key not in _SCALED_MM_OK:
        try:
            a = torch.ones(16, 32, device=device).to(FP8)
            b = torch.ones(16, 32, device=device).to(FP8)
            ones_a = torch.ones(16, 1, device=device)
            ones_b = torch.ones(1, 16, device=device)
            torch._scaled_mm(a, b.t(), scale_a=ones_a, scale_b=ones_b, out_dtype=out_dtype)
            _SCALED_MM_OK[key] = True
        except (RuntimeError, NotImplementedError, TypeError):
            _SCALED_MM_OK[key] = False
    return _SCALED_MM_OK[key]


def fp8_rowwise_matmul(a: Tensor, b: Tensor, scale_a: Tensor, scale_b: Tensor, out_dtype: torch.dtype,
                       *, emulate: bool | None = None) -> Tensor:
    """Row-wise scaled FP8 ``a @ b.T``: ``_scaled_mm`` when available (or ``emulate=False``),
    the exact fp32 emulation otherwise (or ``emulate=True``)."""
    if emulate is None:
        emulate = not has_scaled_mm(a.device, out_dtype)
    if emulate:
        return scaled_mm_emulated(a, b, scale_a, scale_b, out_dtype)
    return torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b.t(), out_dtype=out_dtype)


class Fp8RowwiseLinear(QuantizedLinear):
    """A bias-free ``nn.Linear`` with e4m3 weights, per-row weight scales and dynamic
    per-token activation scales (HF's ``FbgemmFp8Linear`` buffers: ``weight`` e4m3
    [out, in], ``weight_scale`` fp32 [out, 1]). With ``shards`` > 1 the input columns
    come in that many equal slices, each with its own scales (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, activation_scale_ub: float = ACTIVATION_SCALE_UB,
                 device: torch.device | str | None = None, shards: int = 1) -> None:
        super().__init__()
        if shards < 1 or in_features % shards:
            raise ValueError(f"Fp8RowwiseLinear: {in_features} input features do not split into {shards} shards")
        self.in_features, self.out_features, self.shards = in_features, out_features, shards
        self.activation_scale_ub = activation_scale_ub
        self.emulate: bool | None = None  # None: _scaled_mm where the device has it
        self.register_buffer("weight", torch.zeros(out_features, in_features, device=device).to(FP8))
        self.register_buffer("weight_scale", torch.ones(out_features, shards, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, activation_scale_ub: float = ACTIVATION_SCALE_UB
                    ) -> Fp8RowwiseLinear:
        if linear.bias is not None:
            raise ValueError("Fp8RowwiseLinear quantizes bias-free linears only (Llama has no biases)")
        return cls.from_quantized(*quantize_fp8_rows(linear.weight), activation_scale_ub)

    @classmethod
    def from_quantized(cls, q: Tensor, scale: Tensor, activation_scale_ub: float = ACTIVATION_SCALE_UB,
                       shards: int = 1) -> Fp8RowwiseLinear:
        """From e4m3 ``q`` [out, in] and fp32 ``scale`` [out, shards] (or [out] for one shard)."""
        if q.dtype != FP8 or q.dim() != 2:
            raise ValueError(f"fp8 weight must be a 2-D float8_e4m3fn tensor, got {q.dtype} {tuple(q.shape)}")
        if scale.numel() != q.shape[0] * shards:
            raise ValueError(f"fp8 weight [{q.shape[0]}, {q.shape[1]}] in {shards} shard(s) needs "
                             f"{q.shape[0] * shards} scales, got {tuple(scale.shape)}")
        mod = cls(q.shape[1], q.shape[0], activation_scale_ub, device=q.device, shards=shards)
        mod.weight = q.contiguous()
        mod.weight_scale = scale.reshape(q.shape[0], shards).to(torch.float32).contiguous()
        return mod

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        w = self.weight.float().unflatten(1, (self.shards, -1)) * self.weight_scale[:, :, None]
        return w.flatten(1).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.shards == 1:
            xq, x_scale = quantize_fp8_rows(x2, self.activation_scale_ub)
            y = fp8_rowwise_matmul(xq, self.weight, x_scale, self.weight_scale, x.dtype, emulate=self.emulate)
        else:  # one product per slice, as each rank computes it, then their sum
            y = None
            for xs, ws, ss in zip(x2.chunk(self.shards, dim=1), self.weight.chunk(self.shards, dim=1),
                                  self.weight_scale.split(1, dim=1), strict=True):
                xq, x_scale = quantize_fp8_rows(xs, self.activation_scale_ub)
                part = fp8_rowwise_matmul(xq, ws.contiguous(), x_scale, ss.contiguous(), x.dtype,
                                          emulate=self.emulate)
                y = part if y is None else y + part
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        shards = f", {self.shards} input shards" if self.shards > 1 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 row-wise{shards}, "
                f"activation_scale_ub={self.activation_scale_ub}")
