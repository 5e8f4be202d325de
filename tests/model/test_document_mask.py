"""Packed rows with document masking behave exactly like each document run alone."""

from __future__ import annotations

import pytest
import torch

from herd.model import DocumentMaskedAttention, ModelArgs, Transformer, positions_from_document_ids

LENGTHS = [150, 70, 200, 92]  # boundaries at 150, 220, 420: inside and across 128-token blocks


def packed_row(vocab: int):
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, vocab, (n,), generator=g) for n in LENGTHS]
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])
    return docs, torch.cat(docs)[None], ids[None]


def model_fp32() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=512))
    model.init_weights()
    return model


def test_positions_restart_at_each_document():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 5]])
    assert positions_from_document_ids(ids).tolist() == [
        [0, 1, 2, 0, 1, 0, 1, 2, 3],
        [0, 1, 2, 3, 4, 5, 6, 7, 8],
    ]


@pytest.mark.parametrize("use_flex", [False, True])
def test_packed_logits_equal_each_document_alone(use_flex):
    model = model_fp32()
    docs, row, ids = packed_row(512)
    backend = DocumentMaskedAttention(ids, use_flex=use_flex)
    with torch.no_grad():
        packed = model(row, positions_from_document_ids(ids), backend)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
        causal_only = model(row)[0]
    assert (packed - alone).abs().max() < 1e-4
    # Without the mask the later documents really would see the earlier ones.
    assert (causal_only - alone).abs()[LENGTHS[0]:].max() > 1e-2


def test_packed_gradients_equal_sum_of_per_document_gradients():
    model = model_fp32()
    docs, row, ids = packed_row(512)
    loss_fn = torch.nn.functional.cross_entropy

    def doc_loss(logits, tokens):
        return loss_fn(logits[:-1], tokens[1:], reduction="sum")

    model.zero_grad()
    logits = model(row, positions_from_document_ids(ids), DocumentMaskedAttention(ids))[0]
    start = 0
    total = 0.0
    for d in docs:
        total = total + doc_loss(logits[start:start + len(d)], d)
        start += len(d)
    total.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    for d in docs:
        doc_loss(model(d[None])[0], d).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(packed_grads[n], p.grad, atol=1e-5, rtol=1e-4), n
