"""The paged KV cache: the engine's backend of the model's attention interface.

Each layer's keys and values live in one pool of ``num_blocks * block_size`` token
slots, shape (slots, n_kv_heads, head_dim); token j of a request sits in slot
``table[j // block_size] * block_size + j % block_size`` of its block table.

A forward pass carries the tokens of several requests packed into one row (B = 1): a
prefill chunk of one, a single decode token of another, and so on. Before the pass the
engine describes it (``set_batch``): for every packed token, its position in its own
sequence and the slot it writes; for every request, the slots of its whole context.
``attend`` then writes the new keys and values into their slots and gathers each
request's context keys into one strip. Attention then takes one of two forms, chosen per
step by how much work a single kernel would waste:

* packed: one SDPA over all packed queries and the whole strip, with a mask that lets a
  query see a key only when both belong to the same request and the key is not later
  than the query (cheapest while contexts are short: one kernel call per layer);
* per request: one SDPA per request over its own keys (when the packed form would
  compute mostly masked-out scores: many requests, long contexts). A one-token request
  goes in with its query heads as GQA "query positions", as ``KVCache`` does.

* each query alone (the default on a CPU: ``batch_invariant``): every query token runs the
  one SDPA call a lone decode step runs, over exactly the keys it may see
  (``herd.generation.kv_cache.attend_each_query``). SDPA sums in an order that depends on
  how many queries a call holds and how many keys it masks, so in bf16 a request's tokens
  used to depend (by a rounding, enough to flip a near-tie) on how its prompt was cut into
  chunks and on which requests shared its steps. With this form, and the batch-invariant
  products of ``cpu_gemv``, a request gets the same bits batched or alone, in bf16 as in
  fp32. The price is SDPA's fixed cost per call: ~0.13 ms per query and layer at the 1B
  shape in bf16, ~15 % of a CPU prefill's time (decode steps make one call per request
  and layer either way); ``batch_invariant=False`` gives it back.

Either way no request ever sees another's keys. The model file does not change
(``transformer.py`` only calls ``backend.attend``). When a step holds one request whose
blocks are consecutive in the pool (a lone request in a fresh engine, the batch-1 case),
its context is a slice of the pool: attention reads it in place, with no gather.

``kv_dtype="int8"`` stores keys and values as int8 with one fp32 scale per token and KV head
(symmetric, ``max|x| / 127``): 0.52x the bytes of a bf16 cache at head_dim 128, so about
twice the tokens fit a memory budget. A token's codes depend on that token alone, so
batching changes no request's cached values; each step dequantizes the contexts it reads
into the compute dtype before attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from herd.generation.kv_cache import attend_each_query
from herd.model.args import ModelArgs


@dataclass
class PackedSeq:
    """One request's share of a packed forward pass: it computes tokens at positions
    ``start .. start + n - 1`` (its tokens before ``start`` are already cached), and its
    KV lives in the blocks of ``block_table``."""

    start: int
    n: int
    block_table: Sequence[int]


KV_DTYPES = (None, "int8")  # None: the model's dtype


def quantize_int8_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per last-dim vector: (codes int8, fp32 scale [..., 1]) with x ~ codes * scale."""
    scale = x.detach().float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127.0
    return torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8), scale


