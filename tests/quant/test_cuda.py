"""Quantized layers on CUDA: the real FP8 matmul (``torch._scaled_mm``) against its exact
emulation, and each scheme's model on the GPU against the same model on the CPU.

Skipped without a GPU; on a CPU the emulation, the CPU kernels and their bit-equality
with ``_scaled_mm`` are covered by test_kernels.py and test_quantize.py.
"""

from __future__ import annotations

import pytest
import torch

from herd.quant import quantize
from herd.quant.fp8 import Fp8RowwiseLinear, fp8_rowwise_matmul, has_scaled_mm, quantize_fp8_rows
from tests.quant.helpers import calibration_tokens, small_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
fp8_gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                             reason="needs a GPU with FP8 matmuls (Ada or Hopper)")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


@fp8_gpu
def test_scaled_mm_runs_on_the_gpu_and_matches_the_emulation():
    assert has_scaled_mm(torch.device("cuda"), torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(0)
    for m, k, n in [(1, 4096, 14336), (37, 2048, 8192), (512, 14336, 4096)]:
        a = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
        a[0, 0] = 5000.0  # an outlier past the 1200 clamp: its row saturates, the others keep resolution
        w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * 0.02
        aq, sa = quantize_fp8_rows(a, 1200.0)
        wq, sw = quantize_fp8_rows(w)
        real = fp8_rowwise_matmul(aq, wq, sa, sw, torch.bfloat16, emulate=False)
        emulated = fp8_rowwise_matmul(aq, wq, sa, sw, torch.bfloat16, emulate=True)
        assert real.dtype == torch.bfloat16 and torch.isfinite(real).all()
        # same e4m3 operands and scales: only the fp32 accumulation order and the bf16 rounding differ
        assert rel_err(real, emulated.float()) < 4e-3, (m, k, n)
        if m > 1:  # rows without the outlier: e4m3's 3-bit mantissa costs a few percent
            ref = a[1:].float() @ w.float().t()
            assert rel_err(real[1:], ref) < 0.08


@fp8_gpu
def test_fp8_linear_uses_the_real_kernel_on_the_gpu():
    lin = torch.nn.Linear(256, 512, bias=False).cuda().bfloat16()
    q = Fp8RowwiseLinear.from_linear(lin)
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    assert has_scaled_mm(x.device, x.dtype)  # probed before the spy goes in
    calls = []
    real = torch._scaled_mm

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    torch._scaled_mm = spy
    try:
        y = q(x)
    finally:
        torch._scaled_mm = real
    assert calls, "Fp8RowwiseLinear fell back to the emulation on a GPU that has FP8 matmuls"
    assert rel_err(y, lin(x).float()) < 0.08


@cuda
@pytest.mark.parametrize("scheme", ["int8", "int4", "fp8"])
def test_quantized_model_on_the_gpu_matches_it_on_the_cpu(scheme):
    model = small_model(tied=False)
    tokens = calibration_tokens(model.args.vocab_size, rows=2, seq_len=48)
    qmodel = quantize(model, scheme)
    with torch.no_grad():
        cpu = qmodel(tokens).float()
        qmodel = qmodel.cuda()
        gpu = qmodel(tokens.cuda()).float().cpu()
    # the same integer/e4m3 weights and scales on both devices; fp32 activations, so only
    # the kernels' accumulation order differs (tf32 off by default for matmuls)
    tol = 2e-2 if scheme == "fp8" else 1e-3
    assert rel_err(gpu, cpu) < tol, rel_err(gpu, cpu)
    assert (gpu.argmax(-1) == cpu.argmax(-1)).float().mean() > 0.95


@cuda
def test_gptq_runs_on_the_gpu_and_agrees_with_the_cpu():
    from herd.quant import Int4Linear

    cpu = quantize(small_model(n_layers=2), "int4-gptq-g64", calibration=[calibration_tokens(2304)])
    gpu = quantize(small_model(n_layers=2).cuda(), "int4-gptq-g64", calibration=[calibration_tokens(2304)])
    a, b = cpu.model.layers[1].mlp.down_proj, gpu.model.layers[1].mlp.down_proj
    assert isinstance(b, Int4Linear) and b.weight_scale.is_cuda
    same = (a.int_values() == b.int_values().cpu()).float().mean().item()
    assert same > 0.99  # fp32 sums in another order flip a few roundings, no more
