"""Bad Hugging Face layout checkpoints raise CheckpointError naming the culprit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from herd.checkpoint import CheckpointError, load_pretrained, save_pretrained
from tests.checkpoint.helpers import random_tiny


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_pretrained(random_tiny("tiny"), tmp_path / "ckpt")


def edit_weights(path: Path, edit) -> None:
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def edit_config(root: Path, **changes) -> None:
    config = json.loads((root / "config.json").read_text())
    config.update(changes)
    (root / "config.json").write_text(json.dumps(config))


def raises(root: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_pretrained(root)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_truncated_safetensors_names_the_file(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    raises(ckpt, str(path), "truncated")


def test_missing_tensor_is_named(ckpt):
    edit_weights(ckpt / "model.safetensors", lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    raises(ckpt, "missing tensor(s) model.layers.1.mlp.up_proj.weight")


def test_extra_tensor_is_named(ckpt):
    edit_weights(ckpt / "model.safetensors",
                 lambda s: s.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}))
    raises(ckpt, "unexpected tensor(s) model.layers.0.self_attn.q_proj.bias")


def test_misshaped_tensor_is_named_with_both_shapes(ckpt):
    name = "model.layers.1.mlp.down_proj.weight"
    edit_weights(ckpt / "model.safetensors", lambda s: s.update({name: s[name].t().contiguous()}))
    raises(ckpt, f"{name}: expected (64, 192), found (192, 64)")


def test_untied_config_without_a_head_says_so(ckpt):
    edit_weights(ckpt / "model.safetensors", lambda s: s.pop("lm_head.weight"))
    raises(ckpt, "missing tensor(s) lm_head.weight", "tie_word_embeddings")


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("hidden_size", 128, "hidden_size=128, but model.embed_tokens.weight has shape (1000, 64)"),
    ("vocab_size", 2000, "vocab_size=2000, but model.embed_tokens.weight has shape (1000, 64)"),
    ("num_hidden_layers", 3, "num_hidden_layers=3, but the weights hold layers 0..1 (2 layers)"),
    ("num_key_value_heads", 4, "num_key_value_heads=4"),
    ("intermediate_size", 256, "intermediate_size=256, but model.layers.0.mlp.gate_proj.weight"),
])
def test_config_contradicting_the_weights_names_the_field(ckpt, field, value, fragment):
    edit_config(ckpt, **{field: value})
    raises(ckpt, "config.json contradicts the weights", fragment)


def test_tied_config_with_a_different_head_is_refused(tmp_path):
    root = save_pretrained(random_tiny("tiny-tied"), tmp_path / "t")
    edit_weights(root / "model.safetensors",
                 lambda s: s.update({"lm_head.weight": torch.randn_like(s["model.embed_tokens.weight"])}))
    raises(root, "tie_word_embeddings", "lm_head.weight differs from model.embed_tokens.weight")


def test_missing_config_json(ckpt):
    (ckpt / "config.json").unlink()
    raises(ckpt, "missing config.json", str(ckpt / "config.json"))


def test_unparseable_config_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    raises(ckpt, "cannot parse", "config.json")


def test_unknown_rope_type(ckpt):
    edit_config(ckpt, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    raises(ckpt, "rope_type 'dynamic'")


def test_no_weights_at_all(ckpt):
    (ckpt / "model.safetensors").unlink()
    raises(ckpt, "no model.safetensors or model.safetensors.index.json")


@pytest.fixture
def sharded(tmp_path) -> Path:
    root = save_pretrained(random_tiny("tiny"), tmp_path / "sharded", max_shard_size="150KB")
    assert len(list(root.glob("model-*.safetensors"))) > 2
    return root


def test_index_pointing_to_a_missing_shard(sharded):
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    message = raises(sharded, f"to shard {victim.name}, which is missing", "model.safetensors.index.json")
    assert re.search(r"maps \d+ tensor\(s\)", message)


def test_index_mapping_a_tensor_to_the_wrong_shard(sharded):
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first, last = sorted(set(index["weight_map"].values()))[0], sorted(set(index["weight_map"].values()))[-1]
    name = next(n for n, f in index["weight_map"].items() if f == first)
    index["weight_map"][name] = last
    index_path.write_text(json.dumps(index))
    raises(sharded, f"maps {name} to {last}, which does not hold it")


def test_truncated_shard_is_named(sharded):
    victim = sorted(sharded.glob("model-*.safetensors"))[-1]
    victim.write_bytes(victim.read_bytes()[:100])
    raises(sharded, victim.name, "corrupt or truncated")
