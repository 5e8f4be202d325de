"""Synthetic token shards: deterministic, learnable documents for smoke runs and benchmarks.

``data.kind = "synthetic"`` writes a few shards of arithmetic-progression documents
(``a, a+d, a+2d, ... mod V``) with ``herd.data.shards.write_shard`` and trains on them
through the ordinary ``PackedLoader``, so a run needs no corpus or tokenizer yet
exercises the real data path (packing, document masks, resume). A model learns the
rule within a few dozen steps, so the loss visibly falls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from herd.data.shards import find_shards, write_shard

SYNTHETIC_HASH = "synthetic-arithmetic-v1"


def make_synthetic_shards(out_dir: str | Path, *, vocab_size: int, n_documents: int = 2000,
                          n_shards: int = 2, min_len: int = 8, max_len: int = 200, seed: int = 0) -> list[Path]:
    """Write (once) ``n_shards`` shards of synthetic documents to ``out_dir``; returns their prefixes."""
    out = Path(out_dir)
    existing = find_shards(out, "synthetic-*") if out.exists() else []
    if len(existing) == n_shards:
        return existing
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    alphabet = max(4, min(vocab_size - 2, 4096))  # ids 0 and 1 are bos / eos
    per_shard = n_documents // n_shards
    for s in range(n_shards):
        docs = []
        for _ in range(per_shard):
            length = int(rng.integers(min_len, max_len + 1))
            a, d = int(rng.integers(alphabet)), int(rng.integers(1, 8))
            body = 2 + (a + d * np.arange(length)) % alphabet
            docs.append([0, *body.tolist(), 1])
        write_shard(out / f"synthetic-{s:05d}", docs, tokenizer_hash=SYNTHETIC_HASH, bos_id=0, eos_id=1,
                    vocab_size=vocab_size, source="synthetic")
    return find_shards(out, "synthetic-*")
