"""Engine test fixtures: a tiny GQA model with a small vocabulary (fast), on one thread."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_tiny_model

VOCAB = 2048


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def model():
    return make_tiny_model("tiny", seed=0, vocab_size=VOCAB)


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(0, VOCAB, (n - 1,), generator=g).tolist() for n in lengths]
