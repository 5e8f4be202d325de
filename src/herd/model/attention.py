"""The attention backend interface and the two stateless backends used for training.

The transformer computes q, k, v (RoPE applied) and hands them to a backend:

    backend.attend(layer, q, k, v) -> out
        q: (B, n_heads, T, head_dim)     k, v: (B, n_kv_heads, T, head_dim)
        out: (B, n_heads, T, head_dim)

A backend owns what the model should not know about: which keys exist (a KV cache
writes the new k, v and attends over everything cached), and which query may see which
key (causal, document masks, padding). The preallocated cache of ``herd.generation`` and
the paged cache of ``herd.engine`` are backends too; the model file never changes.
Grouped-query attention is left to the kernels (``enable_gqa``): k and v are never
repeated in memory.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionBackend(Protocol):
    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


class CausalAttention:
    """Plain causal self-attention over the tokens of this forward pass (SDPA)."""

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=True)


CAUSAL = CausalAttention()


def positions_from_document_ids(document_ids: Tensor) -> Tensor:
    """Positions that restart at 0 at each document boundary. (B, T) -> (B, T)."""
    b, t = document_ids.shape
    idx = torch.arange(t, device=document_ids.device).expand(b, t)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


FLEX_MIN_HEAD_DIM = 16


class DocumentMaskedAttention:
    """Causal attention that never crosses a document boundary in a packed row.

    ``document_ids`` (B, T) gives each token's document; a query sees a key only when
    both belong to the same document and the key is not in its future. On CUDA the mask
    is a flex_attention block mask (blocks of 128 that lie wholly outside every document
    are skipped); on CPU, where flex_attention has no backward pass, the same mask is a
    dense boolean SDPA mask, so training and inference agree on every device.
    """

    def __init__(self, document_ids: Tensor, *, use_flex: bool | None = None) -> None:
        if document_ids.dim() != 2:
            raise ValueError(f"document_ids must be (batch, seq_len), got shape {tuple(document_ids.shape)}")
        self.document_ids = document_ids
        self.use_flex = document_ids.is_cuda if use_flex is None else use_flex
        b, t = document_ids.shape
        if self.use_flex:
            from torch.nn.attention.flex_attention import create_block_mask

            docs = document_ids

            def same_document_causal(bi, h, qi, ki):
                return (qi >= ki) & (docs[bi, qi] == docs[bi, ki])

            self.block_mask = create_block_mask(
                same_document_causal, b, None, t, t, device=document_ids.device
            )
            self.mask = None
        else:
            self.mask = self._dense_mask()
            self.block_mask = None

    def _dense_mask(self) -> Tensor:
        ids = self.document_ids
        pos = torch.arange(ids.shape[1], device=ids.device)
        causal = pos[:, None] >= pos[None, :]
        same = ids[:, :, None] == ids[:, None, :]
        return (causal & same)[:, None]  # (B, 1, T, T)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # flex_attention's CUDA kernels need a head dimension of at least 16 (tiny test models have 8)
        if self.block_mask is not None and q.shape[-1] >= FLEX_MIN_HEAD_DIM:
            return _flex_attention()(q, k, v, block_mask=self.block_mask, enable_gqa=True)
        if self.mask is None:
            self.mask = self._dense_mask()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, enable_gqa=True)


_FLEX = None


def _flex_attention():
    """flex_attention, compiled once on CUDA (eager on CPU, where it is a reference kernel)."""
    global _FLEX
    if _FLEX is None:
        import warnings

        from torch.nn.attention.flex_attention import flex_attention

        if torch.cuda.is_available():
            _FLEX = torch.compile(flex_attention, dynamic=False)
        else:
            def _eager(*args, **kwargs):
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
                    return flex_attention(*args, **kwargs)

            _FLEX = _eager
    return _FLEX
