"""Readers: JSON Lines (.gz/.zst), Parquet, folders of text files, WARC (HTML → text) → records.

An ``[[input]]`` table of the config names a ``path`` (file, directory or glob), a ``format``
(``auto`` from the suffix, or ``jsonl``, ``parquet``, ``text``, ``warc``) and a ``source``
label that is written to ``meta.source`` (the mix step weights by it). Inputs expand to
:class:`InputTask`s, the unit the pipeline runs in parallel: one per file, and one per
``TEXT_FILES_PER_TASK`` text files of a folder.

Records are streamed: JSONL line by line, Parquet batch by batch (pyarrow
``iter_batches``), WARC record by record (warcio). JSONL fields other than ``id``/``text``
and ``meta`` go into ``meta`` (``url``, ``date`` … as web dumps have them); an existing
``meta`` object is kept. A record without an id gets ``<source>/<file stem>/<line>``.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from herd.data.records import CurateError, Record

TEXT_FILES_PER_TASK = 1000
_JSONL = (".jsonl", ".json", ".ndjson")
_FORMATS = ("auto", "jsonl", "parquet", "text", "warc")


@dataclass(frozen=True)
class InputSpec:
    path: str
    format: str = "auto"
    source: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.format not in _FORMATS:
            raise CurateError(f"input {self.path}: format must be one of {', '.join(_FORMATS)}, got {self.format!r}")


@dataclass(frozen=True)
class InputTask:
    kind: str
    paths: tuple[str, ...]
    source: str
    text_field: str = "text"
    id_field: str = "id"
    skip_bad: bool = False
    name: str = field(default="")


def _strip_compression(name: str) -> str:
    for suffix in (".gz", ".zst"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def detect_format(path: Path) -> str | None:
    name = _strip_compression(path.name.lower())
    if name.endswith(_JSONL):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".warc") or name.endswith(".arc"):
        return "warc"
    if name.endswith(".txt"):
        return "text"
    return None


def expand_inputs(specs: Sequence[InputSpec]) -> list[InputTask]:
    """Every input file as tasks, in a deterministic order (sorted names within each input)."""
    tasks: list[InputTask] = []
    for spec in specs:
        p = Path(spec.path)
        if p.is_dir():
            files = sorted(x for x in p.rglob("*") if x.is_file())
        else:
            files = sorted(Path(x) for x in glob.glob(spec.path)) if any(c in spec.path for c in "*?[") else [p]
        if not files or not all(f.exists() for f in files):
            raise CurateError(f"input {spec.path}: no such file or directory (or the glob matches nothing)")
        source = spec.source or (p.stem if p.is_dir() else Path(spec.path).parent.name or "data")
        texts: list[str] = []
        for f in files:
            kind = spec.format if spec.format != "auto" else detect_format(f)
            if kind is None:
                if p.is_dir():
                    continue  # other files in a folder (README, checksums) are not inputs
                raise CurateError(f"input {f}: cannot tell its format from the name; set format = ...")
            if kind == "text":
                texts.append(str(f))
                continue
            tasks.append(InputTask(kind, (str(f),), source, spec.text_field, spec.id_field, spec.skip_bad, str(f)))
        for i in range(0, len(texts), TEXT_FILES_PER_TASK):
            chunk = tuple(texts[i:i + TEXT_FILES_PER_TASK])
            tasks.append(InputTask("text", chunk, source, spec.text_field, spec.id_field, spec.skip_bad, chunk[0]))
    if not tasks:
        raise CurateError("no input files found")
    return tasks


def open_text(path: str | Path) -> TextIO:
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if path.suffix == ".zst":
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8")
    return open(path, encoding="utf-8")


def _record(obj: dict[str, Any], task: InputTask, where: str, default_id: str) -> Record:
    text = obj.get(task.text_field)
    if not isinstance(text, str):
        raise CurateError(f"{where}: field {task.text_field!r} is missing or not a string")
    meta = dict(obj.get("meta") or {}) if isinstance(obj.get("meta"), dict) else {}
    for k, v in obj.items():
        if k not in (task.text_field, task.id_field, "meta"):
            meta.setdefault(k, v)
    meta.setdefault("source", task.source)
    rid = obj.get(task.id_field)
    return {"id": str(rid) if rid is not None else default_id, "text": text, "meta": meta}


def read_jsonl(task: InputTask, path: str) -> Iterator[Record]:
    stem = _strip_compression(Path(path).name)
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise CurateError(f"{where}: a record must be a JSON object")
                    yield _record(obj, task, where, f"{task.source}/{stem}/{lineno}")
                except (json.JSONDecodeError, CurateError) as e:
                    if not task.skip_bad:
                        raise CurateError(f"{where}: {e}" if isinstance(e, json.JSONDecodeError) else str(e)) from None
                    yield {"id": f"{task.source}/{stem}/{lineno}", "text": "", "meta": {"bad_record": str(e)[:200]}}
    except UnicodeDecodeError as e:
        raise CurateError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_parquet(task: InputTask, path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise CurateError(f"{path}: not a readable Parquet file ({e})") from None
    if task.text_field not in pf.schema_arrow.names:
        raise CurateError(f"{path}: no column {task.text_field!r} (columns: {', '.join(pf.schema_arrow.names)})")
    stem = Path(path).stem
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            row += 1
            yield _record(obj, task, f"{path}: row {row}", f"{task.source}/{stem}/{row}")


def read_text_files(task: InputTask) -> Iterator[Record]:
    for path in task.paths:
        try:
            with open_text(path) as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise CurateError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        yield {"id": f"{task.source}/{_strip_compression(Path(path).name)}", "text": text,
               "meta": {"source": task.source, "path": path}}


def read_warc(task: InputTask, path: str) -> Iterator[Record]:
    """HTML responses of a WARC file, main text extracted (pages with no content are skipped)."""
    from warcio.archiveiterator import ArchiveIterator

    from herd.data.extract import html_to_text

    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            if rec.rec_type != "response":
                continue
            ctype = (rec.http_headers.get_header("Content-Type") or "") if rec.http_headers else ""
            if "html" not in ctype.lower():
                continue
            url = rec.rec_headers.get_header("WARC-Target-URI")
            html = rec.content_stream().read()
            text = html_to_text(html, url=url)
            if not text:
                continue
            rid = rec.rec_headers.get_header("WARC-Record-ID") or f"{task.source}/{url}"
            yield {"id": rid.strip("<>"), "text": text,
                   "meta": {"source": task.source, "url": url, "date": rec.rec_headers.get_header("WARC-Date")}}


def read_task(task: InputTask) -> Iterator[Record]:
    if task.kind == "jsonl":
        return read_jsonl(task, task.paths[0])
    if task.kind == "parquet":
        return read_parquet(task, task.paths[0])
    if task.kind == "warc":
        return read_warc(task, task.paths[0])
    if task.kind == "text":
        return read_text_files(task)
    raise CurateError(f"unknown input format {task.kind!r}")
