"""Deduplication: exact (normalised hash), near-duplicate (MinHash + LSH) and CCNet line dedup.

All three are :class:`~herd.data.records.GlobalStep`s: workers hash documents while the
previous pass streams them (``scan``), the main process decides once (``fit``), and
workers drop what was decided (``apply``). The earliest copy in input order is kept.

MinHash and the LSH index are datasketch's (``MinHash`` with xxhash32 shingle hashes and
its 32-bit affine permutations, ``MinHashLSH`` with explicit ``(bands, rows)``). Defaults,
chosen for the target "recall >= 0.95 for pairs of true word-5-gram Jaccard >= 0.8, no
document removed whose best match is below 0.5":

* shingles: word 5-grams of the normalised text (lower case, no punctuation or accents,
  digits as 0), the unit the target's Jaccard is measured in;
* 128 permutations as 32 bands x 4 rows: a pair becomes a candidate with probability
  1 - (1 - J^4)^32, which is 0.99997 at J = 0.8 (0.9992 at 0.7), so LSH loses almost no
  true pair; it also makes most J ~ 0.5 pairs candidates (0.87), so every candidate is
  **verified**: the MinHash estimate of J against the already-kept document must reach
  ``threshold`` (0.7). With 128 permutations the estimate's standard deviation is
  sqrt(J(1-J)/128) <= 0.044, so a true 0.5 pair passes 0.7 with probability ~4e-6 and a
  true 0.8 pair fails it with probability ~0.002. The banding alone (without
  verification) could not do both: 14 x 8 (FineWeb's) catches J = 0.8 with probability only
  0.92.

Memory: workers stream and stay flat; exact dedup keeps 8 bytes per document in the main
process. MinHash's main process holds the signatures (512 bytes per document, from the scans)
and datasketch's in-memory LSH index, whose cost is one Python set per band per indexed
document (~10 KB a document for 32 bands). Three things cut it without touching datasketch's
banding, each leaving every decision unchanged: documents that share no band with any other
document are not indexed (their query would be empty); a document's unshared bands go to one
reserved bucket per band that no query reaches (a set entry instead of a set); band keys are
hashed to small ints (``hashfunc``) and kept signatures are looked up in the scans, not
copied. Which bands are shared is exact (bands compared as bytes, one band at a time with
numpy). Measured: ``benchmarks/curate.py`` (tracemalloc, 50,000 generated signatures, 44 %
sharing a band, 30 % near copies) 1.2 KB per document against 8.8 KB with every document in
datasketch's index, same decisions; on the 19,291 documents that reached MinHash in its
200 MB pipeline run (79 % sharing a band), 1.5 KB against 10.2 KB (tracemalloc) and 2.0 KB
against 18.3 KB of peak-RSS growth. The 1 GB run's main process (``benchmarks/curate.py
--run-mb 1024``) peaks at 517 MB, against 1.46 GB before (99,678 documents reached MinHash).
Beyond ~10 million documents per MinHash step (5 GB of signatures alone), dedup per
language/source with ``languages``, or run the config on datatrove's disk-based stages
(:mod:`herd.data.scale_out`). Line dedup holds one bucket's line hashes at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from herd.data.records import CurateError, Record, Scan
from herd.data.records import GlobalStep as _Global
from herd.data.textutil import normalize_for_hash


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _hashes_scan_result(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


class _HashScan(Scan):
    def __init__(self, step: ExactDedup) -> None:
        self.step, self.values = step, []
        self.eligible: list[bool] = []

    def add(self, rec: Record) -> None:
        self.values.append(hash64(normalize_for_hash(rec["text"])))
        self.eligible.append(self.step.applies(rec))

    def result(self) -> Any:
        return _hashes_scan_result(self.values), np.asarray(self.eligible, dtype=bool)


class ExactDedup(_Global):
    """Drop documents whose normalised text was seen earlier (8-byte BLAKE2b of the normalised text)."""

    kind = "exact_dedup"

    def new_scan(self) -> Scan:
        return _HashScan(self)

    def fit(self, scans: Sequence[Any]) -> list[Any]:
        hashes = [h[e] for h, e in scans]
        sizes = [len(h) for h in hashes]
        if not sum(sizes):
            return [np.zeros(0, dtype=np.int64) for _ in scans]
        allh = np.concatenate(hashes)
        _, first = np.unique(allh, return_index=True)
        keep = np.zeros(len(allh), dtype=bool)
        keep[first] = True
        states, start = [], 0
        for (_, eligible), n in zip(scans, sizes, strict=False):
            positions = np.flatnonzero(eligible)
            states.append(positions[~keep[start:start + n]])
            start += n
        return states

    def apply(self, rec: Record, position: int, state: Any) -> str | None:
        i = np.searchsorted(state, position)
        return "exact_duplicate" if i < len(state) and state[i] == position else None


_RESERVED_VALUE = 0xFFFFFFFF


def _band_key(band: bytes) -> int:
    """datasketch ``hashfunc``: a band's bytes → a 30-bit int; -1 for the reserved all-ones band (see ``fit``)."""
    import xxhash

    k = len(band) // 8
    # datasketch passes the band's uint64 values byte-swapped (big-endian); the others guard a layout change
    if band in (b"\0\0\0\0\xff\xff\xff\xff" * k, b"\xff\xff\xff\xff\0\0\0\0" * k, b"\xff" * len(band)):
        return -1
    return xxhash.xxh64_intdigest(band) >> 34


