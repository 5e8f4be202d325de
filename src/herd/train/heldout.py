"""Held-out loss: how well a model predicts token shards it did not train on.

Every document is read whole, in order, and cut into windows of ``seq_len`` targets; a
window's positions continue the document's (as the training loader numbers a document
longer than a row), so each token is predicted from at most ``seq_len`` tokens of its own
document, which is also what the model saw in training. The loss is the mean over all
target tokens (the label after a document's last token, which would cross into the next
document, is not one), in fp32.

    result = heldout_loss(model, ["runs/data/shards/heldout"], seq_len=256)
    result.loss, result.perplexity, result.tokens
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from herd.train.loss import chunked_cross_entropy


@dataclass
class HeldoutLoss:
    loss: float  # mean cross-entropy per target token (nats)
    tokens: int  # target tokens scored
    documents: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def as_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens, "documents": self.documents}


def _windows(documents: Iterator[np.ndarray], seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(inputs, labels, first position) windows of at most ``seq_len`` targets per document."""
    for doc in documents:
        for start in range(0, len(doc) - 1, seq_len):
            piece = doc[start:start + seq_len + 1]
            yield piece[:-1], piece[1:], start


@torch.no_grad()
def heldout_loss(model: nn.Module, shards: Sequence[str | os.PathLike], *, seq_len: int,
                 batch_rows: int = 8, max_tokens: int | None = None) -> HeldoutLoss:
    """Mean next-token loss of ``model`` (a ``herd.model.Transformer``) over the documents of
    ``shards`` (shard files or directories of them), at most ``max_tokens`` targets."""
    from herd.data.shards import Shard, find_shards, shard_prefix

    prefixes: list[Path] = []
    for item in map(Path, shards):
        found = find_shards(item) if item.is_dir() else [item]
        if not found:
            raise ValueError(f"{item}: no token shards there")
        prefixes.extend(found)
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    documents = [0]

    def read() -> Iterator[np.ndarray]:
        for prefix in prefixes:
            shard = Shard(shard_prefix(prefix))
            for i in range(len(shard)):
                documents[0] += 1
                yield np.asarray(shard.document(i), dtype=np.int64)

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    rows: list[tuple[np.ndarray, np.ndarray, int]] = []

    def flush() -> None:
        nonlocal total, count
        width = max(len(r[0]) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (x, y, start) in enumerate(rows):
            tokens[i, :len(x)] = torch.from_numpy(x)
            labels[i, :len(y)] = torch.from_numpy(y)
            positions[i] = torch.arange(start, start + width)  # padding sits after the row's tokens
        hidden = model(tokens.to(device), positions.to(device), return_hidden=True)
        loss_sum, n = chunked_cross_entropy(hidden, model.lm_head.weight, labels.to(device), 1024)
        total += float(loss_sum)
        count += int(n)
        rows.clear()

    try:
        for x, y, start in _windows(read(), seq_len):
            if max_tokens is not None:
                room = max_tokens - count - sum(len(r[1]) for r in rows)
                if room <= 0:
                    break
                x, y = x[:room], y[:room]
            rows.append((x, y, start))
            if len(rows) == batch_rows:
                flush()
        if rows:
            flush()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"the held-out shards {[str(p) for p in prefixes]} hold no targets")
    return HeldoutLoss(loss=total / count, tokens=count, documents=documents[0])
