"""Train a new byte-level BPE vocabulary in Llama 3's format, and measure its compression.

The trainer is Hugging Face ``tokenizers``' ``BpeTrainer`` (Rust, multi-threaded: an 8K
vocabulary from 10 MB of text takes seconds on two cores), given Llama 3's pre-tokenizer
(a ``Split`` on the Llama 3 regex, then ``ByteLevel`` without its own regex). Its merges
become tiktoken ranks: the 256 single bytes first (rank = byte value), then each merge's
product in the order it was learned. A token's rank is then its merge priority, which is
exactly the order tiktoken merges in, so tiktoken with these ranks gives the ids the
trained ``tokenizers`` model gives (:func:`count_disagreements` checks it on any text).
The 256 Llama 3 special tokens follow the ranks, so the result loads and saves like the
real ``tokenizer.model``.

``tokenizers`` is needed only here (``pip install herd[bpe]``); herd encodes with tiktoken.

Meta reports 3.94 English characters per token for Llama 3 (3.17 for Llama 2) on its own
sample. To measure Llama 3 on your English text, pass it as held-out text and compare:

    herd tokenizer train --input train.jsonl --vocab-size 8192 --out tok --eval english.jsonl \
        --compare "$(python -c 'import llama_models.llama3 as m, pathlib; \
                    print(pathlib.Path(m.__file__).parent / "tokenizer.model")')"

The ``compare`` row of the report is Llama 3's characters (and bytes) per token there.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from herd.tokenizer.hf_files import byte_to_unicode
from herd.tokenizer.tokenizer import LLAMA3_PATTERN, Tokenizer

MIN_VOCAB_SIZE = 256  # the single bytes
_TXT_CHUNK_CHARS = 1 << 20


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("training a BPE vocabulary needs the `tokenizers` package: pip install 'herd[bpe]'") from e
    return tokenizers


def train_hf_bpe(texts: Iterable[str], vocab_size: int, *, pattern: str = LLAMA3_PATTERN,
                 min_frequency: int = 0, max_token_length: int | None = None) -> Any:
    """A ``tokenizers.Tokenizer`` (byte-level BPE, Llama 3 pre-tokenizer) trained on ``texts``
    to ``vocab_size`` tokens (the 256 bytes included, no special tokens)."""
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (the single bytes), got {vocab_size!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string")
    tk = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = tk.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tk.Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=max_token_length,
        show_progress=False,
    )
    seen = 0

    def checked() -> Iterator[str]:
        nonlocal seen
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
            seen += len(text)
            yield text

    hf.train_from_iterator(checked(), trainer=trainer)
    if seen == 0:
        raise ValueError("no training text: texts is empty or holds only empty strings")
    return hf


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def _piece_bytes(piece: str) -> bytes:
    """The bytes a ``tokenizers`` byte-level piece (GPT-2's byte alphabet) stands for."""
    to_byte = _unicode_to_byte()
    return bytes(to_byte[c] for c in piece)


def ranks_from_hf(hf: Any) -> dict[bytes, int]:
    """tiktoken ranks from a trained byte-level BPE: bytes 0..255, then the merges in order."""
    model = json.loads(hf.to_str())["model"]
    ranks = {bytes([b]): b for b in range(256)}
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = _piece_bytes(left + right)
        if token not in ranks:  # a token two merges can make keeps its first (lowest) rank
            ranks[token] = len(ranks)
    return ranks


def train_bpe(texts: Iterable[str], vocab_size: int, *, pattern: str = LLAMA3_PATTERN,
              min_frequency: int = 0, max_token_length: int | None = None, name: str = "herd-bpe") -> Tokenizer:
    """Learn a byte-level BPE vocabulary of ``vocab_size`` ranks (the 256 bytes included)
    from ``texts``, with Llama 3's pre-tokenizer and its 256 special tokens numbered right
    after the ranks. Save it with ``Tokenizer.save(dir)``.

    A corpus too small to supply ``vocab_size - 256`` merges gives a smaller vocabulary
    (with a warning). ``pattern`` must mean the same in Oniguruma (the trainer) and
    fancy-regex (tiktoken); Llama 3's does.
    """
    hf = train_hf_bpe(texts, vocab_size, pattern=pattern, min_frequency=min_frequency,
                      max_token_length=max_token_length)
    ranks = ranks_from_hf(hf)
    if len(ranks) < vocab_size:
        warnings.warn(f"the corpus supplied only {len(ranks)} of the {vocab_size} requested tokens",
                      stacklevel=2)
    return Tokenizer(ranks, pattern=pattern, name=name)


def count_disagreements(hf: Any, tokenizer: Tokenizer, texts: Iterable[str]) -> tuple[int, int]:
    """``(texts where tiktoken's ids differ from the trained model's, texts checked)``."""
    id_of = {hf_id: tokenizer.mergeable_ranks[_piece_bytes(piece)] for piece, hf_id in hf.get_vocab().items()}
    bad = total = 0
    for text in texts:
        total += 1
        bad += [id_of[i] for i in hf.encode(text).ids] != tokenizer.encode(text)
    return bad, total


# -- reading a corpus ---------------------------------------------------------------------


def _field(record: Any, path: str) -> Any:
    """``record["a"]["b"]`` for ``path`` "a.b"; None when any step is missing."""
    for key in path.split("."):
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def read_records(paths: Sequence[str | os.PathLike], *, text_field: str = "text",
                 lang_field: str | None = None) -> Iterator[tuple[str, str | None]]:
    """``(text, language)`` from JSON Lines files (``text_field``, dotted for nesting) or
    plain-text files (``.txt``: read in ~1 MB pieces cut at line ends; the language is the
    file's stem), either optionally compressed (``.gz``, ``.zst``) as ``herd tokenize``
    reads them. Errors name the file and line."""
    from herd.data.tokenize import base_suffix

    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        kind = base_suffix(path)
        if kind in (".jsonl", ".json", ".ndjson"):
            yield from _read_jsonl(path, text_field, lang_field)
        elif kind == ".txt":
            stem = path.name[: -len("".join(path.suffixes))] if path.suffixes else path.name
            yield from ((chunk, stem) for chunk in _read_txt(path))
        else:
            raise ValueError(f"{path}: unsupported input type {path.suffix!r} "
                             f"(use .jsonl or .txt, optionally .gz/.zst)")


def _read_jsonl(path: Path, text_field: str, lang_field: str | None) -> Iterator[tuple[str, str | None]]:
    from herd.data.tokenize import open_text

    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
            text = _field(record, text_field)
            if not isinstance(text, str):
                raise ValueError(f"{path}, line {lineno}: field {text_field!r} is missing or not a string")
            lang = _field(record, lang_field) if lang_field else None
            yield text, (str(lang) if lang is not None else None)


def _read_txt(path: Path) -> Iterator[str]:
    from herd.data.tokenize import open_text

    with open_text(path) as f:
        while True:
            chunk = f.read(_TXT_CHUNK_CHARS)
            if not chunk:
                return
            chunk += f.readline()  # end the piece at a line end
            yield chunk


# -- compression --------------------------------------------------------------------------


@dataclass(frozen=True)
class Compression:
    chars: int
    bytes: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.tokens if self.tokens else 0.0

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "chars_per_token": self.chars_per_token, "bytes_per_token": self.bytes_per_token}


