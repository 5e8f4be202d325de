"""Meta's native FP8 layout, as ``llama model download`` gives Llama 3.1 405B Instruct FP8: read and write.

The directory is Meta's usual layout (``params.json``, ``consolidated.NN.pth`` per
model-parallel rank) plus one ``fp8_scales_R.pt`` per rank R. In every layer but the first
and the last, the feed-forward weights ``w1``, ``w3`` and ``w2`` hold e4m3 values, and
rank R's scales file maps ``"{layer}_feed_forward.{w}_{R}"`` to the row scales of that
rank's slice (the names llama-models' ``llama3/quantization/loader.py`` looks up). Every
other tensor is bf16 and loads as :mod:`herd.checkpoint.meta` loads it.

Slices: ``w1`` and ``w3`` are split by output rows, so the ranks' rows and scales simply
stack. ``w2`` is split by input columns and each rank quantized its own slice, so an output
row has one scale per rank, and each rank quantized its own slice of the activations: that
layer loads as ``Fp8RowwiseLinear(shards=ranks)``, which computes what the ranks compute
and sums their outputs (their all-reduce). A checkpoint written for 8 GPUs thus runs on one
device with the 8 GPUs' numerics.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from herd.checkpoint.config import as_dtype
from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.files import atomic_directory
from herd.checkpoint.meta import (
    FP8_SCALES_GLOB,
    PARAMS_NAME,
    check_model_parallel,
    hf_state_from_meta,
    hf_to_meta_name,
    load_shard,
    merge_shards,
    meta_root,
    meta_state,
    meta_to_hf_name,
    params_from_args,
    read_meta_params,
    shard_files,
    shard_state,
)
from herd.checkpoint.tokenizer_files import write_tokenizer
from herd.checkpoint.weights import EMBED, LM_HEAD, empty_model, unwrap
from herd.model import RopeScaling, Transformer
from herd.quant.fp8 import ACTIVATION_SCALE_UB, FP8, Fp8RowwiseLinear
from herd.quant.quantize import QuantScheme

log = logging.getLogger("herd.quant")
_SCALE_KEY = re.compile(r"^(\d+)_feed_forward\.(w[123])_(\d+)$")
_SPLIT_BY_COLUMNS = "w2"  # row-parallel in Meta's model; w1/w3 are column-parallel
_HF_FFN = {"mlp.gate_proj": "w1", "mlp.up_proj": "w3", "mlp.down_proj": "w2"}


def scales_file(root: Path, rank: int) -> Path:
    return root / f"fp8_scales_{rank}.pt"


def is_meta_fp8(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or its ``original/``) is Meta's FP8 layout."""
    root = meta_root(path)
    return root.is_dir() and any(root.glob(FP8_SCALES_GLOB))


