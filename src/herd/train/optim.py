"""AdamW with decoupled weight decay in two parameter groups.

Which tensors decay follows the practice of GPT-2/nanoGPT, Megatron and OLMo for Llama-style
models: every matrix (attention and MLP projections, and by default the embedding and
output tables) decays; one-dimensional tensors (RMSNorm gains; Llama has no biases) never
do — decaying a norm's gain towards 0 only shrinks activations. ``decay_embeddings=false``
exempts the embedding / output tables too (as some recipes do for tied embeddings).
torchtitan decays all parameters; Meta's Llama 3 paper gives the rate (0.1) but not the
grouping. Tied embeddings are one tensor and land in one group.

The implementation is PyTorch's: ``fused`` where the parameters' device supports it
(CUDA and CPU in torch >= 2.4), else ``foreach`` (which DTensor parameters under FSDP2
also use).
"""

from __future__ import annotations

import torch
from torch import nn

from herd.train.config import OptimConfig

_EMBEDDING_NAMES = ("embed_tokens", "lm_head")


def param_groups(model: nn.Module, weight_decay: float, *, decay_embeddings: bool = True) -> list[dict]:
    """[decay group, no-decay group] over the trainable parameters (each tensor once)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_embedding = any(part in name for part in _EMBEDDING_NAMES)
        if p.dim() < 2 or (is_embedding and not decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; lr is the peak (the scheduler scales it)."""
    groups = param_groups(model, cfg.weight_decay, decay_embeddings=cfg.decay_embeddings)
    impl = cfg.implementation
    if impl == "auto":
        impl = "fused" if _fused_ok(model) else "foreach"
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs)


def _fused_ok(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    if any(isinstance(p, DTensor) for p in params):
        return all(p.device.type == "cuda" for p in params)
    return all(p.device.type in ("cuda", "cpu") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
               for p in params)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the total gradient norm over all ranks to ``max_norm`` (0: measure only); returns it.

    Under FSDP2 the gradients are DTensor shards and their norm is reduced over the mesh,
    so every rank clips by the same global factor. With tensor parallelism the split
    weights live on the ("dp", "tp") mesh and the rest on "dp" alone; DTensor cannot stack
    norms from two meshes, so each mesh's norm is reduced on its own, then combined.
    """
    from torch.distributed.tensor import DTensor

    groups: dict[object, list[torch.Tensor]] = {}  # device mesh (None: plain tensors) -> parameters
    for p in model.parameters():
        if p.grad is not None:
            groups.setdefault(p.device_mesh if isinstance(p, DTensor) else None, []).append(p)
    if not groups:
        return 0.0
    norms = []
    for params in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0, error_if_nonfinite=False, foreach=True)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    limit = max_norm if max_norm > 0 else float("inf")
    for params in groups.values():
        torch.nn.utils.clip_grads_with_norm_(params, limit, total, foreach=True)
    return float(total)
