"""Helpers for the checkpoint tests: tiny random models, logit comparison, and a forward
pass over Meta-layout weights built from Meta's own reference code (llama-models)."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.conftest import make_tiny_model

SEQ_LEN = 300  # longer than the tiny presets' original_max_position_embeddings (256)
SMALL_VOCAB = {"vocab_size": 1000, "bos_token_id": 1, "eos_token_id": [2, 3]}


def random_tiny(preset: str = "tiny", seed: int = 0, **overrides: Any):
    """A tiny herd model whose every parameter (norms included) is random."""
    model = make_tiny_model(preset, seed, **{**SMALL_VOCAB, **overrides})
    perturb(model, seed)
    return model


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 0) -> None:
    """Add noise to every parameter, so that no tensor is left at its (recognisable) init."""
    g = torch.Generator().manual_seed(seed + 1000)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)


def tokens(vocab_size: int, seq_len: int = SEQ_LEN, batch: int = 2, seed: int = 0) -> Tensor:
    return torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def assert_logits_close(got: Tensor, want: Tensor, atol: float = 1e-4, rtol_scale: float = 1e-5) -> None:
    """max |got - want| <= atol and <= rtol_scale * max |want| (the logit scale)."""
    err = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item()
    assert err <= atol, f"max abs logit error {err:.3g} > {atol}"
    assert err <= rtol_scale * scale, f"max abs logit error {err:.3g} > {rtol_scale} * scale {scale:.3g}"


# ----------------------------------------------------------------------------- Meta's reference


def _meta_reference_namespace() -> dict:
    """The pure functions of llama-models' ``llama3/model.py`` (RoPE with Meta's scaling,
    interleaved rotary embedding, RMSNorm), taken from its source: the module itself
    imports fairscale, which the reference layers need and these functions do not."""
    import llama_models.llama3 as ll3

    source = (Path(ll3.__file__).parent / "model.py").read_text()
    wanted = {"RMSNorm", "apply_scaling", "precompute_freqs_cis", "reshape_for_broadcast",
              "apply_rotary_emb", "repeat_kv"}
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in wanted]
    assert {n.name for n in tree.body} == wanted, "llama-models' model.py changed shape"
    namespace: dict = {"torch": torch, "math": math, "F": F, "nn": nn, "Tuple": tuple, "Optional": None}
    exec(compile(tree, "llama_models/llama3/model.py", "exec"), namespace)
    return namespace


def meta_reference_merge(state_dicts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Meta's own merge of model-parallel shards (llama-models ``checkpoint.reshard_mp``)."""
    import llama_models

    source = (Path(llama_models.__file__).parent / "checkpoint.py").read_text()
    tree = ast.parse(source)
    keep = {"_WEIGHT_ROW_KEY", "_MOE_WEIGHT_ROW_KEY", "_WEIGHT_COLUMN_KEY", "_MOE_WEIGHT_COLUMN_KEY"}

    def wanted(node: ast.stmt) -> bool:
        if isinstance(node, ast.FunctionDef):
            return node.name == "reshard_mp"
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        return any(isinstance(t, ast.Name) and t.id in keep for t in targets)

    tree.body = [n for n in tree.body if wanted(n)]
    import concurrent.futures
    import re

    namespace: dict = {"torch": torch, "re": re, "concurrent": concurrent, "List": list, "Dict": dict}
    exec(compile(tree, "llama_models/checkpoint.py", "exec"), namespace)
    return namespace["reshard_mp"](state_dicts, size=1, rank=0)


@torch.no_grad()
def meta_reference_logits(state: dict[str, Tensor], params: dict, tokens: Tensor) -> Tensor:
    """Logits of Meta's reference Llama 3 forward (``llama3/model.py``: Transformer,
    TransformerBlock, Attention, FeedForward) over Meta-named weights, with plain linear
    layers in place of fairscale's model-parallel ones (model-parallel size 1)."""
    ns = _meta_reference_namespace()
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    eps = params["norm_eps"]

    def norm(x: Tensor, weight: Tensor) -> Tensor:
        m = ns["RMSNorm"](dim, eps=eps)
        m.weight.data = weight.float()
        return m(x)

    bsz, seqlen = tokens.shape
    freqs_cis = ns["precompute_freqs_cis"](head_dim, seqlen * 2, params["rope_theta"],
                                          params.get("use_scaled_rope", False))[:seqlen]
    mask = torch.triu(torch.full((seqlen, seqlen), float("-inf")), diagonal=1)
    h = F.embedding(tokens, state["tok_embeddings.weight"].float())
    for i in range(params["n_layers"]):
        prefix = f"layers.{i}."
        w = {k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)}
        x = norm(h, w["attention_norm.weight"])
        xq = F.linear(x, w["attention.wq.weight"]).view(bsz, seqlen, n_heads, head_dim)
        xk = F.linear(x, w["attention.wk.weight"]).view(bsz, seqlen, n_kv, head_dim)
        xv = F.linear(x, w["attention.wv.weight"]).view(bsz, seqlen, n_kv, head_dim)
        xq, xk = ns["apply_rotary_emb"](xq, xk, freqs_cis=freqs_cis)
        keys = ns["repeat_kv"](xk, n_heads // n_kv).transpose(1, 2)
        values = ns["repeat_kv"](xv, n_heads // n_kv).transpose(1, 2)
        scores = torch.matmul(xq.transpose(1, 2), keys.transpose(2, 3)) / math.sqrt(head_dim) + mask
        out = torch.matmul(F.softmax(scores.float(), dim=-1), values)
        h = h + F.linear(out.transpose(1, 2).reshape(bsz, seqlen, -1), w["attention.wo.weight"])
        x = norm(h, w["ffn_norm.weight"])
        gate, up = F.linear(x, w["feed_forward.w1.weight"]), F.linear(x, w["feed_forward.w3.weight"])
        h = h + F.linear(F.silu(gate) * up, w["feed_forward.w2.weight"])
    h = norm(h, state["norm.weight"])
    head = state.get("output.weight", state["tok_embeddings.weight"])
    return F.linear(h, head.float())
