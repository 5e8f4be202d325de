"""Token shards: the on-disk format between tokenization and training.

A shard named ``PREFIX`` is a group of files side by side:

``PREFIX.bin``
    every token of every document, one flat array (uint16 when the vocabulary has at most
    65,536 ids, else uint32), read through a memory map.
``PREFIX.idx``
    document boundaries: ``n_documents + 1`` uint64 offsets into ``.bin``; document ``i``
    is ``tokens[offsets[i]:offsets[i + 1]]``. Training takes document ids from here, never
    from scanning for a separator token (chat data holds many ``<|eot_id|>``).
``PREFIX.json``
    the sidecar: format version, tokenizer hash, bos/eos ids, vocabulary size, dtype,
    document and token counts, source name, provenance (input files, mix) and the list of
    aligned sidecars. It is written last, so a shard without it is incomplete.
``PREFIX.<name>`` (optional)
    aligned sidecars: one row per token, ``width`` values of ``dtype`` each. Two uses:

    * ``mask`` (uint8, width 1): the SFT loss mask. 1 = this token is a training target,
      0 = it is context only (system prompt, user turns); the loader sets the label that
      predicts a 0 token to -100.
    * teacher top-k logits for distillation (the hook): declare
      ``{"topk_ids": SidecarSpec("uint32", k), "topk_logprobs": SidecarSpec("float16", k)}``
      and pass both arrays of shape ``(n_tokens, k)`` to :meth:`ShardWriter.add`; read
      them back with :meth:`Shard.sidecar`. No reader in herd consumes them yet.

Each document produced by :func:`herd.data.tokenize.tokenize_corpus` is
``<|begin_of_text|> … <|end_of_text|>``. Every file is written under a temporary name and
renamed into place; the reader checks every size against the sidecar and names the file
that disagrees.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SHARD_SUFFIXES = (".bin", ".idx", ".json")


class ShardError(ValueError):
    """A shard is missing, truncated, inconsistent or made with another tokenizer; the
    message names the file."""


@dataclass(frozen=True)
class SidecarSpec:
    """An aligned per-token sidecar: ``width`` values of ``dtype`` for every token."""

    dtype: str
    width: int = 1


@dataclass
class ShardInfo:
    """The JSON sidecar of a shard."""

    tokenizer_hash: str
    bos_id: int
    eos_id: int
    vocab_size: int
    dtype: str
    n_documents: int
    n_tokens: int
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)
    sidecars: dict[str, SidecarSpec] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: Path) -> ShardInfo:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ShardError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ShardError(f"{path}: expected a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ShardError(f"{path}: shard format version {version!r}, this herd reads {FORMAT_VERSION}")
        try:
            raw["sidecars"] = {k: SidecarSpec(**v) for k, v in raw.get("sidecars", {}).items()}
            return cls(**raw)
        except TypeError as e:
            raise ShardError(f"{path}: malformed shard sidecar ({e})") from None


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_prefix(path: str | os.PathLike) -> Path:
    """``x/name`` from ``x/name``, ``x/name.bin``, ``x/name.idx`` or ``x/name.json``."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in SHARD_SUFFIXES else path


