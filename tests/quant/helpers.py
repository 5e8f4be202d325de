"""Small models and a small tokenizer for the quantization tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import make_tiny_model


def small_model(n_layers: int = 4, seed: int = 0, vocab_size: int = 2304, tied: bool = False, **overrides):
    """A 4-layer model (so FP8 has inner layers) with widths every group size divides."""
    return make_tiny_model("tiny", seed=seed, n_layers=n_layers, vocab_size=vocab_size, dim=128, n_heads=4,
                           n_kv_heads=2, multiple_of=64, tie_word_embeddings=tied, **overrides)


def small_tokenizer(llama3_path: Path, n_ranks: int = 2048):
    """Llama 3's BPE cut to its first ``n_ranks`` merges (plus every single byte), re-ranked
    in the same order: a real byte-level BPE whose GGUF files are quick to write."""
    from herd.tokenizer import Tokenizer
    from herd.tokenizer.tokenizer import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(llama3_path)
    keep = sorted((r, t) for t, r in ranks.items() if r < n_ranks or len(t) == 1)
    return Tokenizer({t: i for i, (_, t) in enumerate(keep)})


def calibration_tokens(vocab_size: int, rows: int = 8, seq_len: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (rows, seq_len), generator=g)
