"""herd's native checkpoint: the Hugging Face layout.

A directory with ``config.json``, ``model.safetensors`` (or ``model-0000x-of-0000y.safetensors``
shards + ``model.safetensors.index.json``), ``generation_config.json`` and the tokenizer.
transformers' ``LlamaForCausalLM.from_pretrained`` reads what ``save_pretrained`` writes,
and ``load_pretrained`` reads what transformers writes, in either config dialect.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from herd.checkpoint.config import (
    SAFETENSORS_DTYPES,
    args_from_hf_config,
    as_dtype,
    dtype_from_hf_config,
    generation_config_from_args,
    hf_config_from_args,
    read_json,
)
from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.files import atomic_directory, parse_size
from herd.checkpoint.tokenizer_files import write_tokenizer
from herd.checkpoint.weights import EMBED, LM_HEAD, build_model, check_weights, unwrap
from herd.model import ModelArgs, Transformer

log = logging.getLogger("herd.checkpoint")

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_STALE = ("model*.safetensors", INDEX_NAME)
_SKIPPED = "rotary_emb.inv_freq"  # RoPE buffers old transformers versions saved; transformers skips them


# ----------------------------------------------------------------------------- saving


def _state_to_save(model: Transformer) -> dict[str, Tensor]:
    """The model's tensors by HF name; tied embeddings: no lm_head."""
    state = model.state_dict()
    embed, head = state[EMBED], state[LM_HEAD]
    if model.args.tie_word_embeddings:
        if head.data_ptr() != embed.data_ptr() and not torch.equal(head, embed):
            raise CheckpointError("model.args.tie_word_embeddings is set but lm_head.weight is not tied")
        del state[LM_HEAD]
    elif head.data_ptr() == embed.data_ptr():
        state[LM_HEAD] = head.clone()  # safetensors refuses two names on one storage
    return state


