"""`herd quantize` and `herd export gguf` end to end on a saved model directory."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from herd.checkpoint import load_any, save_pretrained
from herd.cli import app
from herd.quant import Int4Linear, Int8Linear
from tests.quant.helpers import small_model, small_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama3_tokenizer_path):
    tok = small_tokenizer(llama3_tokenizer_path)
    model = small_model(n_layers=1, vocab_size=tok.n_words, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    path = tmp_path_factory.mktemp("cli") / "model"
    save_pretrained(model, path, tokenizer=tok, dtype=torch.bfloat16)
    (path.parent / "calib.txt").write_text("In the beginning God created the heaven and the earth. " * 40)
    return path


def test_quantize_int8_and_load_back(model_dir, tmp_path) -> None:
    out = tmp_path / "q"
    result = runner.invoke(app, ["quantize", "--model", str(model_dir), "--scheme", "int8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    loaded = load_any(tmp_path / "q")
    assert isinstance(loaded.model.layers[0].mlp.down_proj, Int8Linear)
    assert (tmp_path / "q" / "tokenizer.model").is_file()
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16


def test_quantize_gptq_needs_and_uses_calibration(model_dir, tmp_path) -> None:
    args = ["quantize", "--model", str(model_dir), "--scheme", "int4-gptq-g32", "--out", str(tmp_path / "g")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--calibration" in result.output
    result = runner.invoke(app, [*args, "--calibration", str(model_dir.parent / "calib.txt"),
                                 "--calibration-rows", "4", "--calibration-len", "32"])
    assert result.exit_code == 0, result.output
    assert isinstance(load_any(tmp_path / "g").model.layers[0].self_attn.q_proj, Int4Linear)


def test_bad_scheme_is_named(model_dir, tmp_path) -> None:
    result = runner.invoke(app, ["quantize", "--model", str(model_dir), "--scheme", "int3", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "int3" in result.output


def test_export_gguf(model_dir, tmp_path) -> None:
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    result = runner.invoke(app, ["export", "gguf", "--model", str(model_dir), "--out", str(out), "--type", "q8_0"])
    assert result.exit_code == 0, result.output
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == "llama"
    template = json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert reader.fields["tokenizer.chat_template"].contents() == template  # the checkpoint's own template


def test_quantize_fp8_in_metas_layout(tmp_path, llama3_tokenizer_path) -> None:
    tok = small_tokenizer(llama3_tokenizer_path)
    model = small_model(n_layers=3, vocab_size=tok.n_words, rope_scaling=None)
    save_pretrained(model, tmp_path / "m", tokenizer=tok, dtype=torch.bfloat16)
    out = tmp_path / "fp8"
    result = runner.invoke(app, ["quantize", "--model", str(tmp_path / "m"), "--scheme", "fp8", "--out", str(out),
                                 "--layout", "meta", "--model-parallel", "2"])
    assert result.exit_code == 0, result.output
    assert {"consolidated.01.pth", "fp8_scales_1.pt", "params.json", "tokenizer.model"} <= {
        p.name for p in out.iterdir()}
    from herd.quant import Fp8RowwiseLinear

    down = load_any(out).model.layers[1].mlp.down_proj
    assert isinstance(down, Fp8RowwiseLinear) and down.shards == 2
    bad = runner.invoke(app, ["quantize", "--model", str(tmp_path / "m"), "--scheme", "int8", "--out",
                              str(tmp_path / "x"), "--layout", "meta"])
    assert bad.exit_code != 0 and "--layout meta holds FP8 row-wise only" in bad.output
    assert not (tmp_path / "x").exists()