def _file(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class ShardWriter:
    """Writes one shard incrementally: ``add`` documents, then ``close``.

    Tokens stream to a temporary ``.bin`` as they arrive (memory holds only the offsets);
    ``close`` writes ``.idx`` and the sidecars and renames everything into place, the
    ``.json`` last. Used as a context manager, an exception discards the temporaries.
    """

    def __init__(
        self,
        prefix: str | os.PathLike,
        *,
        tokenizer_hash: str,
        bos_id: int,
        eos_id: int,
        vocab_size: int,
        source: str = "",
        provenance: dict[str, Any] | None = None,
        sidecars: dict[str, SidecarSpec] | None = None,
    ) -> None:
        self.prefix = shard_prefix(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = token_dtype(vocab_size)
        self.info = ShardInfo(
            tokenizer_hash=tokenizer_hash, bos_id=bos_id, eos_id=eos_id, vocab_size=vocab_size,
            dtype=self.dtype.name, n_documents=0, n_tokens=0, source=source,
            provenance=dict(provenance or {}), sidecars=dict(sidecars or {}),
        )
        for name in self.info.sidecars:
            if f".{name}" in SHARD_SUFFIXES or not name.isidentifier():
                raise ValueError(f"sidecar name {name!r} is reserved or not an identifier")
        self._offsets = [0]
        self._tmps: dict[str, Path] = {}
        self._files = {}
        for suffix in (".bin", *(f".{n}" for n in self.info.sidecars)):
            tmp = _tmp(_file(self.prefix, suffix))
            self._tmps[suffix] = tmp
            self._files[suffix] = open(tmp, "wb")  # closed in close() or abort()
        self.closed = False

    @property
    def n_tokens(self) -> int:
        return self._offsets[-1]

    @property
    def n_documents(self) -> int:
        return len(self._offsets) - 1

    def add(self, tokens: Sequence[int] | np.ndarray, **sidecars: np.ndarray | Sequence) -> None:
        """Append one document (its full ids, bos/eos included) and its aligned sidecars."""
        if self.closed:
            raise ValueError(f"shard {self.prefix} is already closed")
        ids = np.asarray(tokens)
        if ids.ndim != 1:
            raise ValueError(f"a document must be a 1-D sequence of ids, got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.info.vocab_size):
            bad = int(ids.max() if ids.max() >= self.info.vocab_size else ids.min())
            raise ValueError(f"token id {bad} is outside the vocabulary (vocab_size={self.info.vocab_size})")
        if set(sidecars) != set(self.info.sidecars):
            raise ValueError(f"shard {self.prefix} declares sidecars {sorted(self.info.sidecars)}, "
                             f"got {sorted(sidecars)}")
        for name, values in sidecars.items():
            spec = self.info.sidecars[name]
            arr = np.asarray(values, dtype=spec.dtype)
            want = (ids.size,) if spec.width == 1 else (ids.size, spec.width)
            if arr.shape != want:
                raise ValueError(f"sidecar {name!r} has shape {arr.shape}, expected {want} for this document")
            self._files[f".{name}"].write(np.ascontiguousarray(arr).tobytes())
        self._files[".bin"].write(ids.astype(self.dtype, copy=False).tobytes())
        self._offsets.append(self._offsets[-1] + ids.size)

    def close(self) -> ShardInfo:
        """Finish the shard: write the index and sidecar, rename into place."""
        if self.closed:
            return self.info
        for f in self._files.values():
            f.close()
        self.info.n_documents, self.info.n_tokens = self.n_documents, self.n_tokens
        idx_tmp = _tmp(_file(self.prefix, ".idx"))
        json_tmp = _tmp(_file(self.prefix, ".json"))
        self._tmps[".idx"], self._tmps[".json"] = idx_tmp, json_tmp
        try:
            np.asarray(self._offsets, dtype=np.uint64).tofile(idx_tmp)
            json_tmp.write_text(self.info.to_json())
            for suffix, tmp in self._tmps.items():  # .json was inserted last: renamed last
                os.replace(tmp, _file(self.prefix, suffix))
        except BaseException:
            self.abort()
            raise
        self.closed = True
        return self.info

    def abort(self) -> None:
        """Discard everything written so far."""
        for f in self._files.values():
            f.close()
        for tmp in self._tmps.values():
            tmp.unlink(missing_ok=True)
        self.closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(
    prefix: str | os.PathLike,
    documents: Sequence[Sequence[int]],
    *,
    tokenizer_hash: str,
    bos_id: int,
    eos_id: int,
    vocab_size: int,
    source: str = "",
    masks: Sequence[Sequence[int]] | None = None,
    provenance: dict[str, Any] | None = None,
) -> ShardInfo:
    """Write a whole shard from in-memory documents (and optional SFT loss masks)."""
    sidecars = {"mask": SidecarSpec("uint8")} if masks is not None else None
    with ShardWriter(prefix, tokenizer_hash=tokenizer_hash, bos_id=bos_id, eos_id=eos_id,
                     vocab_size=vocab_size, source=source, provenance=provenance, sidecars=sidecars) as w:
        for i, doc in enumerate(documents):
            if masks is None:
                w.add(doc)
            else:
                w.add(doc, mask=masks[i])
    return w.info


class Shard:
    """A shard opened for reading: ``tokens``, ``offsets`` and sidecars are memory maps."""

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.prefix = shard_prefix(prefix)
        json_path = _file(self.prefix, ".json")
        try:
            self.info = ShardInfo.from_json(json_path.read_text(), json_path)
        except FileNotFoundError:
            raise ShardError(f"shard sidecar not found: {json_path} (an incomplete or missing shard)") from None
        info = self.info
        self.tokens = self._map(".bin", np.dtype(info.dtype), (info.n_tokens,))
        self.offsets = self._map(".idx", np.dtype(np.uint64), (info.n_documents + 1,))
        if self.offsets[0] != 0 or int(self.offsets[-1]) != info.n_tokens:
            raise ShardError(f"{_file(self.prefix, '.idx')}: offsets run from {int(self.offsets[0])} to "
                             f"{int(self.offsets[-1])}, expected 0 to {info.n_tokens}")
        if info.n_documents and np.any(self.offsets[1:] < self.offsets[:-1]):
            raise ShardError(f"{_file(self.prefix, '.idx')}: offsets are not non-decreasing")
        self._sidecars = {
            name: self._map(f".{name}", np.dtype(spec.dtype),
                            (info.n_tokens,) if spec.width == 1 else (info.n_tokens, spec.width))
            for name, spec in info.sidecars.items()
        }

    def _map(self, suffix: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        path = _file(self.prefix, suffix)
        want = int(np.prod(shape)) * dtype.itemsize
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ShardError(f"shard file not found: {path}") from None
        if size != want:
            raise ShardError(f"{path}: {size} bytes, expected {want} ({shape} × {dtype.name}) from "
                             f"{_file(self.prefix, '.json').name}: truncated or mismatched file")
        if want == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    @property
    def n_documents(self) -> int:
        return self.info.n_documents

    @property
    def n_tokens(self) -> int:
        return self.info.n_tokens

    @property
    def mask(self) -> np.ndarray | None:
        """The SFT loss mask (1 = train on this token), or None."""
        return self._sidecars.get("mask")

    def sidecar(self, name: str) -> np.ndarray:
        try:
            return self._sidecars[name]
        except KeyError:
            raise KeyError(f"shard {self.prefix} has no sidecar {name!r} (has {sorted(self._sidecars)})") from None

    def document_lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int64)

    def document(self, i: int) -> np.ndarray:
        """The ids of document ``i`` (a view into the memory map)."""
        if not 0 <= i < self.n_documents:
            raise IndexError(f"document {i} out of range for {self.prefix} ({self.n_documents} documents)")
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __len__(self) -> int:
        return self.n_documents

    def __repr__(self) -> str:
        return f"Shard({str(self.prefix)!r}, documents={self.n_documents}, tokens={self.n_tokens})"


def open_shard(path: str | os.PathLike, *, expect_tokenizer_hash: str | None = None) -> Shard:
    """Open one shard (any of its file names or the prefix); with ``expect_tokenizer_hash``,
    refuse a shard made with another tokenizer."""
    shard = Shard(path)
    if expect_tokenizer_hash is not None and shard.info.tokenizer_hash != expect_tokenizer_hash:
        raise ShardError(
            f"{_file(shard.prefix, '.json')}: made with tokenizer {shard.info.tokenizer_hash[:16]}…, "
            f"this run uses {expect_tokenizer_hash[:16]}… (re-tokenize the data with this run's tokenizer)"
        )
    return shard


def open_shards(paths: Sequence[str | os.PathLike], *, expect_tokenizer_hash: str | None = None) -> list[Shard]:
    """Open several shards. They must all share one tokenizer: ``expect_tokenizer_hash``
    when given, else the first shard's."""
    shards: list[Shard] = []
    for path in paths:
        shard = open_shard(path, expect_tokenizer_hash=expect_tokenizer_hash)
        if expect_tokenizer_hash is None:
            expect_tokenizer_hash = shard.info.tokenizer_hash
        shards.append(shard)
    return shards


def find_shards(directory: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """The shard prefixes in ``directory`` (those with a ``.json`` sidecar), sorted."""
    return sorted(p.with_suffix("") for p in Path(directory).glob(f"{pattern}.json") if p.with_suffix(".bin").exists())
