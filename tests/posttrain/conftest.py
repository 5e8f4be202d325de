"""Fixtures: the real Llama 3 tokenizer, and a tiny random base model saved in the HF layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from herd.tokenizer import Tokenizer
from tests.conftest import make_tiny_model


@pytest.fixture(scope="session")
def tok(llama3_tokenizer_path) -> Tokenizer:
    return Tokenizer.from_file(llama3_tokenizer_path)


@pytest.fixture(scope="session")
def byte_tok() -> Tokenizer:
    """Llama 3's format over the 256 single bytes (no merges): 512 ids with the 256 specials.
    Runs that train stay fast on two cores (the full vocabulary's head costs ~100x more)."""
    return Tokenizer({bytes([i]): i for i in range(256)})


def make_byte_model(seed: int = 1, **overrides):
    return make_tiny_model("tiny", seed=seed, vocab_size=512, bos_token_id=256, eos_token_id=257, **overrides)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, byte_tok) -> Path:
    """A tiny random model (dim 64, 2 layers, the byte tokenizer's 512 ids) in the HF layout."""
    from herd.checkpoint import save_pretrained

    out = tmp_path_factory.mktemp("base") / "model"
    save_pretrained(make_byte_model(seed=1), out, tokenizer=byte_tok)
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
