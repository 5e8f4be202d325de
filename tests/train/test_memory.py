"""The memory estimator against what autograd really keeps, and against known figures."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from herd.model import ModelArgs, Transformer
from herd.model.attention import DocumentMaskedAttention
from herd.train.loss import chunked_cross_entropy
from herd.train.memory import GiB, check_fits, estimate_memory, parse_bytes

# Odd shapes so that no two terms of the formula can stand in for each other.
ARGS = ModelArgs(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=500, multiple_of=32,
                 ffn_dim_multiplier=None, max_seq_len=256)
TOLERANCE = 0.05  # the count is exact on this model; 5% leaves room for kernels that change


def saved_bytes(model: torch.nn.Module, run) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves while ``run()`` runs."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    assert out.requires_grad
    return sum(seen.values())


def make_model(dtype: torch.dtype) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ARGS).to(dtype)


@pytest.mark.parametrize("mode", ["fp32", "bf16", "autocast"])
@pytest.mark.parametrize("attention", ["flash", "dense_mask"])
@pytest.mark.parametrize("shape", [(2, 64), (1, 128)])
def test_activations_match_saved_tensors(mode, attention, shape):
    b, t = shape
    model = make_model(torch.bfloat16 if mode == "bf16" else torch.float32)
    tokens = torch.randint(0, ARGS.vocab_size, (b, t))
    backend, mask_bytes = None, 0
    if attention == "dense_mask":
        docs = (torch.arange(t) >= t // 3).long().expand(b, t)
        backend = DocumentMaskedAttention(docs, use_flex=False)
        mask_bytes = backend.mask.numel() * backend.mask.element_size()

    with torch.autocast("cpu", torch.bfloat16, enabled=mode == "autocast"):
        measured = saved_bytes(model, lambda: model(tokens, attention=backend)) + mask_bytes
    est = estimate_memory(ARGS, seq_len=t, micro_batch_rows=b, param_dtype="float32" if mode == "fp32" else "bfloat16",
                          autocast=mode == "autocast", attention=attention)
    # the model's forward includes the LM head (its input and, under autocast, its weight
    # copy); with the full cross-entropy these are part of the estimate
    predicted = est.activations + est.cast_weights
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


def test_checkpointed_activations_keep_block_inputs_only():
    model = make_model(torch.bfloat16)
    b, t = 2, 64
    tokens = torch.randint(0, ARGS.vocab_size, (b, t))
    positions = torch.arange(t).expand(b, t)
    from herd.model.attention import CAUSAL

    def forward() -> torch.Tensor:
        dec = model.model
        h = dec.embed_tokens(tokens)
        cos, sin = dec.rotary(positions, h.dtype)
        for layer in dec.layers:
            h = checkpoint(layer, h, cos, sin, CAUSAL, use_reentrant=True)
        return model.lm_head(dec.norm(h))

    measured_outer = saved_bytes(model, forward)
    # the recompute of one block keeps what a block keeps without checkpointing
    one_block = saved_bytes(model, lambda: model.model.layers[0](
        model.model.embed_tokens(tokens), *model.model.rotary(positions, torch.bfloat16), CAUSAL))
    est = estimate_memory(ARGS, seq_len=t, micro_batch_rows=b, activation_checkpointing=True)
    measured = measured_outer + one_block
    assert abs(est.activations - measured) <= TOLERANCE * measured, (est.activations, measured)
    full = estimate_memory(ARGS, seq_len=t, micro_batch_rows=b)
    assert est.activations < 0.6 * full.activations


def test_chunked_loss_keeps_no_logits():
    model = make_model(torch.float32)
    tokens = torch.randint(0, ARGS.vocab_size, (2, 64))
    chunked = saved_bytes(model, lambda: chunked_cross_entropy(
        model(tokens, return_hidden=True), model.lm_head, tokens, chunk_size=32)[0])
    full = saved_bytes(model, lambda: torch.nn.functional.cross_entropy(
        model(tokens).float().flatten(0, 1), tokens.flatten(), reduction="sum"))
    # the full loss keeps the fp32 log-probabilities of every token: 4 bytes x V per token
    assert full - chunked >= 4 * ARGS.vocab_size * tokens.numel()
    est_full = estimate_memory(ARGS, seq_len=64, micro_batch_rows=2, param_dtype="float32")
    est_chunk = estimate_memory(ARGS, seq_len=64, micro_batch_rows=2, param_dtype="float32", chunked_ce_chunk=32)
    assert est_full.logits == 128 * 500 * 12 and est_chunk.logits == 32 * 500 * 12


def test_known_figures_for_llama3_8b():
    args = ModelArgs.from_name("llama3.1-8b")
    est = estimate_memory(args, seq_len=8192, micro_batch_rows=1, dp=1, param_dtype="bfloat16", master_fp32=True)
    assert est.weights / 1e9 == pytest.approx(16.06, abs=0.01)  # 8.03B parameters x 2 bytes
    assert est.optimizer / 1e9 == pytest.approx(64.2, abs=0.1)  # AdamW: two fp32 states
    assert est.master_weights == est.gradients == 4 * args.num_params()
    assert est.gathered == 0
    # 8 FSDP ranks divide the states by 8 and add the gathered working set
    sharded = estimate_memory(args, seq_len=8192, micro_batch_rows=1, dp=8)
    assert sharded.optimizer == est.optimizer // 8
    assert 0 < sharded.gathered < 5 * GiB  # the 1 GB embedding table gathered, prefetch, its fp32 grad
    # full fp32 logits of 8192 x 128256 tokens: bf16 logits + fp32 copy + log-softmax
    assert est.logits / 1e9 == pytest.approx(8192 * 128256 * 10 / 1e9)
    # 32 layers x 8192 tokens without checkpointing: tens of GB; with it, a few
    assert est.activations > 20 * GiB
    ckpt = estimate_memory(args, seq_len=8192, micro_batch_rows=1, dp=8, activation_checkpointing=True,
                           chunked_ce_chunk=1024)
    assert ckpt.activations < 4 * GiB
    assert check_fits(ckpt, parse_bytes("80GB")) is None
    warning = check_fits(est, parse_bytes("80GB"))
    assert warning is not None and "exceeds" in warning and "optimizer" in warning


def test_tensor_parallel_divides():
    args = ModelArgs.from_name("llama3-70b")
    one = estimate_memory(args, seq_len=4096, dp=8)
    tp = estimate_memory(args, seq_len=4096, dp=8, tp=8)
    assert tp.optimizer == one.optimizer // 8
    assert tp.activations < one.activations
    with pytest.raises(ValueError, match="tp=3 does not divide n_heads"):
        estimate_memory(args, seq_len=4096, tp=3)


def test_table_and_dict():
    est = estimate_memory(ARGS, seq_len=64)
    text = est.table()
    assert "optimizer" in text and "total" in text and "GiB" in text
    assert est.to_dict()["total"] == est.total == sum(
        v for k, v in est.to_dict().items() if k not in ("total", "tokens_per_rank"))


@pytest.mark.parametrize("text,value", [("80GB", 80 * 10**9), ("80GiB", 80 * 2**30), ("512MiB", 512 * 2**20),
                                        ("1.5e9", 1_500_000_000), ("141 GB", 141 * 10**9), (1000, 1000)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("kwargs,match", [
    ({"seq_len": 0}, "seq_len"),
    ({"seq_len": 8, "dp": 0}, "dp"),
    ({"seq_len": 8, "param_dtype": "int3"}, "param_dtype"),
    ({"seq_len": 8, "attention": "sparse"}, "attention"),
    ({"seq_len": 8, "optimizer": "lion"}, "optimizer"),
    ({"seq_len": 8, "chunked_ce_chunk": 0}, "chunked_ce_chunk"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_memory(ARGS, **kwargs)
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")


def test_cli_memory(tmp_path):
    import json

    from typer.testing import CliRunner

    from herd.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["memory", "--preset", "llama3.1-8b", "--seq-len", "8192", "--micro-batch", "1",
                                 "--dp", "8", "--device-memory", "80GB", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total"] > 80e9 * 0.9 and "exceeds" in data["warning"]
    result = runner.invoke(app, ["memory", "--preset", "llama3.1-8b", "--dp", "8", "--checkpointing",
                                 "--ce-chunk", "1024", "--device-memory", "80GiB"])
    assert result.exit_code == 0 and "optimizer" in result.output and "fits" in result.output

    from herd.checkpoint.config import hf_config_from_args

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(hf_config_from_args(ARGS, torch.bfloat16)))
    result = runner.invoke(app, ["memory", "--model", str(model_dir), "--seq-len", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == estimate_memory(ARGS, seq_len=64).total
    for bad in (["memory"], ["memory", "--preset", "nope"], ["memory", "--preset", "tiny", "--dp", "0"],
                ["memory", "--model", str(tmp_path / "none")]):
        assert runner.invoke(app, bad).exit_code == 2
