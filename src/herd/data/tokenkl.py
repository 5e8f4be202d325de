"""Token-distribution KL outlier filter: drop documents whose token distribution is far from the corpus's.

Llama 3 removed "documents containing excessive numbers of outlier tokens compared to the
training corpus distribution" with a KL-divergence filter and published no threshold. herd
measures, for each document, KL(p_doc || p_ref) in nats, where p_doc is the document's
distribution over lower-cased word tokens (hashed into ``buckets`` bins, so memory is
fixed) and p_ref the corpus's, add-``alpha`` smoothed. p_ref is fitted on the corpus itself
(a :class:`~herd.data.records.GlobalStep`: each worker sums its file's counts, the main
process adds them), or loaded from ``reference`` (an ``.npy`` of counts saved by
:func:`save_reference` from a trusted corpus).

A document that uses words at their usual rates has KL close to log of how many distinct
words it could have used minus how many it did, a few nats; one made of tokens the corpus
almost never uses (hex dumps, base64, keyword stuffing, another script) scores far higher
because every one of its tokens costs log(1/p_ref). Default ``max_kl`` = 6 nats, measured on
real text: the 157 distinct docstrings of >= 80 words in 35 Python standard-library modules
(English technical prose, shipped with every Python), with the reference fitted on them plus
three outliers, have median KL 4.1, 99th percentile 5.6 and maximum 5.7, while a hex-hash
list, a base64 blob and keyword spam score 6.6 to 6.8 (the outliers are part of the fitted
corpus there; against a reference of real text alone they score 7.9 to 10.6).
tests/data/test_curate_tokenkl_quality.py re-measures this. The margin above real text is
under 1 nat, so raise ``max_kl`` for corpora more varied than one style; documents shorter
than ``min_tokens`` (default 50) are not judged, since their KL is
dominated by length. Both are overridable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from herd.data.records import CurateError, GlobalStep, Record, Scan
from herd.data.textutil import split_words


def token_ids(text: str, buckets: int) -> np.ndarray:
    import xxhash

    words = [w.lower() for w in split_words(text) if any(c.isalnum() for c in w)]
    return np.fromiter((xxhash.xxh32_intdigest(w.encode("utf-8")) % buckets for w in words), dtype=np.int64,
                       count=len(words))


def kl_to_reference(ids: np.ndarray, log_ref: np.ndarray) -> float:
    if len(ids) == 0:
        return 0.0
    values, counts = np.unique(ids, return_counts=True)
    p = counts / counts.sum()
    return float(np.sum(p * (np.log(p) - log_ref[values])))


class _CountScan(Scan):
    def __init__(self, step: TokenKL) -> None:
        self.step = step
        self.counts = np.zeros(step.buckets, dtype=np.int64)

    def add(self, rec: Record) -> None:
        if self.step.applies(rec):
            self.counts += np.bincount(token_ids(rec["text"], self.step.buckets), minlength=self.step.buckets)

    def result(self) -> Any:
        return self.counts


def save_reference(texts: Sequence[str], path: str | Path, buckets: int = 1 << 18) -> None:
    counts = np.zeros(buckets, dtype=np.int64)
    for t in texts:
        counts += np.bincount(token_ids(t, buckets), minlength=buckets)
    np.save(path, counts)


class TokenKL(GlobalStep):
    kind = "token_kl"

    def __init__(self, *, max_kl: float = 6.0, min_tokens: int = 50, buckets: int = 1 << 18, alpha: float = 0.5,
                 reference: str | None = None, **kw) -> None:
        super().__init__(**kw)
        if max_kl <= 0 or buckets < 2 or alpha <= 0:
            raise CurateError(f"token_kl: need max_kl > 0, buckets >= 2, alpha > 0 (got {max_kl}, {buckets}, {alpha})")
        self.max_kl, self.min_tokens, self.buckets, self.alpha = max_kl, min_tokens, buckets, alpha
        self.reference = reference
        if reference is not None and not Path(reference).is_file():
            raise CurateError(f"token_kl: reference file {reference} does not exist")

    def log_reference(self, counts: np.ndarray) -> np.ndarray:
        smoothed = counts.astype(np.float64) + self.alpha
        return np.log(smoothed / smoothed.sum()).astype(np.float32)

    def new_scan(self) -> Scan:
        return _CountScan(self)

    def fit(self, scans: Sequence[Any]) -> list[Any]:
        if self.reference is not None:
            counts = np.load(self.reference)
            if counts.shape != (self.buckets,):
                raise CurateError(f"token_kl: reference {self.reference} has {counts.shape} bins, expected "
                                  f"({self.buckets},)")
        else:
            counts = np.sum(scans, axis=0) if len(scans) else np.zeros(self.buckets, dtype=np.int64)
        log_ref = self.log_reference(counts)
        return [log_ref for _ in scans]

    def score(self, text: str, log_ref: np.ndarray) -> tuple[float, int]:
        ids = token_ids(text, self.buckets)
        return kl_to_reference(ids, log_ref), len(ids)

    def apply(self, rec: Record, position: int, state: Any) -> str | None:
        kl, n = self.score(rec["text"], state)
        if n < self.min_tokens:
            return None
        rec["meta"]["token_kl"] = round(kl, 3)
        return "token_kl_outlier" if kl > self.max_kl else None
