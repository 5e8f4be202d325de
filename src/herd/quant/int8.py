"""int8 weight-only quantization, one scale per output channel (gpt-fast's ``WeightOnlyInt8Linear``).

Weights are rounded to int8 with a symmetric per-row scale ``max|w_row| / 127``; the
activations stay in the model's dtype. Decode is bound by reading weights, so halving the
bytes of a bf16 weight is the whole point. On an x86 CPU the product runs on herd's kernel
(``herd.generation.cpu_gemv``: int8 weights widened in registers, the row's scale applied
to the fp32 sum; it reads the int8 bytes as fast as the bf16 gemv reads its own, where
ATen's ``torch._weight_int8pack_mm`` was slower than bf16 at half the bytes); without it
(another CPU, fp16 activations, a gradient to keep) ATen's kernel runs; elsewhere the
weight is converted to the activation dtype on the fly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from herd.generation.cpu_gemv import _gemv_eager, cpu_gemv, gemv_available, handles
from herd.quant.base import QuantizedLinear

QMAX = 127


def quantize_int8_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 [out, in], fp32 scale [out]) with ``weight ≈ q * scale[:, None]``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / QMAX).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-QMAX - 1, QMAX).to(torch.int8)
    return q, scale


class Int8Linear(QuantizedLinear):
    """A bias-free ``nn.Linear`` whose weight is int8 with one fp32 scale per output row.

    Buffers: ``weight`` (int8 [out, in]) and ``weight_scale`` (fp32 [out]); the compute
    dtype (of activations and output) is the input's.
    """

    def __init__(self, in_features: int, out_features: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if linear.bias is not None:
            raise ValueError("Int8Linear quantizes bias-free linears only (Llama has no biases)")
        q, scale = quantize_int8_per_channel(linear.weight)
        return cls.from_quantized(q, scale)

    @classmethod
    def from_quantized(cls, q: Tensor, scale: Tensor) -> Int8Linear:
        """From int8 values [out, in] and per-row scales ([out] or [out, 1])."""
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ValueError(f"int8 weight must be a 2-D int8 tensor, got {q.dtype} {tuple(q.shape)}")
        mod = cls(q.shape[1], q.shape[0], device=q.device)
        mod.weight = q.contiguous()
        mod.weight_scale = scale.reshape(q.shape[0]).to(torch.float32).contiguous()
        return mod

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return (self.weight.float() * self.weight_scale[:, None]).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x.device.type == "cpu" and handles(x2, self.weight) and gemv_available():
            if torch.compiler.is_compiling():
                y = cpu_gemv(x2, self.weight, self.weight_scale)
            else:
                y = _gemv_eager(x2, self.weight, self.weight_scale)
        elif x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
            y = torch._weight_int8pack_mm(x2.contiguous(), self.weight, self.weight_scale.to(x.dtype))
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"
