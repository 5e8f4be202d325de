"""Meta's checkpoint layout: ``params.json`` + ``consolidated.00.pth`` ... ``consolidated.NN.pth``.

Every difference from herd's own layout is handled here and nowhere else:

* names: Meta's ``tok_embeddings``, ``layers.N.attention.wq`` ... map to HF's names
  through one table (``_GLOBAL_NAMES``, ``_LAYER_NAMES``), which also records how Meta's
  model-parallel shards split each tensor;
* rotary layout: Meta's wq/wk rows pair dimensions (2i, 2i+1) of each head, HF's pair
  (i, i + head_dim/2); ``interleaved_to_half`` / ``half_to_interleaved`` permute rows;
* RoPE scaling: params.json only says ``use_scaled_rope``; the factor comes from the
  preset of the same shape or from an explicit ``rope_scaling_factor``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from herd.checkpoint.config import as_dtype, dtype_name, read_json
from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.files import atomic_directory
from herd.checkpoint.hf import save_pretrained
from herd.checkpoint.tokenizer_files import TIKTOKEN_FILE, load_tokenizer, write_tokenizer
from herd.checkpoint.weights import EMBED, LM_HEAD, build_model, check_weights, unwrap
from herd.model import PRESETS, ModelArgs, RopeScaling, Transformer

log = logging.getLogger("herd.checkpoint")

PARAMS_NAME = "params.json"
_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")
FP8_SCALES_GLOB = "fp8_scales_*.pt"  # Meta's FP8 layout (herd.quant.meta_fp8) keeps these beside the shards
_VOCAB_SPLIT = "vocab"  # tok_embeddings: rows in Llama 3's reference (VocabParallelEmbedding),
#                         columns in Llama 2's (ParallelEmbedding); told apart by shape.

# Meta name -> (herd/HF name, the dim model-parallel shards split it along; None: replicated).
# Column-parallel layers (wq, wk, wv, w1, w3, output) split their output rows (dim 0),
# row-parallel ones (wo, w2) their input columns (dim 1).
_GLOBAL_NAMES: dict[str, tuple[str, int | str | None]] = {
    "tok_embeddings.weight": (EMBED, _VOCAB_SPLIT),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": (LM_HEAD, 0),
}
_LAYER_NAMES: dict[str, tuple[str, int | str | None]] = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
_HF_GLOBAL = {hf: meta for meta, (hf, _) in _GLOBAL_NAMES.items()}
_HF_LAYER = {hf: meta for meta, (hf, _) in _LAYER_NAMES.items()}
_META_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_IGNORED = {"rope.freqs"}  # a precomputed buffer some Meta checkpoints carry
_UNSUPPORTED_PARAMS = {
    "vision_chunk_size": "a vision (multimodal) model",
    "vision_model": "a vision (multimodal) model",
    "moe_args": "a mixture-of-experts (Llama 4) model",
    "quantization_args": "a quantized checkpoint",
    "lora_args": "a QLoRA checkpoint",
}
META_FIELDS = {
    "dim": "dim",
    "vocab_size": "vocab_size",
    "n_layers": "n_layers",
    "n_heads": "n_heads",
    "n_kv_heads": "n_kv_heads",
    "ffn_dim": "FFN width (from multiple_of/ffn_dim_multiplier)",
}


# ----------------------------------------------------------------------------- names and layout


def _lookup(name: str) -> tuple[str, int | str | None] | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _META_LAYER_RE.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        hf, split = _LAYER_NAMES[m.group(2)]
        return f"model.layers.{m.group(1)}.{hf}", split
    return None


def meta_to_hf_name(name: str) -> str | None:
    """``layers.3.attention.wq.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None if unknown."""
    found = _lookup(name)
    return None if found is None else found[0]


def hf_to_meta_name(name: str) -> str | None:
    """The inverse of ``meta_to_hf_name``; None if ``name`` has no Meta counterpart."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    m = _HF_LAYER_RE.match(name)
    if m and m.group(2) in _HF_LAYER:
        return f"layers.{m.group(1)}.{_HF_LAYER[m.group(2)]}"
    return None


def _display(hf_name: str) -> str:
    return hf_to_meta_name(hf_name) or hf_name


def interleaved_to_half(w: Tensor, n_heads: int) -> Tensor:
    """Meta's interleaved rotary rows -> HF's rotate-half rows (q or k projection)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved(w: Tensor, n_heads: int) -> Tensor:
    """HF's rotate-half rows -> Meta's interleaved rows (inverse of ``interleaved_to_half``)."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _rotary_heads(args: ModelArgs) -> dict[str, int]:
    """{herd name of each q/k projection: its number of heads}."""
    out = {}
    for i in range(args.n_layers):
        out[f"model.layers.{i}.self_attn.q_proj.weight"] = args.n_heads
        out[f"model.layers.{i}.self_attn.k_proj.weight"] = args.n_kv_heads
    return out


