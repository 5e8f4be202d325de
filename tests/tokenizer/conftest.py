"""Fixtures: herd's tokenizer and llama-models' (the reference peer) on the same file,
and a directory holding the files ``Tokenizer.save`` writes."""

from __future__ import annotations

import pytest

from herd.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tok(llama3_tokenizer_path) -> Tokenizer:
    return Tokenizer.from_file(llama3_tokenizer_path)


@pytest.fixture(scope="session")
def ref_tok(llama3_tokenizer_path):
    from llama_models.llama3.tokenizer import Tokenizer as RefTokenizer

    return RefTokenizer(llama3_tokenizer_path)


@pytest.fixture(scope="session")
def saved_dir(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved_tokenizer")
    tok.save(out)
    return out
