"""Precision/recall of a prompt classifier on labelled records (attack = INJECTION or JAILBREAK)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def evaluate(guard: Any, records: Sequence[dict], threshold: float = 0.5) -> dict:
    """Two detectors: any attack by the indirect-injection score, jailbreaks by the jailbreak score."""
    scores = [guard.score(r["text"]) for r in records]

    def prf(pred: list[bool], gold: list[bool]) -> dict:
        tp = sum(p and g for p, g in zip(pred, gold, strict=True))
        fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
        fn = sum(g and not p for p, g in zip(pred, gold, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return {"precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn,
                "negatives": sum(not g for g in gold)}

    attack = prf([s.indirect_injection >= threshold for s in scores], [r["label"] != "BENIGN" for r in records])
    jailbreak = prf([s.jailbreak >= threshold for s in scores], [r["label"] == "JAILBREAK" for r in records])
    return {"threshold": threshold, "records": len(records), "attack": attack, "jailbreak": jailbreak}
