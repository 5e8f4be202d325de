"""The engine against herd's Generator run one request at a time (itself checked against
transformers) and against transformers directly: continuous batching, chunked prefill,
preemption, prefix caching, cancellation and per-request sampling change no output,
and every KV block comes back."""

from __future__ import annotations

import pytest
import torch

from herd.engine import Engine
from herd.generation import Generator, SamplingParams
from tests.conftest import make_tiny_model
from tests.engine.conftest import VOCAB, prompts
from tests.generation.conftest import hf_twin


def _greedy(n, **kw):
    return SamplingParams(temperature=0, stop_token_ids=(), max_new_tokens=n, **kw)


def _alone(model, prompt_list, params_list):
    gen = Generator(model)
    return [gen.generate([p], sp)[0] for p, sp in zip(prompt_list, params_list, strict=True)]


def _mixed(count, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 90, (count,), generator=g).tolist()
    new = torch.randint(1, 40, (count,), generator=g).tolist()
    return prompts(lengths, seed=seed), [_greedy(n) for n in new]


@pytest.fixture(scope="module")
def mixed32(model):
    ps, params = _mixed(32, seed=3)
    return ps, params, [c.token_ids for c in _alone(model, ps, params)]


def test_32_concurrent_greedy_requests_equal_each_run_alone(model, mixed32):
    ps, params, want = mixed32
    engine = Engine(model, num_blocks=256, block_size=16, max_batched_tokens=96)
    got = engine.generate(ps, params)
    assert [c.token_ids for c in got] == want
    assert all(c.finish_reason == "length" for c in got)
    stats = engine.stats
    assert stats.max_batch > 1 and stats.mixed_steps > 0
    assert any(s.prefill_tokens == 96 for s in stats.steps)  # prompts split into chunks of the budget
    assert engine.scheduler.preemptions == 0
    assert engine.blocks.num_used == 0 and not engine.has_unfinished()


def test_bf16_32_concurrent_greedy_requests_equal_each_run_alone():
    """Batch invariance in bf16: the products (cpu_gemv) and attention (one query at a time)
    give a token the same bits however prompts are chunked and whoever shares the step, so
    batched outputs equal solo outputs in bf16 too (3 of these 32 differed before)."""
    model = make_tiny_model("tiny", seed=0).to(torch.bfloat16)  # the full vocabulary: many near-ties
    g = torch.Generator().manual_seed(3)
    lengths, new = torch.randint(1, 90, (32,), generator=g).tolist(), torch.randint(1, 40, (32,), generator=g).tolist()
    ps, params = prompts(lengths, seed=3), [_greedy(n) for n in new]
    engine = Engine(model, num_blocks=256, block_size=16, max_batched_tokens=96)
    got = [c.token_ids for c in engine.generate(ps, params)]
    assert engine.stats.max_batch > 1 and engine.stats.mixed_steps > 0
    assert got == [c.token_ids for c in _alone(model, ps, params)]


def test_a_cache_too_small_for_all_queues_and_preempts_but_changes_nothing(model, mixed32):
    ps, params, want = mixed32
    engine = Engine(model, num_blocks=20, block_size=8, max_batched_tokens=64)  # 160 tokens for ~2,000
    got = engine.generate(ps, params)
    assert [c.token_ids for c in got] == want
    assert engine.scheduler.preemptions > 0
    assert engine.blocks.num_used == 0


def test_greedy_matches_transformers_generate(model):
    ps = prompts([3, 17, 40], seed=5)
    engine = Engine(model, num_blocks=32, block_size=8)
    got = engine.generate(ps, _greedy(12))
    hf = hf_twin(model)
    for p, c in zip(ps, got, strict=True):
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                              pad_token_id=0)
        assert c.token_ids == out[0, len(p):].tolist()


def test_a_shared_system_prompt_is_computed_once(model):
    system = prompts([45], seed=7)[0]
    users = [system + p[1:] for p in prompts([6, 11, 3], seed=8)]
    params = _greedy(10)
    want = [c.token_ids for c in _alone(model, users, [params] * 3)]
    engine = Engine(model, num_blocks=64, block_size=8)
    first = engine.generate(users[:1], params)
    computed_before = sum(s.prefill_tokens for s in engine.stats.steps)
    rest = engine.generate(users[1:], params)
    computed_after = sum(s.prefill_tokens for s in engine.stats.steps) - computed_before
    assert [c.token_ids for c in first + rest] == want
    # 5 full blocks (40 tokens) of the system prompt come from the cache for each later request
    assert computed_after == sum(len(u) for u in users[1:]) - 2 * 40
    assert engine.blocks.hits >= 10
    assert engine.blocks.num_used == 0 and engine.blocks.cached_blocks() > 0


def test_prefix_caching_off_computes_everything_with_the_same_outputs(model):
    system = prompts([33], seed=9)[0]
    users = [system + p[1:] for p in prompts([4, 9], seed=10)]
    on = Engine(model, num_blocks=64, block_size=8).generate(users, _greedy(6))
    off_engine = Engine(model, num_blocks=64, block_size=8, prefix_caching=False)
    off = off_engine.generate(users, _greedy(6))
    assert [c.token_ids for c in on] == [c.token_ids for c in off]
    assert off_engine.blocks.hits == 0 and off_engine.blocks.cached_blocks() == 0


