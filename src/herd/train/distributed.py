"""Process groups, devices and FSDP2 sharding; the model never knows about any of it.

Launch with torchrun (``torchrun --nproc_per_node N -m herd.cli pretrain ...``): the
environment gives RANK / WORLD_SIZE / LOCAL_RANK, the process group uses NCCL on CUDA
and gloo on CPU. With more than one process the model is built on the meta device (no
storage), every ``TransformerBlock`` becomes an FSDP2 unit (``fully_shard``), then the
root (embeddings, final norm, LM head); ``to_empty`` then allocates only this rank's
shards, and the weights are initialised in place:

- on CUDA, ``init_weights`` runs on the sharded DTensors; DTensor's offset-based RNG
  makes every shard hold the values a single device would have drawn, and no rank ever
  holds a full tensor;
- on CPU (gloo: tests, laptops) DTensor has no sharded RNG, so rank 0 initialises the
  weights in host memory and every tensor is scattered to its shards one at a time
  (``broadcast_from_rank0``): identical values at any world size, which the tests check.

With ``train.tensor_parallel = tp > 1`` the ranks form a 2-D mesh ``("dp", "tp")``:
the blocks are first split over ``"tp"`` by ``herd.train.tensor_parallel`` (PyTorch's
``parallelize_module``), then FSDP2 shards them over ``"dp"`` (the torchtitan
composition). Ranks of one TP group read the same rows (``dp_rank`` / ``dp_size``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from herd.model import ModelArgs, Transformer
from herd.train.tensor_parallel import TensorParallelError, apply_tensor_parallel, check_tensor_parallel, make_mesh


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call created the process group (and destroys it at the end)
    tp_size: int = 1  # tensor-parallel degree; ranks r // tp_size share the data of one DP rank
    mesh: Any = None  # the ("dp", "tp") DeviceMesh when tp_size > 1

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel index: which rows of the global batch it reads."""
        return self.rank // self.tp_size

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks: how many ways the global batch is split."""
        return self.world_size // self.tp_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto", tensor_parallel: int = 1) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; otherwise one process.

    ``tensor_parallel > 1`` also builds the ``("dp", "tp")`` mesh; it must divide the world size.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if tensor_parallel < 1 or world_size % tensor_parallel:
        raise TensorParallelError(f"train.tensor_parallel = {tensor_parallel} does not divide the world size "
                                  f"{world_size} (torchrun --nproc_per_node ... must be a multiple of it)")
    if world_size == 1:
        return DistInfo(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    if tensor_parallel == 1:
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)
    mesh = make_mesh(dev.type, dist.get_world_size(), tensor_parallel)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns, tensor_parallel, mesh)


def shutdown_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few scalars over the data-parallel ranks (float64, so counts stay exact).

    Under tensor parallelism the ranks of one TP group hold the same rows and the same
    loss, so the sum runs over the ``"dp"`` mesh dimension only.
    """
    if not info.sharded:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, group=info.mesh.get_group("dp") if info.mesh is not None else None)
    return t.tolist()


def build_model(args: ModelArgs, info: DistInfo, *, init_std: float, seed: int,
                activation_checkpointing: bool = False, compile: bool = False,
                mixed_precision: torch.dtype | None = None) -> nn.Module:
    """The Transformer, initialised (``init_weights(init_std)`` seeded by ``seed``), sharded when world_size > 1.

    Parameters stay fp32 (the master weights); ``mixed_precision`` (bf16) is applied by
    autocast in the loop on one device and by FSDP2's MixedPrecisionPolicy when sharded.
    """
    with torch.device("meta"):
        model = Transformer(args)
    wrap_blocks(model, activation_checkpointing=activation_checkpointing, compile=compile)
    if not info.sharded:
        model.to_empty(device=info.device)
        _retie(model)
        model.init_weights(init_std, generator=torch.Generator(info.device).manual_seed(seed))
        return model

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32) if mixed_precision else (
        MixedPrecisionPolicy())
    dp_mesh = None
    if info.tp_size > 1:
        check_tensor_parallel(args, info.tp_size, info.world_size)
        apply_tensor_parallel(model, info.mesh["tp"])
        dp_mesh = info.mesh["dp"]  # FSDP2 over "dp" only, even of size 1 (its mixed precision applies)
    for block in model.model.layers:
        fully_shard(block, mesh=dp_mesh, mp_policy=mp)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp)
    if info.device.type == "cuda":
        model.to_empty(device=info.device)
        model.init_weights(init_std, generator=torch.Generator(info.device).manual_seed(seed))
    else:
        _init_from_rank0(model, args, info, init_std, seed)
    return model


def _retie(model: Transformer) -> None:
    """``to_empty`` gives each module its own tensor: tie the LM head to the embedding again."""
    if model.args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight


