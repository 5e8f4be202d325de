"""The engine's optional int8 KV cache: half the bytes, the same batching guarantees, and on a
trained model the same greedy text as the bf16 cache."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from herd.checkpoint import load
from herd.engine import Engine
from herd.engine.memory import kv_bytes_per_token
from herd.engine.paged_cache import quantize_int8_rows
from herd.generation import SamplingParams
from herd.model import ModelArgs
from tests.engine.conftest import prompts


def _greedy(n):
    return SamplingParams(temperature=0, stop_token_ids=(), max_new_tokens=n)


def test_int8_rows_round_to_within_half_a_step():
    x = torch.randn(7, 4, 64) * torch.logspace(-3, 2, 7)[:, None, None]
    codes, scale = quantize_int8_rows(x)
    assert codes.dtype == torch.int8 and scale.shape == (7, 4, 1)
    assert codes.abs().amax(-1).eq(127).all()  # each vector uses the full range
    assert ((codes.float() * scale - x).abs() <= scale / 2 + 1e-7).all()


def test_batched_requests_equal_each_alone_with_an_int8_cache(model):
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 70, (12,), generator=g).tolist()
    new = torch.randint(1, 30, (12,), generator=g).tolist()
    ps, params = prompts(lengths, seed=5), [_greedy(n) for n in new]
    alone = [Engine(model, num_blocks=16, block_size=16, kv_dtype="int8").generate([p], [sp])[0].token_ids
             for p, sp in zip(ps, params, strict=True)]
    engine = Engine(model, num_blocks=48, block_size=8, max_batched_tokens=64, kv_dtype="int8")
    got = engine.generate(ps, params)
    assert [c.token_ids for c in got] == alone
    assert engine.stats.max_batch > 1 and engine.blocks.num_used == 0


def test_int8_cache_holds_about_twice_the_tokens_of_a_bf16_one_in_the_same_budget(model):
    m = copy.deepcopy(model).to(torch.bfloat16)  # the fixture stays fp32 for the other tests
    budget = 8 << 20
    plain, int8 = Engine(m, memory=budget), Engine(m, memory=budget, kv_dtype="int8")
    a = model.args
    assert int8.memory.kv_per_token == 2 * a.n_layers * a.n_kv_heads * (a.head_dim + 4)
    assert int8.cache.nbytes() == int8.capacity * int8.memory.kv_per_token  # the estimate is what it allocates
    # a byte per number plus 4 per vector against 2 per number: 2 hd / (hd + 4) times the tokens (1.94x at hd 128)
    assert int8.capacity / plain.capacity == pytest.approx(2 * a.head_dim / (a.head_dim + 4), rel=0.01)
    with pytest.raises(ValueError, match="kv_dtype"):
        Engine(model, num_blocks=4, kv_dtype="fp4")


def test_trained_model_gives_the_same_greedy_text_with_an_int8_cache():
    from herd.bundled import base_model_dir

    net, tok = load(base_model_dir(), dtype=torch.float32)
    texts = ["In the beginning God created", "And the LORD spake unto Moses, saying,", "Blessed are the"]
    ids = [tok.encode(t, bos=True, eos=False) for t in texts]
    want = Engine(net, num_blocks=32).generate(ids, _greedy(40))
    got = Engine(net, num_blocks=32, kv_dtype="int8").generate(ids, _greedy(40))
    assert [c.token_ids for c in got] == [c.token_ids for c in want]


def test_memory_cli_prices_an_int8_cache():
    from herd.cli import app

    out = CliRunner().invoke(app, ["engine", "memory", "--preset", "llama3.1-8b", "--kv-cache", "int8", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["kv_bytes_per_token"] == 2 * 32 * 8 * (128 + 4)  # 66 KiB vs bf16's 128 KiB
    bad = CliRunner().invoke(app, ["engine", "memory", "--preset", "llama3.1-8b", "--kv-cache", "fp4"])
    assert bad.exit_code != 0 and "expected auto or int8" in bad.output
    assert kv_bytes_per_token(ModelArgs.from_name("llama3.1-8b"), torch.bfloat16) == 128 * 1024