def test_cancelled_requests_free_their_blocks_and_leave_the_others_unchanged(model):
    ps = prompts([30, 50, 8, 12, 70, 5], seed=11)
    params = [_greedy(20)] * 6
    want = [c.token_ids for c in _alone(model, ps, params)]
    engine = Engine(model, num_blocks=40, block_size=8, max_batched_tokens=32, max_seqs=4)
    ids = [engine.add_request(p, sp) for p, sp in zip(ps, params, strict=True)]
    finished = {}
    for _ in range(3):
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.completion
    states = {r.request_id: r for r in engine.scheduler.running}
    assert ids[5] in {r.request_id for r in engine.scheduler.waiting}  # still queued (max_seqs=4)
    cancel = [ids[1], ids[3], ids[5]]  # mid-prefill or decoding, decoding, waiting
    assert ids[1] in states and ids[3] in states
    for rid in cancel:
        out = engine.abort(rid)
        assert out.finished and out.completion.finish_reason == "cancelled"
    assert engine.abort(ids[1]) is None  # cancelling twice is harmless
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.completion
    assert sorted(finished) == sorted(set(ids) - set(cancel))
    for i in (0, 2, 4):
        assert finished[ids[i]].token_ids == want[i]
    assert engine.blocks.num_used == 0


def test_per_request_sampling_seeds_logprobs_processors_and_stops(model):
    ps = prompts([9, 20, 14, 5], seed=12)

    def ban_even(ids, logits):  # a logits processor: only odd tokens
        logits = logits.clone()
        logits[0::2] = -float("inf")
        return logits

    params = [
        SamplingParams(temperature=0.8, top_k=50, seed=11, stop_token_ids=(), max_new_tokens=15, logprobs=3),
        _greedy(15, logits_processors=(ban_even,)),
        SamplingParams(temperature=1.0, top_p=0.9, min_p=0.05, seed=4, stop_token_ids=(), max_new_tokens=15,
                       repetition_penalty=1.3),
        _greedy(15),
    ]
    want = _alone(model, ps, params)
    stop = want[3].token_ids[4]
    params[3] = SamplingParams(temperature=0, stop_token_ids=(stop,), max_new_tokens=15)
    want[3] = _alone(model, ps[3:], params[3:])[0]
    got = Engine(model, num_blocks=32, block_size=8).generate(ps, params)
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids and g.finish_reason == w.finish_reason
    assert all(t % 2 == 1 for t in got[1].token_ids)
    assert got[3].stop_token == stop and len(got[3].token_ids) <= 4
    for a, b in zip(got[0].logprobs, want[0].logprobs, strict=True):
        assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


def test_bad_requests_get_clear_errors(model):
    engine = Engine(model, num_blocks=4, block_size=8)  # 32 tokens of KV
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request([])
    with pytest.raises(ValueError, match="vocab_size"):
        engine.add_request([VOCAB])
    with pytest.raises(ValueError, match="KV cache .* holds 32 tokens"):
        engine.add_request(list(range(40)))
    rid = engine.add_request(list(range(20)), _greedy(100))  # clamped to what the cache holds
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([1], request_id=rid)
    (out,) = [c for c in engine.generate([list(range(1, 21))], _greedy(100))]
    assert len(out.token_ids) == 12 and out.finish_reason == "length"
    assert engine.blocks.num_used == 0


def test_requests_arriving_and_leaving_at_any_step(model):
    """Random arrivals, cancellations, shared prefixes and a cache small enough to preempt:
    every request that was not cancelled still gets exactly its solo output."""
    g = torch.Generator().manual_seed(21)
    system = prompts([24], seed=22)[0]
    ps = []
    for i, p in enumerate(prompts(torch.randint(2, 40, (20,), generator=g).tolist(), seed=23)):
        ps.append(system + p[1:] if i % 3 == 0 else p)
    params = [_greedy(int(n)) for n in torch.randint(1, 25, (20,), generator=g)]
    want = [c.token_ids for c in _alone(model, ps, params)]
    arrive = sorted(torch.randint(0, 30, (20,), generator=g).tolist())
    cancel_at = {3: 7, 8: 12, 15: 20}  # request index -> step at which it is cancelled
    engine = Engine(model, num_blocks=14, block_size=8, max_batched_tokens=48, max_seqs=8)
    ids, finished, cancelled = {}, {}, set()
    step = 0
    while len(ids) < 20 or engine.has_unfinished():
        for i in range(20):
            if arrive[i] == step:
                ids[i] = engine.add_request(ps[i], params[i])
        for i, at in cancel_at.items():
            if at == step and i in ids and engine.abort(ids[i]) is not None:
                cancelled.add(i)
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.completion.token_ids
        step += 1
    assert cancelled  # at least one was cancelled while unfinished
    for i in range(20):
        if i not in cancelled:
            assert finished[ids[i]] == want[i], i
    assert engine.stats.max_batch > 1 and engine.stats.mixed_steps > 0
    assert engine.scheduler.preemptions > 0 and engine.blocks.hits > 0
    assert engine.blocks.num_used == 0
