"""herd's MinHash ``fit`` before the band pre-filter, kept as the reference its decisions and memory are compared to.

Every document goes through datasketch's ``MinHashLSH`` (default byte band keys) and every kept
signature is held as its own array: the straightforward use of the library, ~11 KB per indexed
document in the main process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from herd.data.dedup import MinHashDedup


def fit_every_document_indexed(step: MinHashDedup, scans: Sequence[Any]) -> list[np.ndarray]:
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=step.num_perm, params=(step.bands, step.rows))
    kept: list[np.ndarray] = []
    states = []
    for sigs, positions in scans:
        dropped = []
        for sig, pos in zip(sigs, positions, strict=False):
            lean = LeanMinHash(seed=step.seed, hashvalues=sig, scheme="affine32")
            best = 0.0
            for key in lsh.query(lean):
                best = max(best, float(np.mean(kept[key] == sig)))
                if best >= step.threshold:
                    break
            if best >= step.threshold:
                dropped.append(pos)
            else:
                lsh.insert(len(kept), lean, check_duplication=False)
                kept.append(sig.copy())
        states.append(np.asarray(dropped, dtype=np.int64))
    return states


def synthetic_scans(n: int, files: int = 4, seed: int = 0, num_perm: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
    """MinHash signatures as a web corpus gives them: 70 % unique documents, 15 % near copies of an earlier one
    (each hash value redrawn with probability 0.1: estimated Jaccard ~0.9) and 15 % documents half like an
    earlier one (redrawn with probability 0.5: ~0.5, mostly LSH candidates that verification must reject)."""
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**32, size=(n, num_perm), dtype=np.uint32)
    kind = rng.random(n)
    for i in range(1, n):
        if kind[i] < 0.3:
            j = int(rng.integers(0, i))
            redraw = rng.random(num_perm) < (0.1 if kind[i] < 0.15 else 0.5)
            sigs[i] = np.where(redraw, sigs[i], sigs[j])
    per = -(-n // files)
    return [(sigs[f * per:(f + 1) * per], np.arange(len(sigs[f * per:(f + 1) * per]), dtype=np.int64))
            for f in range(files)]
