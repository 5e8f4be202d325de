"""The KV cache backend: decoding through it gives the logits of a full forward pass."""

from __future__ import annotations

import pytest
import torch

from herd.generation import KVCache
from tests.conftest import make_tiny_model
from tests.generation.conftest import full_logits


def _decode_through_cache(model, prompts, n_prefill, *, static=False, max_len=None):
    """Prefill the first n_prefill[i] tokens of each row (right-padded), then feed the
    rest one token per step, each row at its own position; returns per-row logits for
    every position from n_prefill[i] - 1 on."""
    b = len(prompts)
    max_len = max_len or max(len(p) for p in prompts)
    cache = KVCache(model.args, b, max_len, dtype=torch.float32, device="cpu", static=static)
    t = max(n_prefill)
    tokens = torch.zeros(b, t, dtype=torch.long)
    for i, (p, n) in enumerate(zip(prompts, n_prefill, strict=True)):
        tokens[i, :n] = torch.tensor(p[:n])
    positions = torch.arange(t).expand(b, t)
    got = [[] for _ in range(b)]
    with torch.no_grad():
        cache.set_positions(positions)
        logits = model(tokens, positions, cache)
        for i, n in enumerate(n_prefill):
            got[i].append(logits[i, n - 1])
        pos = list(n_prefill)
        while any(pos[i] < len(prompts[i]) for i in range(b)):
            # A row that has run out of tokens feeds token 0 at position 0 (ignored).
            step_tok = [prompts[i][pos[i]] if pos[i] < len(prompts[i]) else 0 for i in range(b)]
            step_pos = [pos[i] if pos[i] < len(prompts[i]) else 0 for i in range(b)]
            p_t = torch.tensor(step_pos)[:, None]
            cache.set_positions(p_t)
            logits = model(torch.tensor(step_tok)[:, None], p_t, cache)
            for i in range(b):
                if pos[i] < len(prompts[i]):
                    got[i].append(logits[i, 0])
                    pos[i] += 1
    return [torch.stack(g) for g in got]


@pytest.mark.parametrize("static", [False, True])
def test_cached_decode_equals_full_forward_per_row(tiny, static):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 128256, (n,), generator=g).tolist() for n in (40, 23, 31)]
    n_prefill = [5, 12, 1]  # rows prefill different lengths, so their positions differ every step
    got = _decode_through_cache(tiny, prompts, n_prefill, static=static, max_len=64)
    for i, p in enumerate(prompts):
        want = full_logits(tiny, p)[n_prefill[i] - 1:]
        assert got[i].shape == want.shape
        torch.testing.assert_close(got[i], want, atol=2e-5, rtol=1e-5)


