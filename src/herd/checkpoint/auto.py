"""Either layout: tell them apart and load whichever a directory holds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.hf import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME, load_pretrained
from herd.checkpoint.meta import PARAMS_NAME, load_meta, meta_root
from herd.checkpoint.tokenizer_files import load_tokenizer
from herd.model import RopeScaling, Transformer


def detect_format(path: str | os.PathLike) -> str:
    """``"hf"`` or ``"meta"``. A Hugging Face snapshot that also keeps Meta's files in
    ``original/`` is ``"hf"``; a directory whose only weights are in ``original/`` is ``"meta"``."""
    root = Path(path)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise CheckpointError(f"checkpoint directory {root} {what}")
    has_config = (root / CONFIG_NAME).is_file()
    if has_config and ((root / WEIGHTS_NAME).is_file() or (root / INDEX_NAME).is_file()):
        return "hf"
    meta = meta_root(root)
    if (meta / PARAMS_NAME).is_file() and any(meta.glob("consolidated.*.pth")):
        return "meta"
    if has_config:
        return "hf"  # load_pretrained names the missing weights
    raise CheckpointError(
        f"{root} holds neither a Hugging Face checkpoint (config.json + model.safetensors) nor a Meta "
        "one (params.json + consolidated.*.pth)"
    )


def load_any(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    rope_scaling_factor: float | RopeScaling | None = None,
) -> Transformer:
    """A ``Transformer`` from either layout (``rope_scaling_factor`` only matters for Meta's)."""
    if detect_format(path) == "hf":
        from herd.quant.checkpoint import load_quantized, quantization_method  # quantized layouts live there

        if quantization_method(path) is not None:
            return load_quantized(path, dtype=dtype, device=device)
        return load_pretrained(path, dtype=dtype, device=device)
    from herd.quant.meta_fp8 import is_meta_fp8, load_meta_fp8

    if is_meta_fp8(path):
        return load_meta_fp8(path, dtype=dtype, device=device, rope_scaling_factor=rope_scaling_factor)
    return load_meta(path, rope_scaling_factor=rope_scaling_factor, dtype=dtype, device=device)


def load(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    rope_scaling_factor: float | RopeScaling | None = None,
) -> tuple[Transformer, Any | None]:
    """(model, herd ``Tokenizer`` or None) from either layout; see ``find_tokenizer`` for
    where the tokenizer is looked for."""
    model = load_any(path, dtype=dtype, device=device, rope_scaling_factor=rope_scaling_factor)
    return model, load_tokenizer(path)
