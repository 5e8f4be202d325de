"""Shared fixtures: the real Llama 3 tokenizer file (shipped by the llama-models package,
a test-only peer) and tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def llama3_tokenizer_path() -> Path:
    import llama_models.llama3 as ll3

    path = Path(ll3.__file__).parent / "tokenizer.model"
    assert path.exists(), f"llama-models ships no tokenizer.model at {path}"
    return path


def make_tiny_model(preset: str = "tiny", seed: int = 0, **overrides):
    from herd.model import ModelArgs, Transformer

    torch.manual_seed(seed)
    model = Transformer(ModelArgs.from_name(preset, **overrides))
    model.init_weights()
    return model.eval()


@pytest.fixture
def tiny_model():
    return make_tiny_model()
