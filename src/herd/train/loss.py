"""Cross-entropy over the LM head in chunks of tokens, never holding the full logits.

With a 128K vocabulary the logits of a long row dwarf everything else: 8,192 tokens x
128,256 x 4 bytes = 4.2 GB in fp32, and autograd would keep that (and the log-softmax)
for the backward. Here the final hidden states go through the head ``chunk_size``
tokens at a time, and each chunk's logits are freed (their buffer reused) before the
next. The gradient of a cross-entropy with respect to its logits is known in closed
form, ``softmax - onehot``, so a chunk's gradients for the hidden states and the head
weight come straight from its log-probabilities. Two modes:

- ``recompute`` (default): the forward keeps only the hidden states; the backward goes
  through the chunks again, recomputing each one's logits (activation checkpointing per
  chunk, without autograd's bookkeeping). Extra memory: one chunk of logits.
- ``fused``: the forward computes the gradients right away and keeps them; the backward
  only scales them ("fused linear cross-entropy", as in Liger / Apple's CCE, in plain
  PyTorch). No matmul is recomputed, but a head-sized fp32 gradient buffer lives from the
  forward to the backward (1 GB for Llama 3.2 1B's 128,256 x 2,048 head).

Without gradients (evaluation) the chunks just sum the loss. Returns the loss SUM and
the number of targets, so the caller divides once by the target count over all
micro-batches and ranks (no mean-of-means bias).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100


def chunked_cross_entropy(
    hidden: Tensor,
    weight: Tensor | nn.Linear,
    labels: Tensor,
    chunk_size: int = 1024,
    *,
    ignore_index: int = IGNORE_INDEX,
    mode: str = "recompute",
) -> tuple[Tensor, Tensor]:
    """Sum of token cross-entropies of ``hidden @ weight.T`` against ``labels``, and the target count.

    hidden: (..., dim); weight: the LM head's weight (vocab, dim), or the head itself; labels: (...) int64, with
    ``ignore_index`` where there is no target. Logits are formed ``chunk_size`` tokens at a
    time, in the autocast dtype when autocast is on, with the softmax in fp32.

    ``mode="recompute"`` (default) keeps only the hidden states for the backward, which
    recomputes each chunk's logits; ``mode="fused"`` computes the gradients during the
    forward and keeps them instead (no recomputed matmul, but a head-sized fp32 gradient
    buffer lives from the forward to the backward).
    """
    if isinstance(weight, nn.Module):
        weight = weight.weight
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not match")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} is not (vocab, {hidden.shape[-1]})")
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    if mode not in ("recompute", "fused"):
        raise ValueError(f"mode must be 'recompute' or 'fused', got {mode!r}")
    loss = _LinearCrossEntropy.apply(h, weight, y, chunk_size, ignore_index, dtype, mode)
    return loss, (y != ignore_index).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, y: Tensor, chunk_size: int, ignore_index: int,
                dtype: torch.dtype, mode: str) -> Tensor:
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        fused = need_grad and mode == "fused"
        with torch.autocast(h.device.type, enabled=False):
            grads = _Grads(h, weight, ctx.needs_input_grad[:2]) if fused else None
            total = _run_chunks(h, weight, y, chunk_size, ignore_index, dtype, grads)
        ctx.chunking = (chunk_size, ignore_index, dtype, mode)
        ctx.weight_dtype = weight.dtype
        if fused:
            ctx.save_for_backward(grads.h, grads.w)
        elif need_grad:
            ctx.save_for_backward(h, weight, y)  # recomputed chunk by chunk in the backward
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        chunk_size, ignore_index, dtype, mode = ctx.chunking
        if mode == "fused":
            grad_h, grad_w = ctx.saved_tensors
        else:
            h, weight, y = ctx.saved_tensors
            with torch.autocast(h.device.type, enabled=False):
                grads = _Grads(h, weight, ctx.needs_input_grad[:2])
                _run_chunks(h, weight, y, chunk_size, ignore_index, dtype, grads)
            grad_h, grad_w = grads.h, grads.w
        dh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None, None


class _Grads:
    """Gradient buffers of the loss sum for the hidden states and the head weight (fp32 for the weight)."""

    def __init__(self, h: Tensor, weight: Tensor, needed: tuple[bool, bool]) -> None:
        self.h = torch.empty_like(h) if needed[0] else None
        self.w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needed[1] else None


def _run_chunks(h: Tensor, weight: Tensor, y: Tensor, chunk_size: int, ignore_index: int, dtype: torch.dtype,
                grads: _Grads | None) -> Tensor:
    """The loss sum over all chunks; with ``grads``, also fill in its gradients."""
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    # two (chunk, vocab) buffers reused by every chunk: no fresh vocab-sized allocation per chunk
    rows = min(chunk_size, h.shape[0])
    logits_buf = torch.empty(rows, weight.shape[0], dtype=dtype, device=h.device)
    logp_buf = torch.empty(rows, weight.shape[0], dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk_size):
        hc = h[start:start + chunk_size].to(dtype)
        yc = y[start:start + chunk_size]
        valid = yc != ignore_index
        safe = torch.where(valid, yc, 0)
        n = hc.shape[0]
        logits = torch.mm(hc, w.t(), out=logits_buf[:n])
        logp = torch._log_softmax(logits.float(), -1, False, out=logp_buf[:n])  # softmax in fp32
        nll = -logp.gather(1, safe[:, None]).squeeze(1)
        total += torch.where(valid, nll, 0.0).sum()
        if grads is None:
            continue
        # d loss / d logits = softmax - onehot (rows without a target: 0), built in place
        g = logp.exp_()
        g[torch.arange(n, device=g.device), safe] -= 1.0
        g.mul_(valid[:, None])
        g = g.to(dtype)
        if grads.h is not None:
            grads.h[start:start + chunk_size] = (g @ w).to(h.dtype)
        if grads.w is not None:
            if dtype == torch.float32:
                grads.w.addmm_(g.t(), hc)
            else:
                grads.w.add_((g.t() @ hc).float())
    return total
