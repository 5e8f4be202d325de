from __future__ import annotations

import math

import pytest
import torch

from herd.train.config import ScheduleConfig
from herd.train.schedule import BatchRamp, LRSchedule, build_scheduler


def test_warmup_is_linear_then_cosine_ends_at_min_ratio():
    s = LRSchedule("cosine", total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert [s(i) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert s(10) == pytest.approx(1.0)
    assert s(99) == pytest.approx(0.1)  # the last update uses the final lr
    mid = 10 + (99 - 10) / 2
    assert s(int(mid)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    values = [s(i) for i in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone decay


def test_wsd_phases():
    s = LRSchedule("wsd", total_steps=100, warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert s(4) == pytest.approx(0.5)
    assert all(s(i) == 1.0 for i in range(10, 80))  # stable
    decay = [s(i) for i in range(80, 100)]
    assert all(0 <= v < 1 for v in decay)
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert s(99) == pytest.approx(0.0)
    assert s(89) == pytest.approx(0.5)  # linear: halfway through the decay
    sq = LRSchedule("wsd", total_steps=100, min_lr_ratio=0.0, decay_fraction=0.2, wsd_decay_shape="sqrt")
    assert sq(84) == pytest.approx(1 - math.sqrt(5 / 20))


def test_scheduler_sets_every_group_and_resumes_from_the_step():
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [q], "weight_decay": 0.0}], lr=123.0)
    sched = build_scheduler(opt, ScheduleConfig(kind="cosine", warmup_steps=4, min_lr_ratio=0.5), 10, peak_lr=2.0)
    lrs = [sched.apply(step) for step in range(10)]
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[-1] == pytest.approx(1.0)
    assert [g["lr"] for g in opt.param_groups] == [lrs[-1], lrs[-1]]
    again = build_scheduler(opt, ScheduleConfig(kind="cosine", warmup_steps=4, min_lr_ratio=0.5), 10, peak_lr=2.0)
    again.load_state_dict(sched.state_dict())
    assert again.step == 9


def test_batch_ramp_stages():
    ramp = BatchRamp.from_config(8, [[100, 32], [10, 16]])
    assert [ramp(s) for s in (0, 9, 10, 99, 100, 10_000)] == [8, 8, 16, 16, 32, 32]
    assert ramp.all_sizes() == [8, 16, 32]