class PagedKVCache:
    """Keys and values of all requests, in blocks; see the module docstring."""

    def __init__(self, args: ModelArgs, num_blocks: int, block_size: int, *, dtype: torch.dtype,
                 device: torch.device | str, kv_dtype: str | None = None, batch_invariant: bool | None = None
                 ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"PagedKVCache needs num_blocks and block_size > 0, got {num_blocks}, {block_size}")
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")
        shape = (num_blocks * block_size, args.n_kv_heads, args.head_dim)
        self.dtype, self.kv_dtype = dtype, kv_dtype
        store = torch.int8 if kv_dtype == "int8" else dtype
        self.k = [torch.zeros(shape, dtype=store, device=device) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, dtype=store, device=device) for _ in range(args.n_layers)]
        scales = (*shape[:2], 1)
        self.k_scale = [torch.zeros(scales, device=device) for _ in range(args.n_layers)] if kv_dtype else []
        self.v_scale = [torch.zeros(scales, device=device) for _ in range(args.n_layers)] if kv_dtype else []
        self.num_blocks, self.block_size = num_blocks, block_size
        self.device = torch.device(device)
        self._write: Tensor | None = None
        self._read: Tensor | None = None
        self._mask: Tensor | None = None
        self._per_request: list[tuple[int, int, int, int, Tensor | None]] | None = None
        self._span: tuple[int, int] | None = None  # a lone request's context slots, when consecutive
        # each query alone, as a lone decode step computes it (None: on a CPU; see the docstring)
        self.batch_invariant = self.device.type == "cpu" if batch_invariant is None else batch_invariant
        self._each_query: list[tuple[int, int, int, int, list[int]]] | None = None

    def slots(self, block_table: Sequence[int], start: int, stop: int) -> list[int]:
        """The cache slots of token positions start..stop-1 of a request."""
        bs = self.block_size
        return [block_table[p // bs] * bs + p % bs for p in range(start, stop)]

    def set_batch(self, seqs: Sequence[PackedSeq], *, per_request: bool | None = None) -> Tensor:
        """Describe the next packed forward pass; returns the positions (1, T) to give the
        model. Requests appear in the packed row in the order given. ``per_request``
        forces one form of attention (None: each query alone when ``batch_invariant``, else
        packed unless it would waste most of its work)."""
        positions: list[int] = []
        write: list[int] = []
        read: list[int] = []
        query_seq: list[int] = []
        key_seq: list[int] = []
        key_pos: list[int] = []
        for i, s in enumerate(seqs):
            end = s.start + s.n
            if self.blocks_needed(end) > len(s.block_table):
                raise ValueError(f"request {i} computes up to position {end - 1} but its block table holds "
                                 f"{len(s.block_table)} blocks of {self.block_size}")
            positions.extend(range(s.start, end))
            write.extend(self.slots(s.block_table, s.start, end))
            read.extend(self.slots(s.block_table, 0, end))
            query_seq.extend([i] * s.n)
            key_seq.extend([i] * end)
            key_pos.extend(range(end))
        dev = self.device
        pos = torch.tensor(positions, device=dev)
        self._write = torch.tensor(write, device=dev)
        self._read = torch.tensor(read, device=dev)
        useful = sum(s.n * (s.start + s.n) for s in seqs)
        self._span = self._consecutive(seqs[0]) if len(seqs) == 1 else None
        self._each_query = None
        if per_request is None and self.batch_invariant:
            self._mask, self._per_request, self._each_query = None, None, []
            q0 = k0 = 0
            for s in seqs:
                end = s.start + s.n
                self._each_query.append((q0, q0 + s.n, k0, k0 + end, list(range(s.start + 1, end + 1))))
                q0, k0 = q0 + s.n, k0 + end
            return pos[None]
        if per_request is None:
            per_request = self._span is not None or (
                len(seqs) > 1 and len(positions) * len(read) > max(4 * useful, 1 << 18))
        if per_request:
            self._mask = None
            self._per_request = []
            q0 = k0 = 0
            for s in seqs:
                end = s.start + s.n
                mask = None
                if s.n > 1:  # causal with an offset: query start + i sees keys 0 .. start + i
                    mask = (torch.arange(end, device=dev)[None, :]
                            <= torch.arange(s.start, end, device=dev)[:, None])[None, None]
                self._per_request.append((q0, q0 + s.n, k0, k0 + end, mask))
                q0, k0 = q0 + s.n, k0 + end
        else:
            self._per_request = None
            qs, ks = torch.tensor(query_seq, device=dev), torch.tensor(key_seq, device=dev)
            kp = torch.tensor(key_pos, device=dev)
            self._mask = ((qs[:, None] == ks[None, :]) & (kp[None, :] <= pos[:, None]))[None, None]  # (1,1,T,K)
        return pos[None]

    def _consecutive(self, s: PackedSeq) -> tuple[int, int] | None:
        """The slots of ``s``'s whole context as (first, end) when its blocks follow each other."""
        table = s.block_table[:self.blocks_needed(s.start + s.n)]
        first = table[0]
        if any(b != first + i for i, b in enumerate(table)):
            return None
        return first * self.block_size, first * self.block_size + s.start + s.n

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Write k, v (1, n_kv, T, hd) into their slots; attend q over each request's context."""
        if self._write is None:
            raise RuntimeError("PagedKVCache.set_batch must be called before the forward pass")
        keys, values = (self._store(pool, scale, x, layer) for pool, scale, x in
                        ((self.k, self.k_scale, k), (self.v, self.v_scale, v)))  # each (1, n_kv, K, hd)
        if self._each_query is not None:
            out = [attend_each_query(q[:, :, q0:q1], keys[:, :, k0:k1], values[:, :, k0:k1], visible)
                   for q0, q1, k0, k1, visible in self._each_query]
            return out[0] if len(out) == 1 else torch.cat(out, dim=2)
        if self._per_request is None:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=self._mask, enable_gqa=True)
        _, n_heads, _, hd = q.shape
        n_kv = keys.shape[1]
        out = []
        for q0, q1, k0, k1, mask in self._per_request:
            qi, ki, vi = q[:, :, q0:q1], keys[:, :, k0:k1], values[:, :, k0:k1]
            if q1 - q0 == 1 and n_heads != n_kv:  # GQA as query positions (see KVCache.attend)
                o = F.scaled_dot_product_attention(qi.reshape(1, n_kv, n_heads // n_kv, hd), ki, vi)
                out.append(o.reshape(1, n_heads, 1, hd))
            else:
                out.append(F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, enable_gqa=True))
        return torch.cat(out, dim=2)

    def _store(self, pools: list[Tensor], scales: list[Tensor], x: Tensor, layer: int) -> Tensor:
        """Write x (1, n_kv, T, hd) into this step's slots; read back the contexts (1, n_kv, K, hd)."""
        rows = x[0].transpose(0, 1)  # (T, n_kv, hd)
        if self.kv_dtype is None:
            pools[layer].index_copy_(0, self._write, rows)
            read = self._gather(pools[layer])
        else:
            codes, scale = quantize_int8_rows(rows)
            pools[layer].index_copy_(0, self._write, codes)
            scales[layer].index_copy_(0, self._write, scale)
            read = (self._gather(pools[layer]).to(x.dtype) * self._gather(scales[layer])).to(x.dtype)
        return read.transpose(0, 1)[None]

    def _gather(self, pool: Tensor) -> Tensor:
        """The contexts' slots of ``pool``: a view when they are one consecutive span, else a copy."""
        if self._span is not None:
            return pool[self._span[0]:self._span[1]]
        return pool.index_select(0, self._read)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v + self.k_scale + self.v_scale)
