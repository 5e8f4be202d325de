"""Where a checkpoint keeps its tokenizer, and putting one beside the weights.

``herd.tokenizer`` is imported lazily: a checkpoint can be read and written without it.
Real snapshots keep the tiktoken file as ``tokenizer.model`` (herd, Meta) or
``original/tokenizer.model`` (Hugging Face Llama 3.x repos), and ``tokenizer.json`` for
HF tools.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from herd.checkpoint.errors import CheckpointError

TIKTOKEN_FILE = "tokenizer.model"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Llama 3 appends this many special tokens (<|begin_of_text|> ... reserved) to the BPE ranks.
LLAMA3_NUM_SPECIAL_TOKENS = 256


def find_tokenizer(path: str | os.PathLike) -> Path | None:
    """The tokenizer file of a checkpoint directory: ``tokenizer.model``, then
    ``original/tokenizer.model``, then ``tokenizer.json``; None when there is none."""
    root = Path(path)
    for candidate in (root / TIKTOKEN_FILE, root / "original" / TIKTOKEN_FILE, root / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    return None


def _tokenizer_class() -> Any | None:
    try:
        from herd.tokenizer import Tokenizer
    except ImportError:
        return None
    return Tokenizer


def load_tokenizer(path: str | os.PathLike) -> Any | None:
    """``herd.tokenizer.Tokenizer`` for a checkpoint directory, or None when the
    directory has no tokenizer (or herd.tokenizer is not available)."""
    found = find_tokenizer(path)
    cls = _tokenizer_class()
    if found is None or cls is None:
        return None
    return cls.from_file(found)  # a tiktoken file or a tokenizer.json


def tokenizer_summary(path: str | os.PathLike) -> dict | None:
    """{"path", "vocab_size"} for the tokenizer of a checkpoint directory, or None."""
    found = find_tokenizer(path)
    if found is None:
        return None
    vocab = None
    cls = _tokenizer_class()
    if cls is not None:
        try:
            vocab = int(cls.from_file(found).vocab_size)
        except Exception:  # a summary reports what it can; the file count below still works
            vocab = None
    if vocab is None:
        vocab = _count_vocab(found)
    return {"path": str(found), "vocab_size": vocab}


def _count_vocab(found: Path) -> int | None:
    """Vocabulary size from the file alone: BPE ranks + Llama 3's special tokens, or the
    tokenizer.json vocabulary plus its added tokens."""
    try:
        if found.name == TIKTOKEN_FILE:
            with found.open("rb") as f:
                ranks = sum(1 for line in f if line.strip())
            return ranks + LLAMA3_NUM_SPECIAL_TOKENS
        data = json.loads(found.read_text())
        vocab = data["model"]["vocab"]
        added = {t["content"] for t in data.get("added_tokens", [])} - set(vocab)
        return len(vocab) + len(added)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_tokenizer(tokenizer: Any, dst: Path) -> None:
    """Put a tokenizer into directory ``dst``: an object with ``save(dir)`` (herd's
    Tokenizer) saves itself; a path copies ``tokenizer.model`` and the HF tokenizer files
    found there (a file path copies that file)."""
    if tokenizer is None:
        return
    if hasattr(tokenizer, "save"):
        tokenizer.save(dst)
        return
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise TypeError(f"tokenizer must be a Tokenizer or a path, got {type(tokenizer).__name__}")
    src = Path(tokenizer)
    if src.is_file():
        shutil.copyfile(src, dst / src.name)
        return
    model_file = find_tokenizer(src)
    files = [src / n for n in HF_TOKENIZER_FILES if (src / n).is_file()]
    if model_file is not None and model_file.name == TIKTOKEN_FILE:
        files.append(model_file)
    if not files:
        raise CheckpointError(f"no tokenizer files (tokenizer.model, tokenizer.json) in {src}")
    for f in files:
        shutil.copyfile(f, dst / f.name)
