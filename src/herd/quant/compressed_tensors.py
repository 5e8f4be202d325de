"""The compressed-tensors ``pack-quantized`` layout (what llm-compressor writes and vLLM reads)
for int8 and int4 weight-only checkpoints.

Per quantized linear ``NAME``: ``NAME.weight_packed`` (int32, 32/num_bits values per word,
value ``q + 2**(num_bits-1)`` at bit ``(i * num_bits) % 32`` of word ``i * num_bits // 32``
along the input dimension), ``NAME.weight_scale`` ([out, 1] per channel, [out, in/g] per
group), ``NAME.weight_shape`` (int64 [2]) and, for asymmetric groups,
``NAME.weight_zero_point`` (packed the same way along the *output* dimension). The dequantized
weight is ``(q - zero_point) * scale``. ``config.json`` carries ``quantization_config`` with
``quant_method: compressed-tensors``; field names follow the compressed-tensors package
(its ``QuantizationConfig`` validates what herd writes, in the tests).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from herd.checkpoint.errors import CheckpointError
from herd.quant.int4 import Int4Linear
from herd.quant.int8 import Int8Linear

QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
COMPRESSED_TENSORS_VERSION = "0.20.0"  # the release whose field names herd writes (checked in tests)


def pack_int32(q: Tensor, num_bits: int, dim: int = 1) -> Tensor:
    """Signed ``num_bits`` values (int8, 2-D) -> int32 words along ``dim`` (padding with zeros)."""
    if num_bits not in (4, 8):
        raise ValueError(f"herd packs 4- or 8-bit values, got num_bits={num_bits}")
    v = q.t() if dim == 0 else q
    rows, cols = v.shape
    per_word = 32 // num_bits
    words = math.ceil(cols / per_word)
    u = (v.to(torch.int64) + (1 << (num_bits - 1))) & ((1 << num_bits) - 1)
    u = torch.nn.functional.pad(u, (0, words * per_word - cols)).reshape(rows, words, per_word)
    shifts = torch.arange(per_word, dtype=torch.int64, device=q.device) * num_bits
    packed = (u << shifts).sum(dim=-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return (packed.t() if dim == 0 else packed).contiguous()


def unpack_int32(packed: Tensor, num_bits: int, shape: tuple[int, int], dim: int = 1) -> Tensor:
    """Inverse of ``pack_int32``: int8 values of ``shape``."""
    if num_bits not in (4, 8):
        raise ValueError(f"herd unpacks 4- or 8-bit values, got num_bits={num_bits}")
    p = packed.t() if dim == 0 else packed
    per_word = 32 // num_bits
    shifts = torch.arange(per_word, dtype=torch.int64, device=packed.device) * num_bits
    u = (p.to(torch.int64)[..., None] >> shifts) & ((1 << num_bits) - 1)
    cols = shape[dim]
    v = (u.reshape(p.shape[0], -1)[:, :cols] - (1 << (num_bits - 1))).to(torch.int8)
    return (v.t() if dim == 0 else v).contiguous()


def weight_args(module: Int8Linear | Int4Linear) -> dict:
    """The ``weights`` QuantizationArgs of a module, as compressed-tensors spells them."""
    if isinstance(module, Int8Linear):
        return {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None, "strategy": "channel",
                "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax",
                "observer_kwargs": {}}
    return {"num_bits": 4, "type": "int", "symmetric": False, "group_size": module.group_size,
            "strategy": "group", "dynamic": False, "actorder": None, "block_structure": None,
            "observer": "minmax", "observer_kwargs": {}}


def quantization_config(weights: dict, ignore: list[str]) -> dict:
    return {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                      "output_activations": None, "format": FORMAT}},
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "version": COMPRESSED_TENSORS_VERSION,
    }


def module_tensors(name: str, module: Int8Linear | Int4Linear) -> dict[str, Tensor]:
    """The tensors a quantized linear is saved as."""
    if isinstance(module, Int8Linear):
        q, scale, zp = module.weight.cpu(), module.weight_scale.cpu()[:, None], None
        bits = 8
    else:
        q, scale, zp = module.int_values().cpu(), module.weight_scale.cpu(), module.weight_zero_point.cpu()
        bits = 4
    out = {f"{name}.weight_packed": pack_int32(q, bits),
           f"{name}.weight_scale": scale.float().contiguous(),
           f"{name}.weight_shape": torch.tensor(q.shape, dtype=torch.int64)}
    if zp is not None:
        out[f"{name}.weight_zero_point"] = pack_int32(zp, bits, dim=0)
    return out


def _group(config: dict, source: str) -> dict:
    groups = config.get("config_groups") or {}
    weights = [g.get("weights") for g in groups.values() if isinstance(g, dict) and g.get("weights")]
    if len(weights) != 1:
        raise CheckpointError(f"{source}: herd reads compressed-tensors checkpoints with exactly one "
                              f"weight config group, found {len(weights)}")
    fmt = config.get("format") or next(iter(groups.values())).get("format")
    if fmt != FORMAT:
        raise CheckpointError(f"{source}: compressed-tensors format {fmt!r} is not read by herd (it reads {FORMAT})")
    w = weights[0]
    if w.get("type", "int") != "int" or w.get("num_bits") not in (4, 8) or w.get("dynamic"):
        raise CheckpointError(f"{source}: compressed-tensors weights {w} are not int4/int8 static weight-only")
    if config_has_activations(groups):
        raise CheckpointError(f"{source}: activation quantization (input_activations) is not supported")
    return w


def config_has_activations(groups: dict) -> bool:
    return any(isinstance(g, dict) and g.get("input_activations") for g in groups.values())


def load_module(name: str, tensors: dict[str, Tensor], config: dict, source: str) -> Int8Linear | Int4Linear:
    """A quantized linear from its saved tensors (popped from ``tensors``)."""
    w = _group(config, source)
    bits, strategy = int(w["num_bits"]), w.get("strategy")
    if f"{name}.weight_g_idx" in tensors:
        raise CheckpointError(f"{source}: {name} has activation-order indices (weight_g_idx); not supported")
    try:
        packed = tensors.pop(f"{name}.weight_packed")
        scale = tensors.pop(f"{name}.weight_scale").float()
        shape = tuple(int(s) for s in tensors.pop(f"{name}.weight_shape").tolist())
    except KeyError as e:
        raise CheckpointError(f"{source}: quantized layer {name} lacks tensor {e.args[0]}") from None
    zp_packed = tensors.pop(f"{name}.weight_zero_point", None)
    q = unpack_int32(packed, bits, shape)
    if strategy == "channel":
        scale = scale.reshape(shape[0], 1)
        group = shape[1]
    elif strategy == "group":
        group = int(w["group_size"])
    else:
        raise CheckpointError(f"{source}: compressed-tensors strategy {strategy!r} is not supported (channel, group)")
    if zp_packed is not None and not w.get("symmetric", True):
        zp = unpack_int32(zp_packed, bits, (shape[0], scale.shape[1]), dim=0)
    else:
        zp = torch.zeros(scale.shape, dtype=torch.int8)
    if bits == 8:
        if strategy != "channel" or bool(zp.any()):
            raise CheckpointError(f"{source}: herd runs int8 weights per channel and symmetric only ({name})")
        return Int8Linear.from_quantized(q, scale)
    if strategy == "channel":
        raise CheckpointError(f"{source}: per-channel int4 ({name}) is not supported; use groups of 32/64/128")
    return Int4Linear.from_quantized(q, scale, zp, group)
