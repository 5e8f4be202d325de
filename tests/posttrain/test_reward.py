"""Reward model: pairwise loss, ranked lists, held-out accuracy, and transformers loading it."""

from __future__ import annotations

import json

import pytest
import torch

from herd.posttrain.config import load_posttrain_config
from herd.posttrain.pairs import load_pairs
from herd.posttrain.reward import load_reward_model, reward_accuracy, run_reward, sequence_rewards
from tests.posttrain.conftest import write_jsonl
from tests.posttrain.test_dpo_run import WORDS, case_prefs


def test_ranked_lists_expand_to_every_ordered_pair(byte_tok, tmp_path):
    data = write_jsonl(tmp_path / "ranked.jsonl", [{"prompt": "q", "ranked": ["A", "B", "C", "D"]}])
    pairs = load_pairs(data, byte_tok)
    decoded = [(byte_tok.decode([t for t, m in zip(p.chosen, p.chosen_mask, strict=True) if m]),
                byte_tok.decode([t for t, m in zip(p.rejected, p.rejected_mask, strict=True) if m])) for p in pairs]
    assert decoded == [("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D")]


def test_reward_model_learns_held_out_preference_and_loads_in_transformers(byte_tok, tiny_base, tmp_path):
    from transformers import LlamaForSequenceClassification

    train = write_jsonl(tmp_path / "train.jsonl", case_prefs(48, 0, WORDS[:14]))
    held_path = write_jsonl(tmp_path / "held.jsonl", case_prefs(16, 1, WORDS[14:]))
    held = load_pairs(held_path, byte_tok)
    cfg = load_posttrain_config("reward", "configs/reward-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"reward.data={str(train)!r}", f"run_dir={str(tmp_path / 'run')!r}",
        "metrics.progress='off'", "train.threads=1", "data.seq_len=64", "train.steps=25",
        f"reward.held_out={str(held_path)!r}"])
    result = run_reward(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("accuracy" in r and "margin" in r for r in records)
    assert records[-1]["accuracy"] == 1.0
    rm = load_reward_model(result.export_dir)
    accuracy = reward_accuracy(rm, held)
    assert accuracy >= 0.9, accuracy
    assert json.loads((tmp_path / "run" / "held_out.json").read_text())["accuracy"] == accuracy

    hf = LlamaForSequenceClassification.from_pretrained(result.export_dir, dtype=torch.float32).eval()
    assert hf.config.num_labels == 1
    rows = [held[0].chosen, held[0].rejected, held[3].chosen]
    width = max(map(len, rows))
    pad = hf.config.pad_token_id
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    with torch.no_grad():
        hf_scores = hf(input_ids=tokens, attention_mask=(tokens != pad).long()).logits.squeeze(-1)
        herd_scores = sequence_rewards(rm, tokens, torch.tensor([len(r) for r in rows]))
    torch.testing.assert_close(herd_scores, hf_scores, rtol=1e-4, atol=1e-5)
    assert hf_scores[0] > hf_scores[1]


def test_load_reward_model_refuses_a_causal_lm(tiny_base):
    with pytest.raises(ValueError, match="not a reward model"):
        load_reward_model(tiny_base)


def test_an_untied_reward_run_resumes_from_its_checkpoint(tmp_path, byte_tok):
    """The unused LM head is frozen: a resumed run must not look for optimizer state it never had."""
    from herd.checkpoint import save_pretrained
    from herd.posttrain import load_posttrain_config, run_reward
    from tests.posttrain.conftest import make_byte_model, write_jsonl

    save_pretrained(make_byte_model(seed=1, tie_word_embeddings=False), tmp_path / "base", tokenizer=byte_tok)
    pair = {"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "assistant", "content": "b"}],
            "rejected": [{"role": "assistant", "content": "c"}]}
    prefs = write_jsonl(tmp_path / "p.jsonl", [pair] * 4)
    for steps in (2, 4):
        cfg = load_posttrain_config("reward", "configs/reward-tiny.toml", [
            f"base.model={tmp_path / 'base'}", f"reward.data={prefs}", f"reward.held_out={prefs}",
            f"run_dir={tmp_path / 'run'}", f"train.steps={steps}", "train.global_batch_rows=2",
            "train.micro_batch_rows=2", "checkpoint.every=2"])
        result = run_reward(cfg)
        assert result.step == steps
    assert result.resumed_from is not None
