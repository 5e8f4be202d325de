from __future__ import annotations

import torch

from herd.model import ModelArgs, Transformer
from herd.train.config import OptimConfig
from herd.train.optim import build_optimizer, clip_grad_norm, param_groups


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_norms_never_decay_matrices_do():
    model = Transformer(ModelArgs.from_name("tiny-nope"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all("norm" in n for n in _names(model, no_decay["params"]))
    assert "model.layers.0.self_attn.q_proj.weight" in _names(model, decay["params"])
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= _names(model, decay["params"])
    n_params = len(list(model.parameters()))
    assert len(decay["params"]) + len(no_decay["params"]) == n_params

    decay, no_decay = param_groups(model, 0.1, decay_embeddings=False)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= _names(model, no_decay["params"])


def test_tied_embedding_appears_once():
    model = Transformer(ModelArgs.from_name("tiny-tied"))
    groups = param_groups(model, 0.1)
    flat = [id(p) for g in groups for p in g["params"]]
    assert len(flat) == len(set(flat)) == len(list(model.parameters()))


def test_decoupled_decay_leaves_norms_alone():
    model = Transformer(ModelArgs.from_name("tiny-nope"))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only the decay moves anything
    assert torch.all(model.model.norm.weight == 1.0)
    assert torch.allclose(model.model.layers[0].mlp.up_proj.weight, torch.full((1,), 1 - 0.1 * 0.5))


def test_clip_grad_norm_returns_the_norm_and_clips():
    model = torch.nn.Linear(4, 4, bias=False)
    model.weight.grad = torch.full((4, 4), 1.0)  # norm 4
    assert clip_grad_norm(model, 0) == 4.0
    assert clip_grad_norm(model, 1.0) == 4.0
    assert abs(torch.linalg.vector_norm(model.weight.grad).item() - 1.0) < 1e-5