def _read_scales(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is Meta's FP8 layout but lacks {path.name} (one scales file per "
                              f"consolidated.NN.pth)")
    try:
        scales = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, unpicklable, unsafe: all mean unreadable
        raise CheckpointError(f"cannot read {path}: corrupt or truncated scales file ({e})") from e
    if not isinstance(scales, dict) or not all(isinstance(v, Tensor) for v in scales.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return scales


def _as_e4m3(t: Tensor, name: str, path: Path) -> Tensor:
    """The weight as float8_e4m3fn. Files may hold it as e4m3 or, as llama-models' loader
    sees it after ``load_state_dict`` into a bf16 model, as bf16 carrying e4m3 values."""
    if t.dtype == FP8:
        return t
    if not t.is_floating_point():
        raise CheckpointError(f"{path}: {name} is {t.dtype}, expected float8_e4m3fn")
    q = t.to(FP8)
    if not torch.equal(q.to(t.dtype), t):
        raise CheckpointError(f"{path}: {name} has an fp8 scale but holds values that are not e4m3 numbers")
    return q


def load_meta_fp8(src: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                  device: torch.device | str = "cpu", activation_scale_ub: float = ACTIVATION_SCALE_UB,
                  rope_scaling_factor: float | RopeScaling | None = None) -> Transformer:
    """A ``Transformer`` from Meta's FP8 layout (see the module docstring): feed-forward
    layers with scales become ``Fp8RowwiseLinear``; the rest loads in ``dtype`` (default:
    the embedding's, bf16 in Meta's files)."""
    root = meta_root(src)
    files = shard_files(root)
    shards = [load_shard(p) for p in files]
    scales = [_read_scales(scales_file(root, r)) for r in range(len(files))]
    info = read_meta_params(root, rope_scaling_factor=rope_scaling_factor)
    quantized: dict[str, Fp8RowwiseLinear] = {}
    for key in sorted(scales[0], key=lambda k: (len(k), k)):
        m = _SCALE_KEY.match(key)
        if m is None or int(m.group(3)) != 0:
            raise CheckpointError(f"{scales_file(root, 0)}: unexpected key {key!r} (expected "
                                  f"'<layer>_feed_forward.<w1|w2|w3>_0')")
        layer, w = m.group(1), m.group(2)
        name = f"layers.{layer}.feed_forward.{w}.weight"
        parts, row_scales = [], []
        for rank, (sd, sc, path) in enumerate(zip(shards, scales, files, strict=True)):
            if name not in sd:
                raise CheckpointError(f"{scales_file(root, rank)} scales {name}, which {path.name} does not hold")
            scale_key = f"{layer}_feed_forward.{w}_{rank}"
            if scale_key not in sc:
                raise CheckpointError(f"{scales_file(root, rank)} lacks {scale_key!r} for {name}")
            q = _as_e4m3(sd.pop(name), name, path)
            s = sc.pop(scale_key).reshape(-1).float()
            if s.numel() != q.shape[0]:
                raise CheckpointError(f"{scales_file(root, rank)}: {scale_key} has {s.numel()} scales for "
                                      f"{q.shape[0]} rows of {name}")
            parts.append(q)
            row_scales.append(s)
        if w == _SPLIT_BY_COLUMNS:
            module = Fp8RowwiseLinear.from_quantized(torch.cat(parts, dim=1), torch.stack(row_scales, dim=1),
                                                     activation_scale_ub, shards=len(parts))
        else:
            module = Fp8RowwiseLinear.from_quantized(torch.cat(parts, dim=0), torch.cat(row_scales),
                                                     activation_scale_ub)
        quantized[meta_to_hf_name(name).removesuffix(".weight")] = module
    for rank, sc in enumerate(scales):
        if sc:
            raise CheckpointError(f"{scales_file(root, rank)} holds scales of no rank-0 weight: {sorted(sc)[:4]}")
    if not quantized:
        raise CheckpointError(f"{root}: the fp8 scales files are empty")
    merged = merge_shards(shards, files, info.args)
    source = str(root / PARAMS_NAME)
    args, state = hf_state_from_meta(
        merged, info.args, source=source,
        other_shapes={f"{n}.weight": (m.out_features, m.in_features) for n, m in quantized.items()})
    target = as_dtype(dtype) or state[EMBED].dtype
    model = empty_model(args)
    for name, module in quantized.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.to(device))
    if args.tie_word_embeddings:
        state.pop(LM_HEAD, None)
    model.load_state_dict({n: t.to(device=device, dtype=target) for n, t in state.items()}, strict=False,
                          assign=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.quant_scheme = QuantScheme("fp8", activation_scale_ub=activation_scale_ub)
    log.info("loaded Meta FP8 checkpoint %s (%d shard(s), %d fp8 linears)", root, len(files), len(quantized))
    return model.eval()


def save_meta_fp8(model: Transformer, dst: str | os.PathLike, *, model_parallel: int = 1,
                  dtype: torch.dtype | str | None = torch.bfloat16, tokenizer: Any = None) -> Path:
    """Write an FP8 row-wise model (``quantize(model, "fp8")``) in Meta's FP8 layout,
    split ``model_parallel`` ways. A ``w2`` slice keeps its rows' scales, so each rank's
    file holds exactly the model's values (a model read from an n-rank checkpoint saves
    with n ranks again). The directory appears whole or not at all."""
    model = unwrap(model)
    check_model_parallel(model.args, model_parallel)
    fp8 = {n: m for n, m in model.named_modules() if isinstance(m, Fp8RowwiseLinear)}
    if not fp8:
        raise CheckpointError("save_meta_fp8: the model has no FP8 layers (quantize(model, 'fp8') first)")
    state = meta_state(model, dtype, skip=tuple(f"{n}." for n in fp8))
    scales: list[dict[str, Tensor]] = [{} for _ in range(model_parallel)]
    for name, m in fp8.items():
        meta_name = hf_to_meta_name(f"{name}.weight")
        w = _HF_FFN.get(name.split(".", 3)[-1]) if meta_name else None
        if w is None:
            raise CheckpointError(f"save_meta_fp8: {name} is not a feed-forward projection; Meta's FP8 layout "
                                  f"quantizes w1, w2 and w3 only")
        if m.shards not in (1, model_parallel) or (m.shards > 1 and w != _SPLIT_BY_COLUMNS):
            raise CheckpointError(f"save_meta_fp8: {name} keeps {m.shards} scale columns; write it with "
                                  f"model_parallel={m.shards}")
        state[meta_name] = m.weight.detach().cpu()
        layer = meta_name.split(".")[1]
        for rank in range(model_parallel):
            if w == _SPLIT_BY_COLUMNS:
                s = m.weight_scale[:, rank if m.shards > 1 else 0]
            else:
                s = m.weight_scale[:, 0].chunk(model_parallel)[rank]
            scales[rank][f"{layer}_feed_forward.{w}_{rank}"] = s.detach().float().cpu().clone()
    shards = shard_state(state, model_parallel)
    with atomic_directory(dst, stale=("consolidated.*.pth", FP8_SCALES_GLOB)) as tmp:
        for rank, (sd, sc) in enumerate(zip(shards, scales, strict=True)):
            torch.save(sd, tmp / f"consolidated.{rank:02d}.pth")
            torch.save(sc, scales_file(tmp, rank))
        (tmp / PARAMS_NAME).write_text(json.dumps(params_from_args(model.args), indent=2, sort_keys=True) + "\n")
        write_tokenizer(tokenizer, tmp)
    return Path(dst)
