"""int4 weight-only quantization, group-wise with zero points (gpt-fast's ``WeightOnlyInt4Linear``).

Each row of a weight is cut into groups of ``group_size`` (32, 64, 128) input columns;
a group gets an fp32 scale and an integer zero point, and its values are
``q in [-8, 7]`` with ``w ≈ (q - zero_point) * scale`` — the convention of
compressed-tensors' asymmetric int4, so a checkpoint round-trips without rescaling.
Round-to-nearest lives here; GPTQ (``herd.quant.gptq``) produces the same three tensors.

On an x86 CPU the matmul is herd's ``cpu_gemv_int4`` (``herd.generation.cpu_gemv``) over
plain nibbles (low nibble = even column): it widens the nibbles in registers and reads the
0.5 byte a weight at 3-4x the speed ATen's ``torch._weight_int4pack_mm_for_cpu`` managed
on the 2-core AVX2 machines herd is developed on (where ATen's int4 decoded at under half
the speed of bf16), and its rows are batch-invariant like the float paths'. On other CPUs
(no AVX2 or no C compiler) the matmul is ATen's; its packed layout is private to ATen, so
there the weight is kept in that layout (0.5 byte per weight, nothing else) and the
integers are recovered when a checkpoint is written by inverting the packing
(``_cpu_slot_sources``). Off the CPU the weight is kept as plain nibbles and dequantized
on the fly.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from herd.generation.cpu_gemv import _gemv_int4_eager, cpu_gemv_int4, gemv_available
from herd.quant.base import QuantizedLinear

QMIN, QMAX = -8, 7
GROUP_SIZES = (32, 64, 128)


def int4_params(w: Tensor) -> tuple[Tensor, Tensor]:
    """Asymmetric min/max (0 always representable) scale and zero point of each row of
    ``w`` [rows, n] (one group): ``(scale [rows], zero_point [rows])``, zero_point an
    integer-valued float in [-8, 7]."""
    lo = w.amin(dim=-1).clamp(max=0)
    hi = w.amax(dim=-1).clamp(min=0)
    scale = ((hi - lo) / (QMAX - QMIN)).clamp(min=1e-8)
    zero_point = torch.round(QMIN - lo / scale).clamp(QMIN, QMAX)
    return scale, zero_point


def int4_round(w: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Integer values (as float) of ``w`` for broadcastable ``scale``/``zero_point``."""
    return (torch.round(w / scale) + zero_point).clamp(QMIN, QMAX)


def quantize_int4_groupwise(weight: Tensor, group_size: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest: ``(q int8 [out, in], scale fp32 [out, in/g], zero_point int8 [out, in/g])``."""
    out_f, in_f = weight.shape
    check_group_size(in_f, group_size)
    w = weight.detach().float().reshape(out_f, in_f // group_size, group_size)
    scale, zp = int4_params(w)
    q = int4_round(w, scale[..., None], zp[..., None])
    return q.reshape(out_f, in_f).to(torch.int8), scale, zp.to(torch.int8)


def dequantize_int4(q: Tensor, scale: Tensor, zero_point: Tensor, group_size: int) -> Tensor:
    """fp32 weight ``(q - zero_point) * scale`` group by group."""
    out_f, in_f = q.shape
    g = q.float().reshape(out_f, in_f // group_size, group_size)
    return ((g - zero_point.float()[..., None]) * scale.float()[..., None]).reshape(out_f, in_f)


def check_group_size(in_features: int, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group_size must be one of {GROUP_SIZES}, got {group_size}")
    if in_features % group_size:
        raise ValueError(f"int4 group_size {group_size} does not divide the input width {in_features}")


# ----------------------------------------------------------------------------- packing


def pack_nibbles(q: Tensor) -> Tensor:
    """int8 values in [-8, 7] [N, K] -> uint8 [N, K/2], ``q + 8``, even column in the low nibble."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_nibbles(packed: Tensor) -> Tensor:
    lo, hi = packed & 15, packed >> 4
    return (torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1).to(torch.int16) - 8).to(torch.int8)


def pack_cpu(q: Tensor) -> Tensor:
    """int8 values [N, K] -> ATen's CPU int4 layout (uint8 [N, K/2])."""
    return torch._convert_weight_to_int4pack_for_cpu((q.to(torch.int32) + 8).contiguous(), 1)


@lru_cache(maxsize=64)
def _cpu_slot_sources(n: int, k: int) -> Tensor:
    """For each nibble of ATen's CPU packing of an [n, k] matrix (byte by byte, low nibble
    first), the flat index of the element it holds. Found by packing the element indices
    themselves, four bits per pass: exact whatever the blocking ATen uses."""
    index = torch.arange(n * k, dtype=torch.int64)
    sources = torch.zeros(n * k, dtype=torch.int64)
    for digit in range(math.ceil(max(1, (n * k - 1).bit_length()) / 4)):
        values = ((index >> (4 * digit)) & 15).to(torch.int32).reshape(n, k)
        packed = torch._convert_weight_to_int4pack_for_cpu(values, 1).reshape(-1)
        slots = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(-1).to(torch.int64)
        sources |= slots << (4 * digit)
    return sources


def unpack_cpu(packed: Tensor, n: int, k: int) -> Tensor:
    """Inverse of ``pack_cpu``: int8 values [n, k]."""
    flat = packed.reshape(-1)
    slots = torch.stack((flat & 15, flat >> 4), dim=-1).reshape(-1).to(torch.int16) - 8
    out = torch.empty(n * k, dtype=torch.int16)
    out[_cpu_slot_sources(n, k)] = slots
    return out.reshape(n, k).to(torch.int8)


