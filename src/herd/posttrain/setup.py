"""What every post-training run shares: the base model, the tokenizer, LoRA, the export.

The trainer builds the model from ``[model]``; ``configure`` points it at the base
checkpoint's architecture and sets ``model.init_from`` to it, so the trainer itself loads
the base weights (broadcast from rank 0 under FSDP2). The ``prepare_model`` hook then adds
the LoRA adapters (freezing the base) and any method-specific head. ``export`` writes the
result: the full model in the native HF layout, and with LoRA also the adapters alone in
PEFT's layout (``final/adapter``) while ``final`` holds the merged model. With
``lora.base_quantization`` (QLoRA) the base is quantized (herd.quant) before the adapters
go on, and ``final`` holds the dequantized base with the adapters merged: the function
the run trained, in full precision (``herd quantize`` it again to serve it small).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from herd.model import ModelArgs, Transformer
from herd.posttrain.config import PosttrainConfig
from herd.posttrain.lora import add_lora, merge_lora, save_adapter
from herd.posttrain.qlora import copy_int4_values, dequantize_model
from herd.tokenizer import Tokenizer
from herd.train.config import ConfigError
from herd.train.distributed import DistInfo, full_state_dict


def base_args(path: str | Path) -> ModelArgs:
    """The architecture of a checkpoint directory (HF config.json, or a Meta params.json)."""
    from herd.checkpoint import CheckpointError, load_any
    from herd.checkpoint.auto import detect_format
    from herd.checkpoint.hf import read_hf_args

    try:
        if detect_format(path) == "hf":
            return read_hf_args(path)[0]
        return load_any(path, device="meta").args
    except CheckpointError as e:
        raise ConfigError(f"base.model: {e}") from None


def load_tokenizer(cfg: PosttrainConfig) -> tuple[Tokenizer, str]:
    """The run's tokenizer and where it came from (base.tokenizer, else the base model's directory)."""
    source = cfg.base.tokenizer or cfg.base.model
    if source is None:
        raise ConfigError("set base.tokenizer or base.model: the chat data needs a tokenizer")
    try:
        return Tokenizer.load(source), str(source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"base.tokenizer: cannot load a tokenizer from {source}: {e}") from None


def configure(cfg: PosttrainConfig) -> ModelArgs:
    """Point the trainer's [model] at the base checkpoint (architecture and ``init_from``); returns the args."""
    if cfg.base.model is None:
        return ModelArgs.from_name(cfg.train.model.preset, **cfg.train.model.overrides)
    args = base_args(cfg.base.model)
    cfg.train.model.overrides = args.to_dict()  # every field: the preset name no longer matters
    cfg.train.model.init_from = str(cfg.base.model)
    return args


def make_prepare(cfg: PosttrainConfig, extra: Callable[[nn.Module], None] | None = None
                 ) -> Callable[[nn.Module, DistInfo], nn.Module]:
    """The trainer's ``prepare_model`` hook (after the base weights are in): LoRA, then ``extra`` (a head)."""

    def prepare(model: nn.Module, info: DistInfo) -> nn.Module:
        if cfg.lora.rank:
            if info.sharded:
                raise ConfigError("lora.rank > 0 under FSDP2 is not supported yet: run LoRA on one device")
            if cfg.lora.base_quantization:
                from herd.quant import quantize

                quantize(model, cfg.lora.base_quantization)
            add_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                     targets=cfg.lora.targets, seed=cfg.lora.init_seed)
        if extra is not None:
            extra(model)
        return model

    return prepare


def plain_model(model: nn.Module, args: ModelArgs, state: dict[str, torch.Tensor],
                cfg: PosttrainConfig) -> Transformer:
    """A plain CPU ``Transformer`` from a trained model's full state (adapters merged)."""
    plain = Transformer(args)
    if cfg.lora.base_quantization:
        from herd.quant import quantize

        quantize(plain, cfg.lora.base_quantization)  # the same module types, so the state fits
    if cfg.lora.rank:
        add_lora(plain, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=cfg.lora.targets)
    extra = {k: v for k, v in state.items() if k not in plain.state_dict()}
    plain.load_state_dict({k: v for k, v in state.items() if k not in extra}, strict=True)
    if cfg.lora.base_quantization:
        copy_int4_values(model, plain)  # int4 bytes are packed per device: copy the integers
    if args.tie_word_embeddings:
        plain.lm_head.weight = plain.model.embed_tokens.weight
    return plain


def make_export(cfg: PosttrainConfig, tokenizer: Tokenizer
                ) -> Callable[[nn.Module, ModelArgs, DistInfo, Path], Path | None]:
    """The trainer's ``export`` hook: HF layout (adapters merged) + PEFT adapters with LoRA."""

    def export(model: nn.Module, args: ModelArgs, info: DistInfo, out_dir: Path) -> Path | None:
        from herd.checkpoint import save_pretrained

        state = full_state_dict(model)  # every rank takes part in the gather
        if not info.is_main:
            return None
        plain = plain_model(model, args, state, cfg)
        if cfg.lora.rank:
            save_adapter(plain, Path(out_dir) / "adapter", base_model=cfg.base.model)
            merge_lora(plain)
            if cfg.lora.base_quantization:  # QLoRA: the export is the dequantized base + adapters
                dequantize_model(plain)
        return save_pretrained(plain, out_dir, tokenizer=tokenizer)  # keeps final/adapter beside it

    return export


def reference_model(cfg: PosttrainConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The frozen reference policy of DPO / PPO: the base model, or with QLoRA
    (``lora.base_quantization``) the base as the policy starts from, quantized (and
    dequantized again, to run on any device)."""
    from herd.checkpoint import load_any

    base = load_any(cfg.base.model, dtype=torch.float32)
    if cfg.lora.base_quantization:
        from herd.posttrain.qlora import dequantize_model
        from herd.quant import quantize

        base = dequantize_model(quantize(base, cfg.lora.base_quantization))
    return base.to(device)


def write_report(run_dir: str | Path, name: str, report: dict) -> Path:
    """``run_dir/<name>.json`` (held-out figures), written atomically."""
    import json

    path = Path(run_dir) / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
