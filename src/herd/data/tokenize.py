"""Corpus → token shards: streaming, on every core, one shard per ``shard_tokens`` tokens.

Inputs:

* JSON Lines (``.jsonl``/``.json``, optionally ``.gz``, or ``.zst`` when the
  ``zstandard`` package is installed): one curation record ``{"id", "text", "meta"}`` per
  line; the text is read from ``text_field``. Blank lines are skipped.
* plain text (``.txt``, optionally compressed as above): **one document per file** (a
  file is read whole, so it should be document-sized; split large text corpora into
  JSONL records first).
* a directory: every file above in it, sorted by name.

Each document is encoded as ``<|begin_of_text|> text <|end_of_text|>``, special-token
spellings in the text staying plain text. Empty texts are skipped and counted. Memory
does not grow with the corpus: lines are read lazily, a bounded number of chunks is in
flight in the worker pool (``Pool.imap`` would read its whole input ahead, so chunks are
submitted with ``apply_async`` under a cap and collected in order), and tokens go
straight to the open shard file.

A bad record (not JSON, not an object, missing or non-string text field, undecodable
bytes) raises :class:`CorpusError` naming the file and line, and the shards this call
wrote are removed; with ``skip_bad=True`` bad records are counted and skipped instead.
"""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from herd.data.shards import ShardWriter, find_shards
from herd.tokenizer import Tokenizer

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt",)
COMPRESSED_SUFFIXES = (".gz", ".zst")
DEFAULT_SHARD_TOKENS = 1 << 28  # 256 Mi tokens: 1 GiB of uint32 per .bin

# (input index, line number, raw line or whole text, is_json)
_Record = tuple[int, int, str, bool]
# (input index, line number, ids or None, error message or None)
_Encoded = tuple[int, int, "np.ndarray | None", "str | None"]


class CorpusError(ValueError):
    """A bad input file or record; the message names the file (and line)."""


@dataclass
class TokenizeSummary:
    source: str
    shards: list[Path]
    n_documents: int
    n_tokens: int
    n_bad: int = 0
    n_empty: int = 0
    seconds: float = 0.0
    bad_examples: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "shards": [str(p) for p in self.shards], "n_documents": self.n_documents,
            "n_tokens": self.n_tokens, "n_bad": self.n_bad, "n_empty": self.n_empty,
            "seconds": round(self.seconds, 3), "tokens_per_second": round(self.tokens_per_second, 1),
            "bad_examples": self.bad_examples,
        }


# -- reading -------------------------------------------------------------------------------


def base_suffix(path: Path) -> str:
    """The suffix that says the format (".jsonl", ".txt"), under any .gz or .zst."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to read: each file as given, each directory's readable files sorted."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and base_suffix(p) in JSONL_SUFFIXES + TEXT_SUFFIXES)
            if not found:
                raise CorpusError(f"{path}: directory holds no .jsonl/.json/.txt files (optionally .gz/.zst)")
            files.extend(found)
        elif path.is_file():
            if base_suffix(path) not in JSONL_SUFFIXES + TEXT_SUFFIXES:
                raise CorpusError(f"{path}: unknown input type (expected .jsonl, .json, .ndjson or .txt, "
                                  f"optionally .gz/.zst)")
            files.append(path)
        else:
            raise CorpusError(f"input not found: {path}")
    return files


def open_text(path: Path) -> TextIO:
    """A text stream over ``path``, decompressing .gz and .zst (needs ``zstandard``)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise CorpusError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, encoding="utf-8")


def read_records(files: Sequence[Path]) -> Iterator[_Record]:
    """Every record of every file, lazily: JSONL lines (unparsed) or whole text files."""
    for index, path in enumerate(files):
        is_json = base_suffix(path) in JSONL_SUFFIXES
        lineno = 0
        try:
            with open_text(path) as f:
                if not is_json:
                    yield index, 1, f.read(), False
                    continue
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield index, lineno, line, True
        except UnicodeDecodeError as e:
            where = f" after line {lineno}" if is_json else ""
            raise CorpusError(f"{path}: not UTF-8 text{where} ({e.reason})") from None
        except (OSError, EOFError) as e:
            raise CorpusError(f"{path}: cannot read ({e})") from None


def _chunks(records: Iterator[_Record], max_records: int, max_chars: int) -> Iterator[list[_Record]]:
    chunk: list[_Record] = []
    chars = 0
    for record in records:
        chunk.append(record)
        chars += len(record[2])
        if len(chunk) >= max_records or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


# -- encoding (in the worker processes) ----------------------------------------------------


