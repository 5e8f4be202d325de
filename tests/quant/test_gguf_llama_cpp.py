"""The exported GGUF run by llama.cpp itself (llama-cpp-python, the peer): same token ids,
same logits within F16 precision, same greedy token at every position.

Slow and optional: llama-cpp-python builds llama.cpp from source (~15 minutes here);
`pip install llama-cpp-python` first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from herd.checkpoint.gguf import export_gguf
from herd.tokenizer import Tokenizer
from tests.quant.helpers import small_model

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp")

TEXT = ("The quick brown fox — naïve café, 東京は晴れ。 Привет, мир! 12345 tokens\n\n"
        "    def f(x):\n        return x**2  # 🙂 مرحبا नमस्ते 안녕하세요")


@pytest.fixture(scope="module")
def exported(llama3_tokenizer_path, tmp_path_factory):
    tok = Tokenizer.from_file(llama3_tokenizer_path)
    model = small_model(n_layers=2, vocab_size=tok.n_words, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # peaked logits: a greedy token is never a near tie
        for p in model.parameters():  # the F16 file holds these values exactly
            p.copy_(p.half().float())
    path = export_gguf(model, tmp_path_factory.mktemp("llama_cpp") / "m.gguf", tok, file_type="f16")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, n_threads=2, verbose=False)
    return model, tok, llm


def test_llama_cpp_tokenizes_like_herd(exported) -> None:
    _, tok, llm = exported
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == tok.encode(TEXT)
    assert llm.token_bos() == tok.bos_id


def test_llama_cpp_logits_match_herd(exported) -> None:
    model, tok, llm = exported
    ids = tok.encode(TEXT, bos=True)
    llm.reset()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    scale = np.abs(ours).max()
    assert np.abs(theirs - ours).max() < 2e-3 * scale  # measured 4e-4: llama.cpp computes in F16/F32 mixes
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
