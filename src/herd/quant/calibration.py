"""Calibration tokens for GPTQ: text from a file, cut into fixed-length rows.

GPTQ needs a few hundred sequences of in-domain text; they should not overlap the
text a perplexity is later measured on. Reads ``.txt`` (the whole file), ``.jsonl`` or
``.jsonl.gz`` (one document per line, a ``text`` field).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def read_texts(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"calibration file {p} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    if p.name.endswith((".jsonl", ".jsonl.gz")):
        with opener(p, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)[text_field]
                    except (ValueError, KeyError, TypeError) as e:
                        raise ValueError(f"{p}:{n}: not a JSON object with a {text_field!r} field ({e})") from None
    else:
        with opener(p, "rt", encoding="utf-8") as f:
            yield f.read()


def token_rows(tokenizer: Any, texts: Iterator[str], n_rows: int, seq_len: int) -> Tensor:
    """(n_rows, seq_len) tokens: documents encoded with <|begin_of_text|> and concatenated."""
    need = n_rows * seq_len
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text, bos=True, eos=False))
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the calibration text holds {len(ids)} tokens, fewer than "
                         f"{n_rows} rows x {seq_len} = {need}")
    return torch.tensor(ids[:need], dtype=torch.long).view(n_rows, seq_len)


def batches(rows: Tensor, batch_size: int) -> list[Tensor]:
    return [rows[i:i + batch_size] for i in range(0, rows.shape[0], batch_size)]
