"""A preallocated key/value cache, used as the model's attention backend during generation.

Each layer owns two tensors of shape (batch, n_kv_heads, max_len, head_dim), allocated
once. Before every forward pass the generator tells the cache where this call's tokens
sit (``set_positions``); then, for each layer, ``attend`` writes the new keys and values
at those positions and lets the queries attend over the cached keys.

Each row has its own positions, so a batch of prompts of different lengths is
right-padded for the prefill and every row then decodes at its own position. The mask
lets a query at position p see the cached keys at positions <= p. Padding tokens write
keys past their row's prompt, but a row's next real token overwrites that slot before
any query of that row can see it, so the garbage is never read.

Two ways to choose how much of the cache a step reads:

* eager (``static=False``): only ``cache[:, :, :kv_len]``, kv_len = the largest position
  of the step + 1, so a decode step reads the keys that exist and nothing more;
* static (``static=True``): the whole ``max_len``, so every decode step has the same
  shapes and ``torch.compile`` traces it once (gpt-fast's layout). Size the cache to
  what the request needs (prompt + new tokens), not to the model's context.

Grouped-query attention stays un-repeated: SDPA broadcasts the n_kv_heads key/value
heads over the query heads (``enable_gqa``).

Batch invariance (on a CPU, one sequence, the eager cache): every query goes through
``attend_each_query``, the one SDPA call a lone decode step makes, over exactly the keys
it may see. SDPA's kernels sum in an order that depends on how many queries a call holds
and how many keys it masks, so in bf16 a token's attention came out a rounding apart when
it was computed in a prefill or a speculative verify pass of k+1 tokens rather than on its
own; with the products in ``cpu_gemv`` (whose rows are batch-invariant too), a token now
gets the same bits however the tokens around it are grouped: speculative greedy output is
plain greedy output token for token in bf16 as in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from herd.model.args import ModelArgs

SERIAL_BYTES = 1 << 20  # keys + values a query reads below which attention runs on one thread


def attend_each_query(q: Tensor, keys: Tensor, values: Tensor, visible: list[int]) -> Tensor:
    """Attention one query at a time, each over its own visible keys, as a lone decode step
    computes it. q (1, n_heads, T, hd); keys, values (1, n_kv, K, hd); query i sees
    ``keys[:, :, :visible[i]]``. Returns (1, n_heads, T, hd).

    Each query runs the same SDPA call, on the same kind of view, that a one-token step at
    its position runs, so its result does not depend on the other queries of the call (see
    the module docstring). With grouped-query attention the query heads sharing a KV head go
    in as that head's "query positions" (several times cheaper on CPU than SDPA's GQA path
    for bf16)."""
    _, n_heads, t, hd = q.shape
    n_kv = keys.shape[1]
    if len(visible) != t:
        raise ValueError(f"attend_each_query: {t} queries but {len(visible)} visible-key counts")
    # A short context is microseconds of work: split over threads, each call would wait on an
    # OpenMP fork and join (and for milliseconds when another process holds a core). Each
    # query's result does not depend on the thread count (SDPA hands out whole heads).
    threads = torch.get_num_threads()
    serial = threads > 1 and keys.is_cpu and 2 * max(visible) * n_kv * hd * keys.element_size() < SERIAL_BYTES
    if serial:
        torch.set_num_threads(1)
    try:
        out = []
        for i, n in enumerate(visible):
            qi, ki, vi = q[:, :, i:i + 1], keys[:, :, :n], values[:, :, :n]
            if n_heads != n_kv:
                o = F.scaled_dot_product_attention(qi.reshape(1, n_kv, n_heads // n_kv, hd), ki, vi)
                out.append(o.reshape(1, n_heads, 1, hd))
            else:
                out.append(F.scaled_dot_product_attention(qi, ki, vi))
    finally:
        if serial:
            torch.set_num_threads(threads)
    return out[0] if t == 1 else torch.cat(out, dim=2)


class KVCache:
    """Keys and values of ``batch_size`` sequences of up to ``max_len`` tokens, all layers."""

    def __init__(
        self,
        args: ModelArgs,
        batch_size: int,
        max_len: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        static: bool = False,
    ) -> None:
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"KVCache needs batch_size and max_len > 0, got {batch_size} and {max_len}")
        shape = (batch_size, args.n_kv_heads, max_len, args.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.batch_size, self.max_len, self.static = batch_size, max_len, static
        self._rows = torch.arange(batch_size, device=device)[:, None]  # (B, 1) for the scatter
        self._key_positions = torch.arange(max_len, device=device)
        self.positions: Tensor | None = None
        self.mask: Tensor | None = None
        self.kv_len = 0
        self.start: int | None = None
        # one sequence in an eager cache on a CPU: each query alone (``attend_each_query``)
        self.invariant = batch_size == 1 and not static and torch.device(device).type == "cpu"
        self._visible: list[int] | None = None

    def set_positions(self, positions: Tensor, kv_len: int | None = None, *, start: int | None = None) -> None:
        """Declare the positions (B, T) of the tokens of the next forward pass.

        ``kv_len`` is how many cache slots the step attends over (the largest position
        + 1; computed from ``positions`` when not given, which costs a device sync). A
        static cache always attends over all ``max_len`` slots. ``start`` says that every
        row's positions are start, start+1, ... (a prefill, or one row): the new keys and
        values are then written as one slice instead of scattered.
        """
        if positions.dim() != 2 or positions.shape[0] != self.batch_size:
            raise ValueError(
                f"positions must be (batch={self.batch_size}, seq_len), got shape {tuple(positions.shape)}"
            )
        if self.static:
            kv_len = self.max_len
        elif kv_len is None:
            kv_len = int(positions.max()) + 1
        if kv_len > self.max_len:
            raise ValueError(f"position {kv_len - 1} is past the end of the KV cache "
                             f"(max_len={self.max_len})")
        keys = self._key_positions[:kv_len]
        self.mask = (keys <= positions[:, :, None])[:, None]  # (B, 1, T, kv_len): key pos <= query pos
        self.positions = positions
        self.kv_len = kv_len
        self.start = start
        self._visible = [p + 1 for p in positions[0].tolist()] if self.invariant else None

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Write k, v (B, n_kv, T, hd) at this step's positions; attend q over the cache."""
        if self.positions is None:
            raise RuntimeError("KVCache.set_positions must be called before the forward pass")
        k_cache, v_cache = self.k[layer], self.v[layer]
        b, n_heads, t, hd = q.shape
        if self.start is not None:
            k_cache[:, :, self.start:self.start + t] = k
            v_cache[:, :, self.start:self.start + t] = v
        else:  # advanced indices on dims 0 and 2 address (B, T) slots, each a (n_kv, hd) slice
            k_cache[self._rows, :, self.positions] = k.transpose(1, 2)
            v_cache[self._rows, :, self.positions] = v.transpose(1, 2)
        n = self.kv_len
        n_kv = k.shape[1]
        if self._visible is not None:
            return attend_each_query(q, k_cache, v_cache, self._visible)
        if t == 1 and n_heads != n_kv:
            # One query per row: the n_heads / n_kv query heads that share a key/value head
            # go in as that head's "query positions" (same mask for all), which is exactly
            # GQA, and several times cheaper on CPU than SDPA's GQA path for bf16.
            q = q.view(b, n_kv, n_heads // n_kv, hd)
            out = F.scaled_dot_product_attention(q, k_cache[:, :, :n], v_cache[:, :, :n], attn_mask=self.mask)
            return out.reshape(b, n_heads, 1, hd)
        return F.scaled_dot_product_attention(
            q, k_cache[:, :, :n], v_cache[:, :, :n], attn_mask=self.mask, enable_gqa=True
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
