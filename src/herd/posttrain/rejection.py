"""Rejection sampling: K responses per prompt from the policy, scored by the reward model,
the best kept (optionally only above a threshold) as SFT data — Llama 3's main source of
SFT examples in each round.

    report = rejection_sample(model, reward_model, tokenizer, prompts, "sft.jsonl", k=8)

Generation goes through ``herd.engine.Engine`` (continuous batching: the K samples of a
prompt in one call, sample j seeded with seed + i * K + j). Each response is scored as the reward model
sees a finished turn: the prompt, the assistant message, its end token. The output is
SFT JSON Lines (``{"messages": prompt + [best reply], "score", "k", "scores"}``: all K scores) written under a
temporary name and renamed; the report holds the score distribution of all samples and of
the kept ones, and how many prompts were dropped by the threshold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from herd.tokenizer.chat_format import ChatFormat, Message

BLOCK = 16  # KV-cache block size of the sampling engine


def read_prompts(path: str | Path) -> list[list[Message]]:
    """Prompts from JSON Lines of ``{"prompt": "text"}`` or ``{"messages": [...]}`` (a final
    assistant turn, if any, is left out: the policy writes it)."""
    from herd.posttrain.chat_data import parse_messages, read_jsonl

    dialogs = []
    for where, rec in read_jsonl(path):
        raw = rec.get("prompt", rec.get("messages"))
        msgs = [Message("user", raw)] if isinstance(raw, str) else parse_messages(raw, where, "prompt")
        dialogs.append(msgs[:-1] if msgs and msgs[-1].role == "assistant" else msgs)
    return dialogs


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    q = np.quantile(a, [0.1, 0.5, 0.9])
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2]), "max": float(a.max())}


@torch.no_grad()
def score_replies(reward_model: nn.Module, fmt: ChatFormat, prompt: Sequence[Message],
                  replies: Sequence[Message]) -> list[float]:
    """Reward-model scores of each reply as the assistant turn after ``prompt``."""
    from herd.posttrain.reward import sequence_rewards

    rows = [fmt.encode_dialog_prompt([*prompt, r], add_generation_prompt=False) for r in replies]
    width = max(map(len, rows))
    device = next(reward_model.parameters()).device
    tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    return sequence_rewards(reward_model, tokens, torch.tensor([len(r) for r in rows])).tolist()


def rejection_sample(model: nn.Module, reward_model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[Message]],
                     out_path: str | Path, *, k: int = 4, threshold: float | None = None, temperature: float = 1.0,
                     top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0) -> dict[str, Any]:
    """Best-of-``k`` replies per prompt to ``out_path`` (SFT JSON Lines); returns the report."""
    from herd.engine import Engine
    from herd.generation import SamplingParams

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    fmt = ChatFormat(tokenizer)
    encoded = [fmt.encode_dialog_prompt(list(prompt)) for prompt in prompts]
    longest = max((len(ids) for ids in encoded), default=1)
    per_sequence = -(-(longest + max_new_tokens + 1) // BLOCK)
    # room for the K samples of a prompt at once; the engine queues what does not fit.
    # cpu_gemv=False: the caller's model keeps its own modules (it may go on training)
    engine = Engine(model, tokenizer, num_blocks=k * per_sequence + k, block_size=BLOCK, cpu_gemv=False)
    all_scores: list[float] = []
    kept_scores: list[float] = []
    dropped = 0
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for i, (prompt, ids) in enumerate(zip(prompts, encoded, strict=True)):
                params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                        seed=seed + i * k)
                outs = engine.generate([ids] * k, params)
                replies = [fmt.decode_assistant_message(o.token_ids, o.stop_reason) for o in outs]
                scores = score_replies(reward_model, fmt, prompt, replies)
                all_scores.extend(scores)
                best = int(np.argmax(scores))
                if threshold is not None and scores[best] < threshold:
                    dropped += 1
                    continue
                kept_scores.append(scores[best])
                record = {"messages": [m.to_dict() for m in prompt] + [replies[best].to_dict()],
                          "score": scores[best], "k": k, "scores": scores}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        tmp.replace(out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report = {"prompts": len(prompts), "k": k, "kept": len(kept_scores), "dropped_below_threshold": dropped,
              "threshold": threshold, "all_samples": _stats(all_scores), "kept_best": _stats(kept_scores)}
    report_path = out_path.with_name(out_path.stem + ".report.json")
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    return report
