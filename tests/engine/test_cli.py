"""`herd engine memory` and `herd engine generate`, end to end through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from herd.cli import app
from tests.conftest import make_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama3_tokenizer_path):
    from herd.checkpoint import save_pretrained
    from herd.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("engine-cli") / "tiny"
    save_pretrained(make_tiny_model("tiny", seed=7), path, tokenizer=Tokenizer.from_file(llama3_tokenizer_path))
    return path


def test_memory_of_a_preset_and_a_budget():
    result = runner.invoke(app, ["engine", "memory", "--preset", "llama3-8b", "--budget", "24GiB", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["kv_bytes_per_token"] == 128 * 1024
    assert out["weights_bytes"] == 8_030_261_248 * 2  # Llama 3 8B's published parameter count, bf16
    assert out["kv_tokens"] == out["kv_blocks"] * 16
    assert out["kv_blocks"] == (24 * (1 << 30) - out["weights_bytes"]) // (128 * 1024 * 16)


def test_memory_of_a_checkpoint_directory(model_dir):
    from herd.engine import kv_bytes_per_token

    model = make_tiny_model("tiny", seed=7)
    result = runner.invoke(app, ["engine", "memory", "--model", str(model_dir), "--dtype", "float32", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["weights_bytes"] == model.num_params() * 4
    import torch

    assert out["kv_bytes_per_token"] == kv_bytes_per_token(model.args, torch.float32)


def test_memory_errors_name_the_culprit(tmp_path):
    result = runner.invoke(app, ["engine", "memory", "--preset", "llama3-8b", "--budget", "lots"])
    assert result.exit_code == 2 and "--budget" in result.output
    result = runner.invoke(app, ["engine", "memory"])
    assert result.exit_code == 2 and "--model DIR or --preset" in result.output
    result = runner.invoke(app, ["engine", "memory", "--preset", "llama3-8b", "--budget", "4GiB"])
    assert result.exit_code == 0 and "0 blocks" in result.output  # the weights alone exceed 4 GiB


def test_generate_completes_a_file_of_prompts_like_the_generate_command(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    texts = ["The capital of France", "Once upon a time", "日本語"]
    prompts.write_text("\n".join(json.dumps({"prompt": t}) for t in texts) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["engine", "generate", "--model", str(model_dir), "--prompts", str(prompts),
                                 "--max-new-tokens", "6", "--temperature", "0", "--memory", "64MiB"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert sorted(x["index"] for x in lines) == [0, 1, 2]
    for x in lines:
        single = runner.invoke(app, ["generate", "--model", str(model_dir), "--prompt", texts[x["index"]],
                                     "--max-new-tokens", "6", "--temperature", "0", "--json"])
        assert json.loads(single.stdout)["text"] == x["text"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n', encoding="utf-8")
    result = runner.invoke(app, ["engine", "generate", "--model", str(model_dir), "--prompts", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output
