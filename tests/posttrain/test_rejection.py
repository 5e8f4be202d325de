"""Rejection sampling: the kept reply is the reward model's best of K, thresholds drop prompts,
the output is valid SFT data, and the report describes the scores."""

from __future__ import annotations

import json

import pytest

from herd.posttrain.chat_data import load_sft_dialogs
from herd.posttrain.rejection import rejection_sample, score_replies
from herd.posttrain.reward import add_score_head
from herd.tokenizer import ChatFormat, Message
from tests.posttrain.conftest import make_byte_model


def test_best_of_k_threshold_and_report(byte_tok, tmp_path):
    policy = make_byte_model(seed=7)
    rm = add_score_head(make_byte_model(seed=8), seed=1)
    with __import__("torch").no_grad():
        rm.score.weight.mul_(50)  # spread the scores
    prompts = [[Message("user", f"say {w}")] for w in ("a", "b")]
    report = rejection_sample(policy, rm, byte_tok, prompts, tmp_path / "out.jsonl", k=3, max_new_tokens=4)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 2 and report["kept"] == 2 and report["all_samples"]["n"] == 6
    fmt = ChatFormat(byte_tok)
    for rec in records:  # the kept reply is the best of its K, and rescoring it gives its score
        assert len(rec["scores"]) == 3 and rec["score"] == max(rec["scores"]) and len(set(rec["scores"])) > 1
        prompt = [Message.from_dict(m) for m in rec["messages"][:-1]]
        again = score_replies(rm, fmt, prompt, [Message.from_dict(rec["messages"][-1])])[0]
        assert rec["score"] == pytest.approx(again, rel=1e-4, abs=1e-4)
    assert report["kept_best"]["mean"] >= report["all_samples"]["mean"]
    assert max(r["score"] for r in records) == pytest.approx(report["all_samples"]["max"], rel=1e-5)
    assert len(load_sft_dialogs(tmp_path / "out.jsonl", byte_tok)) == 2  # valid SFT data
    # a threshold above every score keeps nothing and says so
    report = rejection_sample(policy, rm, byte_tok, prompts, tmp_path / "none.jsonl", k=2, max_new_tokens=2,
                              threshold=1e9)
    assert report["kept"] == 0 and report["dropped_below_threshold"] == 2
    assert (tmp_path / "none.report.json").exists()
