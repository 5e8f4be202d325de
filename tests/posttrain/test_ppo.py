"""PPO: GAE and the clipped objective against their textbook forms; a run that raises the reward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from herd.posttrain.config import load_posttrain_config
from herd.posttrain.ppo import PPO, RolloutBatch, gae, ppo_loss_reference, run_ppo
from herd.posttrain.reward import run_reward
from tests.posttrain.conftest import make_byte_model, write_jsonl
from tests.posttrain.test_dpo_run import WORDS, case_prefs


def test_gae_matches_the_textbook_recursion():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(2, 7, generator=g), torch.randn(2, 7, generator=g)
    mask = torch.zeros(2, 7)
    mask[0, 2:6] = 1
    mask[1, 1:7] = 1
    adv, ret = gae(rewards * mask, values * mask, mask, gamma=0.9, lam=0.8)
    for row in range(2):
        idx = mask[row].nonzero().squeeze(1).tolist()
        want, running = {}, 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            next_v = float(values[row, idx[k + 1]]) if k + 1 < len(idx) else 0.0
            delta = float(rewards[row, t]) + 0.9 * next_v - float(values[row, t])
            running = delta + 0.9 * 0.8 * running
            want[t] = running
        for t in range(7):
            assert float(adv[row, t]) == pytest.approx(want.get(t, 0.0), abs=1e-5)
            if t in want:
                assert float(ret[row, t]) == pytest.approx(want[t] + float(values[row, t]), abs=1e-5)


def test_ppo_objective_is_the_clipped_surrogate():
    torch.manual_seed(0)
    model = make_byte_model(seed=6)
    from herd.posttrain.ppo import add_value_head, token_logps_and_values

    add_value_head(model)
    tokens = torch.randint(0, 512, (3, 10))
    mask = torch.zeros(3, 9)
    mask[:, 4:] = 1
    with torch.no_grad():
        logp, values = token_logps_and_values(model, tokens)
    old = logp + 0.3 * torch.randn_like(logp)  # ratios away from 1: some clipped
    adv, ret = torch.randn(3, 9), torch.randn(3, 9)
    batch = RolloutBatch(tokens, mask, old, values, adv, ret, torch.zeros(3), torch.zeros(3), n_targets=3)
    loss_sum, n, stats = PPO(clip=0.2, vf_coef=0.0)(model, batch)
    want = (ppo_loss_reference(logp, old, adv, 0.2) * mask).sum(1) / mask.sum(1)
    assert n == 3 and float(loss_sum) == pytest.approx(float(want.sum()), rel=1e-5)
    assert 0 < stats["clip_fraction"] < 3


@pytest.mark.slow
def test_sft_rm_ppo_replies_follow_the_reward(byte_tok, tiny_base, tmp_path):
    """SFT teaches 'echo: w' -> w in either case; an RM learns to prefer upper case; PPO must follow it."""
    from herd.posttrain.sft import run_sft
    from tests.posttrain.test_dpo_run import sft_dialogs, upper_rate

    sft_model = run_sft(load_posttrain_config("sft", "configs/sft-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"sft.data=[{str(write_jsonl(tmp_path / 'sft.jsonl', sft_dialogs()))!r}]",
        f"run_dir={str(tmp_path / 'sft')!r}", "train.steps=150", "metrics.progress='off'", "data.seq_len=128",
        "train.threads=1", "optim.lr=3e-3"])).export_dir
    prefs = write_jsonl(tmp_path / "prefs.jsonl", case_prefs(64, 0, WORDS[:14]))
    rm = run_reward(load_posttrain_config("reward", "configs/reward-tiny.toml", [
        f"base.model={str(sft_model)!r}", f"reward.data={str(prefs)!r}", f"run_dir={str(tmp_path / 'rm')!r}",
        "metrics.progress='off'", "train.threads=1", "data.seq_len=64", "train.steps=30", "reward.held_out=''"]))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"echo: {w}"} for w in WORDS[:14]])
    result = run_ppo(load_posttrain_config("ppo", "configs/ppo-tiny.toml", [
        f"base.model={str(sft_model)!r}", f"ppo.prompts={str(prompts)!r}", f"ppo.reward_model={str(rm.export_dir)!r}",
        f"run_dir={str(tmp_path / 'ppo')!r}", "metrics.progress='off'", "train.threads=1", "train.steps=40",
        "optim.lr=1e-3", "ppo.max_new_tokens=8", "train.global_batch_rows=16", "train.micro_batch_rows=16"]))
    records = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all(k in records[0] for k in ("score", "kl", "clip_fraction", "value_loss"))
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # the first rollout: policy == reference
    scores = [r["score"] for r in records]
    before, after = upper_rate(sft_model, byte_tok), upper_rate(result.export_dir, byte_tok)
    print("PPO score by step:", [round(s, 2) for s in scores[::2]], f"upper-case rate {before:.2f} -> {after:.2f}")
    assert np.mean(scores[-6:]) > np.mean(scores[:6])
    assert after > before + 0.2, (before, after)
