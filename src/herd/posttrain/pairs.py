"""Preference pairs: records -> token ids and masks, batches, and a resumable loader.

Records are TRL's conversational form ``{"prompt": messages, "chosen": messages,
"rejected": messages}`` (a string prompt is one user message, a string response one
assistant message), or ``{"prompt", "ranked": [messages, ...]}`` best first (Llama 3's
edited > chosen > rejected), expanded to every ordered pair: ``n`` responses give
``n (n - 1) / 2`` pairs, each better response preferred to every worse one.

A ``PairBatch`` holds the chosen and rejected sequences of ``B`` pairs, right-padded
(causal attention: padding after a sequence never changes its earlier positions), with
their masks and lengths. The trainer counts pairs as its targets (``n_targets = B``), so
a step's loss is the mean over its pairs however they fall into micro-batches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from herd.posttrain.chat_data import ChatDataError, encode_prompt, encode_response, parse_messages, read_jsonl
from herd.tokenizer import Tokenizer
from herd.tokenizer.chat_format import ChatFormat, Message


@dataclass
class Pair:
    chosen: list[int]
    chosen_mask: list[int]  # 1 = a content token of the chosen response
    rejected: list[int]
    rejected_mask: list[int]


def _messages(raw: Any, where: str, field: str, role: str) -> list[Message]:
    if isinstance(raw, str):
        return [Message(role, raw)]
    return parse_messages(raw, where, field)


def load_pairs(path: str | Path, tokenizer: Tokenizer, *, max_len: int = 0) -> list[Pair]:
    """Every preference pair of a JSON Lines file (ranked lists expanded); pairs with a
    sequence longer than ``max_len`` tokens (when > 0) are left out."""
    fmt = ChatFormat(tokenizer)
    out: list[Pair] = []
    for where, rec in read_jsonl(path):
        if "prompt" not in rec:
            raise ChatDataError(f"{where}: a preference record needs 'prompt'")
        prompt = encode_prompt(fmt, _messages(rec["prompt"], where, "prompt", "user"))
        if "ranked" in rec:
            ranked = rec["ranked"]
            if not isinstance(ranked, list) or len(ranked) < 2:
                raise ChatDataError(f"{where}: 'ranked' must list at least two responses, best first")
            responses = [_messages(r, where, f"ranked[{i}]", "assistant") for i, r in enumerate(ranked)]
        elif "chosen" in rec and "rejected" in rec:
            responses = [_messages(rec["chosen"], where, "chosen", "assistant"),
                         _messages(rec["rejected"], where, "rejected", "assistant")]
        else:
            raise ChatDataError(f"{where}: a preference record needs 'chosen' and 'rejected', or 'ranked'")
        encoded = [encode_response(fmt, prompt, r) for r in responses]
        for i, better in enumerate(encoded):
            for worse in encoded[i + 1:]:
                if max_len and max(len(better[0]), len(worse[0])) > max_len:
                    continue
                out.append(Pair(better[0], better[1], worse[0], worse[1]))
    if not out:
        raise ChatDataError(f"{path}: no preference pairs" + (f" of at most {max_len} tokens" if max_len else ""))
    return out


def _pad(rows: list[list[int]], pad: int = 0) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


@dataclass
class PairBatch:
    chosen: Tensor  # (B, T) int64, right-padded
    chosen_mask: Tensor  # (B, T) int64, 1 on the chosen response's content tokens
    chosen_len: Tensor  # (B,) tokens before padding
    rejected: Tensor
    rejected_mask: Tensor
    rejected_len: Tensor
    ref_chosen: Tensor | None = None  # (B,) float64 reference log-probs (DPO)
    ref_rejected: Tensor | None = None
    n_targets: int = 0  # pairs

    @classmethod
    def from_pairs(cls, pairs: list[Pair], ref: tuple[Tensor, Tensor] | None = None) -> PairBatch:
        return cls(chosen=_pad([p.chosen for p in pairs]), chosen_mask=_pad([p.chosen_mask for p in pairs]),
                   chosen_len=torch.tensor([len(p.chosen) for p in pairs]),
                   rejected=_pad([p.rejected for p in pairs]), rejected_mask=_pad([p.rejected_mask for p in pairs]),
                   rejected_len=torch.tensor([len(p.rejected) for p in pairs]),
                   ref_chosen=None if ref is None else ref[0], ref_rejected=None if ref is None else ref[1],
                   n_targets=len(pairs))

    def _map(self, fn) -> PairBatch:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "n_targets"}
        return PairBatch(**{k: None if v is None else fn(v) for k, v in fields.items()}, n_targets=self.n_targets)

    def split(self, micro_rows: int) -> list[PairBatch]:
        """Micro-batches of ``micro_rows`` pairs, each counting its own pairs."""
        out = []
        for start in range(0, self.n_targets, micro_rows):
            part = self._map(lambda t, s=start: t[s:s + micro_rows])
            part.n_targets = int(part.chosen.shape[0])
            out.append(part)
        return out

    def to(self, device: torch.device) -> PairBatch:
        return self._map(lambda t: t.to(device, non_blocking=True))


class PairLoader:
    """Pairs in a seeded per-epoch shuffle; ``next_batch(global_rows)`` gives this rank's
    slice of the next ``global_rows`` pairs. The state (epoch, position) is world-size free."""

    def __init__(self, pairs: list[Pair], *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 reference: tuple[Tensor, Tensor] | None = None) -> None:
        if not pairs:
            raise ValueError("PairLoader needs at least one pair")
        self.pairs, self.seed, self.rank, self.world_size = pairs, seed, rank, world_size
        self.reference = reference
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 7, epoch]).permutation(len(self.pairs))

    def next_batch(self, global_rows: int) -> PairBatch:
        if global_rows < 1 or global_rows % self.world_size:
            raise ValueError(f"global_rows={global_rows} must be a positive multiple of world_size={self.world_size}")
        picked = []
        for _ in range(global_rows):
            if self.position == len(self.pairs):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            picked.append(int(self._order[self.position]))
            self.position += 1
        per_rank = global_rows // self.world_size
        mine = picked[self.rank * per_rank:(self.rank + 1) * per_rank]
        ref = None
        if self.reference is not None:
            idx = torch.tensor(mine)
            ref = (self.reference[0][idx], self.reference[1][idx])
        return PairBatch.from_pairs([self.pairs[i] for i in mine], ref)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n_pairs": len(self.pairs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n_pairs"] != len(self.pairs) or state["seed"] != self.seed:
            raise ValueError(f"pair loader state was saved for {state['n_pairs']} pairs / seed {state['seed']}, "
                             f"this loader has {len(self.pairs)} / {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