def encode_records(tokenizer: Tokenizer, text_field: str, chunk: list[_Record]) -> list[_Encoded]:
    """Parse and encode a chunk; a bad record becomes an error message, an empty text None."""
    out: list[_Encoded] = []
    for index, lineno, raw, is_json in chunk:
        text: Any = raw
        if is_json:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                out.append((index, lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"))
                continue
            if not isinstance(record, dict):
                out.append((index, lineno, None, f"expected a JSON object, got {type(record).__name__}"))
                continue
            if text_field not in record:
                out.append((index, lineno, None, f"no field {text_field!r}"))
                continue
            text = record[text_field]
            if not isinstance(text, str):
                out.append((index, lineno, None, f"field {text_field!r} is {type(text).__name__}, not a string"))
                continue
        if not text:
            out.append((index, lineno, None, None))
            continue
        ids = tokenizer.encode(text, bos=True, eos=True)
        out.append((index, lineno, np.asarray(ids, dtype=np.uint32), None))
    return out


_WORKER: tuple[Tokenizer, str] | None = None


def _init_worker(ranks: dict[bytes, int], specials: dict[str, int], pattern: str, text_field: str) -> None:
    global _WORKER
    _WORKER = (Tokenizer(ranks, specials, pattern=pattern), text_field)


def _encode_in_worker(chunk: list[_Record]) -> list[_Encoded]:
    assert _WORKER is not None, "worker not initialised"
    return encode_records(_WORKER[0], _WORKER[1], chunk)


def _ordered_bounded_map(pool, fn: Callable, items: Iterable, max_in_flight: int) -> Iterator:
    """``pool.imap(fn, items)`` that reads at most ``max_in_flight`` items ahead."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= max_in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# -- the driver ----------------------------------------------------------------------------


def tokenize_corpus(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer | str | os.PathLike,
    *,
    text_field: str = "text",
    source: str | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    workers: int | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
    chunk_records: int = 256,
    chunk_chars: int = 4 << 20,
) -> TokenizeSummary:
    """Tokenize ``inputs`` into shards ``out_dir/{source}-00000.{bin,idx,json}``, …

    A new shard starts once the open one holds ``shard_tokens`` tokens (documents are never
    split across shards). ``workers`` processes encode (default: every core; 1 = in this
    process). ``provenance`` (e.g. ``{"mix": {...}}`` from curation) is stored in every
    shard's sidecar beside the input files that shard drew from. ``source`` defaults to the
    name of ``out_dir``. Existing shards of the same source are refused unless
    ``overwrite``.
    """
    start = time.perf_counter()
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.load(tokenizer)
    files = expand_inputs(inputs)
    if not files:
        raise CorpusError("no input files given")
    out = Path(out_dir)
    source = source or out.resolve().name
    if not source.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"source name {source!r} must be letters, digits, '-', '_' or '.'")
    existing = find_shards(out, f"{source}-[0-9]*") if out.exists() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds shards of source {source!r} (e.g. {existing[0]}); "
                              f"pass overwrite=True (--overwrite) to replace them")
    for prefix in existing:
        for f in out.glob(f"{prefix.name}.*"):
            f.unlink()
    workers = workers or os.cpu_count() or 1

    summary = TokenizeSummary(source=source, shards=[], n_documents=0, n_tokens=0)
    writer: ShardWriter | None = None
    shard_inputs: set[int] = set()

    def close_writer() -> None:
        nonlocal writer
        assert writer is not None
        writer.info.provenance["inputs"] = [str(files[i]) for i in sorted(shard_inputs)]
        writer.close()
        summary.shards.append(writer.prefix)
        writer = None
        shard_inputs.clear()

    chunks = _chunks(read_records(files), chunk_records, chunk_chars)
    pool = None
    if workers > 1:
        init = (tokenizer.mergeable_ranks, tokenizer.special_tokens, tokenizer.pattern, text_field)
        pool = mp.get_context().Pool(workers, initializer=_init_worker, initargs=init)
        encoded: Iterator[list[_Encoded]] = _ordered_bounded_map(pool, _encode_in_worker, chunks, 4 * workers)
    else:
        encoded = (encode_records(tokenizer, text_field, chunk) for chunk in chunks)

    from tqdm import tqdm

    bar = tqdm(desc=f"tokenize {source}", unit=" doc", disable=not progress, dynamic_ncols=True)
    try:
        for results in encoded:
            for index, lineno, ids, error in results:
                if error is not None:
                    where = f"{files[index]}:{lineno}"
                    if not skip_bad:
                        raise CorpusError(f"{where}: {error}")
                    summary.n_bad += 1
                    if len(summary.bad_examples) < 10:
                        summary.bad_examples.append(f"{where}: {error}")
                    continue
                if ids is None:
                    summary.n_empty += 1
                    continue
                if writer is None:
                    writer = ShardWriter(
                        out / f"{source}-{len(summary.shards):05d}", tokenizer_hash=tokenizer.hash,
                        bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, vocab_size=tokenizer.n_words,
                        source=source, provenance={**(provenance or {}), "text_field": text_field},
                    )
                writer.add(ids)
                shard_inputs.add(index)
                summary.n_documents += 1
                summary.n_tokens += ids.size
                if writer.n_tokens >= shard_tokens:
                    close_writer()
            bar.update(len(results))
            bar.set_postfix(tokens=summary.n_tokens, shards=len(summary.shards) + (writer is not None))
        if writer is not None:
            close_writer()
    except BaseException:
        if writer is not None:
            writer.abort()
        for prefix in summary.shards:
            for suffix in (".json", ".bin", ".idx"):  # the sidecar first: the shard is gone at once
                prefix.with_name(prefix.name + suffix).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    summary.seconds = time.perf_counter() - start
    return summary
