"""LoRA: low-rank adapters on chosen projections over a frozen base, saved in PEFT's layout.

``W x`` becomes ``W x + (alpha / rank) * B A dropout(x)``, with ``A`` (rank x in) and
``B`` (out x rank) the only trained tensors. Initialisation is PEFT's default: ``A``
Kaiming-uniform, ``B`` zero, so training starts from the base model exactly.

Parameter names follow PEFT: ``…self_attn.q_proj.lora_A.weight``, so the adapters save
as PEFT's ``adapter_model.safetensors`` (keys prefixed ``base_model.model.``) with an
``adapter_config.json``, loadable by ``peft.PeftModel.from_pretrained`` on the
transformers model of the base; the base weight keeps its HF name (``…q_proj.weight``).
``merge_lora`` folds ``B A * scale`` into ``W`` and gives back plain ``nn.Linear`` layers.

A base quantized by ``herd.quant.quantize`` (int8 / int4) gets ``QLoRALinear`` adapters
instead (``herd.posttrain.qlora``): same names, same saved layout, merged by dequantizing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from herd.posttrain.qlora import QUANTIZED_BASES, QLoRALinear, make_differentiable

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` (its weight frozen) plus a trained low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        """PEFT's initialisation: A Kaiming-uniform (a = sqrt(5)), B zero."""
        with torch.no_grad():
            bound = 1 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) on (rank, in)
            self.lora_A.weight.uniform_(-bound, bound, generator=generator)
            self.lora_B.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + scale * B A``."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
            lin.weight.copy_(self.weight.float() + delta)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


def add_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0,
             targets: tuple[str, ...] | list[str] = ("q_proj", "v_proj"), seed: int = 0) -> list[str]:
    """Freeze every parameter of ``model``, wrap each ``nn.Linear`` named in ``targets``
    (HF projection names) with a ``LoRALinear`` (an int8 / int4 one with a ``QLoRALinear``);
    returns the wrapped modules' names."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {', '.join(PROJECTIONS)}")
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    head = getattr(model, "lm_head", None)
    dtype = head.weight.dtype if isinstance(head, nn.Linear) else torch.float32
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, (LoRALinear, QLoRALinear)):
            continue
        for child_name, child in list(module.named_children()):
            if child_name in targets and (type(child) is nn.Linear or isinstance(child, QUANTIZED_BASES)):
                if isinstance(child, QUANTIZED_BASES):
                    lora = QLoRALinear(child, rank, alpha, dropout, dtype=dtype)
                else:
                    lora = LoRALinear(child, rank, alpha, dropout)
                lora.reset_lora(generator if lora.lora_A.weight.device.type == "cpu" else None)
                setattr(module, child_name, lora)
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no nn.Linear named {list(targets)} in the model")
    make_differentiable(model)  # a quantized base (QLoRA): gradients pass its other linears too
    return wrapped


def merge_lora(model: nn.Module, *, requantize: bool = False) -> nn.Module:
    """Fold every adapter into its base weight, in place; the model is plain again.

    Over a quantized base (QLoRA) the base weight is dequantized first, so the merged
    layer is an ``nn.Linear`` equal to base + adapters; ``requantize=True`` quantizes it
    back with the base's scheme (smaller, but only close to base + adapters). The linears
    that had no adapter stay quantized either way (``qlora.dequantize_model`` converts them)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
            elif isinstance(child, QLoRALinear):
                setattr(module, child_name, child.merged(requantize=requantize))
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors under PEFT's saved names (``base_model.model.<name>.lora_A.weight``)."""
    return {PEFT_PREFIX + k: v.detach() for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def save_adapter(model: nn.Module, out_dir: str | Path, *, base_model: str | None = None) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's layout), atomically."""
    from safetensors.torch import save_file

    from herd.checkpoint.files import atomic_directory

    kinds = (LoRALinear, QLoRALinear)
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    if not layers:
        raise ValueError("the model has no LoRA adapters to save")
    names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, kinds)})
    first = layers[0]
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": first.rank, "lora_alpha": first.alpha,
        "lora_dropout": first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0,
        "target_modules": names, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    state = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    with atomic_directory(out_dir, stale=(ADAPTER_WEIGHTS, ADAPTER_CONFIG)) as tmp:
        save_file(state, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Add the adapters saved in ``adapter_dir`` (PEFT's layout) to ``model``, in place."""
    from safetensors.torch import load_file

    root = Path(adapter_dir)
    try:
        config = json.loads((root / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{root / ADAPTER_CONFIG} does not exist: not a PEFT adapter directory") from None
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{root / ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r}, herd reads LORA")
    targets = config["target_modules"]
    add_lora(model, rank=int(config["r"]), alpha=float(config["lora_alpha"]),
             dropout=float(config.get("lora_dropout") or 0.0), targets=targets)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(root / ADAPTER_WEIGHTS).items()}
    state = {k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): v
             for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(".lora_" in k for k in missing):
        raise ValueError(f"{root / ADAPTER_WEIGHTS} does not fit the model: unexpected {unexpected[:4]}, "
                         f"missing {[k for k in missing if '.lora_' in k][:4]}")
    return model