# ----------------------------------------------------------------------------- params.json


@dataclass(frozen=True)
class MetaParams:
    """What params.json (plus the preset of the same shape) says about a Meta checkpoint."""

    args: ModelArgs
    preset: str | None  # the preset of the same shape, if any
    rope_scaling_source: str  # e.g. "rope scaling factor 32 from preset llama3.2-1b"


def _shape_key(a: ModelArgs) -> tuple:
    return a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.ffn_dim


def presets_of_shape(args: ModelArgs) -> list[str]:
    """Names of the presets with the shape of ``args`` (dims, layers, heads, vocab, FFN width)."""
    return [n for n, p in PRESETS.items() if _shape_key(p) == _shape_key(args)]


def _resolve_rope(
    use_scaled: bool, candidates: list[str], override: float | RopeScaling | None
) -> tuple[RopeScaling | None, str]:
    scaled = [n for n in candidates if PRESETS[n].rope_scaling is not None]
    if isinstance(override, RopeScaling):
        return override, f"rope scaling factor {override.factor:g} from the rope_scaling_factor argument"
    if override is not None:
        base = PRESETS[scaled[0]].rope_scaling if scaled else RopeScaling()
        scaling = dataclasses.replace(base, factor=float(override))
        return scaling, f"rope scaling factor {float(override):g} from the rope_scaling_factor argument"
    if not use_scaled:
        return None, "no rope scaling (params.json: use_scaled_rope is false)"
    factors = {PRESETS[n].rope_scaling for n in scaled}
    if len(factors) == 1:
        scaling = factors.pop()
        return scaling, f"rope scaling factor {scaling.factor:g} from preset {scaled[0]}"
    if factors:
        raise CheckpointError(
            f"params.json says use_scaled_rope, and presets {', '.join(scaled)} of this shape disagree on "
            "the scaling; pass rope_scaling_factor"
        )
    raise CheckpointError(
        "params.json says use_scaled_rope but gives no factor, and no preset has this shape; pass "
        "rope_scaling_factor (8 for Llama 3.1 / 3.3, 32 for Llama 3.2 1B and 3B)"
    )


