"""Fixtures for generation tests: tiny herd models, the same weights in transformers'
LlamaForCausalLM (the reference peer), and the real Llama 3 tokenizer."""

from __future__ import annotations

import pytest
import torch

from herd.model import Transformer
from tests.conftest import make_tiny_model


def hf_twin(model: Transformer):
    """transformers' LlamaForCausalLM holding exactly ``model``'s weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    a = model.args
    rope_scaling = None
    if a.rope_scaling is not None:
        s = a.rope_scaling
        rope_scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    config = LlamaConfig(
        vocab_size=a.vocab_size, hidden_size=a.dim, intermediate_size=a.ffn_dim,
        num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
        head_dim=a.head_dim, max_position_embeddings=a.max_seq_len, rms_norm_eps=a.norm_eps,
        rope_theta=a.rope_theta, rope_scaling=rope_scaling, tie_word_embeddings=a.tie_word_embeddings,
        bos_token_id=a.bos_token_id, eos_token_id=a.eos_token_id, pad_token_id=0,
        attn_implementation="sdpa",
    )
    hf = LlamaForCausalLM(config)
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return hf.eval()


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_hf(tiny):
    return hf_twin(tiny)


@pytest.fixture(scope="session")
def tok(llama3_tokenizer_path):
    from herd.tokenizer import Tokenizer

    return Tokenizer.from_file(llama3_tokenizer_path)


def full_logits(model: Transformer, ids: list[int]) -> torch.Tensor:
    """fp32 logits (T, vocab) of one full forward pass over ``ids``, no cache."""
    with torch.no_grad():
        return model(torch.tensor([ids])).float()[0]
