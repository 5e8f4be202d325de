"""Quantized checkpoints in the Hugging Face layout: save, detect, load.

int8 / int4 save as compressed-tensors ``pack-quantized`` (vLLM, transformers +
compressed-tensors read them); FP8 row-wise saves as Meta's fbgemm layout (HF's
``fbgemm_fp8``). Loading reads either, including checkpoints other tools wrote in these
layouts: each linear with quantized tensors becomes the matching quantized module, the
rest load as in ``herd.checkpoint.hf``. ``herd.checkpoint.load_any`` comes here when a
``config.json`` has a ``quantization_config``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from herd.checkpoint.config import as_dtype, dtype_from_hf_config, generation_config_from_args, hf_config_from_args
from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.files import atomic_directory
from herd.checkpoint.hf import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    WEIGHTS_NAME,
    read_headers,
    read_hf_args,
    weight_files,
)
from herd.checkpoint.tokenizer_files import write_tokenizer
from herd.checkpoint.weights import EMBED, LM_HEAD, empty_model, unwrap
from herd.model import Transformer
from herd.quant import compressed_tensors as ct
from herd.quant import fbgemm_fp8
from herd.quant.base import QuantizedLinear
from herd.quant.fp8 import Fp8RowwiseLinear
from herd.quant.quantize import QuantScheme

log = logging.getLogger("herd.quant")
_STALE = ("model*.safetensors", "model.safetensors.index.json")


def quantization_method(path: str | os.PathLike) -> str | None:
    """The ``quant_method`` of a HF checkpoint's config.json, or None when not quantized."""
    config_path = Path(path) / CONFIG_NAME
    if not config_path.is_file():
        return None
    try:
        qc = json.loads(config_path.read_text()).get("quantization_config")
    except (OSError, ValueError):
        return None
    if not qc:
        return None
    if not isinstance(qc, dict) or not isinstance(qc.get("quant_method"), str):
        raise CheckpointError(f"{config_path}: quantization_config has no quant_method")
    return qc["quant_method"]


def _quantized_modules(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def save_quantized(model: nn.Module, save_dir: str | os.PathLike, *, tokenizer: Any = None,
                   dtype: torch.dtype | str | None = None) -> Path:
    """Write a model quantized by ``herd.quant.quantize`` (or loaded quantized) to ``save_dir``.

    Unquantized tensors are cast to ``dtype`` (default: the embedding's). The directory is
    assembled under a temporary name and renamed into place.
    """
    model = unwrap(model)
    quantized = _quantized_modules(model)
    if not quantized:
        raise ValueError("the model has no quantized layers: call herd.quant.quantize first")
    kinds = {type(m) for m in quantized.values()}
    if len(kinds) != 1:
        raise ValueError(f"cannot save a model mixing {sorted(k.__name__ for k in kinds)} in one layout")
    dtype = as_dtype(dtype) or model.model.embed_tokens.weight.dtype
    tensors: dict[str, Tensor] = {}
    for name, module in quantized.items():
        layout = fbgemm_fp8 if isinstance(module, Fp8RowwiseLinear) else ct
        tensors.update(layout.module_tensors(name, module))
    prefixes = tuple(f"{n}." for n in quantized)
    for name, t in model.state_dict().items():
        if name.startswith(prefixes):
            continue
        if name == LM_HEAD and model.args.tie_word_embeddings:
            continue
        tensors[name] = t.detach().to(device="cpu", dtype=dtype).contiguous()
    if LM_HEAD in tensors and tensors[LM_HEAD].data_ptr() == tensors[EMBED].data_ptr():
        tensors[LM_HEAD] = tensors[LM_HEAD].clone()
    plain = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    first = next(iter(quantized.values()))
    if isinstance(first, Fp8RowwiseLinear):
        qc = fbgemm_fp8.quantization_config(first.activation_scale_ub, plain)
    else:
        qc = ct.quantization_config(ct.weight_args(first), plain)
        if any(ct.weight_args(m) != qc["config_groups"]["group_0"]["weights"] for m in quantized.values()):
            raise ValueError("cannot save quantized layers with different settings in one config group")
    config = hf_config_from_args(model.args, dtype)
    config["quantization_config"] = qc
    with atomic_directory(save_dir, stale=_STALE) as tmp:
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / GENERATION_CONFIG_NAME).write_text(
            json.dumps(generation_config_from_args(model.args), indent=2, sort_keys=True) + "\n")
        write_tokenizer(tokenizer, tmp)
    log.info("saved quantized %s (%s)", save_dir, qc["quant_method"])
    return Path(save_dir)


