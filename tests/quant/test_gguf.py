"""GGUF export, read back with gguf's own GGUFReader (llama.cpp's Python reader), and its
vocabulary checked by rebuilding a BPE tokenizer from it with HF ``tokenizers``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.gguf import export_gguf, gguf_name
from herd.checkpoint.meta import half_to_interleaved
from herd.model.transformer import rope_inv_freq
from tests.quant.helpers import small_model, small_tokenizer

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tokenizer(llama3_tokenizer_path):
    return small_tokenizer(llama3_tokenizer_path)


@pytest.fixture(scope="module")
def model(tokenizer) -> nn.Module:
    return small_model(n_layers=2, vocab_size=tokenizer.n_words + 16)  # 16 ids past the tokenizer: padding


@pytest.fixture(scope="module")
def files(model, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {ft: gguf.GGUFReader(str(export_gguf(model, root / f"m-{ft}.gguf", tokenizer, file_type=ft)))
            for ft in ("f16", "q8_0")}


def _field(reader, key):
    field = reader.fields[key]
    return field.contents()


def _expected(model) -> dict[str, torch.Tensor]:
    args = model.args
    out = {}
    for name, t in model.state_dict().items():
        if name.endswith("q_proj.weight"):
            t = half_to_interleaved(t, args.n_heads)
        elif name.endswith("k_proj.weight"):
            t = half_to_interleaved(t, args.n_kv_heads)
        out[gguf_name(name)] = t.float()
    return out


@pytest.mark.parametrize("file_type", ["f16", "q8_0"])
def test_tensors_names_shapes_and_values(files, model, file_type: str) -> None:
    reader = files[file_type]
    tensors = {t.name: t for t in reader.tensors}
    expected = _expected(model)
    assert set(tensors) == set(expected) | {"rope_freqs.weight"}
    for name, want in expected.items():
        t = tensors[name]
        assert tuple(int(d) for d in t.shape) == tuple(reversed(want.shape)), name  # GGUF lists ne0 first
        got = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        got = got.reshape(want.shape)
        if want.dim() == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            assert torch.equal(got, want), name
        elif file_type == "f16":
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            assert torch.equal(got, want.half().float()), name
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            d = want.reshape(-1, 32).abs().amax(dim=1, keepdim=True) / 127  # one scale per 32 values
            d16 = d.half().float()  # ... stored as fp16
            err = (got.reshape(-1, 32) - want.reshape(-1, 32)).abs()
            assert bool((err <= 0.5 * d + 127 * (d16 - d).abs() + 1e-7).all()), name


def test_metadata(files, model, tokenizer) -> None:
    reader = files["q8_0"]
    a = model.args
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert _field(reader, "llama.block_count") == a.n_layers
    assert _field(reader, "llama.embedding_length") == a.dim
    assert _field(reader, "llama.feed_forward_length") == a.ffn_dim
    assert _field(reader, "llama.attention.head_count") == a.n_heads
    assert _field(reader, "llama.attention.head_count_kv") == a.n_kv_heads
    assert _field(reader, "llama.rope.dimension_count") == a.head_dim
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(a.rope_theta)
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(a.norm_eps)
    assert _field(reader, "llama.context_length") == a.max_seq_len
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "llama-bpe"
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_id
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_id  # a base model ends with end_of_text
    assert "<|start_header_id|>" in _field(reader, "tokenizer.chat_template")
    # llama.cpp divides each RoPE frequency by its factor: the scaled frequencies must be herd's
    factors = {t.name: t for t in reader.tensors}["rope_freqs.weight"].data
    base = rope_inv_freq(a.replace(rope_scaling=None)).numpy()
    np.testing.assert_allclose(base / factors, rope_inv_freq(a).numpy(), rtol=1e-6)


def test_vocabulary_tokenizes_like_herd(files, tokenizer) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    reader = files["f16"]
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = _field(reader, "tokenizer.ggml.merges")
    assert len(tokens) == len(types) == tokenizer.n_words + 16
    control = [tokens[i] for i, t in enumerate(types) if t == int(gguf.TokenType.CONTROL)]
    assert set(control) == set(tokenizer.special_tokens)
    assert tokens[-1].startswith("[PAD") and types[-1] == int(gguf.TokenType.UNUSED)
    vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty == int(gguf.TokenType.NORMAL)}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], ignore_merges=True))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([  # llama.cpp's llama-bpe pre-tokenizer is Llama 3's regex
        pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    text = ("The quick brown fox — naïve café, 東京は晴れ。 Привет, мир! 12345 tokens\n\n"
            "    def f(x):\n        return x**2  # 🙂 مرحبا")
    assert bpe.encode(text).ids == tokenizer.encode(text)


def test_tied_model_has_no_output_tensor_and_quantized_models_refuse(tokenizer, tmp_path) -> None:
    tied = small_model(n_layers=1, vocab_size=tokenizer.n_words, tied=True)
    reader = gguf.GGUFReader(str(export_gguf(tied, tmp_path / "t.gguf", tokenizer)))
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    from herd.quant import quantize

    with pytest.raises(CheckpointError, match="unquantized"):
        export_gguf(quantize(tied, "int8"), tmp_path / "q.gguf", tokenizer)
    with pytest.raises(CheckpointError, match="q4_k"):
        export_gguf(tied, tmp_path / "x.gguf", tokenizer, file_type="q4_k")
    assert not (tmp_path / "x.gguf").exists()
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == json.dumps(["t.gguf"])
