"""Checkpoints: herd's native Hugging Face layout, Meta's layout, and conversion between them.

    model = load_pretrained("Llama-3.2-1B")            # config.json + *.safetensors
    save_pretrained(model, "out", tokenizer=tok)      # what transformers / vLLM read
    model, tok = load("any-dir")                       # either layout, tokenizer if present
    convert_meta_to_hf("Llama3.1-8B", "Llama3.1-8B-hf")
    inspect_checkpoint("any-dir")                      # a dict the CLI prints
"""

from herd.checkpoint.auto import detect_format, load, load_any
from herd.checkpoint.config import args_from_hf_config, hf_config_from_args
from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.hf import load_pretrained, save_pretrained
from herd.checkpoint.inspect import inspect_checkpoint
from herd.checkpoint.meta import (
    MetaParams,
    args_from_params,
    convert_meta_to_hf,
    hf_to_meta_name,
    load_meta,
    load_meta_with_params,
    meta_to_hf_name,
    params_from_args,
    read_meta_params,
    save_meta,
)
from herd.checkpoint.tokenizer_files import find_tokenizer, load_tokenizer

__all__ = [
    "CheckpointError",
    "MetaParams",
    "args_from_hf_config",
    "args_from_params",
    "convert_meta_to_hf",
    "detect_format",
    "find_tokenizer",
    "hf_config_from_args",
    "hf_to_meta_name",
    "inspect_checkpoint",
    "load",
    "load_any",
    "load_meta",
    "load_meta_with_params",
    "load_pretrained",
    "load_tokenizer",
    "meta_to_hf_name",
    "params_from_args",
    "read_meta_params",
    "save_meta",
    "save_pretrained",
]
