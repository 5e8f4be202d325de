"""Tensor parallelism (Megatron-style) with PyTorch's own ``parallelize_module``.

The processes form a 2-D device mesh ``("dp", "tp")``: rank ``r`` is tensor-parallel
rank ``r % tp`` of data-parallel group ``r // tp`` (neighbouring ranks share a layer, as
torchtitan lays them out, so the frequent TP collectives stay within a node). Each
``TransformerBlock`` is split over ``"tp"``:

- attention ``q_proj`` / ``k_proj`` / ``v_proj`` are ``ColwiseParallel``: each rank owns
  ``n_heads / tp`` query heads and ``n_kv_heads / tp`` key/value heads (the GQA groups stay
  whole), and attention runs on its heads only;
- ``o_proj`` is ``RowwiseParallel``: the partial outputs are summed by one all-reduce;
- the SwiGLU ``gate_proj`` / ``up_proj`` are colwise, ``down_proj`` rowwise (one more
  all-reduce per block).

The blocks' inputs and outputs stay plain replicated tensors (``use_local_output``), so
the embeddings, the norms and the LM head are left whole on every TP rank: their
gradients are identical on every rank because the backward of a colwise layer's
replicated input is all-reduced by DTensor. The head stays whole on purpose: the chunked
cross-entropy (``herd.train.loss``) reads ``lm_head.weight`` as one (vocab, dim) matrix;
a vocabulary-parallel head would need loss parallelism inside that custom autograd
function. FSDP2 then shards every parameter over ``"dp"`` (``fully_shard`` with the
``"dp"`` sub-mesh), as torchtitan composes them.

Everything stays correct on gloo (CPU): TP needs all-reduce (rowwise outputs, the
colwise inputs' gradients) and all-gather (``full_tensor``), which gloo has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from herd.model import ModelArgs
from herd.train.config import ConfigError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


class TensorParallelError(ConfigError):
    """A tensor-parallel degree that the world size or the model cannot be split by (a config error)."""


def check_tensor_parallel(args: ModelArgs, tensor_parallel: int, world_size: int) -> None:
    """Raise ``TensorParallelError`` naming the first quantity ``tensor_parallel`` does not divide."""
    tp = tensor_parallel
    if tp < 1:
        raise TensorParallelError(f"train.tensor_parallel must be >= 1, got {tp}")
    if tp == 1:
        return
    if world_size % tp:
        raise TensorParallelError(f"train.tensor_parallel = {tp} does not divide the world size {world_size} "
                                  f"(torchrun --nproc_per_node ... must be a multiple of it)")
    for name in ("n_heads", "n_kv_heads", "ffn_dim"):
        value = getattr(args, name)
        if value % tp:
            raise TensorParallelError(f"train.tensor_parallel = {tp} does not divide the model's {name} = {value}")


def make_mesh(device_type: str, world_size: int, tensor_parallel: int) -> DeviceMesh:
    """The ``("dp", "tp")`` mesh over all ranks (``dp = world_size // tp``)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world_size // tensor_parallel, tensor_parallel),
                            mesh_dim_names=("dp", "tp"))


def block_plan() -> dict:
    """The per-block plan: q/k/v and gate/up column-wise, o and down row-wise."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Split every block of ``model`` (a ``Transformer``, possibly still on the meta device) over ``tp_mesh``."""
    from torch.distributed.tensor.parallel import parallelize_module

    for block in model.model.layers:
        parallelize_module(block, tp_mesh, block_plan())