def _init_from_rank0(model: nn.Module, args: ModelArgs, info: DistInfo, init_std: float, seed: int) -> None:
    """CPU sharded init, one tensor at a time: rank 0 draws each full tensor in
    ``init_plan``'s order (the single-process values), broadcasts it, and every rank keeps
    its shard (``distribute_tensor`` without communication); a rank holds at most one full
    tensor at a time, never the model."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    model.to_empty(device=info.device)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, init in model.init_plan(init_std):
            param = model.get_parameter(name)
            full = torch.empty(param.shape, dtype=param.dtype, device=info.device)
            if info.is_main:
                init(full, generator)
            dist.broadcast(full, src=0)
            if isinstance(param, DTensor):  # every rank has the tensor: each keeps its own shard, no more traffic
                param.copy_(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None))
            else:
                param.copy_(full)
            del full
        head, embed = model.get_parameter("lm_head.weight"), model.get_parameter("model.embed_tokens.weight")
        if args.tie_word_embeddings and head is not embed:  # the plan draws the tied table once
            head.copy_(embed)


# ModelArgs fields that fix the weights' shapes; the rest (RoPE theta and scaling, the
# context length, token ids) may change when training continues from a checkpoint.
SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_dim", "head_dim", "tie_word_embeddings")


def load_initial_weights(model: nn.Module, path: str | os.PathLike, args: ModelArgs, info: DistInfo) -> None:
    """Replace ``model``'s initial weights with a checkpoint's (native or Meta layout): the
    start of a continued stage (long context, annealing) or of post-training. The
    checkpoint's shapes must match ``args``; its RoPE settings and context length need not.

    One process loads the whole checkpoint. A sharded model reads an (unquantized) HF-layout
    checkpoint one tensor at a time: rank 0 memory-maps it, each tensor is broadcast and
    every rank keeps its shard, so no rank holds the whole model. Other layouts (Meta's
    consolidated files, quantized checkpoints) are read whole on rank 0 and scattered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if info.sharded:
        streamable = [_streamable_hf(path, args) if info.is_main else None]
        dist.broadcast_object_list(streamable, src=0)
        if streamable[0] is not None:
            error = streamable[0] if isinstance(streamable[0], str) else None
            if error:
                raise ValueError(error)
            _stream_hf_tensors(model, path, info)
            return

    full: dict[str, torch.Tensor] = {}
    if info.is_main:
        from herd.checkpoint import load_any

        source = load_any(path, dtype=torch.float32)
        _check_shapes(path, source.args, args)
        full = source.state_dict()
    if not info.sharded:
        model.load_state_dict({k: v.to(info.device) for k, v in full.items()})
        return
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _check_shapes(path: str | os.PathLike, have_args: ModelArgs, want_args: ModelArgs) -> None:
    for name in SHAPE_FIELDS:
        have, want = getattr(have_args, name), getattr(want_args, name)
        if have != want:
            raise ValueError(f"model.init_from {path}: its {name} is {have}, the run's model has {want}")


def _streamable_hf(path: str | os.PathLike, args: ModelArgs) -> bool | str | None:
    """True for an unquantized HF-layout checkpoint whose shapes match (a message if they
    do not); None for the layouts read whole."""
    from herd.checkpoint.auto import detect_format
    from herd.checkpoint.hf import read_hf_args
    from herd.quant.checkpoint import quantization_method

    if detect_format(path) != "hf" or quantization_method(path) is not None:
        return None
    try:
        _check_shapes(path, read_hf_args(path)[0], args)
    except ValueError as e:
        return str(e)
    return True


def _stream_hf_tensors(model: nn.Module, path: str | os.PathLike, info: DistInfo) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    from herd.checkpoint.hf import read_headers, weight_files

    headers = read_headers(weight_files(Path(path))) if info.is_main else {}
    handles: dict = {}
    embed = "model.embed_tokens.weight"
    with torch.no_grad():
        for name, param in model.named_parameters():
            full = torch.empty(param.shape, dtype=torch.float32, device=info.device)
            if info.is_main:
                key = name if name in headers else embed  # a tied checkpoint may leave the head out
                if key not in headers:
                    raise ValueError(f"model.init_from {path}: no tensor {name} in its safetensors files")
                file = headers[key][0]
                if file not in handles:
                    from safetensors import safe_open

                    handles[file] = safe_open(str(file), framework="pt")
                full.copy_(handles[file].get_tensor(key))
            dist.broadcast(full, src=0)
            if isinstance(param, DTensor):  # every rank keeps its own shard, no more traffic
                param.copy_(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None))
            else:
                param.copy_(full)
            del full


def wrap_blocks(model: Transformer, *, activation_checkpointing: bool, compile: bool) -> None:
    """Per-block activation checkpointing and torch.compile (torchtitan's granularity).

    Both are applied in place (the block's ``forward`` is wrapped, ``Module.compile``), so
    parameter names stay HF's: no ``_checkpoint_wrapped_module`` / ``_orig_mod`` prefixes
    in checkpoints.
    """
    for block in model.model.layers:
        if activation_checkpointing:
            block.forward = _checkpointed(block.forward)
        if compile:
            block.compile()


def _checkpointed(forward):
    from torch.utils.checkpoint import checkpoint

    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    return run


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU with HF names (when sharded: gathered tensor by tensor)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
