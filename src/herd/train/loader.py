"""Packed, mixed, data-parallel, resumable batches from token shards.

**One global stream.** Documents are drawn one at a time: a seeded draw picks the source,
then the source hands out its next document in a per-epoch shuffled order (reshuffled
with the seed and the epoch number when the source runs out). The documents, end to end,
form one token stream; global row ``r`` covers stream tokens ``[r*T, r*T + T + 1)``: the
first ``T`` are the inputs, the last ``T`` the labels, so consecutive rows share one
token and every token after the first is a target exactly once. Every rank walks the same
stream (document lengths only, from the ``.idx`` offsets) and reads tokens only for its
own rows: of the ``global_rows`` rows of a step, rank ``k`` of ``W`` gets the contiguous
slice ``[k*global_rows/W, (k+1)*global_rows/W)``.

**Documents in a row.** Document ids come from the offsets index (never from scanning for
a separator token); the id of a document is its draw number in the stream, so a document
that runs past the end of a row keeps its id and its positions continue from the document
start in the next row (RoPE sees the true offsets). The label that would cross into the
next document is -100, and so is the label of any token whose SFT loss mask is 0.
``document_masking=False`` gives plain causal rows instead (``document_ids`` all 0,
``positions`` 0..T-1), as in Llama 2-style packing; the cross-document label is still
ignored, since predicting an unrelated document's first token teaches nothing. Llama 3
masks across documents (the default).

**Mixing.** ``Source.weight`` is the share of *tokens* a source should contribute; the
draw probability of a source is ``weight / mean document length``, normalised, so
sources of long and short documents both come out at their weight.
:meth:`PackedLoader.mix` reports the realised shares.

**Resuming.** :meth:`PackedLoader.state_dict` is a small JSON-serialisable dict: the draw
number of the document at the start of the next row, the offset into it, each source's
(epoch, position) before that draw, and counters. It does not depend on the world size,
the rank or the row length, so a run can resume on another number of ranks, or with
another ``seq_len`` (e.g. a long-context stage), at exactly the next token.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.data.shards import Shard, find_shards, open_shards

IGNORE_INDEX = -100
STATE_FORMAT = 1
_MIX_BLOCK = 4096  # mixing draws are generated in blocks keyed by (seed, block number)


@dataclass
class Source:
    """A named set of shards (prefixes, any of their file names, or directories of shards)
    and its share of the training tokens."""

    name: str
    paths: list[Path]
    weight: float = 1.0


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, T) int64 inputs
    labels: torch.Tensor  # (B, T) int64 targets, -100 = ignored (cross-document, loss-masked)
    document_ids: torch.Tensor  # (B, T) int64, for DocumentMaskedAttention
    positions: torch.Tensor  # (B, T) int64, counting from each document's start when masking, else 0..T-1
    n_targets: int  # number of labels != -100 in this batch (this rank)


class _SourceData:
    """A source's shards as one list of documents, with a shuffled order per epoch."""

    def __init__(self, source: Source, seed: int, tokenizer_hash: str | None) -> None:
        paths = [p for path in source.paths for p in (find_shards(path) if Path(path).is_dir() else [path])]
        if not paths:
            raise ValueError(f"source {source.name!r} has no shards (paths: {[str(p) for p in source.paths]})")
        self.name = source.name
        self.shards: list[Shard] = open_shards(paths, expect_tokenizer_hash=tokenizer_hash)
        self.tokenizer_hash = self.shards[0].info.tokenizer_hash
        self.lengths = np.concatenate([s.document_lengths() for s in self.shards])
        self.first_doc = np.cumsum([0] + [s.n_documents for s in self.shards])  # per shard
        self.n_documents = int(self.lengths.size)
        self.n_tokens = int(self.lengths.sum())
        if self.n_tokens == 0:
            raise ValueError(f"source {source.name!r} holds no tokens ({len(self.shards)} shards)")
        self._key = zlib.crc32(source.name.encode())
        self._seed = seed
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def document_at(self, epoch: int, position: int) -> int:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self._seed, 1, self._key, epoch])
            self._perm, self._perm_epoch = rng.permutation(self.n_documents), epoch
        return int(self._perm[position])

    def read(self, doc: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens ``[start, start + count)`` of document ``doc``, and its loss mask there."""
        shard_i = int(np.searchsorted(self.first_doc, doc, side="right")) - 1
        shard = self.shards[shard_i]
        begin = int(shard.offsets[doc - int(self.first_doc[shard_i])]) + start
        mask = shard.mask
        return (np.asarray(shard.tokens[begin : begin + count]),
                None if mask is None else np.asarray(mask[begin : begin + count]))


@dataclass
class _Doc:
    id: int  # draw number: unique in the stream
    source: int
    index: int  # document index within the source
    length: int
    before: list[list[int]]  # every source's [epoch, position] before this draw


class _Stream:
    """The global document stream and a cursor into it (a document and an offset)."""

    def __init__(self, sources: list[_SourceData], weights: list[float], seed: int) -> None:
        self.sources = sources
        rates = np.array([w / s.lengths.mean() for w, s in zip(weights, sources, strict=True)])
        self.cdf = np.cumsum(rates / rates.sum())
        self.seed = seed
        self.draws = 0
        self.cursors = [[0, 0] for _ in sources]
        self.queue: deque[_Doc] = deque()  # the document at the cursor, then any drawn ahead
        self.offset = 0
        self.tokens = [0] * len(sources)  # tokens each source has put at row inputs
        self.documents = [0] * len(sources)
        self._block, self._picks = -1, np.empty(0, dtype=np.int64)

    def _pick(self, draw: int) -> int:
        """The source of draw number ``draw``: a function of (seed, draw) alone."""
        block = draw // _MIX_BLOCK
        if block != self._block:
            uniform = np.random.default_rng([self.seed, 0, block]).random(_MIX_BLOCK)
            self._picks = np.minimum(np.searchsorted(self.cdf, uniform, side="right"), len(self.sources) - 1)
            self._block = block
        return int(self._picks[draw % _MIX_BLOCK])

    def _draw(self) -> _Doc:
        s = self._pick(self.draws)
        src = self.sources[s]
        before = [c.copy() for c in self.cursors]
        epoch, position = self.cursors[s]
        index = src.document_at(epoch, position)
        self.cursors[s] = [epoch + 1, 0] if position + 1 == src.n_documents else [epoch, position + 1]
        doc = _Doc(self.draws, s, index, int(src.lengths[index]), before)
        self.draws += 1
        return doc

    def take(self, n_tokens: int, advance: int) -> list[tuple[_Doc, int, int]]:
        """Segments ``(document, start, count)`` covering the next ``n_tokens`` tokens;
        then move the cursor ``advance`` tokens on."""
        segments: list[tuple[_Doc, int, int]] = []
        need, i, start, done = n_tokens, 0, self.offset, 0
        while need > 0:
            if i == len(self.queue):
                self.queue.append(self._draw())
            doc = self.queue[i]
            if doc.length > start:
                count = min(doc.length - start, need)
                segments.append((doc, start, count))
                consumed = min(count, max(0, advance - done))
                self.tokens[doc.source] += consumed
                self.documents[doc.source] += int(start == 0 and consumed > 0)
                need, done = need - count, done + count
            i, start = i + 1, 0
        self.offset += advance
        while self.queue and self.offset >= self.queue[0].length:
            self.offset -= self.queue.popleft().length
        return segments

    def state(self) -> dict[str, Any]:
        names = [s.name for s in self.sources]
        if self.queue:
            head = self.queue[0]
            draws, offset, cursors = head.id, self.offset, head.before
        else:
            draws, offset, cursors = self.draws, self.offset, self.cursors
        return {"draws": draws, "offset": offset, "cursors": {n: list(c) for n, c in zip(names, cursors, strict=True)},
                "tokens": dict(zip(names, self.tokens, strict=True)),
                "documents": dict(zip(names, self.documents, strict=True))}

    def load(self, state: dict[str, Any]) -> None:
        names = [s.name for s in self.sources]
        self.draws, self.offset = int(state["draws"]), int(state["offset"])
        self.cursors = [[int(x) for x in state["cursors"][n]] for n in names]
        self.tokens = [int(state["tokens"][n]) for n in names]
        self.documents = [int(state["documents"][n]) for n in names]
        self.queue.clear()


class PackedLoader:
    """Fixed-length packed rows from weighted sources, sliced for one data-parallel rank.

    See the module docstring for the stream, masking, mixing and resume semantics.
    ``tokenizer_hash`` (the run's tokenizer) refuses shards made with another tokenizer;
    without it the shards must still agree with each other.
    """

    def __init__(
        self,
        sources: list[Source],
        seq_len: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        document_masking: bool = True,
        tokenizer_hash: str | None = None,
    ) -> None:
        if not sources:
            raise ValueError("PackedLoader needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if any(s.weight < 0 for s in sources) or sum(s.weight for s in sources) <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got "
                             f"{ {s.name: s.weight for s in sources} }")
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        self.seq_len, self.rank, self.world_size = seq_len, rank, world_size
        self.seed, self.document_masking = seed, document_masking
        self.sources = sources
        data: list[_SourceData] = []
        for source in sources:
            data.append(_SourceData(source, seed, tokenizer_hash))
            tokenizer_hash = tokenizer_hash or data[0].tokenizer_hash
        self._data = data
        self._stream = _Stream(data, [s.weight for s in sources], seed)
        self.rows = 0  # global rows handed out so far

    # -- batches -------------------------------------------------------------------------

    def next_batch(self, global_rows: int) -> Batch:
        """The next ``global_rows`` rows of the global stream; this rank's slice of them."""
        if global_rows < 1 or global_rows % self.world_size:
            raise ValueError(f"global_rows={global_rows} must be a positive multiple of "
                             f"world_size={self.world_size}")
        per_rank = global_rows // self.world_size
        mine = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        t = self.seq_len
        rows = []
        for r in range(global_rows):
            segments = self._stream.take(t + 1, t)
            if r in mine:
                rows.append(self._materialise(segments))
        self.rows += global_rows
        tokens, labels, doc_ids, positions = (np.stack(x) for x in zip(*rows, strict=True))
        return Batch(tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels),
                     document_ids=torch.from_numpy(doc_ids), positions=torch.from_numpy(positions),
                     n_targets=int(np.count_nonzero(labels != IGNORE_INDEX)))

    def _materialise(self, segments: list[tuple[_Doc, int, int]]) -> tuple[np.ndarray, ...]:
        t = self.seq_len
        tokens = np.empty(t + 1, dtype=np.int64)
        doc_ids = np.empty(t + 1, dtype=np.int64)
        positions = np.empty(t + 1, dtype=np.int64)
        mask = np.ones(t + 1, dtype=bool)
        p = 0
        for doc, start, count in segments:
            ids, loss_mask = self._data[doc.source].read(doc.index, start, count)
            tokens[p : p + count] = ids
            doc_ids[p : p + count] = doc.id
            positions[p : p + count] = np.arange(start, start + count)
            if loss_mask is not None:
                mask[p : p + count] = loss_mask != 0
            p += count
        labels = tokens[1:].copy()
        labels[(doc_ids[1:] != doc_ids[:-1]) | ~mask[1:]] = IGNORE_INDEX
        if not self.document_masking:
            return tokens[:t], labels, np.zeros(t, dtype=np.int64), np.arange(t, dtype=np.int64)
        return tokens[:t], labels, doc_ids[:t], positions[:t]

    # -- reporting -----------------------------------------------------------------------

    def mix(self) -> dict[str, dict[str, float]]:
        """Per source: target token share (``weight``), realised ``share`` of the input
        tokens so far, ``tokens``, ``documents`` started, and the current ``epoch``."""
        total_weight = sum(s.weight for s in self.sources)
        total = sum(self._stream.tokens) or 1
        state = self._stream.state()
        return {
            s.name: {
                "weight": s.weight / total_weight,
                "share": self._stream.tokens[i] / total,
                "tokens": self._stream.tokens[i],
                "documents": self._stream.documents[i],
                "epoch": state["cursors"][s.name][0],
            }
            for i, s in enumerate(self.sources)
        }

    # -- resuming ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-serialisable position in the global stream (world-size free)."""
        return {
            "format": STATE_FORMAT,
            "seed": self.seed,
            "rows": self.rows,
            "sources": {d.name: {"n_documents": d.n_documents, "n_tokens": d.n_tokens} for d in self._data},
            "stream": self._stream.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the loader that saved ``state`` stopped."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"loader state format {state.get('format')!r}, this herd reads {STATE_FORMAT}")
        if state["seed"] != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        saved = state["sources"]
        if set(saved) != {d.name for d in self._data}:
            raise ValueError(f"loader state has sources {sorted(saved)}, this loader has "
                             f"{sorted(d.name for d in self._data)}")
        for d in self._data:
            if saved[d.name] != {"n_documents": d.n_documents, "n_tokens": d.n_tokens}:
                raise ValueError(f"source {d.name!r} changed since the state was saved: it held "
                                 f"{saved[d.name]}, now {d.n_documents} documents and {d.n_tokens} tokens")
        self._stream.load(state["stream"])
        self.rows = int(state["rows"])
