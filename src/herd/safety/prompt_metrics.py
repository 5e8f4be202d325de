"""Precision/recall/F1 of a prompt classifier on labelled records (attack = INJECTION or JAILBREAK),
overall and per language: a held-out set that mixes languages can hide a classifier that only
works in some of them."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any


def _prf(pred: Sequence[bool], gold: Sequence[bool]) -> dict:
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
    fn = sum(g and not p for p, g in zip(pred, gold, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
            "negatives": sum(not g for g in gold)}


def roc_auc(scores: Sequence[float], gold: Sequence[bool]) -> float:
    """Probability that an attack outscores a benign record (ties count half): the threshold-free
    figure, which a shift of every score (what 0.5 P/R are most sensitive to) leaves unchanged."""
    pos = [s for s, g in zip(scores, gold, strict=True) if g]
    neg = sorted(s for s, g in zip(scores, gold, strict=True) if not g)
    if not pos or not neg:
        return float("nan")
    wins = sum(bisect_left(neg, p) + 0.5 * (bisect_right(neg, p) - bisect_left(neg, p)) for p in pos)
    return wins / (len(pos) * len(neg))


def evaluate(guard: Any, records: Sequence[dict], threshold: float = 0.5) -> dict:
    """Two detectors: any attack by the indirect-injection score, jailbreaks by the jailbreak score;
    ``per_language`` (records with a ``language`` field) holds the attack detector's figures."""
    scores = [guard.score(r["text"]) for r in records]
    flagged = [s.indirect_injection >= threshold for s in scores]
    is_attack = [r["label"] != "BENIGN" for r in records]
    attack = _prf(flagged, is_attack)
    attack["auc"] = roc_auc([s.indirect_injection for s in scores], is_attack)
    jailbreak = _prf([s.jailbreak >= threshold for s in scores], [r["label"] == "JAILBREAK" for r in records])
    per_language = {}
    for lang in sorted({r["language"] for r in records if r.get("language")}):
        idx = [i for i, r in enumerate(records) if r.get("language") == lang]
        per_language[lang] = _prf([flagged[i] for i in idx], [is_attack[i] for i in idx])
    return {"threshold": threshold, "records": len(records), "attack": attack, "jailbreak": jailbreak,
            "per_language": per_language}
