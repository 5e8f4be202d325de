"""Curation records and the two kinds of pipeline step.

A record is one JSON Lines object ``{"id": str, "text": str, "meta": {...}}`` (DESIGN.md,
"Curation records"); herd keeps it a plain ``dict`` so reading, writing and pickling to
worker processes cost nothing extra.

* :class:`Step` looks at one document at a time (filters, language id, PII, quality
  score). ``process`` annotates ``meta`` or rewrites ``text`` in place and returns ``None``
  to keep the document or a short reason string to drop it; the pipeline counts reasons.
* :class:`GlobalStep` needs to see the whole corpus before it can decide (deduplication,
  keep-latest-URL, line dedup). It works in three moves so that the heavy parts stay
  parallel and streaming: ``new_scan()`` returns a collector that sees every record of one
  file (in a worker, fused with the previous pass), ``fit`` turns the collected summaries
  of all files into one small per-file state (in the main process), and ``apply`` decides
  each record of a file from that state (in a worker again).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Record = dict[str, Any]


class CurateError(ValueError):
    """Bad curation input or configuration; the message names the file, field or parameter."""


def make_record(id: str, text: str, meta: dict[str, Any] | None = None) -> Record:
    return {"id": id, "text": text, "meta": dict(meta or {})}


def language_of(rec: Record) -> str:
    """The record's language code as set by language id, or ``"unknown"``."""
    return rec["meta"].get("language") or "unknown"


class Step:
    """A per-document stage: annotate or rewrite in place, return a drop reason or None.

    ``languages`` restricts the step to documents whose ``meta.language`` is in the list
    (others pass through untouched), which is how per-language filters are configured:
    several instances of one step type, each with its own languages and thresholds.
    """

    kind = "step"

    def __init__(self, *, name: str | None = None, languages: Sequence[str] | None = None) -> None:
        self.name = name or self.kind
        self.languages = frozenset(languages) if languages else None
        self.counters: dict[str, int] = {}  # per-file tallies the report sums (PII found, benchmark hits)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def applies(self, rec: Record) -> bool:
        return self.languages is None or language_of(rec) in self.languages

    def process(self, rec: Record) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, rec: Record) -> str | None:
        return self.process(rec) if self.applies(rec) else None


class Scan:
    """Collects what a :class:`GlobalStep` needs from one file's records."""

    def add(self, rec: Record) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def result(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class GlobalStep:
    """A stage deciding from the whole corpus: scan every file, fit once, apply per file."""

    kind = "global"

    def __init__(self, *, name: str | None = None, languages: Sequence[str] | None = None) -> None:
        self.name = name or self.kind
        self.languages = frozenset(languages) if languages else None

    def applies(self, rec: Record) -> bool:
        return self.languages is None or language_of(rec) in self.languages

    def new_scan(self) -> Scan:  # pragma: no cover - interface
        raise NotImplementedError

    def fit(self, scans: Sequence[Any]) -> list[Any]:  # pragma: no cover - interface
        """One state per file (same order as ``scans``), small enough to ship to a worker."""
        raise NotImplementedError

    def apply(self, rec: Record, position: int, state: Any) -> str | None:  # pragma: no cover - interface
        """Decide record number ``position`` of its file (counting every record the scan saw)."""
        raise NotImplementedError

    def run(self, files: Sequence[Iterable[Record]]) -> list[list[tuple[Record, str | None]]]:
        """All three moves in one process, for tests and small in-memory corpora."""
        materialised = [list(f) for f in files]
        scans = []
        for recs in materialised:
            scan = self.new_scan()
            for rec in recs:
                scan.add(rec)
            scans.append(scan.result())
        states = self.fit(scans)
        return [[(rec, self.apply(rec, i, state)) for i, rec in enumerate(recs)]
                for recs, state in zip(materialised, states, strict=False)]
