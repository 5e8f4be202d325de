"""The paged cache as an attention backend: packed chunks of several requests, in blocks
scattered over the pool, give each request the logits of its own full forward pass."""

from __future__ import annotations

import pytest
import torch

from herd.engine.paged_cache import PackedSeq, PagedKVCache
from tests.conftest import make_tiny_model
from tests.engine.conftest import VOCAB, prompts


def _packed_logits(model, cache, seqs, steps, per_request=None):
    """Run ``steps``: each a list of (seq index, n tokens); returns per seq its logits rows."""
    done = [0] * len(seqs)
    out = [[] for _ in seqs]
    for step in steps:
        packed, tokens = [], []
        for i, n in step:
            packed.append(PackedSeq(done[i], n, seqs[i][1]))
            tokens.extend(seqs[i][0][done[i]:done[i] + n])
        positions = cache.set_batch(packed, per_request=per_request)
        with torch.no_grad():
            logits = model(torch.tensor([tokens]), positions, cache)[0]
        row = 0
        for i, n in step:
            out[i].append(logits[row:row + n])
            row += n
            done[i] += n
    return [torch.cat(o) for o in out]


@pytest.mark.parametrize("per_request", [False, True, None])  # None: each query alone (the CPU default)
def test_packed_mixed_chunks_match_each_sequence_alone(model, per_request):
    a, b, c = prompts([11, 6, 9], seed=1)
    cache = PagedKVCache(model.args, num_blocks=12, block_size=4, dtype=torch.float32, device="cpu")
    tables = [[7, 2, 9], [0, 11], [5, 3, 8]]  # scattered, non-contiguous blocks
    steps = [
        [(0, 5), (1, 3)],            # two prefill chunks
        [(0, 6), (1, 1), (2, 9)],    # a chunk, a one-token step, a whole prompt
        [(1, 2)],
        [(0, 1), (1, 1), (2, 1)],    # decodes only
    ]
    a, b, c = a + [5], b + [6], c + [7]
    got = _packed_logits(model, cache, list(zip([a, b, c], tables, strict=True)), steps, per_request)
    for seq, logits in zip([a, b, c], got, strict=True):
        with torch.no_grad():
            want = model(torch.tensor([seq]))[0]
        torch.testing.assert_close(logits, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kv_dtype", [None, "int8"])
def test_a_lone_request_in_consecutive_blocks_reads_the_pool_in_place(model, kv_dtype):
    """The batch-1 fast path (context = a slice of the pool) gives what scattered blocks give."""
    (seq,) = prompts([13], seed=4)
    seq = seq + [3, 9, 1]
    steps = [[(0, 7)], [(0, 6)], [(0, 1)], [(0, 1)], [(0, 1)]]  # chunked prefill, then decodes
    got = {}
    for table in ([2, 3, 4, 5], [9, 0, 6, 3]):
        cache = PagedKVCache(model.args, num_blocks=10, block_size=4, dtype=torch.float32, device="cpu",
                             kv_dtype=kv_dtype)
        got[table[0]] = _packed_logits(model, cache, [(seq, table)], steps)[0]
        assert (cache._span is not None) == (table[0] == 2)
    torch.testing.assert_close(got[2], got[9], atol=1e-6, rtol=1e-6)
    if kv_dtype is None:
        with torch.no_grad():
            torch.testing.assert_close(got[2], model(torch.tensor([seq]))[0], atol=2e-5, rtol=1e-4)


def test_bf16_a_token_gets_the_same_bits_however_it_is_packed():
    """Batch invariance: in bf16, where SDPA's summation order (which depends on how many
    queries a call holds and how many keys it masks) changed logits by a rounding, a request's
    logits are bit-identical packed in mixed chunks with others, chunked alone, or computed
    one token at a time."""
    model = make_tiny_model("tiny", seed=3, vocab_size=VOCAB).to(torch.bfloat16)
    a, b, c = prompts([21, 14, 17], seed=6)
    tables = [[7, 2, 9, 12, 4, 1], [0, 11, 6, 14], [5, 3, 8, 13, 10]]
    mixed = [[(0, 9), (1, 5)], [(0, 12), (1, 1), (2, 17)], [(1, 8)]]
    chunked = [[(0, 5)], [(0, 16)], [(1, 14)], [(2, 3)], [(2, 7)], [(2, 7)]]
    seqs = list(zip([a, b, c], tables, strict=True))

    def run(steps, **kw):
        cache = PagedKVCache(model.args, num_blocks=16, block_size=4, dtype=torch.bfloat16, device="cpu", **kw)
        return _packed_logits(model, cache, seqs, steps)

    one_at_a_time = [[(i, 1)] for i, (seq, _) in enumerate(seqs) for _ in seq]
    want = run(one_at_a_time)
    for steps in (mixed, chunked):
        for got, ref in zip(run(steps), want, strict=True):
            assert torch.equal(got, ref)
    assert run(mixed, batch_invariant=True)[0].dtype == torch.bfloat16


def test_a_block_table_too_short_is_refused(model):
    cache = PagedKVCache(model.args, num_blocks=4, block_size=4, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="block table holds 1 blocks"):
        cache.set_batch([PackedSeq(0, 5, [0])])


def test_attend_before_set_batch_is_an_error(model):
    cache = PagedKVCache(model.args, num_blocks=4, block_size=4, dtype=torch.float32, device="cpu")
    with pytest.raises(RuntimeError, match="set_batch"):
        model(torch.tensor([[1, 2]]), torch.tensor([[0, 1]]), cache)
