"""herd's CPU gemv kernel: the products F.linear would give, and only where it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from herd.generation.cpu_gemv import (
    GemvLinear,
    ThreadChoice,
    cpu_gemv,
    gemv_available,
    handles,
    use_cpu_gemv,
)
from tests.conftest import make_tiny_model

needs_kernel = pytest.mark.skipif(not gemv_available(), reason="needs x86-64 with AVX2 and a C compiler")


def test_thread_choice_follows_the_faster_and_keeps_probing():
    choice, shape = ThreadChoice(probe_every=4), (64, 64)
    picks = [choice.pick(shape, 2) for _ in range(8)]
    assert picks == [2, 2, 2, 1, 2, 2, 2, 1]  # all threads, and every 4th call tries one
    assert choice.pick(shape, 1) == 1
    choice.record(shape, 2, nbytes=1000, seconds=1.0)  # two threads: 1 kB/s (a busy machine)
    choice.record(shape, 1, nbytes=1000, seconds=0.1)  # one thread: 10 kB/s
    picks = [choice.pick(shape, 2) for _ in range(4)]
    assert picks == [1, 1, 1, 2]  # now one thread, still trying two now and then
    for _ in range(10):  # the machine is free again: two threads get faster
        choice.record(shape, 2, nbytes=1000, seconds=0.01)
    assert [choice.pick(shape, 2) for _ in range(4)] == [2, 2, 2, 1]
    assert choice.pick((8, 8), 2) == 2  # each shape keeps its own record


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 16, 37, 300])  # tiles of 3 rows with tails, > one 128-row chunk
@pytest.mark.parametrize("n, k", [(64, 64), (37, 203), (520, 1030)])  # tails in both dimensions
def test_fp32_products_match_f_linear(rows, n, k):
    g = torch.Generator().manual_seed(n * k + rows)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
    torch.testing.assert_close(cpu_gemv(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 17])
@pytest.mark.parametrize("n, k", [(64, 64), (37, 203), (520, 1030)])
def test_bf16_products_round_like_f_linear(rows, n, k):
    g = torch.Generator().manual_seed(n + k)
    x, w = torch.randn(rows, 1, k, generator=g).bfloat16(), torch.randn(n, k, generator=g).bfloat16()
    got, want = cpu_gemv(x, w), F.linear(x, w)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 1, n)
    exact = F.linear(x.double(), w.double())
    # both are the fp32 sum rounded to bf16: within one bf16 step of each other and of the exact value
    step = exact.abs().clamp(min=1e-3) * 2**-7
    assert ((got.double() - exact).abs() <= step).all()
    assert ((got.double() - want.double()).abs() <= step).all()


@needs_kernel
def test_bf16_outputs_round_to_nearest_even():
    # small integers: every product and sum is exact in fp32, so the one rounding is the output's
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-8, 9, (3, 96), generator=g).bfloat16()
    w = torch.randint(-8, 9, (50, 96), generator=g).bfloat16()
    exact = x.float() @ w.float().T
    assert (exact.abs() > 256).any()  # big enough that bf16 must round
    assert torch.equal(cpu_gemv(x, w), exact.bfloat16())


@needs_kernel
@pytest.mark.parametrize("dtype, wdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.int8), (torch.float32, torch.int8)])
def test_a_row_gets_the_same_bits_whatever_rows_share_the_call(dtype, wdtype):
    # the tiled loop (several rows) sums each output in the one-row loop's order: a request
    # decoded in a batch of the engine gets exactly what it gets alone
    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(23, 1030, generator=g).to(dtype), torch.randn(521, 1030, generator=g)
    scale = None
    if wdtype is torch.int8:
        w, scale = (w * 40).round().clamp(-128, 127).to(torch.int8), torch.rand(521, generator=g) / 100
    else:
        w = w.to(wdtype)
    together = cpu_gemv(x, w, scale)
    assert torch.equal(together, torch.cat([cpu_gemv(x[i:i + 1], w, scale) for i in range(23)]))
    assert torch.equal(together[5:7], cpu_gemv(x[5:7], w, scale))


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 17, 300])
@pytest.mark.parametrize("n, k", [(64, 64), (37, 203), (520, 1030)])
def test_int8_weights_give_the_scaled_integer_product(rows, n, k):
    g = torch.Generator().manual_seed(n * k + rows)
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, generator=g) / 50 + 1e-3
    x = torch.randn(rows, k, generator=g)
    exact = (x.double() @ q.double().T) * scale.double()
    # fp32: one fp32 sum (the int8 values widen exactly), scaled once
    torch.testing.assert_close(cpu_gemv(x, q, scale).double(), exact, rtol=1e-5, atol=1e-4)
    xb = x.bfloat16()
    exact = (xb.double() @ q.double().T) * scale.double()
    got = cpu_gemv(xb, q, scale)
    assert got.dtype == torch.bfloat16
    step = exact.abs().clamp(min=1e-3) * 2**-7  # the scaled fp32 sum rounded to bf16 once
    assert ((got.double() - exact).abs() <= step).all()


@needs_kernel
def test_int8_weights_need_their_scale():
    q, x = torch.zeros(8, 16, dtype=torch.int8), torch.randn(1, 16)
    with pytest.raises(ValueError, match="per-row scale"):
        cpu_gemv(x, q)
    with pytest.raises(ValueError, match="per-row scale"):
        cpu_gemv(x, torch.randn(8, 16), torch.ones(8))
    with pytest.raises(ValueError, match="8 values"):
        cpu_gemv(x, q, torch.ones(7))


@needs_kernel
def test_only_inference_products_are_taken():
    w = torch.randn(16, 32)
    assert handles(torch.randn(1, 1, 32), w) and handles(torch.randn(8, 32), w)
    assert handles(torch.randn(300, 32), w)  # a prefill too: the tiled loop
    assert not handles(torch.randn(0, 32), w)
    assert not handles(torch.randn(1, 32).half(), w.half())
    assert handles(torch.randn(1, 32).bfloat16(), w.to(torch.int8))  # int8 weights with either activation
    assert not handles(torch.randn(1, 32).bfloat16(), w)  # mixed float dtypes go to F.linear
    assert not handles(torch.randn(1, 32), w.t().contiguous().t()[:, :32])  # a non-contiguous weight view
    w_grad = w.clone().requires_grad_()
    assert not handles(torch.randn(1, 32), w_grad)
    with torch.no_grad():
        assert handles(torch.randn(1, 32), w_grad)


@needs_kernel
def test_swapped_model_keeps_its_parameters_and_outputs():
    model = make_tiny_model("tiny-tied", seed=4)
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 128256, (1, 12))
    with torch.no_grad():
        want = model(ids)
        n = use_cpu_gemv(model)
        got_prefill = model(ids)
        got_decode = model(ids[:, :1])
    assert n == 2 * 7 + 1 and all(type(m) is not nn.Linear for m in model.modules())
    assert isinstance(model.lm_head, GemvLinear)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    torch.testing.assert_close(got_prefill, want, rtol=1e-4, atol=1e-5)  # 12 rows: the tiled loop
    torch.testing.assert_close(got_decode, want[:, :1], rtol=1e-4, atol=1e-5)  # 1 row: the gemv loop


@needs_kernel
def test_training_still_gets_gradients():
    lin = nn.Linear(32, 16, bias=True)
    ref = nn.Linear(32, 16, bias=True)
    ref.load_state_dict(lin.state_dict())
    use_cpu_gemv(lin)
    assert isinstance(lin, GemvLinear)
    x = torch.randn(1, 32)
    lin(x).sum().backward()
    ref(x).sum().backward()
    torch.testing.assert_close(lin.weight.grad, ref.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), ref(x), rtol=1e-5, atol=1e-6)  # kernel path + bias
