"""`herd sft` / `herd average` end to end through the CLI, and errors that name the culprit."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from herd.checkpoint import load_any, save_pretrained
from herd.cli import app
from tests.conftest import make_tiny_model
from tests.posttrain.conftest import write_jsonl

runner = CliRunner()


def test_herd_sft_command(tmp_path, tiny_base):
    data = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 8)
    result = runner.invoke(app, ["sft", "--config", "configs/sft-tiny.toml", f"base.model={str(tiny_base)!r}",
                                 f"sft.data=[{str(data)!r}]", f"sft.held_out={str(data)!r}",
                                 f"run_dir={str(tmp_path / 'run')!r}", "train.steps=2", "data.seq_len=64",
                                 "metrics.progress='off'", "train.threads=1"])
    assert result.exit_code == 0, result.output
    assert "sft: step 2" in result.output and "held-out" in result.output
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_herd_sft_errors_name_the_culprit(tmp_path, tiny_base):
    result = runner.invoke(app, ["sft", "--config", "configs/sft-tiny.toml", "sft.lr=1"])
    assert result.exit_code == 2 and "unknown key 'sft.lr'" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no reply"}]}\n')
    result = runner.invoke(app, ["sft", "--config", "configs/sft-tiny.toml", f"base.model={str(tiny_base)!r}",
                                 f"sft.data=[{str(bad)!r}]", f"run_dir={str(tmp_path / 'run')!r}"])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output and "no assistant" in result.output


def test_herd_average_command(tmp_path):
    for i in range(2):
        save_pretrained(make_tiny_model("tiny-nope", seed=i), tmp_path / f"m{i}")
    result = runner.invoke(app, ["average", str(tmp_path / "m0"), str(tmp_path / "m1"), "--weights", "3,1",
                                 "--out", str(tmp_path / "avg")])
    assert result.exit_code == 0, result.output
    a, b, avg = (load_any(tmp_path / n) for n in ("m0", "m1", "avg"))
    torch.testing.assert_close(avg.model.norm.weight, 0.75 * a.model.norm.weight + 0.25 * b.model.norm.weight)
    result = runner.invoke(app, ["average", str(tmp_path / "m0"), "--weights", "x", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--weights" in result.output


def test_herd_rejection_sample_command(tmp_path, tiny_base, byte_tok):
    from herd.posttrain.reward import add_score_head, save_reward_model
    from tests.posttrain.conftest import make_byte_model

    save_reward_model(add_score_head(make_byte_model(seed=9)), tmp_path / "rm", tokenizer=byte_tok)
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": "hi"}, {"messages": [{"role": "user", "content": "yo"}]}])
    result = runner.invoke(app, ["rejection-sample", "--model", str(tiny_base), "--reward-model", str(tmp_path / "rm"),
                                 "--prompts", str(prompts), "--out", str(tmp_path / "best.jsonl"), "--k", "2",
                                 "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "best.jsonl").read_text().splitlines()) == 2 and '"kept": 2' in result.output