def compression(tokenizer: Tokenizer, texts: Iterable[str]) -> Compression:
    """Characters, UTF-8 bytes and tokens of ``texts`` (no BOS/EOS)."""
    texts = list(texts)
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return Compression(sum(map(len, texts)), sum(len(t.encode("utf-8")) for t in texts), tokens)


def compression_report(tokenizers: dict[str, Tokenizer],
                       texts_by_language: dict[str, list[str]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{language: {tokenizer name: Compression.to_dict()}}``, plus an ``"all"`` row."""
    report: dict[str, dict[str, dict[str, float]]] = {}
    every = [t for texts in texts_by_language.values() for t in texts]
    groups = {**dict(sorted(texts_by_language.items())), "all": every} if len(texts_by_language) > 1 else \
        dict(texts_by_language)
    for lang, texts in groups.items():
        report[lang] = {name: compression(tok, texts).to_dict() for name, tok in tokenizers.items()}
    return report


# -- the whole job: files in, tokenizer directory and report out ----------------------------


def train_from_files(inputs: Sequence[str | os.PathLike], vocab_size: int, out_dir: str | os.PathLike, *,
                     text_field: str = "text", lang_field: str | None = None, holdout: float = 0.0,
                     eval_paths: Sequence[str | os.PathLike] = (), compare: str | os.PathLike | None = None,
                     min_frequency: int = 0) -> dict[str, Any]:
    """Train on ``inputs``, save the tokenizer into ``out_dir`` and return (and write as
    ``out_dir/compression.json``) the compression per language of held-out text: every
    ``1/holdout``-th input record (never trained on) plus the ``eval_paths`` records,
    for the new tokenizer and, with ``compare``, another ``tokenizer.model`` (Llama 3's)."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    compare_tok = Tokenizer.from_file(compare) if compare is not None else None  # fail before training
    every = round(1 / holdout) if holdout > 0 else 0
    held: dict[str, list[str]] = {}

    def training_texts() -> Iterator[str]:
        for i, (text, lang) in enumerate(read_records(inputs, text_field=text_field, lang_field=lang_field)):
            if every and i % every == every - 1:
                held.setdefault(lang or "all", []).append(text)
            else:
                yield text

    tokenizer = train_bpe(training_texts(), vocab_size, min_frequency=min_frequency)
    for text, lang in read_records(eval_paths, text_field=text_field, lang_field=lang_field):
        held.setdefault(lang or "all", []).append(text)
    tokenizers = {"new": tokenizer} | ({"compare": compare_tok} if compare_tok is not None else {})
    report: dict[str, Any] = {
        "vocab_size": tokenizer.num_base_tokens,
        "n_words": tokenizer.n_words,
        "hash": tokenizer.hash,
        "compare": str(compare) if compare is not None else None,
        "compression": compression_report(tokenizers, held) if held else {},
    }
    out = Path(out_dir)
    tokenizer.save(out)
    from herd.tokenizer.hf_files import atomic_write

    atomic_write(out / "compression.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
