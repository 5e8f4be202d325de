"""quantize(model, scheme): which layers each scheme converts, and what it costs in accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from herd.quant import Fp8RowwiseLinear, Int4Linear, Int8Linear, QuantScheme, model_bytes, quantize
from herd.quant.gptq import HessianAccumulator, gptq_quantize
from herd.quant.int4 import dequantize_int4, quantize_int4_groupwise
from tests.quant.helpers import calibration_tokens, small_model


def test_scheme_names_parse() -> None:
    assert QuantScheme.parse("int8") == QuantScheme("int8")
    assert QuantScheme.parse("int4") == QuantScheme("int4", group_size=128)
    assert QuantScheme.parse("int4-g32") == QuantScheme("int4", group_size=32)
    assert QuantScheme.parse("INT4-GPTQ-G64") == QuantScheme("int4", group_size=64, method="gptq")
    assert QuantScheme.parse("fp8").kind == "fp8"
    assert QuantScheme.parse("int4-gptq").name == "int4-gptq-g128"
    for bad in ("int3", "int4-g48", "fp8-gptq", "int8-gptq", "int8+lm-head", "int8+lm_head+lm_head"):
        with pytest.raises(ValueError, match="scheme|group_size"):
            QuantScheme.parse(bad)
    assert QuantScheme.parse("int8+lm_head") == QuantScheme("int8", lm_head=True)
    for name in ("int8+lm_head", "int4-g32+lm_head", "int4-hqq-g64+lm_head"):
        assert QuantScheme.parse(name).name == name and QuantScheme.parse(name).lm_head
    for calibrated_or_fp8 in ("fp8+lm_head", "int4-gptq+lm_head", "int4-gptq-act-g32+lm_head"):
        with pytest.raises(ValueError, match="leaves the LM head unquantized"):
            QuantScheme.parse(calibrated_or_fp8)


def _kinds(model: nn.Module) -> dict[str, str]:
    return {n: type(m).__name__ for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, Int8Linear, Int4Linear, Fp8RowwiseLinear))}


def test_fp8_converts_inner_feed_forward_only(reference: nn.Module) -> None:
    model = quantize(copy.deepcopy(reference), "fp8")
    kinds = _kinds(model)
    fp8 = sorted(n for n, k in kinds.items() if k == "Fp8RowwiseLinear")
    assert fp8 == [f"model.layers.{i}.mlp.{p}" for i in (1, 2) for p in ("down_proj", "gate_proj", "up_proj")]
    assert kinds["model.layers.0.mlp.gate_proj"] == kinds["model.layers.3.mlp.down_proj"] == "Linear"
    assert kinds["model.layers.1.self_attn.q_proj"] == kinds["lm_head"] == "Linear"
    assert model.model.layers[1].mlp.up_proj.activation_scale_ub == 1200.0


@pytest.mark.parametrize("scheme,cls", [("int8", Int8Linear), ("int4-g64", Int4Linear)])
def test_weight_only_schemes_convert_every_block_linear(reference: nn.Module, scheme: str, cls: type) -> None:
    model = quantize(copy.deepcopy(reference), scheme)
    kinds = _kinds(model)
    assert kinds.pop("lm_head") == "Linear"
    assert len(kinds) == 4 * 7 and set(kinds.values()) == {cls.__name__}
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, scheme)


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    return small_model(vocab_size=256)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("scheme,cls,rel_tol", [("int8+lm_head", Int8Linear, 0.02),
                                                ("int4-g32+lm_head", Int4Linear, 0.2),
                                                ("int4-hqq-g32+lm_head", Int4Linear, 0.2)])
def test_lm_head_scheme_quantizes_the_head_and_unties_it(scheme: str, cls: type, rel_tol: float, tied: bool) -> None:
    ref_model = small_model(vocab_size=2304, tied=tied)  # a head wider than the blocks, as in Llama
    embed = ref_model.model.embed_tokens.weight.detach().clone()
    tokens = calibration_tokens(2304, rows=2, seq_len=16)
    with torch.no_grad():
        ref = ref_model(tokens)
        body_only = quantize(copy.deepcopy(ref_model), scheme.removesuffix("+lm_head"))
        model = quantize(copy.deepcopy(ref_model), scheme)
        got = model(tokens)
    kinds = _kinds(model)
    assert kinds["lm_head"] == cls.__name__ and len(kinds) == 4 * 7 + 1 and set(kinds.values()) == {cls.__name__}
    assert model.quant_scheme.lm_head and not model.args.tie_word_embeddings
    assert ref_model.args.tie_word_embeddings == tied  # the source model's args are not touched
    assert torch.equal(model.model.embed_tokens.weight, embed)  # the lookup table keeps the model's dtype
    assert (got - ref).norm() < rel_tol * ref.norm()
    if tied:  # the quantized head is a new matrix beside the fp32 table the two shared
        assert model_bytes(model) > model_bytes(body_only)
    else:  # fp32 -> int8 or int4 saves ~3 bytes a weight (less scales, zero points, the kernel's tables)
        head = ref_model.args.vocab_size * ref_model.args.dim
        assert model_bytes(body_only) - model_bytes(model) > 2.5 * head


@pytest.mark.parametrize("scheme,rel_tol,max_ratio", [("int8", 0.02, 0.6), ("int4-g32", 0.2, 0.35), ("fp8", 0.03, 0.9)])
def test_quantized_logits_stay_close_and_memory_shrinks(reference: nn.Module, scheme: str, rel_tol: float,
                                                         max_ratio: float) -> None:
    ref_model = reference
    tokens = calibration_tokens(256, rows=2, seq_len=16)
    with torch.no_grad():
        ref = ref_model(tokens)
        q_model = quantize(copy.deepcopy(ref_model), scheme)
        got = q_model(tokens)
    assert (got - ref).norm() < rel_tol * ref.norm()
    blocks = lambda m: model_bytes(m.model.layers)  # noqa: E731
    assert blocks(q_model) < max_ratio * blocks(ref_model)


@pytest.mark.slow  # torch.compile: ~20 s on 2 cores
@pytest.mark.parametrize("scheme", ["int8", "int4-g32"])
def test_quantized_model_compiles_and_decodes_like_eager(reference: nn.Module, scheme: str) -> None:
    """A compiled decode step traces the quantized linears' kernel choice (herd's CPU kernel
    or not) as a constant; in fp32 its greedy tokens are the eager ones."""
    from herd.generation import Generator, SamplingParams

    model = quantize(copy.deepcopy(reference), scheme)
    prompts, params = [[1, 5, 9, 200, 31], [7, 8]], SamplingParams(temperature=0, max_new_tokens=12,
                                                                     stop_token_ids=())
    eager = [c.token_ids for c in Generator(model).generate(prompts, params)]
    compiled = [c.token_ids for c in Generator(model, compile=True).generate(prompts, params)]
    assert compiled == eager


def test_gptq_beats_round_to_nearest_on_correlated_inputs() -> None:
    # the property GPTQ is for: a smaller output error on the layer's real inputs
    torch.manual_seed(0)
    mix = torch.randn(256, 256) / 16
    x = torch.randn(1024, 256) @ mix + 0.1 * torch.randn(1024, 256)
    w = torch.randn(32, 256) * 0.05
    acc = HessianAccumulator(256)
    for chunk in x.split(256):
        acc.add(chunk)
    torch.testing.assert_close(acc.h, (2 * x.t() @ x) / 1024, rtol=1e-4, atol=1e-5)
    for group in (32, 128):
        q, s, z = gptq_quantize(w, acc.h, group)
        assert int(q.min()) >= -8 and int(q.max()) <= 7
        gptq_err = (x @ (dequantize_int4(q, s, z, group) - w).t()).pow(2).mean()
        rtn_err = (x @ (dequantize_int4(*quantize_int4_groupwise(w, group), group) - w).t()).pow(2).mean()
        assert gptq_err < 0.7 * rtn_err


def test_act_order_gptq_uses_static_groups_and_helps_when_input_energies_differ() -> None:
    torch.manual_seed(1)
    mix = torch.randn(256, 256) / 16
    x = (torch.randn(2048, 256) @ mix + 0.1 * torch.randn(2048, 256)) * torch.logspace(-1, 1, 256)[torch.randperm(256)]
    w = torch.randn(64, 256) * 0.05
    acc = HessianAccumulator(256)
    acc.add(x)

    def err(q, s, z, group):
        return (x @ (dequantize_int4(q, s, z, group) - w).t()).pow(2).mean()

    for group in (32, 128):
        q, s, z = gptq_quantize(w, acc.h, group, act_order=True)
        _, rtn_s, rtn_z = quantize_int4_groupwise(w, group)
        assert torch.equal(s, rtn_s) and torch.equal(z, rtn_z)  # static groups: the original weights' params
        plain = gptq_quantize(w, acc.h, group)
        assert err(q, s, z, group) < 0.9 * err(*plain, group)
    assert QuantScheme.parse("int4-gptq-act").name == "int4-gptq-act-g128"


def test_gptq_model_quantizes_every_block_and_needs_data() -> None:
    with pytest.raises(ValueError, match="calibration"):
        quantize(small_model(n_layers=2, vocab_size=256), "int4-gptq-g32")
    model = quantize(small_model(n_layers=2, vocab_size=256), "int4-gptq-g32",
                     calibration=[calibration_tokens(256, rows=4, seq_len=32, seed=s) for s in range(2)])
    kinds = _kinds(model)
    assert sum(k == "Int4Linear" for k in kinds.values()) == 2 * 7 and kinds["lm_head"] == "Linear"
    assert model.quant_scheme.method == "gptq"


@pytest.mark.parametrize("scheme", ["int8+lm_head", "int4-g32+lm_head"])
def test_engine_and_generator_run_a_model_with_a_quantized_head(scheme: str) -> None:
    """With the head quantized, the compute dtype comes from the embedding (the head's weight
    is int8, or absent for int4); batched engine outputs still equal each request run alone
    in bf16."""
    from herd.engine import Engine
    from herd.generation import Generator, SamplingParams

    model = quantize(small_model(vocab_size=2304, tied=True).to(torch.bfloat16), scheme)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 2304, (n,), generator=g).tolist() for n in (3, 17, 40, 9, 26, 1)]
    params = SamplingParams(temperature=0, max_new_tokens=10, stop_token_ids=())
    alone = [Generator(model).generate([p], params)[0].token_ids for p in prompts]
    engine = Engine(model, num_blocks=64, block_size=8, max_batched_tokens=32)
    got = engine.generate(prompts, params)
    assert [c.token_ids for c in got] == alone and engine.stats.max_batch > 1
    assert engine.dtype == torch.bfloat16 and isinstance(model.lm_head, (Int8Linear, Int4Linear))
