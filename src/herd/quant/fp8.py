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
    [out, in], ``weight_scale`` fp32 [out, 1])."""

    def __init__(self, in_features: int, out_features: int, activation_scale_ub: float = ACTIVATION_SCALE_UB,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation_scale_ub = activation_scale_ub
        self.emulate: bool | None = None  # None: _scaled_mm where the device has it
        self.register_buffer("weight", torch.zeros(out_features, in_features, device=device).to(FP8))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, activation_scale_ub: float = ACTIVATION_SCALE_UB
                    ) -> Fp8RowwiseLinear:
        if linear.bias is not None:
            raise ValueError("Fp8RowwiseLinear quantizes bias-free linears only (Llama has no biases)")
        return cls.from_quantized(*quantize_fp8_rows(linear.weight), activation_scale_ub)

    @classmethod
    def from_quantized(cls, q: Tensor, scale: Tensor, activation_scale_ub: float = ACTIVATION_SCALE_UB
                       ) -> Fp8RowwiseLinear:
        if q.dtype != FP8 or q.dim() != 2:
            raise ValueError(f"fp8 weight must be a 2-D float8_e4m3fn tensor, got {q.dtype} {tuple(q.shape)}")
        mod = cls(q.shape[1], q.shape[0], activation_scale_ub, device=q.device)
        mod.weight = q.contiguous()
        mod.weight_scale = scale.reshape(q.shape[0], 1).to(torch.float32).contiguous()
        return mod

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return (self.weight.float() * self.weight_scale).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        xq, x_scale = quantize_fp8_rows(x.reshape(-1, self.in_features), self.activation_scale_ub)
        y = fp8_rowwise_matmul(xq, self.weight, x_scale, self.weight_scale, x.dtype, emulate=self.emulate)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 row-wise, "
                f"activation_scale_ub={self.activation_scale_ub}")
