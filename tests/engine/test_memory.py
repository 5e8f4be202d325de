"""The serving memory estimate: KV bytes per token from the architecture, weights from
the parameter count, both checked against tensors actually allocated."""

from __future__ import annotations

import pytest
import torch

from herd.engine import Engine, PagedKVCache, estimate_serving_memory, kv_bytes_per_token
from herd.engine.memory import model_weight_bytes, parse_bytes
from herd.model import ModelArgs
from tests.conftest import make_tiny_model


def test_kv_bytes_per_token_of_published_shapes():
    # Llama 3 8B: 32 layers x 8 KV heads x 128 dims x (K and V) x 2 bytes = 128 KiB
    assert kv_bytes_per_token(ModelArgs.from_name("llama3-8b"), torch.bfloat16) == 128 * 1024
    assert kv_bytes_per_token(ModelArgs.from_name("llama3.2-1b"), torch.bfloat16) == 32 * 1024
    assert kv_bytes_per_token(ModelArgs.from_name("llama3-70b"), torch.float32) == 640 * 1024


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied"])
def test_estimate_matches_allocated_tensors(preset):
    model = make_tiny_model(preset, vocab_size=512).to(torch.bfloat16)
    est = estimate_serving_memory(model.args, torch.bfloat16, budget=4 << 20, block_size=16)
    assert est.weights == model_weight_bytes(model)  # a tied table counted once
    cache = PagedKVCache(model.args, est.num_blocks, 16, dtype=torch.bfloat16, device="cpu")
    assert cache.nbytes() == est.num_blocks * 16 * est.kv_per_token
    assert est.weights + cache.nbytes() <= 4 << 20 < est.weights + cache.nbytes() + 16 * est.kv_per_token


def test_an_engine_sized_by_a_budget_and_a_budget_too_small():
    model = make_tiny_model("tiny", vocab_size=512)
    weights = model_weight_bytes(model)
    engine = Engine(model, memory=weights + 64 * 1024, block_size=8)
    assert engine.cache.nbytes() <= 64 * 1024 and engine.blocks.num_blocks == engine.memory.num_blocks > 0
    assert "KV cache" in engine.memory.summary()
    with pytest.raises(ValueError, match="weights alone"):
        Engine(model, memory=weights // 2)
    with pytest.raises(ValueError, match="num_blocks or a memory budget"):
        Engine(model)


def test_parse_bytes():
    assert parse_bytes("8GiB") == 8 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("1GB") == 10**9
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")