def _plan_shards(state: Mapping[str, Tensor], dtype: torch.dtype, max_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most ``max_bytes`` each once cast to ``dtype``
    (in order; a tensor larger than the limit gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_pretrained(
    model: Transformer,
    save_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Write ``model`` to ``save_dir`` in the Hugging Face layout; returns the directory.

    ``dtype`` casts on save (default: the model's dtype) and is recorded as
    ``torch_dtype``. ``tokenizer``: a herd ``Tokenizer`` (``save(dir)``) or a path whose
    tokenizer files are copied. The directory is assembled under a temporary name and
    renamed into place, so an error leaves no half-written checkpoint.
    """
    model = unwrap(model)
    dtype = as_dtype(dtype) or model.model.embed_tokens.weight.dtype
    state = _state_to_save(model)
    shards = _plan_shards(state, dtype, parse_size(max_shard_size))
    with atomic_directory(save_dir, stale=_STALE) as tmp:
        weight_map = {}
        for i, names in enumerate(shards, start=1):
            filename = WEIGHTS_NAME if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            # one shard at a time in CPU memory, whatever the model's device
            shard = {n: state[n].detach().to(device="cpu", dtype=dtype).contiguous() for n in names}
            save_file(shard, tmp / filename, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(names, filename))
        if len(shards) > 1:
            total = sum(t.numel() for t in state.values()) * dtype.itemsize
            _write_json(tmp / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
        _write_json(tmp / CONFIG_NAME, hf_config_from_args(model.args, dtype))
        _write_json(tmp / GENERATION_CONFIG_NAME, generation_config_from_args(model.args))
        write_tokenizer(tokenizer, tmp)
    log.info("saved %s (%d shard(s), %s)", save_dir, len(shards), dtype)
    return Path(save_dir)


# ----------------------------------------------------------------------------- loading


def weight_files(load_dir: str | os.PathLike) -> list[Path]:
    """The safetensors files of a HF checkpoint: ``model.safetensors``, or the shards the
    index names (each checked to exist)."""
    root = Path(load_dir)
    if (root / WEIGHTS_NAME).is_file():
        return [root / WEIGHTS_NAME]
    index_path = root / INDEX_NAME
    if not index_path.is_file():
        legacy = [p.name for p in root.glob("pytorch_model*.bin")]
        hint = f" ({', '.join(legacy)} is not read: re-save it as safetensors)" if legacy else ""
        raise CheckpointError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {root}{hint}")
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no weight_map")
    files = sorted(set(weight_map.values()))
    for filename in files:
        if not (root / filename).is_file():
            names = [n for n, f in weight_map.items() if f == filename]
            raise CheckpointError(
                f"{index_path.name} maps {len(names)} tensor(s) (e.g. {names[0]}) to shard {filename}, "
                f"which is missing from {root}"
            )
    return [root / f for f in files]


def _open(path: Path) -> Any:
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError, OSError: both mean this file is unreadable
        raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({e})") from e


def read_headers(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """{tensor name: (file, shape, dtype)} from the safetensors headers alone."""
    out: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    for path in files:
        handle = _open(path)
        for name in handle.keys():
            if name.endswith(_SKIPPED):
                continue
            if name in out:
                raise CheckpointError(f"tensor {name} appears in both {out[name][0].name} and {path.name}")
            sl = handle.get_slice(name)
            out[name] = (path, tuple(sl.get_shape()), sl.get_dtype())
    return out


def _check_index(root: Path, headers: Mapping[str, tuple[Path, tuple[int, ...], str]]) -> None:
    index_path = root / INDEX_NAME
    if (root / WEIGHTS_NAME).is_file() or not index_path.is_file():
        return
    for name, filename in read_json(index_path)["weight_map"].items():
        if name.endswith(_SKIPPED):
            continue
        if name not in headers or headers[name][0].name != filename:
            raise CheckpointError(f"{INDEX_NAME} maps {name} to {filename}, which does not hold it")


def _read_tensors(
    headers: Mapping[str, tuple[Path, tuple[int, ...], str]], dtype: torch.dtype, device: torch.device | str
) -> dict[str, Tensor]:
    """Every tensor, read through safetensors' memory map and moved to ``device`` and
    ``dtype`` one at a time (host memory never holds more than one tensor's copy)."""
    by_file: dict[Path, list[str]] = {}
    for name, (path, _, _) in headers.items():
        by_file.setdefault(path, []).append(name)
    tensors = {}
    for path, names in by_file.items():
        handle = _open(path)
        for name in names:
            try:
                tensor = handle.get_tensor(name)
            except Exception as e:
                raise CheckpointError(f"cannot read tensor {name} from {path}: {e}") from e
            tensors[name] = tensor.to(device=device, dtype=dtype)
    return tensors


def read_hf_args(load_dir: str | os.PathLike) -> tuple[ModelArgs, dict]:
    """(ModelArgs, raw config dict) from a HF checkpoint directory's config.json."""
    path = Path(load_dir) / CONFIG_NAME
    config = read_json(path)
    return args_from_hf_config(config, source=str(path)), config


def load_pretrained(
    load_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
) -> Transformer:
    """A ``Transformer`` from a Hugging Face layout directory (either config dialect).

    Shapes are checked against config.json from the safetensors headers before any
    tensor is read; tensors are then read through safetensors' memory map and assigned
    to a model built on the meta device. ``dtype`` defaults to the one config.json
    records (``torch_dtype`` / ``dtype``), else the file's.
    """
    root = Path(load_dir)
    args, config = read_hf_args(root)
    headers = read_headers(weight_files(root))
    _check_index(root, headers)
    check_weights(args, {n: shape for n, (_, shape, _) in headers.items()}, source=str(root / CONFIG_NAME))
    target = (as_dtype(dtype) or dtype_from_hf_config(config, str(root / CONFIG_NAME))
              or SAFETENSORS_DTYPES[headers[EMBED][2]])
    model = build_model(args, _read_tensors(headers, target, device), dtype=target, device=device)
    log.info("loaded %s (%s, %s)", root, target, device)
    return model

