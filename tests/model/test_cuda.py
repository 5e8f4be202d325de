"""CUDA paths: compiled flex_attention document masks (with backward) and bf16 parity.

Skipped on machines without a GPU; the CPU suite covers the same logic through the dense
mask and fp32 paths.
"""

from __future__ import annotations

import pytest
import torch

from herd.model import DocumentMaskedAttention, ModelArgs, Transformer, positions_from_document_ids

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_flex_document_mask_on_cuda_matches_documents_alone_with_gradients():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=512)).cuda()
    model.init_weights()
    lengths = [150, 70, 200, 92]
    docs = [torch.randint(0, 512, (n,), device="cuda") for n in lengths]
    ids = torch.cat([torch.full((n,), i, device="cuda") for i, n in enumerate(lengths)])[None]
    row = torch.cat(docs)[None]
    backend = DocumentMaskedAttention(ids)
    assert backend.block_mask is not None  # the flex path really runs on CUDA

    def loss_of(logits, tokens):
        return torch.nn.functional.cross_entropy(logits[:-1], tokens[1:], reduction="sum")

    logits = model(row, positions_from_document_ids(ids), backend)[0]
    start, total = 0, 0.0
    for d in docs:
        total = total + loss_of(logits[start:start + len(d)], d)
        start += len(d)
    total.backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    alone = []
    for d in docs:
        out = model(d[None])[0]
        alone.append(out.detach())
        loss_of(out, d).backward()
    assert (logits.detach() - torch.cat(alone)).abs().max() < 1e-3
    for n, p in model.named_parameters():
        assert torch.allclose(packed[n], p.grad, atol=1e-4, rtol=1e-3), n


@cuda
def test_bf16_on_cuda_tracks_transformers():
    transformers = pytest.importorskip("transformers")
    from tests.model.test_transformer import hf_config

    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny"))
    model.init_weights()
    hf = transformers.LlamaForCausalLM(hf_config(model.args))
    hf.load_state_dict(model.state_dict())
    model, hf = model.cuda().bfloat16().eval(), hf.cuda().bfloat16().eval()
    tokens = torch.randint(0, model.args.vocab_size, (2, 700), device="cuda")
    with torch.no_grad():
        ours, theirs = model(tokens).float(), hf(tokens).logits.float()
    cos = torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0)
    assert cos > 0.999
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.95
