"""``configs/curate-*.toml`` → a :class:`~herd.data.pipeline.Pipeline`.

```toml
[curate]
work_dir = "runs/curate"   # phases, output/, report.json
workers = 2                # processes (default: every core)
samples_per_reason = 5

[[input]]
path = "raw/*.jsonl.gz"    # file, directory or glob
source = "web"             # meta.source; the mix weights by it

[[step]]
type = "gopher_quality"    # see STEP_TYPES
min_doc_words = 50         # any constructor argument; `languages = ["en"]` restricts a step
```

Steps run in the order listed. Unknown step types and unknown keys are errors that name the
step (``step 3 (gopher_quality)``) so a typo never silently disables a rule.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from herd.data.decontam import Decontaminate
from herd.data.dedup import ExactDedup, LineDedup, MinHashDedup
from herd.data.heuristics import C4Quality, DupNgramCoverage, GopherQuality, GopherRepetition
from herd.data.langid import LanguageId
from herd.data.nsfw import DirtyWords
from herd.data.pii import PiiRedactor
from herd.data.pipeline import Pipeline
from herd.data.quality import QualityScore
from herd.data.readers import InputSpec
from herd.data.records import CurateError
from herd.data.semdedup import SemDeDup
from herd.data.tokenkl import TokenKL
from herd.data.urls import LatestUrl, UrlFilter

STEP_TYPES: dict[str, type] = {cls.kind: cls for cls in (
    UrlFilter, LatestUrl, LanguageId, GopherQuality, GopherRepetition, C4Quality, DupNgramCoverage, DirtyWords,
    TokenKL, PiiRedactor, ExactDedup, MinHashDedup, LineDedup, Decontaminate, QualityScore, SemDeDup)}


def build_step(table: dict[str, Any], index: int):
    table = dict(table)
    kind = table.pop("type", None)
    where = f"step {index} ({kind})"
    if kind not in STEP_TYPES:
        raise CurateError(f"step {index}: unknown type {kind!r}; known: {', '.join(sorted(STEP_TYPES))}")
    cls = STEP_TYPES[kind]
    allowed: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            allowed |= {p.name for p in inspect.signature(klass.__init__).parameters.values()
                        if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise CurateError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    try:
        return cls(**table)
    except (TypeError, ValueError) as e:
        raise CurateError(f"{where}: {e}") from None


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Read a curate TOML; ``overrides`` are ``curate.workers=4`` / ``step.2.min_doc_words=40`` strings."""
    path = Path(path)
    if not path.is_file():
        raise CurateError(f"config {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise CurateError(f"config {path}: {e}") from None
    for item in overrides or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise CurateError(f"override {item!r}: expected key=value")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        try:
            _set(raw, key.strip(), parsed)
        except (IndexError, ValueError, KeyError, TypeError):
            raise CurateError(f"override {item!r}: no such place in {path}") from None
    base = path.parent
    cur = raw.get("curate", {})
    unknown = set(cur) - {"work_dir", "workers", "samples_per_reason", "compresslevel"}
    if unknown:
        raise CurateError(f"config {path}: unknown [curate] key(s) {', '.join(sorted(unknown))}")
    if "work_dir" not in cur:
        raise CurateError(f"config {path}: [curate] needs work_dir")
    inputs = []
    for i, t in enumerate(raw.get("input", [])):
        t = dict(t)
        if "path" not in t:
            raise CurateError(f"config {path}: input {i} needs a path")
        p = Path(t.pop("path"))
        try:
            inputs.append(InputSpec(path=str(p if p.is_absolute() else Path.cwd() / p), **t))
        except TypeError as e:
            raise CurateError(f"config {path}: input {i}: {e}") from None
    if not inputs:
        raise CurateError(f"config {path}: no [[input]] tables")
    steps = [build_step(t, i) for i, t in enumerate(raw.get("step", []))]
    kwargs: dict[str, Any] = {"inputs": inputs, "steps": steps, "work_dir": Path(cur["work_dir"]), "config": raw}
    for k in ("workers", "samples_per_reason", "compresslevel"):
        if k in cur:
            kwargs[k] = cur[k]
    del base
    return Pipeline(**kwargs)
