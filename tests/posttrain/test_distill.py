"""Distillation: the loss by hand, and a student that beats hard labels alone in the same steps."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from herd.posttrain.config import load_posttrain_config
from herd.posttrain.distill import distill_loss, run_distill
from herd.train import load_config, pretrain
from herd.train.synthetic import make_synthetic_shards


def test_distill_loss_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    y = torch.randint(0, 11, (5,), generator=g)
    loss, ce, kl = distill_loss(s, t, y, temperature=2.0, kl_weight=0.3)
    want_kl = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="sum") * 4
    torch.testing.assert_close(kl, want_kl)
    torch.testing.assert_close(ce, F.cross_entropy(s, y, reduction="sum"))
    torch.testing.assert_close(loss, 0.3 * want_kl + 0.7 * ce)
    _, _, kl_self = distill_loss(t, t, y, temperature=2.0, kl_weight=1.0)
    assert float(kl_self) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.slow
def test_student_beats_hard_labels_in_the_same_steps(tmp_path):
    teacher_cfg = load_config("configs/pretrain-tiny.toml", [
        f"run_dir={str(tmp_path / 'teacher')!r}", "train.steps=60", "metrics.progress='off'",
        "checkpoint.every=0", "train.threads=1"])
    teacher = pretrain(teacher_cfg).export_dir
    held = make_synthetic_shards(tmp_path / "held", vocab_size=1024, n_documents=200, seed=123)
    losses = {}
    for name, weight in (("distilled", 0.9), ("hard_labels", 0.0)):
        cfg = load_posttrain_config("distill", "configs/distill-tiny.toml", [
            f"run_dir={str(tmp_path / name)!r}", f"distill.teacher={str(teacher)!r}", f"distill.kl_weight={weight}",
            f"distill.held_out={[str(p) for p in held]!r}", "metrics.progress='off'", "train.threads=1"])
        run_distill(cfg)
        losses[name] = json.loads((tmp_path / name / "held_out.json").read_text())["loss"]
    print("held-out loss after 20 steps:", losses)
    assert losses["distilled"] < losses["hard_labels"], losses
