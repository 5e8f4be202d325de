"""``quantize(model, scheme)``: swap a herd ``Transformer``'s linears for quantized ones.

The model file does not change: quantization is a module swap (gpt-fast's design). The
schemes, as ``--scheme`` spells them:

- ``int8``: int8 weight-only, per output channel, every linear of every block.
- ``int4`` / ``int4-g32`` / ``int4-g64`` / ``int4-g128``: int4 weight-only, group-wise,
  round-to-nearest (group 128 by default), every linear of every block.
- ``int4-gptq`` (``-g32`` …): the same weights chosen by GPTQ on calibration tokens.
- ``int4-hqq`` (``-g32`` …): the same weights, each group's scale and integer zero point
  chosen by HQQ (``herd.quant.hqq``) to minimise the lp norm of its weight error: no
  calibration data.
- ``fp8``: Llama 3.1 405B's FP8 row-wise scheme — the feed-forward projections of every
  layer but the first and the last, dynamic per-token activation scales clamped at 1200.

Embeddings and norms stay in the model's dtype in every scheme, and so does the LM head
unless the scheme ends in ``+lm_head`` (``int8+lm_head``, ``int4-g32+lm_head``,
``int4-hqq+lm_head``; round-to-nearest and HQQ only). The head is a 128256-row matrix, a
fifth of a 1B model's bytes a decode step reads: llama.cpp's Q8_0 quantizes it too. A
quantized head no longer shares its weight with the embedding, so quantizing a tied
model's head unties it (``args.tie_word_embeddings`` becomes False; the embedding table
stays in the model's dtype, and only one row of it is read per token). On a 2-core CPU
``int8+lm_head`` decoded a 1B model 7-17 % faster than ``int8`` (three runs); ``int4+lm_head`` is
slower than ``int4`` there, because herd's int4 CPU kernel is bound by arithmetic, not
bytes (``benchmarks/quant_decode.py``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from herd.quant.fp8 import ACTIVATION_SCALE_UB, Fp8RowwiseLinear
from herd.quant.int4 import GROUP_SIZES, Int4Linear
from herd.quant.int8 import Int8Linear

_SCHEME = re.compile(
    r"^(?:(int8)|(int4)(?:-(rtn|gptq-act|gptq|hqq))?(?:-g(\d+))?|(fp8)(?:-rowwise)?)(\+lm_head)?$")
SCHEMES = ("int8", "int4", "int4-g32", "int4-g64", "int4-gptq", "int4-gptq-g32", "int4-gptq-g64", "int4-gptq-act",
           "int4-hqq", "int4-hqq-g32", "int4-hqq-g64", "fp8", "int8+lm_head", "int4[-hqq][-gNN]+lm_head")
METHODS = ("rtn", "gptq", "gptq-act", "hqq")  # gptq-act: GPTQ in descending Hessian-diagonal order, static groups
CALIBRATED = ("gptq", "gptq-act")  # the methods that need calibration tokens
FFN_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class QuantScheme:
    """A quantization scheme: ``kind`` int8 | int4 | fp8, int4's ``group_size`` and
    ``method``, and whether the LM head is quantized too (``lm_head``)."""

    kind: str
    group_size: int = 128
    method: str = "rtn"
    activation_scale_ub: float = ACTIVATION_SCALE_UB
    lm_head: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("int8", "int4", "fp8"):
            raise ValueError(f"unknown quantization kind {self.kind!r}; use int8, int4 or fp8")
        if self.kind == "int4" and self.group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {GROUP_SIZES}, got {self.group_size}")
        if self.method not in METHODS or (self.method != "rtn" and self.kind != "int4"):
            raise ValueError(f"method {self.method!r} is not available for {self.kind}; GPTQ and HQQ are int4-only")
        if self.lm_head and (self.kind == "fp8" or self.method in CALIBRATED):
            raise ValueError(f"{self.kind if self.kind == 'fp8' else self.method} leaves the LM head unquantized "
                             "(+lm_head is for int8 and int4 round-to-nearest or HQQ)")

    @classmethod
    def parse(cls, text: str | QuantScheme) -> QuantScheme:
        if isinstance(text, QuantScheme):
            return text
        m = _SCHEME.match(text.strip().lower())
        if m is None:
            raise ValueError(f"unknown quantization scheme {text!r}; known: {', '.join(SCHEMES)}")
        lm_head = m.group(6) is not None
        if m.group(1):
            return cls("int8", lm_head=lm_head)
        if m.group(5):
            return cls("fp8", lm_head=lm_head)
        return cls("int4", group_size=int(m.group(4) or 128), method=m.group(3) or "rtn", lm_head=lm_head)

    @property
    def name(self) -> str:
        name = self.kind
        if self.kind == "int4":
            name += ("" if self.method == "rtn" else f"-{self.method}") + f"-g{self.group_size}"
        return name + ("+lm_head" if self.lm_head else "")


def target_linears(model: nn.Module, scheme: QuantScheme) -> list[str]:
    """Names of the linears ``scheme`` converts in a herd ``Transformer``."""
    n_layers = len(model.model.layers)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if name == "lm_head" and scheme.lm_head:
            names.append(name)
            continue
        if not name.startswith("model.layers."):
            continue
        if scheme.kind == "fp8":
            layer = int(name.split(".")[2])
            if layer in (0, n_layers - 1) or name.rsplit(".", 1)[-1] not in FFN_PROJECTIONS:
                continue
        names.append(name)
    return names


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


@torch.no_grad()
def quantize(model: nn.Module, scheme: str | QuantScheme, *, calibration: Iterable[Tensor] | None = None
             ) -> nn.Module:
    """Quantize a herd ``Transformer`` in place (and return it). ``calibration`` (token
    batches (B, T)) is needed by GPTQ only (HQQ needs none). The scheme is recorded as
    ``model.quant_scheme`` for saving."""
    scheme = QuantScheme.parse(scheme)
    if getattr(model, "quant_scheme", None) is not None:
        raise ValueError(f"the model is already quantized ({model.quant_scheme.name})")
    names = target_linears(model, scheme)
    if scheme.method in CALIBRATED:
        if calibration is None:
            raise ValueError(f"{scheme.name} needs calibration token batches (calibration=...)")
        from herd.quant.gptq import gptq_model

        skip = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - set(names)
        gptq_model(model, calibration, scheme.group_size, skip=skip, act_order=scheme.method == "gptq-act")
    elif scheme.method == "hqq":
        from herd.quant.hqq import quantize_int4_hqq_many

        linears = {name: model.get_submodule(name) for name in names}
        for name, linear in linears.items():
            if linear.bias is not None:
                raise ValueError(f"{name}: int4 quantizes bias-free linears only (Llama has no biases)")
        quantized = quantize_int4_hqq_many({n: m.weight for n, m in linears.items()}, scheme.group_size)
        for name, (q, scale, zero_point) in quantized.items():
            _swap(model, name, Int4Linear.from_quantized(q, scale, zero_point, scheme.group_size))
    else:
        for name in names:
            linear = model.get_submodule(name)
            if scheme.kind == "int8":
                new = Int8Linear.from_linear(linear)
            elif scheme.kind == "int4":
                new = Int4Linear.from_linear(linear, scheme.group_size)
            else:
                new = Fp8RowwiseLinear.from_linear(linear, scheme.activation_scale_ub)
            _swap(model, name, new)
    if scheme.lm_head and model.args.tie_word_embeddings:  # the head is its own (quantized) matrix now
        model.args = dataclasses.replace(model.args, tie_word_embeddings=False)
    model.quant_scheme = scheme
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each storage counted once (tied weights once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total