def test_cached_decode_past_original_rope_context():
    """Positions past rope_scaling.original_max_position_embeddings (256) and one
    key/value head shared by all query heads (tiny-tied)."""
    model = make_tiny_model("tiny-tied", seed=3)
    prompt = torch.randint(0, 128256, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    got = _decode_through_cache(model, [prompt], [250])[0]
    torch.testing.assert_close(got, full_logits(model, prompt)[249:], atol=2e-5, rtol=1e-5)


def test_bf16_a_token_gets_the_same_bits_in_a_prefill_a_chunk_or_alone():
    """One sequence in an eager CPU cache attends one query at a time (attend_each_query),
    so in bf16 a token's logits do not depend on how many tokens share its forward pass
    (SDPA's kernels round differently for different query counts: this failed before)."""
    model = make_tiny_model("tiny", seed=3).to(torch.bfloat16)
    ids = torch.randint(0, 128256, (1, 24), generator=torch.Generator().manual_seed(0))

    def run(chunks):
        cache = KVCache(model.args, 1, 32, dtype=torch.bfloat16, device="cpu")
        assert cache.invariant
        out, pos = [], 0
        with torch.no_grad():
            for n in chunks:
                positions = torch.arange(pos, pos + n)[None]
                cache.set_positions(positions, start=pos)
                out.append(model(ids[:, pos:pos + n], positions, cache))
                pos += n
        return torch.cat(out, dim=1)

    want = run([1] * 24)
    for chunks in ([24], [12, 5, 1, 6], [3, 9, 12]):
        assert torch.equal(run(chunks), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_query_attention_does_not_depend_on_threads(dtype, monkeypatch):
    """Short contexts run on one thread, long ones on all: batch invariance needs a query's
    result to be the same either way."""
    from herd.generation import kv_cache

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 5, 32, generator=g).to(dtype)
    k, v = (torch.randn(1, 2, 1500, 32, generator=g).to(dtype) for _ in range(2))
    visible = [10, 300, 700, 1499, 1500]
    threads = torch.get_num_threads()
    outs = []
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for serial_bytes in (1 << 40, 0):  # everything on one thread / on all
                monkeypatch.setattr(kv_cache, "SERIAL_BYTES", serial_bytes)
                outs.append(kv_cache.attend_each_query(q, k, v, visible))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    kf, vf = (t[:, :, :700].float().repeat_interleave(4, dim=1) for t in (k, v))  # query head h reads kv h // 4
    want = torch.nn.functional.scaled_dot_product_attention(q[:, :, 2:3].float(), kf, vf)
    torch.testing.assert_close(outs[0][:, :, 2:3].float(), want, atol=2e-2 if dtype is torch.bfloat16 else 1e-5,
                               rtol=0)


def test_slice_writes_equal_scattered_writes(tiny):
    """``start`` (every row at start, start+1, ...) writes a slice; the result is the same."""
    ids = torch.randint(0, 128256, (2, 9), generator=torch.Generator().manual_seed(5))
    out = []
    for start in (None, 0):
        cache = KVCache(tiny.args, 2, 16, dtype=torch.float32, device="cpu")
        with torch.no_grad():
            cache.set_positions(torch.arange(8).expand(2, 8), start=start)
            tiny(ids[:, :8], torch.arange(8).expand(2, 8), cache)
            cache.set_positions(torch.full((2, 1), 8), start=None if start is None else 8)
            out.append(tiny(ids[:, 8:], torch.full((2, 1), 8), cache))
        assert cache.k[1][:, :, 9:].abs().sum() == 0  # nothing written past the positions
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    for row in range(2):
        torch.testing.assert_close(out[1][row, 0], full_logits(tiny, ids[row].tolist())[8], atol=2e-5, rtol=1e-5)


def test_cache_layout_keeps_kv_heads_unrepeated(tiny):
    cache = KVCache(tiny.args, 2, 48, dtype=torch.bfloat16, device="cpu")
    a = tiny.args
    assert len(cache.k) == len(cache.v) == a.n_layers
    assert cache.k[0].shape == (2, a.n_kv_heads, 48, a.head_dim) and a.n_kv_heads < a.n_heads
    assert cache.k[0].dtype == torch.bfloat16
    assert cache.nbytes() == 2 * a.n_layers * 2 * a.n_kv_heads * 48 * a.head_dim * 2


def test_eager_cache_attends_only_to_written_slots(tiny):
    cache = KVCache(tiny.args, 1, 100, dtype=torch.float32, device="cpu")
    cache.set_positions(torch.tensor([[7]]))
    assert cache.kv_len == 8 and cache.mask.shape == (1, 1, 1, 8)
    assert cache.mask[0, 0, 0].tolist() == [True] * 8
    static = KVCache(tiny.args, 1, 100, dtype=torch.float32, device="cpu", static=True)
    static.set_positions(torch.tensor([[7]]))
    assert static.kv_len == 100 and static.mask[0, 0, 0].tolist() == [True] * 8 + [False] * 92


def test_position_past_the_cache_is_an_error(tiny):
    cache = KVCache(tiny.args, 1, 16, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="max_len=16"):
        cache.set_positions(torch.tensor([[16]]))
    with pytest.raises(ValueError, match="positions must be"):
        cache.set_positions(torch.tensor([[1], [2]]))
