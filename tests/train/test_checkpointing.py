"""DCP checkpoints: bitwise resume after kill -9, SIGTERM, corrupt checkpoints, async saves."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from herd.train.checkpointing import Checkpointer, verify_manifest
from herd.train.loop import pretrain

from .helpers import cli_command, env, losses, run_cli, tiny_config, tiny_raw, write_toml

RUN = {"train": {"steps": 24, "global_batch_rows": 4, "micro_batch_rows": 2, "threads": 1},
       "checkpoint": {"every": 3, "keep_last": 2, "export": False}}


def _config(tmp_path: Path, name: str) -> Path:
    return write_toml(tmp_path / f"{name}.toml", tiny_raw(tmp_path / name, **RUN))


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.communicate()}")
        path = run_dir / "metrics.jsonl"
        if path.exists():
            done = [json.loads(line)["step"] for line in path.read_text().splitlines()
                    if line.endswith("}") and '"step"' in line]
            if done and max(done) >= step:
                return max(done)
        time.sleep(0.02)
    raise AssertionError(f"no step {step} within {timeout}s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    tmp = tmp_path_factory.mktemp("reference")
    proc = run_cli(_config(tmp, "ref"))
    assert proc.returncode == 0, proc.stderr
    ref = losses(tmp / "ref")
    assert sorted(ref) == list(range(1, 25))
    return ref


def test_kill_9_then_rerun_gives_bitwise_identical_losses(tmp_path, reference):
    config = _config(tmp_path, "killed")
    kill_at = random.Random().randint(4, 20)
    proc = subprocess.Popen(cli_command(config), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = _wait_for_step(tmp_path / "killed", kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    latest = (tmp_path / "killed/checkpoints/latest").read_text()
    assert int(latest.split("-")[1]) < 24, "the run finished before the kill"

    rerun = run_cli(config)
    assert rerun.returncode == 0, rerun.stderr
    resumed = losses(tmp_path / "killed")
    assert resumed == reference, f"killed at step {seen} (aimed at {kill_at}), resumed from {latest}"


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, reference):
    config = _config(tmp_path, "term")
    proc = subprocess.Popen(cli_command(config, "checkpoint.every=100"), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(tmp_path / "term", 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by a signal" in err
    stopped_at = max(losses(tmp_path / "term"))
    assert stopped_at < 24
    # no periodic checkpoint (every=100): the one there was written because of the signal
    assert (tmp_path / "term/checkpoints/latest").read_text() == f"step-{stopped_at:06d}"
    verify_manifest(tmp_path / f"term/checkpoints/step-{stopped_at:06d}")

    rerun = run_cli(config, "checkpoint.every=100")
    assert rerun.returncode == 0, rerun.stderr
    assert losses(tmp_path / "term") == reference


def test_corrupt_latest_falls_back_to_the_previous_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"steps": 6}, checkpoint={"every": 2, "keep_last": 3})
    first = pretrain(cfg)
    ckpts = Checkpointer(tmp_path / "run/checkpoints")
    assert ckpts.steps() == [2, 4, 6]
    # truncate the newest checkpoint's tensor data
    data = next((tmp_path / "run/checkpoints/step-000006").glob("*.distcp"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint: .*step-000006"):
        assert ckpts.find_resumable() == tmp_path / "run/checkpoints/step-000004"

    cfg.train.steps = 6
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint"):
        again = pretrain(cfg)
    assert again.resumed_from == tmp_path / "run/checkpoints/step-000004"
    assert again.losses[5] == first.losses[5] and again.losses[6] == first.losses[6]


def test_partial_and_unlisted_checkpoints_are_skipped(tmp_path):
    pretrain(tiny_config(tmp_path / "run", train={"steps": 4}, checkpoint={"every": 2}))
    root = tmp_path / "run/checkpoints"
    (root / "step-000004" / "manifest.json").unlink()  # as if killed between the write and the manifest
    (root / "step-000006.tmp").mkdir()  # an unfinished save
    with pytest.warns(UserWarning, match="no manifest.json"):
        assert Checkpointer(root).find_resumable() == root / "step-000002"
    (root / "step-000002" / "trainer.json").write_text("{}")  # altered after the manifest
    with pytest.warns(UserWarning):
        assert Checkpointer(root).find_resumable() is None


def test_keep_last_prunes_old_checkpoints(tmp_path):
    pretrain(tiny_config(tmp_path / "run", train={"steps": 8}, checkpoint={"every": 1, "keep_last": 2}))
    root = tmp_path / "run/checkpoints"
    assert Checkpointer(root).steps() == [7, 8]
    assert (root / "latest").read_text() == "step-000008"
    manifest = json.loads((root / "step-000008/manifest.json").read_text())["files"]
    assert {"trainer.json", "rng-rank00000.pt", ".metadata"} <= set(manifest)


def test_async_save_resumes_bitwise(tmp_path):
    sync = pretrain(tiny_config(tmp_path / "sync", train={"steps": 6}, checkpoint={"every": 2}))
    cfg = tiny_config(tmp_path / "async", train={"steps": 6}, checkpoint={"every": 2, "async_save": "on"})
    first = pretrain(cfg)
    assert first.losses == sync.losses
    root = tmp_path / "async/checkpoints"
    assert Checkpointer(root).steps() == [4, 6] or Checkpointer(root).steps() == [2, 4, 6]
    import shutil

    shutil.rmtree(root / "step-000006")
    with pytest.warns(UserWarning, match="missing"):
        again = pretrain(cfg)
    assert again.resumed_from == root / "step-000004"
    assert again.losses == {5: sync.losses[5], 6: sync.losses[6]}