def layout_for(device: torch.device) -> str:
    """How ``Int4Linear`` stores its integers on ``device``: ATen's packing ("cpu") on a CPU
    without herd's kernel, plain nibbles ("nibble") everywhere else."""
    return "cpu" if device.type == "cpu" and not gemv_available() else "nibble"


# ----------------------------------------------------------------------------- module


class Int4Linear(QuantizedLinear):
    """A bias-free ``nn.Linear`` with group-wise int4 weights.

    Buffers: ``qweight`` (uint8 [out, in/2]: plain nibbles, or ATen's CPU layout on a CPU
    without herd's kernel, see ``layout_for``), ``weight_scale`` (fp32 [out, in/g]) and
    ``weight_zero_point`` (int8 [out, in/g]).
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 128,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        check_group_size(in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=torch.float32, device=device))
        self.register_buffer("weight_zero_point", torch.zeros(out_features, groups, dtype=torch.int8, device=device))
        self._layout = layout_for(torch.device(device or "cpu"))
        # the kernel's table, built on first use: ATen's (in/g, out, 2) scales and zeros in the
        # activation dtype, or herd's fp32 (zero_point + 8) * scale [out, in/g]; a non-persistent
        # buffer, so that it counts in the model's memory but not in its state_dict
        self.register_buffer("scales_and_zeros", None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> Int4Linear:
        if linear.bias is not None:
            raise ValueError("Int4Linear quantizes bias-free linears only (Llama has no biases)")
        return cls.from_quantized(*quantize_int4_groupwise(linear.weight, group_size), group_size)

    @classmethod
    def from_quantized(cls, q: Tensor, scale: Tensor, zero_point: Tensor, group_size: int) -> Int4Linear:
        """From int values [out, in] in [-8, 7], scales and integer zero points [out, in/g]."""
        out_f, in_f = q.shape
        mod = cls(in_f, out_f, group_size, device=q.device)
        if tuple(scale.shape) != (out_f, in_f // group_size) or scale.shape != zero_point.shape:
            raise ValueError(f"int4 scale/zero_point must be {(out_f, in_f // group_size)}, got "
                             f"{tuple(scale.shape)} and {tuple(zero_point.shape)}")
        if q.numel() and (int(q.min()) < QMIN or int(q.max()) > QMAX):
            raise ValueError("int4 values must lie in [-8, 7]")
        mod.weight_scale = scale.to(torch.float32).contiguous()
        mod.weight_zero_point = zero_point.to(torch.int8).contiguous()
        mod.set_int_values(q.to(torch.int8))
        return mod

    def set_int_values(self, q: Tensor) -> None:
        self._layout = layout_for(q.device)
        self.qweight = pack_cpu(q) if self._layout == "cpu" else pack_nibbles(q)
        self.scales_and_zeros = None

    def int_values(self) -> Tensor:
        """The int8 values [out, in] in [-8, 7], whatever the storage layout."""
        if self._layout == "cpu":
            return unpack_cpu(self.qweight.cpu(), self.out_features, self.in_features).to(self.qweight.device)
        return unpack_nibbles(self.qweight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_int4(self.int_values(), self.weight_scale, self.weight_zero_point, self.group_size).to(dtype)

    def _moved(self, old_devices: dict) -> None:
        """After a device move the bytes are unchanged: re-pack into the new device's layout."""
        self.scales_and_zeros = None
        if layout_for(self.qweight.device) != self._layout:
            self.set_int_values(self.int_values())

    def _cpu_scales_and_zeros(self, dtype: torch.dtype) -> Tensor:
        """(in/g, out, 2): scale and ``-zero_point * scale`` (ATen computes ``(u - 8) * s + z``)."""
        saz = self.scales_and_zeros
        if saz is None or saz.dtype != dtype or saz.dim() != 3:
            s = self.weight_scale
            saz = torch.stack((s, -self.weight_zero_point.float() * s), dim=-1).transpose(0, 1).contiguous()
            saz = self.scales_and_zeros = saz.to(dtype)
        return saz

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - nn.Module's signature
        super()._load_from_state_dict(*args, **kwargs)
        self.scales_and_zeros = None  # new scales or zero points: the kernels' tables are rebuilt

    def _offsets(self) -> Tensor:
        """herd's kernel's table: fp32 (zero_point + 8) * scale [out, in/g]."""
        saz = self.scales_and_zeros
        if saz is None or saz.dtype != torch.float32 or saz.shape != self.weight_scale.shape:
            saz = self.scales_and_zeros = ((self.weight_zero_point.float() + 8) * self.weight_scale).contiguous()
        return saz

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if (self._layout == "nibble" and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                and not (torch.is_grad_enabled() and x.requires_grad) and gemv_available()):
            kernel = cpu_gemv_int4 if torch.compiler.is_compiling() else _gemv_int4_eager
            y = kernel(x2.contiguous(), self.qweight, self.weight_scale, self._offsets(), self.group_size)
        elif self._layout == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
            y = torch._weight_int4pack_mm_for_cpu(x2.contiguous(), self.qweight, self.group_size,
                                                  self._cpu_scales_and_zeros(x.dtype))
        else:
            y = F.linear(x2, self.dequantize(x.dtype))
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 group_size={self.group_size}")
