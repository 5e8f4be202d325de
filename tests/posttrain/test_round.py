"""`herd round`: reward -> rejection sampling -> SFT -> DPO -> average, with its lineage manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from herd.checkpoint import load_any
from herd.posttrain.round import load_round_config, run_round
from herd.train.config import ConfigError
from tests.posttrain.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _round_toml(tmp_path: Path, base: Path) -> Path:
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": [{"role": "user", "content": f"say {w}"}],
         "chosen": [{"role": "assistant", "content": f"{w} {w}"}],
         "rejected": [{"role": "assistant", "content": "no"}]} for w in ("yes", "ok", "hi", "go")])
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say {w}"} for w in ("yes", "hi")])
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hi hi"}]}])
    fast = '["train.steps=2", "train.global_batch_rows=2", "train.micro_batch_rows=2", "train.threads=1"]'
    text = f'''
run_dir = "{tmp_path / 'round'}"
policy = "{base}"
preferences = "{prefs}"
prompts = "{tmp_path / 'prompts.jsonl'}"
sft_data = ["{tmp_path / 'chat.jsonl'}"]
[reward]
config = "{REPO / 'configs/reward-tiny.toml'}"
overrides = {fast[:-1]}, "reward.held_out={prefs}"]
[rejection]
k = 2
max_new_tokens = 6
[sft]
config = "{REPO / 'configs/sft-tiny.toml'}"
overrides = {fast}
[dpo]
config = "{REPO / 'configs/dpo-tiny.toml'}"
overrides = {fast}
variants = [["train.seed=0"], ["train.seed=1"]]
'''
    path = tmp_path / "round.toml"
    path.write_text(text)
    return path


def test_a_round_runs_every_stage_records_lineage_and_resumes(tmp_path, tiny_base):
    config = _round_toml(tmp_path, tiny_base)
    manifest = run_round(load_round_config(config), str(config))
    stages = manifest["stages"]
    assert list(stages) == ["reward", "rejection", "sft", "dpo-0", "dpo-1", "average"]
    # lineage: the SFT data holds the rejection samples (by hash), DPO starts from the SFT model
    samples = tmp_path / "round/rejection.jsonl"
    assert len(samples.read_text().splitlines()) == 2
    sft_data = {d["path"]: d["sha256"] for d in stages["sft"]["inputs"]["data"]}
    assert str(samples) in sft_data and len(sft_data) == 2
    assert stages["dpo-0"]["inputs"]["model"] == stages["sft"]["result"]["model"]
    assert stages["rejection"]["inputs"]["reward_model"] == stages["reward"]["output"]
    assert stages["dpo-1"]["inputs"]["overrides"][-1] == "train.seed=1"
    assert json.loads((tmp_path / "round/round.json").read_text())["final"] == manifest["final"]

    # the final model is the uniform average of the two DPO models
    final = load_any(manifest["final"]).state_dict()
    a, b = (load_any(stages[f"dpo-{i}"]["result"]["model"]).state_dict() for i in (0, 1))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two different runs
    for k in final:
        torch.testing.assert_close(final[k].float(), (a[k].float() + b[k].float()) / 2, rtol=0, atol=1e-2)

    # re-running finds every stage done; a changed preference file re-runs what depends on it
    again = run_round(load_round_config(config), str(config))
    assert {k: v["finished"] for k, v in again["stages"].items()} == {k: v["finished"] for k, v in stages.items()}
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(prefs.read_text() + prefs.read_text().splitlines()[0] + "\n")
    changed = run_round(load_round_config(config), str(config))
    assert changed["stages"]["reward"]["finished"] != stages["reward"]["finished"]
    assert changed["stages"]["dpo-0"]["inputs"]["data"][0]["sha256"] != stages["dpo-0"]["inputs"]["data"][0]["sha256"]


def test_round_config_errors_name_the_field(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('run_dir = "x"\npolicy = "p"\npreferences = "a"\nprompts = "b"\n[reward]\nconfig = "c"\n'
                    '[sft]\nconfig = "d"\n')
    with pytest.raises(ConfigError, match=r"\[dpo\] config is required"):
        load_round_config(path)
    with pytest.raises(ConfigError, match="rejection.k must be >= 1"):
        load_round_config(path, ['dpo.config="e"', "rejection.k=0"])
