"""Hugging Face ``config.json`` <-> ``ModelArgs``, in both config dialects.

transformers 4.x writes ``rope_theta`` and ``rope_scaling`` at the top level and the
dtype as ``torch_dtype``; transformers 5.x folds the RoPE settings into one
``rope_parameters`` dict (``rope_theta``, ``rope_type`` and the scaling fields) and
writes ``dtype``. herd reads both and writes the 4.x keys, which both generations read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from herd.checkpoint.errors import CheckpointError
from herd.model import ModelArgs, RopeScaling

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

# The dtype names of safetensors headers.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
}

# What transformers assumes when a config.json leaves a field out (LlamaConfig defaults).
_HF_DEFAULTS: dict[str, Any] = {
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
_LLAMA3_ROPE_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def as_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.bfloat16``, ``"bfloat16"``, ``"bf16"``, ``"torch.bfloat16"`` ... -> a torch dtype."""
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise CheckpointError(f"unsupported dtype {value!r}; use one of: float32, bfloat16, float16")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the spelling config.json uses)."""
    return str(dtype).removeprefix("torch.")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"missing {path.name}: {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot parse {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _field(config: dict, key: str, source: str) -> Any:
    if config.get(key) is None:
        if key in _HF_DEFAULTS:
            return _HF_DEFAULTS[key]
        raise CheckpointError(f"{source} has no {key!r}")
    return config[key]


def rope_from_hf_config(config: dict, source: str = "config.json") -> tuple[float, RopeScaling | None]:
    """(rope_theta, llama3 scaling or None) from either dialect.

    5.x: ``rope_parameters = {rope_theta, rope_type, factor, ...}``; 4.x: top-level
    ``rope_theta`` and ``rope_scaling = {rope_type (or legacy "type"), factor, ...} | null``.
    rope_type "default" (or none) means no scaling; types herd does not implement raise.
    """
    params = config.get("rope_parameters")
    field = "rope_parameters"
    if params is None:
        params, field = config.get("rope_scaling"), "rope_scaling"
    if params is not None and not isinstance(params, dict):
        raise CheckpointError(f"{source}: {field} must be an object or null, found {params!r}")
    params = params or {}
    theta = params.get("rope_theta", config.get("rope_theta"))
    theta = float(_HF_DEFAULTS["rope_theta"] if theta is None else theta)
    rope_type = params.get("rope_type", params.get("type")) or "default"
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise CheckpointError(
            f"{source}: unsupported {field}.rope_type {rope_type!r}; herd implements 'default' "
            "(no scaling) and 'llama3' (Llama 3.1 frequency scaling)"
        )
    missing = [k for k in _LLAMA3_ROPE_FIELDS if params.get(k) is None]
    if missing:
        raise CheckpointError(f"{source}: {field} with rope_type 'llama3' lacks {', '.join(missing)}")
    try:
        scaling = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {field}: {e}") from e
    return theta, scaling


def dtype_from_hf_config(config: dict, source: str = "config.json") -> torch.dtype | None:
    """The dtype a config records (5.x ``dtype`` or 4.x ``torch_dtype``), or None."""
    value = config.get("dtype", config.get("torch_dtype"))
    if value is None or value == "auto":
        return None
    try:
        return as_dtype(value)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from e


def args_from_hf_config(config: dict, source: str = "config.json") -> ModelArgs:
    """``ModelArgs`` from a transformers ``LlamaForCausalLM`` config dict (4.x or 5.x dialect)."""
    model_type = config.get("model_type", "llama")
    if model_type != "llama":
        raise CheckpointError(f"{source}: model_type is {model_type!r}; herd reads 'llama' checkpoints")
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {config['hidden_act']!r} is not supported (Llama: silu)")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise CheckpointError(f"{source}: {flag}=true is not supported (Llama 3 has no biases)")
    dim = int(_field(config, "hidden_size", source))
    n_heads = int(_field(config, "num_attention_heads", source))
    head_dim = config.get("head_dim")
    rope_theta, rope_scaling = rope_from_hf_config(config, source)
    try:
        return ModelArgs(
            dim=dim,
            n_layers=int(_field(config, "num_hidden_layers", source)),
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            vocab_size=int(_field(config, "vocab_size", source)),
            hidden_dim=int(_field(config, "intermediate_size", source)),
            head_dim_override=None if head_dim in (None, dim // n_heads) else int(head_dim),
            norm_eps=float(_field(config, "rms_norm_eps", source)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_seq_len=int(_field(config, "max_position_embeddings", source)),
            tie_word_embeddings=bool(_field(config, "tie_word_embeddings", source)),
            bos_token_id=_field(config, "bos_token_id", source),
            eos_token_id=_field(config, "eos_token_id", source),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e


def hf_config_from_args(args: ModelArgs, dtype: torch.dtype) -> dict:
    """A ``config.json`` dict in the transformers 4.x dialect (read by 4.x and 5.x alike)."""
    s = args.rope_scaling
    rope_scaling = None if s is None else {
        "factor": s.factor,
        "high_freq_factor": s.high_freq_factor,
        "low_freq_factor": s.low_freq_factor,
        "original_max_position_embeddings": s.original_max_position_embeddings,
        "rope_type": "llama3",
    }
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": args.bos_token_id,
        "eos_token_id": args.eos_token_id,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "hidden_size": args.dim,
        "initializer_range": 0.02,
        "intermediate_size": args.ffn_dim,
        "max_position_embeddings": args.max_seq_len,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": args.n_heads,
        "num_hidden_layers": args.n_layers,
        "num_key_value_heads": args.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": args.norm_eps,
        "rope_scaling": rope_scaling,
        "rope_theta": args.rope_theta,
        "tie_word_embeddings": args.tie_word_embeddings,
        "torch_dtype": dtype_name(dtype),
        "use_cache": True,
        "vocab_size": args.vocab_size,
    }


def generation_config_from_args(args: ModelArgs) -> dict:
    """``generation_config.json`` as Meta ships it for Llama 3.x (sampling at T=0.6, top-p 0.9)."""
    eos = args.eos_token_id
    return {
        "bos_token_id": args.bos_token_id,
        "do_sample": True,
        "eos_token_id": list(eos) if isinstance(eos, (list, tuple)) else [eos],
        "temperature": 0.6,
        "top_p": 0.9,
    }
