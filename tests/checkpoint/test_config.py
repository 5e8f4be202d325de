"""config.json in both transformers dialects <-> ModelArgs."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig

from herd.checkpoint import CheckpointError, args_from_hf_config, hf_config_from_args
from herd.checkpoint.config import dtype_from_hf_config
from herd.model import PRESETS, RopeScaling

# meta-llama/Llama-3.1-8B-Instruct config.json as published (transformers 4.x dialect).
LLAMA31_8B_4X = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}


def to_5x(config: dict) -> dict:
    """The same config as transformers 5.x writes it: rope_parameters and dtype."""
    out = copy.deepcopy(config)
    rope = out.pop("rope_scaling") or {"rope_type": "default"}
    out["rope_parameters"] = {**rope, "rope_theta": out.pop("rope_theta")}
    out["dtype"] = out.pop("torch_dtype")
    return out


def test_both_dialects_read_the_llama31_config_as_the_preset():
    preset = PRESETS["llama3.1-8b"]
    for config in (LLAMA31_8B_4X, to_5x(LLAMA31_8B_4X)):
        args = args_from_hf_config(config)
        assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.vocab_size, args.ffn_dim) == (
            4096, 32, 32, 8, 128256, preset.ffn_dim)
        assert args.rope_scaling == preset.rope_scaling == RopeScaling(factor=8.0)
        assert args.rope_theta == 500000.0 and args.norm_eps == 1e-5 and args.max_seq_len == 131072
        assert args.eos_token_id == [128001, 128008, 128009] and not args.tie_word_embeddings
        assert dtype_from_hf_config(config) == torch.bfloat16


@pytest.mark.parametrize("rope", [None, {"rope_type": "default"}, {"type": "default"}])
def test_default_rope_type_means_no_scaling(rope):
    config = {**LLAMA31_8B_4X, "rope_scaling": rope}
    assert args_from_hf_config(config).rope_scaling is None
    assert args_from_hf_config(to_5x(config)).rope_scaling is None


def test_legacy_type_key_is_read():
    rope = dict(LLAMA31_8B_4X["rope_scaling"])
    rope["type"] = rope.pop("rope_type")
    rope["factor"] = 32.0
    assert args_from_hf_config({**LLAMA31_8B_4X, "rope_scaling": rope}).rope_scaling.factor == 32.0


@pytest.mark.parametrize("dialect", ["4.x", "5.x"])
def test_unknown_rope_type_is_a_clear_error(dialect):
    config = {**LLAMA31_8B_4X, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    config = config if dialect == "4.x" else to_5x(config)
    with pytest.raises(CheckpointError, match="unsupported .*rope_type 'yarn'"):
        args_from_hf_config(config)


def test_llama3_rope_without_its_fields_names_them():
    config = {**LLAMA31_8B_4X, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    missing = "low_freq_factor, high_freq_factor, original_max_position_embeddings"
    with pytest.raises(CheckpointError, match=missing):
        args_from_hf_config(config)


@pytest.mark.parametrize(("key", "value", "match"), [
    ("model_type", "mistral", "model_type"),
    ("attention_bias", True, "attention_bias"),
    ("hidden_act", "gelu", "hidden_act"),
    ("hidden_size", None, "hidden_size"),
])
def test_unsupported_or_missing_fields_are_named(key, value, match):
    with pytest.raises(CheckpointError, match=match):
        args_from_hf_config({**LLAMA31_8B_4X, key: value})


def test_written_config_matches_the_published_llama32_1b_config():
    """What herd writes for the 3.2 1B preset equals Meta's published config.json values."""
    written = hf_config_from_args(PRESETS["llama3.2-1b"], torch.bfloat16)
    published = {  # meta-llama/Llama-3.2-1B-Instruct config.json
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "max_position_embeddings": 131072, "vocab_size": 128256, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
        "initializer_range": 0.02, "use_cache": True,
    }
    assert {k: written[k] for k in published} == published
    assert "rope_parameters" not in written and "dtype" not in written  # the 4.x dialect


def test_transformers_reads_the_written_config():
    written = hf_config_from_args(PRESETS["llama3.2-3b"], torch.bfloat16)
    peer = LlamaConfig.from_dict(written)
    assert peer.rope_parameters["rope_type"] == "llama3" and peer.rope_parameters["factor"] == 32.0
    assert peer.rope_parameters["rope_theta"] == 500000.0
    shape = (peer.hidden_size, peer.intermediate_size, peer.num_key_value_heads, peer.head_dim)
    assert shape == (3072, 8192, 8, 128)
    assert peer.tie_word_embeddings is True
    back = args_from_hf_config(written)
    preset = PRESETS["llama3.2-3b"]
    assert back.ffn_dim == preset.ffn_dim and back.rope_scaling == preset.rope_scaling
