"""The quantized linears against exact dequantized references, and ATen's kernels against them.

The CPU kernels are ATen's (``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``,
``_scaled_mm``), except int8 with fp32/bf16 activations on x86, which runs on herd's
``cpu_gemv`` (fp16 activations still take ATen's); the references are plain fp32 matmuls
with the dequantized weight.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from herd.generation.cpu_gemv import cpu_gemv_int4, gemv_available
from herd.quant.fp8 import (
    FP8,
    FP8_MAX,
    Fp8RowwiseLinear,
    fp8_rowwise_matmul,
    quantize_fp8_rows,
    scaled_mm_emulated,
)
from herd.quant.int4 import (
    Int4Linear,
    dequantize_int4,
    layout_for,
    pack_cpu,
    pack_nibbles,
    quantize_int4_groupwise,
    unpack_cpu,
    unpack_nibbles,
)
from herd.quant.int8 import Int8Linear, quantize_int8_per_channel


def _linear(out_f: int, in_f: int, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_f, out_f, bias=False)
    torch.nn.init.normal_(lin.weight, std=0.05)
    return lin


def test_int8_rounding_error_is_half_a_step() -> None:
    w = _linear(96, 256).weight
    q, scale = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and scale.shape == (96,)
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())
    assert bool((q.abs().amax(dim=1) == 127).all())  # each row's max uses the full range


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_int8_kernel_matches_dequantized_reference(dtype: torch.dtype, tol: float) -> None:
    lin = _linear(96, 256)
    mod = Int8Linear.from_linear(lin)
    x = torch.randn(2, 5, 256)
    ref = F.linear(x, mod.dequantize())
    got = mod.to(dtype)(x.to(dtype))
    assert got.dtype == dtype and got.shape == (2, 5, 96)
    torch.testing.assert_close(got.float(), ref, atol=tol * ref.abs().max().item(), rtol=0)
    assert mod.weight_scale.dtype == torch.float32  # a cast keeps the scales fp32


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_rtn_values_scales_and_error(group_size: int) -> None:
    w = _linear(64, 256).weight
    q, scale, zp = quantize_int4_groupwise(w, group_size)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    assert scale.shape == zp.shape == (64, 256 // group_size)
    deq = dequantize_int4(q, scale, zp, group_size)
    step = scale.repeat_interleave(group_size, dim=1)
    assert bool(((deq - w).abs() <= step / 2 + 1e-6).all())


def test_int4_packings_are_inverted_exactly() -> None:
    q = torch.randint(-8, 8, (96, 256), dtype=torch.int8)
    assert torch.equal(unpack_cpu(pack_cpu(q), 96, 256), q)
    assert torch.equal(unpack_nibbles(pack_nibbles(q)), q)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("layout", ["nibble", "cpu"])  # herd's cpu_gemv_int4, ATen's int4pack kernel
def test_int4_cpu_kernel_matches_dequantized_reference(group_size: int, dtype: torch.dtype, tol: float,
                                                       layout: str) -> None:
    assert hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")
    mod = Int4Linear.from_linear(_linear(96, 256), group_size)
    assert mod._layout == layout_for(torch.device("cpu"))
    q = mod.int_values()
    mod.qweight, mod._layout = (pack_cpu(q) if layout == "cpu" else pack_nibbles(q)), layout
    assert mod.qweight.dtype == torch.uint8 and mod.qweight.shape == (96, 128)  # 0.5 byte per weight
    assert torch.equal(mod.int_values(), q)
    x = torch.randn(3, 256)
    ref = F.linear(x, mod.dequantize())
    got = mod.to(dtype)(x.to(dtype))
    torch.testing.assert_close(got.float(), ref, atol=tol * ref.abs().max().item(), rtol=0)
    # the portable path (plain nibbles, dequantize then matmul) agrees with the kernel
    mod.qweight, mod._layout = pack_nibbles(q), "nibble"
    with torch.enable_grad():  # an input that wants a gradient takes the portable path
        torch.testing.assert_close(mod.float()(x.requires_grad_()), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not gemv_available(), reason="herd's CPU kernel needs x86-64 with AVX2 and a C compiler")
@pytest.mark.parametrize("group_size", [32, 128])
def test_herd_int4_kernel_rows_are_batch_invariant_and_exact(group_size: int) -> None:
    lin = _linear(264, 512, seed=3)
    mod = Int4Linear.from_linear(lin, group_size)
    assert mod._layout == "nibble"
    w = mod.dequantize().double()
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(37, 512, generator=torch.Generator().manual_seed(1)).to(dtype)
        got = mod(x)
        assert torch.equal(got, torch.cat([mod(x[i:i + 1]) for i in range(37)]))  # a row gets the same bits
        exact = x.double() @ w.T
        assert (got.double() - exact).abs().max() <= (1e-5 if dtype is torch.float32 else 1e-2) * exact.abs().max()
    with pytest.raises(ValueError, match="group_size"):
        cpu_gemv_int4(torch.randn(1, 512), mod.qweight, mod.weight_scale, mod._offsets(), 24)


def test_int4_tables_follow_a_loaded_state_dict() -> None:
    # the kernels' scale/zero tables are built on first use; loading new scales must rebuild them
    a, b = Int4Linear.from_linear(_linear(16, 128, seed=1), 32), Int4Linear.from_linear(_linear(16, 128, seed=2), 32)
    x = torch.randn(2, 128)
    a(x)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), b(x))


def test_fp8_row_quantization_matches_fbgemm_reference() -> None:
    # fbgemm's fp8_row_quantize_ref (gen_ai quantize_test.py): scale = 448 / row_max,
    # xq = (x * scale).to(e4m3), returned scale = 1 / scale; with an upper bound the row max
    # is clamped first.
    x = torch.randn(6, 64) * torch.tensor([1.0, 10.0, 100.0, 1000.0, 3000.0, 0.01])[:, None]
    for ub in (None, 1200.0):
        row_max = x.abs().amax(dim=1)
        if ub is not None:
            row_max = row_max.clamp(max=ub)
        scale = FP8_MAX / row_max
        ref_q = (x * scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        q, s = quantize_fp8_rows(x, ub)
        assert torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))
        torch.testing.assert_close(s[:, 0], scale.reciprocal())
    q, s = quantize_fp8_rows(x, 1200.0)
    assert s[4, 0].item() == pytest.approx(1200.0 / 448.0)  # the 3000-row is clamped at 1200
    assert q[4].float().abs().max().item() == FP8_MAX       # ... and saturates
    assert s[2, 0].item() == pytest.approx(x[2].abs().max().item() / 448.0)


@pytest.mark.parametrize("shape", [(1, 64, 32), (7, 256, 96), (33, 512, 48)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_fp8_emulation_equals_scaled_mm_bit_for_bit(shape: tuple[int, int, int], out_dtype: torch.dtype) -> None:
    m, k, n = shape
    torch.manual_seed(0)
    a, a_s = quantize_fp8_rows(torch.randn(m, k) * 3, 1200.0)
    b, b_s = quantize_fp8_rows(torch.randn(n, k) * 0.05)
    try:
        real = torch._scaled_mm(a, b.t(), scale_a=a_s, scale_b=b_s.t(), out_dtype=out_dtype)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._scaled_mm does not take row-wise e4m3 on this CPU build: {e}")
    emulated = scaled_mm_emulated(a, b, a_s, b_s, out_dtype)
    assert torch.equal(real, emulated)
    assert torch.equal(fp8_rowwise_matmul(a, b, a_s, b_s, out_dtype, emulate=False), real)


def test_fp8_linear_close_to_float_and_keeps_e4m3_on_cast() -> None:
    lin = _linear(96, 256)
    mod = Fp8RowwiseLinear.from_linear(lin)
    x = torch.randn(4, 256)
    ref = lin(x)
    got = mod(x)
    assert (got - ref).abs().max() < 0.06 * ref.abs().max()
    torch.testing.assert_close(mod(x), F.linear(x, mod.dequantize()), atol=0.03 * ref.abs().max().item(), rtol=0)
    mod.to(torch.bfloat16)
    assert mod.weight.dtype == FP8 and mod.weight_scale.dtype == torch.float32
    assert mod(x.bfloat16()).dtype == torch.bfloat16
    mod.emulate = True
    emulated = mod(x)
    mod.emulate = False
    assert torch.equal(emulated, mod(x))