def shingles(text: str, n: int) -> list[bytes]:
    words = normalize_for_hash(text).split()
    if len(words) <= n:
        return [" ".join(words).encode("utf-8")]
    return list({" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)})


class _MinHashScan(Scan):
    def __init__(self, step: MinHashDedup) -> None:
        self.step = step
        self.sigs: list[np.ndarray] = []
        self.positions: list[int] = []
        self.n = 0

    def add(self, rec: Record) -> None:
        if self.step.applies(rec):
            self.sigs.append(self.step.signature(rec["text"]))
            self.positions.append(self.n)
        self.n += 1

    def result(self) -> Any:
        sig = np.stack(self.sigs) if self.sigs else np.zeros((0, self.step.num_perm), dtype=np.uint32)
        return sig, np.asarray(self.positions, dtype=np.int64)


class MinHashDedup(_Global):
    """Near-duplicate removal: datasketch MinHash signatures, LSH candidates, verified estimate >= threshold."""

    kind = "minhash_dedup"

    def __init__(self, *, ngram: int = 5, bands: int = 32, rows: int = 4, threshold: float = 0.7, seed: int = 1,
                 **kw) -> None:
        super().__init__(**kw)
        if ngram < 1 or bands < 1 or rows < 1:
            raise CurateError(f"minhash_dedup: ngram, bands and rows must be >= 1 (got {ngram}, {bands}, {rows})")
        if not 0.0 <= threshold <= 1.0:
            raise CurateError(f"minhash_dedup: threshold must be in [0, 1], got {threshold}")
        self.ngram, self.bands, self.rows, self.threshold, self.seed = ngram, bands, rows, threshold, seed
        self.num_perm = bands * rows
        self._permutations: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_permutations": None}

    def signature(self, text: str) -> np.ndarray:
        import xxhash
        from datasketch import MinHash

        if self._permutations is None:
            self._permutations = MinHash(num_perm=self.num_perm, seed=self.seed).permutations
        m = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=xxhash.xxh32_intdigest,
                    permutations=self._permutations, scheme="affine32")
        m.update_batch(shingles(text, self.ngram))
        return m.hashvalues.astype(np.uint32, copy=True)

    def new_scan(self) -> Scan:
        return _MinHashScan(self)

    def shared_bands(self, scans: Sequence[Any]) -> list[np.ndarray]:
        """Per file, a (documents x bands) mask: is this band of this document (``rows`` equal hash values) also
        a band of another document?

        Only shared bands can ever make LSH candidates. A document with none is kept whatever the index would
        say (its query is empty) and never compared with, so it is not indexed; a document's unshared bands
        all go to one reserved bucket per band that no query reaches. Exact (bands compared as bytes, one band
        at a time with numpy), so the decisions are those of indexing every document.
        """
        sizes = [len(sigs) for sigs, _ in scans]
        shared = np.zeros((sum(sizes), self.bands), dtype=bool)
        if len(shared):
            band = np.dtype((np.void, 4 * self.rows))
            for b in range(self.bands):
                cols = slice(b * self.rows, (b + 1) * self.rows)
                keys = np.concatenate([np.ascontiguousarray(sigs[:, cols], dtype=np.uint32).view(band).ravel()
                                       for sigs, _ in scans])
                _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
                shared[:, b] = counts[inverse.ravel()] > 1
                del keys, inverse, counts
        return np.split(shared, np.cumsum(sizes)[:-1])

    def fit(self, scans: Sequence[Any]) -> list[Any]:
        from datasketch import LeanMinHash, MinHashLSH

        # Band keys hashed to 30-bit ints (28-byte objects instead of 65-byte bytes): a collision only adds a
        # candidate that the verification rejects. Kept signatures are not copied: an index key is
        # (file << 32) | row into the scans' own uint32 arrays. Unshared bands are inserted as the reserved
        # band (all ones, key -1): one big bucket per band instead of a set per document and band.
        lsh = MinHashLSH(num_perm=self.num_perm, params=(self.bands, self.rows), hashfunc=_band_key)
        reserved = np.full(self.rows, _RESERVED_VALUE, dtype=np.uint32)
        states = []
        for f, ((sigs, positions), shared) in enumerate(zip(scans, self.shared_bands(scans), strict=True)):
            dropped = []
            for row in np.flatnonzero(shared.any(axis=1)).tolist():
                sig = sigs[row]
                lean = LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32")
                best = 0.0
                for key in lsh.query(lean):
                    best = max(best, float(np.mean(scans[key >> 32][0][key & 0xFFFFFFFF] == sig)))
                    if best >= self.threshold:
                        break
                if best >= self.threshold:
                    dropped.append(positions[row])
                else:
                    masked = sig.reshape(self.bands, self.rows).copy()
                    masked[~shared[row]] = reserved
                    lsh.insert((f << 32) | row, LeanMinHash(seed=self.seed, hashvalues=masked.ravel(),
                                                             scheme="affine32"), check_duplication=False)
            states.append(np.asarray(dropped, dtype=np.int64))
        return states

    def apply(self, rec: Record, position: int, state: Any) -> str | None:
        i = np.searchsorted(state, position)
        return "near_duplicate" if i < len(state) and state[i] == position else None


def _line_hashes(text: str) -> list[int]:
    return [hash64(normalize_for_hash(line)) for line in text.split("\n")]


class _LineScan(Scan):
    def __init__(self, step: LineDedup) -> None:
        self.step = step
        self.hashes: list[int] = []
        self.doc_of: list[int] = []
        self.n = 0

    def add(self, rec: Record) -> None:
        if self.step.applies(rec):
            h = [x for x, line in zip(_line_hashes(rec["text"]), rec["text"].split("\n"), strict=False) if line.strip()]
            self.hashes.extend(h)
            self.doc_of.extend([self.n] * len(h))
        self.n += 1

    def result(self) -> Any:
        return np.asarray(self.hashes, dtype=np.uint64), np.asarray(self.doc_of, dtype=np.int64), self.n


class LineDedup(_Global):
    """CCNet line dedup: in each bucket of ``bucket_docs`` documents (input order), remove every copy of a line
    that occurs more than ``max_count`` times. Llama 3: more than 6 times per 30M-document bucket."""

    kind = "line_dedup"

    def __init__(self, *, max_count: int = 6, bucket_docs: int = 30_000_000, **kw) -> None:
        super().__init__(**kw)
        if max_count < 1 or bucket_docs < 1:
            raise CurateError(f"line_dedup: max_count and bucket_docs must be >= 1 (got {max_count}, {bucket_docs})")
        self.max_count, self.bucket_docs = max_count, bucket_docs

    def new_scan(self) -> Scan:
        return _LineScan(self)

    def fit(self, scans: Sequence[Any]) -> list[Any]:
        offsets = np.cumsum([0] + [n for _, _, n in scans])
        n_buckets = int(offsets[-1] // self.bucket_docs) + 1
        frequent: list[np.ndarray] = []
        for b in range(n_buckets):
            parts = []
            for (hashes, doc_of, _), off in zip(scans, offsets[:-1], strict=False):
                g = doc_of + off
                parts.append(hashes[(g >= b * self.bucket_docs) & (g < (b + 1) * self.bucket_docs)])
            allh = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
            values, counts = np.unique(allh, return_counts=True)
            frequent.append(values[counts > self.max_count])
        states = []
        for (_, _, n), off in zip(scans, offsets[:-1], strict=False):
            first, last = int(off // self.bucket_docs), int((off + max(n, 1) - 1) // self.bucket_docs)
            states.append((int(off), {b: set(frequent[b].tolist()) for b in range(first, last + 1)}))
        return states

    def apply(self, rec: Record, position: int, state: Any) -> str | None:
        offset, frequent = state
        drop = frequent.get((offset + position) // self.bucket_docs)
        if not drop:
            return None
        lines = rec["text"].split("\n")
        hashes = _line_hashes(rec["text"])
        kept = [line for line, h in zip(lines, hashes, strict=False) if not (line.strip() and h in drop)]
        removed = len(lines) - len(kept)
        if removed:
            rec["meta"]["line_dedup_removed"] = removed
            rec["text"] = "\n".join(kept).strip("\n")
            if not rec["text"].strip():
                return "line_dedup_empty"
        return None
