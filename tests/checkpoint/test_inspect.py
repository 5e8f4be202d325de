"""Format detection, loading either layout, and the checkpoint summary."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from herd.checkpoint import (
    CheckpointError,
    detect_format,
    find_tokenizer,
    inspect_checkpoint,
    load,
    load_any,
    save_meta,
    save_pretrained,
)
from herd.model import RopeScaling
from tests.checkpoint.helpers import random_tiny


def test_detect_and_load_either_layout(tmp_path):
    model = random_tiny("tiny", rope_scaling=RopeScaling())
    save_pretrained(model, tmp_path / "hf")
    save_meta(model, tmp_path / "meta")
    assert detect_format(tmp_path / "hf") == "hf" and detect_format(tmp_path / "meta") == "meta"
    for root in ("hf", "meta"):
        loaded = load_any(tmp_path / root, rope_scaling_factor=8)
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), (root, name)


def test_hf_snapshot_with_meta_files_in_original_loads_as_hf(tmp_path, llama3_tokenizer_path):
    model = random_tiny("tiny-nope")
    save_pretrained(model, tmp_path / "snap")
    original = tmp_path / "snap" / "original"
    save_meta(random_tiny("tiny-nope", seed=7), original, tokenizer=llama3_tokenizer_path)
    assert detect_format(tmp_path / "snap") == "hf"
    assert torch.equal(load_any(tmp_path / "snap").lm_head.weight, model.lm_head.weight)  # not original/'s
    assert find_tokenizer(tmp_path / "snap") == tmp_path / "snap" / "original" / "tokenizer.model"
    # Only the Meta files left: the directory reads as Meta's layout, from original/.
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (tmp_path / "snap" / name).unlink()
    assert detect_format(tmp_path / "snap") == "meta"
    other = random_tiny("tiny-nope", seed=7)
    assert torch.equal(load_any(tmp_path / "snap").lm_head.weight, other.lm_head.weight)


def test_load_returns_the_tokenizer_when_there_is_one(tmp_path, llama3_tokenizer_path):
    save_pretrained(random_tiny("tiny-nope"), tmp_path / "bare")
    model, tok = load(tmp_path / "bare")
    assert tok is None and model.args.n_heads == 6
    shutil.copyfile(llama3_tokenizer_path, tmp_path / "bare" / "tokenizer.model")
    _, tok = load(tmp_path / "bare")
    try:
        from herd.tokenizer import Tokenizer
    except ImportError:
        assert tok is None  # herd.tokenizer not written yet: the model still loads
    else:
        assert isinstance(tok, Tokenizer) and tok.vocab_size == 128256


def test_neither_layout_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a Hugging Face checkpoint .* nor a Meta one"):
        detect_format(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_any(tmp_path / "nowhere")


def test_inspect_hf(tmp_path, llama3_tokenizer_path):
    model = random_tiny("tiny-tied")
    save_pretrained(model, tmp_path / "c", dtype=torch.bfloat16, max_shard_size="100KB",
                    tokenizer=llama3_tokenizer_path)
    info = inspect_checkpoint(tmp_path / "c")
    json.dumps(info)  # printable as JSON
    assert info["format"] == "hf" and info["config_dialect"].startswith("4.x")
    assert info["num_params"] == model.args.num_params() == model.num_params()
    assert info["dtypes"] == {"bfloat16": len(model.state_dict()) - 1}  # tied head not stored
    assert info["config_dtype"] == "bfloat16"
    n = len(info["shards"])
    assert n > 1 and info["shards"][0]["file"] == f"model-00001-of-{n:05d}.safetensors"
    assert info["weights_bytes"] == sum((tmp_path / "c" / s["file"]).stat().st_size for s in info["shards"])
    assert info["size_bytes"] > info["weights_bytes"]
    config = info["config"]
    assert config["dim"] == 64 and config["n_kv_heads"] == 1 and config["tie_word_embeddings"]
    assert info["rope_scaling"] == {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 256}
    assert info["tokenizer"] == {"path": str(tmp_path / "c" / "tokenizer.model"), "vocab_size": 128256}


def test_inspect_meta(tmp_path):
    model = random_tiny("tiny", vocab_size=128256, bos_token_id=128000, eos_token_id=128001)
    save_meta(model, tmp_path / "m", model_parallel=2, dtype=torch.bfloat16)
    info = inspect_checkpoint(tmp_path / "m")
    assert info["format"] == "meta" and info["presets"] == ["tiny"]
    assert info["rope_scaling_source"] == "rope scaling factor 8 from preset tiny"
    assert info["num_params"] == model.num_params()
    assert info["dtypes"] == {"bfloat16": len(model.state_dict())}
    assert [s["file"] for s in info["shards"]] == ["consolidated.00.pth", "consolidated.01.pth"]
    assert info["tokenizer"] is None


def test_inspect_meta_reports_an_unresolved_scaling_instead_of_failing(tmp_path):
    save_meta(random_tiny("tiny"), tmp_path / "m")  # small vocab: no preset has this shape
    info = inspect_checkpoint(tmp_path / "m")
    assert info["presets"] == [] and info["rope_scaling"] is None
    source = info["rope_scaling_source"]
    assert source.startswith("unresolved") and "rope_scaling_factor" in source
    assert inspect_checkpoint(tmp_path / "m", rope_scaling_factor=8)["rope_scaling"]["factor"] == 8.0
