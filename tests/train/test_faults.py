"""Loss faults: NaN / spikes detected, the update skipped or the run rolled back."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from herd.train.config import FaultConfig
from herd.train.faults import FaultMonitor, TrainingFault
from herd.train.loop import pretrain

from .helpers import tiny_config


def test_monitor_detects_nan_inf_and_spikes():
    m = FaultMonitor(FaultConfig(spike_zscore=4.0, window=20, min_window=5))
    for i in range(10):
        assert m.check(i, 3.0 + 0.01 * (i % 3)).ok
    assert m.check(10, 3.02).ok
    v = m.check(11, 5.0)
    assert not v.ok and v.reason == "spike" and v.zscore > 4
    assert m.check(12, float("nan")).reason == "nan"
    assert m.check(13, 3.0, grad_norm=float("inf")).reason == "nan"
    assert m.check(14, 3.01).ok  # recovers; the spike was not added to the window
    assert max(m.window) < 3.1


def test_no_spike_detection_before_the_window_fills():
    m = FaultMonitor(FaultConfig(spike_zscore=2.0, min_window=5))
    assert all(m.check(i, v).ok for i, v in enumerate([10.0, 8.0, 30.0, 6.0]))


def test_raise_and_too_many_consecutive_faults():
    with pytest.raises(TrainingFault, match="raise"):
        FaultMonitor(FaultConfig(action="raise")).check(0, math.nan)
    m = FaultMonitor(FaultConfig(action="skip", max_consecutive=2))
    m.check(0, math.nan)
    m.check(1, math.nan)
    with pytest.raises(TrainingFault, match="3 faulty steps in a row"):
        m.check(2, math.nan)


def test_monitor_state_round_trips():
    m = FaultMonitor(FaultConfig(inject_nan_at=[3]))
    for i in range(4):
        m.check(i, 1.0 + i)
    assert m.inject(3) and not m.inject(3)
    n = FaultMonitor(FaultConfig(inject_nan_at=[3]))
    n.load_state_dict(json.loads(json.dumps(m.state_dict())))
    assert list(n.window) == list(m.window) and not n.inject(3)


def _weights(run_dir):
    return load_file(str(run_dir / "final/model.safetensors"))


def test_injected_nan_with_skip_leaves_parameters_unchanged(tmp_path):
    common = {"schedule": {"kind": "constant", "warmup_steps": 0}, "checkpoint": {"every": 0, "export": True}}
    faulty = pretrain(tiny_config(tmp_path / "faulty", train={"steps": 3},
                                  faults={"action": "skip", "inject_nan_at": [2]}, **common))
    pretrain(tiny_config(tmp_path / "clean", train={"steps": 2}, **common))
    assert math.isnan(faulty.losses[3])
    record = [json.loads(x) for x in (tmp_path / "faulty/metrics.jsonl").read_text().splitlines()][-1]
    assert record["step"] == 3 and record["fault"] == "nan" and record["action"] == "skip"
    a, b = _weights(tmp_path / "faulty"), _weights(tmp_path / "clean")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name  # bitwise: the third update never happened
    # and without the fault the third update does change them
    third = pretrain(tiny_config(tmp_path / "third", train={"steps": 3}, **common))
    assert not (_weights(tmp_path / "third")["lm_head.weight"] == b["lm_head.weight"]).all()
    assert math.isfinite(third.losses[3])


def test_injected_nan_with_rollback_reloads_the_last_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"steps": 8}, checkpoint={"every": 2},
                      faults={"action": "rollback", "inject_nan_at": [4]})
    result = pretrain(cfg)
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    events = [r for r in records if r.get("event") == "rollback"]
    assert len(events) == 1 and events[0]["to_step"] == 4 and events[0]["from"].endswith("step-000004")
    assert [r["step"] for r in records if "fault" in r] == [5]
    assert result.step == 8 and all(math.isfinite(result.losses[s]) for s in range(1, 9))
    state = json.loads((tmp_path / "run/checkpoints/step-000008/trainer.json").read_text())
    # the loader skipped ahead: 9 batches were read for 8 steps (the faulty one is not replayed)
    assert state["loader"]["rows"] == 9 * 4
    # the redone step 5 started from the step-4 weights, on new data
    clean = pretrain(tiny_config(tmp_path / "clean", train={"steps": 8}, checkpoint={"every": 2}))
    assert result.losses[4] == clean.losses[4]
    assert result.losses[5] != clean.losses[5]
