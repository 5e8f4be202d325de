"""Decontamination: drop (or flag) documents sharing a long word n-gram with a named evaluation set.

Benchmarks are JSON Lines files, one item per line; the text compared is the item's
``fields`` (default: every string value, so question, choices and answer all count) and an
item is named by its ``id`` field or its line number. Both sides are normalised the same
way as for dedup (lower case, no punctuation, digits as 0) and cut into word n-grams of
``n`` words (default 13, the GPT-3/Llama 2 choice). Items shorter than ``n`` words cannot be
told apart from common phrases and are skipped (counted in ``skipped_short``); lower ``n``
for benchmarks of short items. A document matching any
benchmark is dropped (``action = "drop"``) or kept with ``meta.contamination`` listing the
benchmarks and items (``action = "flag"``). The counters give the per-benchmark report:
documents hit and distinct items hit (:func:`benchmark_report`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from herd.data.dedup import hash64
from herd.data.records import CurateError, Record, Step
from herd.data.textutil import normalize_for_hash


def _ngram_hashes(words: list[str], n: int) -> set[int]:
    return {hash64(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)}


class Decontaminate(Step):
    kind = "decontam"

    def __init__(self, *, benchmarks: Mapping[str, str], n: int = 13, fields: Sequence[str] | None = None,
                 id_field: str = "id", action: str = "drop", **kw) -> None:
        super().__init__(**kw)
        if action not in ("drop", "flag"):
            raise CurateError(f"decontam: action must be 'drop' or 'flag', got {action!r}")
        if not benchmarks:
            raise CurateError("decontam: name at least one benchmark: benchmarks = {name = 'items.jsonl'}")
        self.n, self.action = n, action
        self.index: dict[int, list[tuple[str, str]]] = {}
        self.items: dict[str, int] = {}
        self.skipped_short: dict[str, int] = {}
        for name, path in benchmarks.items():
            self.items[name] = self._load(name, Path(path), fields, id_field)

    def _load(self, name: str, path: Path, fields: Sequence[str] | None, id_field: str) -> int:
        if not path.is_file():
            raise CurateError(f"decontam: benchmark {name!r}: file {path} does not exist")
        count = 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CurateError(f"decontam: {path}:{lineno}: not JSON ({e.msg})") from None
                if not isinstance(item, dict):
                    raise CurateError(f"decontam: {path}:{lineno}: an item must be a JSON object")
                keys = fields or [k for k, v in item.items() if isinstance(v, str) and k != id_field]
                parts = []
                for k in keys:
                    v = item.get(k)
                    parts.extend(v if isinstance(v, list) else [v])
                text = " ".join(str(p) for p in parts if p is not None)
                words = normalize_for_hash(text).split()
                if len(words) < self.n:
                    self.skipped_short[name] = self.skipped_short.get(name, 0) + 1
                    continue
                item_id = str(item.get(id_field, lineno))
                for h in _ngram_hashes(words, self.n):
                    self.index.setdefault(h, []).append((name, item_id))
                count += 1
        return count

    def process(self, rec: Record) -> str | None:
        words = normalize_for_hash(rec["text"]).split()
        hits: dict[str, set[str]] = {}
        for h in _ngram_hashes(words, self.n):
            for name, item in self.index.get(h, ()):
                hits.setdefault(name, set()).add(item)
        if not hits:
            return None
        for name, items in hits.items():
            self.count(f"{name}/documents")
            for item in items:
                self.count(f"{name}/item/{item}")
        rec["meta"]["contamination"] = {name: sorted(items)[:20] for name, items in hits.items()}
        return "contaminated" if self.action == "drop" else None


def benchmark_report(counters: Mapping[str, int], items: Mapping[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per benchmark: documents that matched, distinct items matched (and their share when ``items`` is given)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in counters.items():
        name, _, rest = key.partition("/")
        row = out.setdefault(name, {"documents": 0, "items_hit": 0})
        if rest == "documents":
            row["documents"] += value
        elif rest.startswith("item/"):
            row["items_hit"] += 1
    for name, total in (items or {}).items():
        row = out.setdefault(name, {"documents": 0, "items_hit": 0})
        row["items"] = total
        row["items_hit_fraction"] = round(row["items_hit"] / total, 4) if total else 0.0
    return out
