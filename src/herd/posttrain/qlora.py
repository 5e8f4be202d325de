"""QLoRA: LoRA adapters over a frozen base whose linears are herd.quant's int8 / int4 modules.

    quantize(model, "int4-g64")                      # herd.quant: every block linear becomes Int4Linear
    add_lora(model, rank=8, alpha=16, targets=...)   # wraps the quantized targets in QLoRALinear

A ``QLoRALinear`` computes ``base_layer(x) + (alpha / rank) * B A dropout(x)``: the base is
the quantized module itself (ATen's int8 / int4 CPU kernels, which have no derivative).
``add_lora`` turns every quantized linear of the model (adapted or not) into its
``Frozen*`` subclass, whose matmul runs inside ``_FrozenQuantLinear``, an autograd
function whose backward multiplies the output gradient by the *dequantized* weight.
Gradients thus reach the input (and every adapter below), while the quantized buffers
get none and never change: only ``lora_A`` and ``lora_B`` are parameters that train.

The wrapped base is named ``base_layer`` (PEFT's name), the adapters ``lora_A`` /
``lora_B``, so ``herd.posttrain.lora.save_adapter`` writes the same PEFT layout as for a
plain base; PEFT applies it to the *dequantized* base (``dequantize_model``), which is
the function the quantized base computes.

Merging (``merge_lora``) dequantizes the base weight, adds ``scale * B A`` and gives a
plain ``nn.Linear`` (exactly base + adapters); ``requantize=True`` rounds the merged
weight back to the base's scheme instead, which keeps the memory saving but moves the
adapter's contribution onto the quantization grid, so its logits are only close.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from herd.quant.int4 import Int4Linear
from herd.quant.int8 import Int8Linear

QUANTIZED_BASES = (Int8Linear, Int4Linear)
BASE_SCHEMES = ("int8", "int4", "int4-g32", "int4-g64", "int4-g128")


def check_base_scheme(scheme: str) -> str:
    """``scheme`` if QLoRA can train over it (int8, int4 RTN with a group size), else a ValueError."""
    if scheme.strip().lower() not in BASE_SCHEMES:
        raise ValueError(f"lora.base_quantization {scheme!r} is not available for QLoRA; choose from "
                         f"{', '.join(BASE_SCHEMES)} (GPTQ needs calibration data, fp8 covers only some layers)")
    return scheme.strip().lower()


class _FrozenQuantLinear(torch.autograd.Function):
    """``base(x)`` with the quantized kernel forward, ``grad @ dequantize(W)`` backward (no weight grad)."""

    @staticmethod
    def forward(ctx, x: Tensor, base: nn.Module, kernel) -> Tensor:  # noqa: ANN001 - autograd's signature
        ctx.base = base
        with torch.no_grad():
            return kernel(base, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        weight = ctx.base.dequantize(grad.dtype).to(grad.device)
        return grad @ weight, None, None


class FrozenInt8Linear(Int8Linear):
    """``Int8Linear`` whose input gets a gradient (through the dequantized weight)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenQuantLinear.apply(x, self, Int8Linear.forward)
        return Int8Linear.forward(self, x)


class FrozenInt4Linear(Int4Linear):
    """``Int4Linear`` whose input gets a gradient (through the dequantized weight)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenQuantLinear.apply(x, self, Int4Linear.forward)
        return Int4Linear.forward(self, x)


def make_differentiable(model: nn.Module) -> int:
    """Let gradients pass every int8 / int4 linear of ``model`` to its input (ATen's kernels
    have no derivative), so adapters below a quantized layer train. The class of each
    module changes in place; names, buffers and state dict stay. Returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is Int8Linear:
            m.__class__ = FrozenInt8Linear
        elif type(m) is Int4Linear:
            m.__class__ = FrozenInt4Linear
        else:
            continue
        n += 1
    return n


class QLoRALinear(nn.Module):
    """A frozen quantized linear (``base_layer``) plus a trained low-rank update."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not isinstance(base, QUANTIZED_BASES):
            raise TypeError(f"QLoRALinear wraps Int8Linear / Int4Linear, got {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        make_differentiable(base)
        self.base_layer = base
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        device = next(base.buffers()).device
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        """PEFT's initialisation: A Kaiming-uniform (a = sqrt(5)), B zero."""
        with torch.no_grad():
            bound = 1 / math.sqrt(self.in_features)
            self.lora_A.weight.uniform_(-bound, bound, generator=generator)
            self.lora_B.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)  # make_differentiable: gradients reach x through the base
        lora_x = self.lora_dropout(x).to(self.lora_A.weight.dtype)
        return out + (self.lora_B(self.lora_A(lora_x)) * self.scaling).to(out.dtype)

    def delta(self) -> Tensor:
        """``scale * B A`` in fp32 (out x in)."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def merged(self, requantize: bool = False) -> nn.Module:
        """Dequantized base + ``scale * B A`` as an ``nn.Linear`` (in the adapters' dtype), or
        that weight quantized again with the base's scheme when ``requantize``."""
        dtype = self.lora_A.weight.dtype
        lin = nn.Linear(self.in_features, self.out_features, bias=False, device=self.lora_A.weight.device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(self.base_layer.dequantize(torch.float32).to(lin.weight.device) + self.delta())
        if not requantize:
            return lin
        if isinstance(self.base_layer, Int8Linear):
            return Int8Linear.from_linear(lin)
        return Int4Linear.from_linear(lin, self.base_layer.group_size)


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every Int8Linear / Int4Linear of ``model`` (outside adapters) by the ``nn.Linear``
    of its dequantized weight, in place; the model is no longer marked quantized."""
    if dtype is None:
        dtype = model.lm_head.weight.dtype if hasattr(model, "lm_head") else torch.float32
    for module in list(model.modules()):
        if isinstance(module, QLoRALinear):
            continue
        for name, child in list(module.named_children()):
            if isinstance(child, QUANTIZED_BASES):
                lin = nn.Linear(child.in_features, child.out_features, bias=False,
                                device=next(child.buffers()).device, dtype=dtype)
                with torch.no_grad():
                    lin.weight.copy_(child.dequantize(dtype))
                lin.weight.requires_grad_(False)
                setattr(module, name, lin)
    if any(isinstance(m, QUANTIZED_BASES) for m in model.modules()):
        return model  # quantized bases under adapters remain: still a quantized model
    if hasattr(model, "quant_scheme"):
        del model.quant_scheme
    return model


def _clean(name: str) -> str:
    """A module name without the wrappers torch.compile / activation checkpointing add."""
    return name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")


def copy_int4_values(src: nn.Module, dst: nn.Module) -> int:
    """Give every Int4Linear of ``dst`` the integer values of ``src``'s module of the same name.

    ``qweight``'s bytes are ATen's CPU packing on CPU and plain nibbles elsewhere, so a state
    dict gathered from a CUDA model does not load into a CPU model as is; the integers do."""
    values = {_clean(n): m.int_values().cpu() for n, m in src.named_modules() if isinstance(m, Int4Linear)}
    for name, m in dst.named_modules():
        if isinstance(m, Int4Linear):
            m.set_int_values(values[_clean(name)].to(m.qweight.device))
    return len(values)
