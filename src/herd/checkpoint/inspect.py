"""A summary of a checkpoint directory from its headers and configs, without loading weights."""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from pathlib import Path

from herd.checkpoint.auto import detect_format
from herd.checkpoint.config import SAFETENSORS_DTYPES, dtype_from_hf_config, dtype_name, read_json
from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.files import dir_size
from herd.checkpoint.hf import read_headers, read_hf_args, weight_files
from herd.checkpoint.meta import (
    PARAMS_NAME,
    args_from_params,
    load_shard,
    merged_shapes,
    meta_root,
    presets_of_shape,
    shard_files,
)
from herd.checkpoint.tokenizer_files import tokenizer_summary
from herd.checkpoint.weights import LM_HEAD
from herd.model import ModelArgs


def _config_summary(args: ModelArgs) -> dict:
    return {
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "ffn_dim": args.ffn_dim,
        "vocab_size": args.vocab_size,
        "max_seq_len": args.max_seq_len,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "tie_word_embeddings": args.tie_word_embeddings,
        "bos_token_id": args.bos_token_id,
        "eos_token_id": args.eos_token_id,
    }


def _inspect_hf(root: Path) -> dict:
    args, config = read_hf_args(root)
    files = weight_files(root)
    headers = read_headers(files)
    params = sum(math.prod(shape) for name, (_, shape, _) in headers.items()
                 if not (name == LM_HEAD and args.tie_word_embeddings))
    dialect = "5.x (rope_parameters)" if "rope_parameters" in config else "4.x (rope_scaling)"
    config_dtype = dtype_from_hf_config(config)
    return {
        "args": args,
        "num_params": params,
        "dtypes": dict(Counter(dtype_name(SAFETENSORS_DTYPES[d]) if d in SAFETENSORS_DTYPES else d.lower()
                               for _, _, d in headers.values())),
        "config_dtype": None if config_dtype is None else dtype_name(config_dtype),
        "config_dialect": dialect,
        "rope_scaling_source": f"{root / 'config.json'} ({dialect})",
        "files": files,
    }


def _inspect_meta(root: Path, rope_scaling_factor: float | None) -> dict:
    files = shard_files(root)
    shards = [load_shard(p) for p in files]  # memory-mapped: no tensor data is read
    params = read_json(root / PARAMS_NAME)
    tied = True if "output.weight" not in shards[0] else None  # None: as the preset of this shape
    try:
        info = args_from_params(params, rope_scaling_factor=rope_scaling_factor, tie_word_embeddings=tied)
        source = info.rope_scaling_source
    except CheckpointError as e:
        if not params.get("use_scaled_rope"):
            raise
        info = args_from_params({**params, "use_scaled_rope": False}, tie_word_embeddings=tied)
        source = f"unresolved: {e}"
    shapes = merged_shapes(shards, files, info.args)
    return {
        "args": info.args,
        "num_params": sum(math.prod(s) for s in shapes.values()),
        "dtypes": dict(Counter(dtype_name(t.dtype) for t in shards[0].values())),
        "config_dtype": None,
        "config_dialect": "meta params.json",
        "rope_scaling_source": source,
        "files": files,
    }


def inspect_checkpoint(path: str | os.PathLike, *, rope_scaling_factor: float | None = None) -> dict:
    """What a checkpoint directory holds, as a JSON-able dict.

    Keys: path, format ("hf" | "meta"), weights_dir, config (herd's view of the shape),
    presets (those of the same shape), rope_scaling (dict or None) and its source,
    num_params (tied embeddings counted once), dtypes (tensor count per dtype),
    config_dtype, config_dialect, shards [{file, bytes}], weights_bytes, size_bytes
    (every file under the directory), tokenizer ({path, vocab_size} or None).
    """
    root = Path(path)
    fmt = detect_format(root)
    weights_dir = root if fmt == "hf" else meta_root(root)
    found = _inspect_hf(root) if fmt == "hf" else _inspect_meta(weights_dir, rope_scaling_factor)
    args: ModelArgs = found["args"]
    shards = [{"file": str(p.relative_to(root)), "bytes": p.stat().st_size} for p in found["files"]]
    scaling = args.rope_scaling
    return {
        "path": str(root),
        "format": fmt,
        "weights_dir": str(weights_dir),
        "config": _config_summary(args),
        "presets": presets_of_shape(args),
        "rope_scaling": None if scaling is None else dataclasses.asdict(scaling),
        "rope_scaling_source": found["rope_scaling_source"],
        "num_params": found["num_params"],
        "dtypes": found["dtypes"],
        "config_dtype": found["config_dtype"],
        "config_dialect": found["config_dialect"],
        "shards": shards,
        "weights_bytes": sum(s["bytes"] for s in shards),
        "size_bytes": dir_size(root),
        "tokenizer": tokenizer_summary(root),
    }