def args_from_params(
    params: Mapping[str, Any],
    *,
    rope_scaling_factor: float | RopeScaling | None = None,
    tie_word_embeddings: bool | None = None,
    source: str = PARAMS_NAME,
) -> MetaParams:
    """``MetaParams`` from a params.json dict.

    The RoPE scaling is the explicit ``rope_scaling_factor`` if given, else (when
    ``use_scaled_rope``) the scaling of the preset with the same shape; max_seq_len and
    the bos/eos ids also come from that preset. ``tie_word_embeddings`` defaults to the
    preset's (the loader decides it from the weights: an ``output.weight`` that is absent
    or equal to ``tok_embeddings.weight`` means tied).
    """
    for key, what in _UNSUPPORTED_PARAMS.items():
        if key in params:
            raise CheckpointError(f"{source} has {key!r}: {what}, which herd does not load")
    missing = [k for k in ("dim", "n_layers", "n_heads", "vocab_size") if params.get(k) is None]
    if missing:
        raise CheckpointError(f"{source} has no {', '.join(missing)}")
    try:
        args = ModelArgs(
            dim=int(params["dim"]),
            n_layers=int(params["n_layers"]),
            n_heads=int(params["n_heads"]),
            n_kv_heads=int(params.get("n_kv_heads") or params["n_heads"]),
            vocab_size=int(params["vocab_size"]),
            multiple_of=int(params.get("multiple_of", 256)),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", 500000.0)),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from e
    candidates = presets_of_shape(args)
    use_scaled = bool(params.get("use_scaled_rope", False))
    scaling, why = _resolve_rope(use_scaled, candidates, rope_scaling_factor)
    preferred = [n for n in candidates if (PRESETS[n].rope_scaling is not None) == use_scaled] or candidates
    preset = PRESETS[preferred[0]] if preferred else None
    args = args.replace(
        rope_scaling=scaling,
        max_seq_len=preset.max_seq_len if preset else (131072 if use_scaled else 8192),
        tie_word_embeddings=(preset.tie_word_embeddings if preset else False)
        if tie_word_embeddings is None else tie_word_embeddings,
        bos_token_id=preset.bos_token_id if preset else args.bos_token_id,
        eos_token_id=preset.eos_token_id if preset else args.eos_token_id,
    )
    return MetaParams(args=args, preset=preferred[0] if preferred else None, rope_scaling_source=why)


# ----------------------------------------------------------------------------- reading


def meta_root(src: str | os.PathLike) -> Path:
    """The directory holding params.json: ``src`` itself or ``src/original`` (HF snapshots)."""
    root = Path(src)
    if not (root / PARAMS_NAME).is_file() and (root / "original" / PARAMS_NAME).is_file():
        return root / "original"
    return root


def shard_files(src: str | os.PathLike) -> list[Path]:
    """``consolidated.00.pth`` ... in model-parallel rank order, checked to be complete."""
    root = meta_root(src)
    found = {int(m.group(1)): p for p in root.iterdir() if (m := _SHARD.match(p.name))}
    if not found:
        raise CheckpointError(f"no consolidated.*.pth files in {root}")
    width = len(next(iter(found.values())).name.split(".")[1])
    missing = [f"consolidated.{i:0{width}d}.pth" for i in range(max(found) + 1) if i not in found]
    if missing:
        raise CheckpointError(f"{root} lacks model-parallel shard(s) {', '.join(missing)}")
    return [found[i] for i in sorted(found)]


def load_shard(path: Path) -> dict[str, Tensor]:
    """One consolidated.NN.pth, memory-mapped (tensor data is read only when used)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, bad pickle, unsafe contents: all mean unreadable
        raise CheckpointError(f"cannot read {path}: corrupt or truncated checkpoint file ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return {k: v for k, v in state.items() if k not in _IGNORED}


def _split_dim(name: str, shard_shape: tuple[int, ...], n: int, args: ModelArgs) -> int | None:
    """The dim along which ``n`` model-parallel shards split tensor ``name`` (None: replicated)."""
    found = _lookup(name)
    split = None if found is None else found[1]
    if split == _VOCAB_SPLIT:
        return 1 if shard_shape[0] == args.vocab_size and shard_shape[1] * n == args.dim else 0
    if isinstance(split, int) and split >= len(shard_shape):
        return None
    return split


def _check_same_names(shards: list[dict[str, Tensor]], files: list[Path]) -> None:
    names = set(shards[0])
    for sd, path in zip(shards[1:], files[1:], strict=True):
        for name in sorted(names ^ set(sd)):
            where = path.name if name not in sd else files[0].name
            raise CheckpointError(f"tensor {name} is missing from {where} but present in the other shard(s)")


def merged_shapes(
    shards: list[dict[str, Tensor]], files: list[Path], args: ModelArgs
) -> dict[str, tuple[int, ...]]:
    """The shape each tensor has once the shards are merged, without reading any data."""
    _check_same_names(shards, files)
    out = {}
    for name, t in shards[0].items():
        shape = list(t.shape)
        dim = _split_dim(name, tuple(shape), len(shards), args)
        if dim is not None:
            shape[dim] = sum(sd[name].shape[dim] for sd in shards)
        out[name] = tuple(shape)
    return out


def merge_shards(shards: list[dict[str, Tensor]], files: list[Path], args: ModelArgs) -> dict[str, Tensor]:
    """One state dict (Meta names) from model-parallel shards: split tensors concatenated
    along their split dim, replicated ones (norms) taken from shard 0."""
    _check_same_names(shards, files)
    if len(shards) == 1:
        return dict(shards[0])
    merged = {}
    for name in shards[0]:
        parts = [sd[name] for sd in shards]
        dim = _split_dim(name, tuple(parts[0].shape), len(parts), args)
        merged[name] = parts[0] if dim is None else torch.cat(parts, dim=dim)
    return merged


def _is_tied(state: Mapping[str, Tensor]) -> bool:
    """Meta's files tie the output head to the embedding by leaving ``output.weight`` out
    or by storing the same values twice (Llama 3.2 1B/3B)."""
    head, embed = state.get("output.weight"), state.get("tok_embeddings.weight")
    if head is None:
        return True
    return embed is not None and head.shape == embed.shape and torch.equal(head, embed)


def _to_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {meta_to_hf_name(n) or n: t for n, t in state.items()}


def hf_state_from_meta(
    merged: Mapping[str, Tensor], args: ModelArgs, *, source: str,
    other_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[ModelArgs, dict[str, Tensor]]:
    """(args with the tying the weights show, herd-named state with q/k rows in HF's rotary
    order) from merged Meta tensors, checked against ``args``. ``other_shapes`` (herd names)
    stand for tensors loaded elsewhere (quantized ones) in the check."""
    args = args.replace(tie_word_embeddings=_is_tied(merged))
    state = _to_hf(merged)
    shapes = {n: tuple(t.shape) for n, t in state.items()} | dict(other_shapes or {})
    check_weights(args, shapes, source=source, fields=META_FIELDS, display=_display)
    for name, heads in _rotary_heads(args).items():
        state[name] = interleaved_to_half(state[name], heads)
    return args, state


def read_meta_params(
    src: str | os.PathLike,
    *,
    rope_scaling_factor: float | RopeScaling | None = None,
    tie_word_embeddings: bool | None = None,
) -> MetaParams:
    """``MetaParams`` of a Meta checkpoint directory (see ``args_from_params``)."""
    path = meta_root(src) / PARAMS_NAME
    return args_from_params(read_json(path), rope_scaling_factor=rope_scaling_factor,
                            tie_word_embeddings=tie_word_embeddings, source=str(path))


def load_meta_with_params(
    src: str | os.PathLike,
    *,
    rope_scaling_factor: float | RopeScaling | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Transformer, MetaParams]:
    """(model, MetaParams) from a Meta checkpoint; see ``load_meta``."""
    root = meta_root(src)
    if any(root.glob(FP8_SCALES_GLOB)):
        raise CheckpointError(f"{root} is Meta's FP8 layout (fp8_scales_*.pt beside the shards): load it with "
                              "herd.checkpoint.load_any or herd.quant.meta_fp8.load_meta_fp8")
    files = shard_files(root)
    shards = [load_shard(p) for p in files]
    info = read_meta_params(root, rope_scaling_factor=rope_scaling_factor)
    merged = merge_shards(shards, files, info.args)
    args, state = hf_state_from_meta(merged, info.args, source=str(root / PARAMS_NAME))
    info = dataclasses.replace(info, args=args)
    target = as_dtype(dtype) or state[EMBED].dtype
    model = build_model(args, state, dtype=target, device=device, display=_display)
    log.info("loaded Meta checkpoint %s (%d shard(s), %s): %s", root, len(files), target,
             info.rope_scaling_source)
    return model, info


def load_meta(
    src: str | os.PathLike,
    *,
    rope_scaling_factor: float | RopeScaling | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
) -> Transformer:
    """A ``Transformer`` from Meta's layout (``src`` or ``src/original``), shards merged.

    Files are read with ``torch.load(weights_only=True, mmap=True)``; the q/k rows are
    permuted to HF's rotary layout; a checkpoint whose ``output.weight`` is absent or
    equal to the embedding (Llama 3.2 1B/3B) gets tied embeddings. Where the RoPE scaling
    came from is logged (``load_meta_with_params`` returns it). ``dtype`` defaults to the
    files' dtype.
    """
    return load_meta_with_params(src, rope_scaling_factor=rope_scaling_factor, dtype=dtype, device=device)[0]


# ----------------------------------------------------------------------------- writing


def _ffn_params(args: ModelArgs) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that Meta's derivation turns into ``args.ffn_dim``:
    the model's own, else those of the preset of the same shape (a config.json only gives
    the width), else ones derived from the width."""
    for source in [args, *(PRESETS[n] for n in presets_of_shape(args))]:
        if dataclasses.replace(args, hidden_dim=None, multiple_of=source.multiple_of,
                               ffn_dim_multiplier=source.ffn_dim_multiplier).ffn_dim == args.ffn_dim:
            return source.multiple_of, source.ffn_dim_multiplier
    base = int(2 * (4 * args.dim) / 3)
    multiplier = None if base <= args.ffn_dim else args.ffn_dim / base
    derived = dataclasses.replace(args, hidden_dim=None, multiple_of=args.ffn_dim,
                                  ffn_dim_multiplier=multiplier)
    if derived.ffn_dim != args.ffn_dim:
        raise CheckpointError(f"FFN width {args.ffn_dim} cannot be expressed in params.json")
    return args.ffn_dim, multiplier


def params_from_args(args: ModelArgs) -> dict:
    """A params.json dict for ``args`` (Meta's keys; the RoPE factor is implied by the shape)."""
    if args.head_dim * args.n_heads != args.dim:
        raise CheckpointError(f"params.json cannot express head_dim {args.head_dim} != dim / n_heads")
    multiple_of, multiplier = _ffn_params(args)
    return {
        "dim": args.dim,
        "ffn_dim_multiplier": multiplier,
        "multiple_of": multiple_of,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "n_layers": args.n_layers,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "use_scaled_rope": args.rope_scaling is not None,
        "vocab_size": args.vocab_size,
    }


def check_model_parallel(args: ModelArgs, n: int) -> None:
    if n < 1 or args.n_kv_heads % n or args.n_heads % n:
        raise CheckpointError(f"model_parallel={n} must be >= 1 and divide n_heads ({args.n_heads}) and "
                              f"n_kv_heads ({args.n_kv_heads})")


def meta_state(model: Transformer, dtype: torch.dtype | str | None = None,
               skip: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """``model``'s tensors by Meta name on the CPU in ``dtype`` (default: the embedding's), q/k
    rows in Meta's interleaved rotary order, no ``output.weight`` when tied; herd names
    starting with a prefix in ``skip`` are left out (for a writer that stores them its way)."""
    args = model.args
    dtype = as_dtype(dtype) or model.model.embed_tokens.weight.dtype
    heads = _rotary_heads(args)
    state = {}
    for name, t in model.state_dict().items():
        if (name == LM_HEAD and args.tie_word_embeddings) or (skip and name.startswith(skip)):
            continue
        t = t.detach().to(device="cpu", dtype=dtype)
        if name in heads:
            t = half_to_interleaved(t, heads[name])
        state[hf_to_meta_name(name)] = t
    return state


def shard_state(state: Mapping[str, Tensor], n: int) -> list[dict[str, Tensor]]:
    """Split a state dict (Meta names) ``n`` ways as Meta's model-parallel reference does."""
    if n == 1:
        return [dict(state)]
    shards: list[dict[str, Tensor]] = [{} for _ in range(n)]
    for name, t in state.items():
        split = _lookup(name)[1]  # every name here came from hf_to_meta_name
        dim = 0 if split == _VOCAB_SPLIT else split  # Llama 3's reference splits the vocab
        if dim is None:
            for sd in shards:
                sd[name] = t.clone()
            continue
        if t.shape[dim] % n:
            raise CheckpointError(f"{name} dim {dim} ({t.shape[dim]}) does not split into {n} shards")
        for sd, part in zip(shards, t.chunk(n, dim=dim), strict=True):
            sd[name] = part.clone()  # a view would save the whole storage
    return shards


def save_meta(
    model: Transformer,
    dst: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    model_parallel: int = 1,
    tokenizer: Any = None,
) -> Path:
    """Write ``model`` in Meta's layout: params.json + consolidated.00.pth ... (split
    ``model_parallel`` ways as Meta's reference shards it), q/k rows in Meta's interleaved
    rotary order; tied embeddings write no ``output.weight``. The directory appears whole
    or not at all. Note params.json cannot record a RoPE scaling other than the one its
    shape's preset implies; a reader needs ``rope_scaling_factor`` for anything else.
    """
    model = unwrap(model)
    params = params_from_args(model.args)
    check_model_parallel(model.args, model_parallel)
    shards = shard_state(meta_state(model, dtype), model_parallel)
    with atomic_directory(dst, stale=("consolidated.*.pth",)) as tmp:
        for rank, sd in enumerate(shards):
            torch.save(sd, tmp / f"consolidated.{rank:02d}.pth")
        (tmp / PARAMS_NAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        write_tokenizer(tokenizer, tmp)
    return Path(dst)


def convert_meta_to_hf(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    rope_scaling_factor: float | RopeScaling | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_size: int | str = "5GB",
) -> dict:
    """Convert a Meta checkpoint to herd's native (HF) layout, tokenizer included.

    Returns a report: {"src", "dst", "preset", "rope_scaling", "rope_scaling_source",
    "dtype", "tokenizer"}.
    """
    root = meta_root(src)
    model, info = load_meta_with_params(root, rope_scaling_factor=rope_scaling_factor, dtype=dtype)
    tok_file = root / TIKTOKEN_FILE
    tokenizer = load_tokenizer(root) if tok_file.is_file() else None
    if tokenizer is None and tok_file.is_file():
        tokenizer = tok_file  # herd.tokenizer unavailable: copy the file as it is
    save_pretrained(model, dst, tokenizer=tokenizer, max_shard_size=max_shard_size)
    s = info.args.rope_scaling
    return {
        "src": str(root),
        "dst": str(dst),
        "preset": info.preset,
        "rope_scaling": None if s is None else dataclasses.asdict(s),
        "rope_scaling_source": info.rope_scaling_source,
        "dtype": dtype_name(model.model.embed_tokens.weight.dtype),
        "tokenizer": str(tok_file) if tok_file.is_file() else None,
    }