def _scheme_of(modules: dict[str, QuantizedLinear]) -> QuantScheme:
    from herd.quant.int4 import Int4Linear
    from herd.quant.int8 import Int8Linear

    m = next(iter(modules.values()))
    head = "lm_head" in modules
    if isinstance(m, Int8Linear):
        return QuantScheme("int8", lm_head=head)
    if isinstance(m, Int4Linear):
        return QuantScheme("int4", group_size=m.group_size, lm_head=head)
    return QuantScheme("fp8", activation_scale_ub=m.activation_scale_ub)


def load_quantized(load_dir: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                   device: torch.device | str = "cpu") -> Transformer:
    """A ``Transformer`` with quantized linears from a compressed-tensors or fbgemm_fp8
    checkpoint; ``dtype`` (default: config.json's) is that of everything not quantized."""
    root = Path(load_dir)
    source = str(root / CONFIG_NAME)
    args, config = read_hf_args(root)
    qc = config.get("quantization_config") or {}
    method = qc.get("quant_method")
    if method == ct.QUANT_METHOD:
        layout = ct
        is_quantized = lambda name, tensors: f"{name}.weight_packed" in tensors  # noqa: E731
    elif method == fbgemm_fp8.QUANT_METHOD:
        layout = fbgemm_fp8
        is_quantized = fbgemm_fp8.is_converted
    else:
        raise CheckpointError(f"{source}: quantization method {method!r} is not read by herd "
                              f"(it reads {ct.QUANT_METHOD}, {fbgemm_fp8.QUANT_METHOD})")
    headers = read_headers(weight_files(root))
    tensors: dict[str, Tensor] = {}
    for path in sorted({p for p, _, _ in headers.values()}):
        tensors.update(load_file(str(path)))
    target = as_dtype(dtype) or dtype_from_hf_config(config, source) or torch.bfloat16
    model = empty_model(args)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    quantized: dict[str, QuantizedLinear] = {}
    for name in linears:
        if is_quantized(name, tensors):
            module = layout.load_module(name, tensors, qc, source)
            want = model.get_submodule(name)
            if (module.out_features, module.in_features) != (want.out_features, want.in_features):
                raise CheckpointError(f"{source}: quantized {name} is {module.out_features}x{module.in_features}, "
                                      f"the config says {want.out_features}x{want.in_features}")
            quantized[name] = module.to(device)
    if not quantized:
        raise CheckpointError(f"{source}: quantization_config says {method} but no layer holds quantized tensors")
    for name, module in quantized.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
    if "lm_head" in quantized and args.tie_word_embeddings:  # a quantized head is its own matrix
        log.info("%s: the LM head is quantized, so it is not tied to the embedding", source)
        args = model.args = dataclasses.replace(args, tie_word_embeddings=False)
    if args.tie_word_embeddings:
        tensors.pop(LM_HEAD, None)
    plain = {n: t.to(device=device, dtype=target) for n, t in tensors.items()}
    expected = {n for n in model.state_dict() if not n.startswith(tuple(f"{q}." for q in quantized))}
    if args.tie_word_embeddings:
        expected.discard(LM_HEAD)
    missing, unexpected = sorted(expected - set(plain)), sorted(set(plain) - expected)
    if missing or unexpected:
        raise CheckpointError(f"the weights do not match {source}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    for name, t in plain.items():
        shape = shapes[name]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(t.shape)}, expected {shape}")
    model.load_state_dict(plain, strict=False, assign=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.quant_scheme = _scheme_of(quantized)
    log.info("loaded quantized %s (%s, %d quantized layers)", root, method, len(quantized))
    return model.eval()
