"""Training a byte-level BPE vocabulary: ranks consistent with the learned merges, tiktoken
ids equal to the trained ``tokenizers`` model's, Llama 3 special tokens after the ranks."""

from __future__ import annotations

import json
import random

import pytest

from herd.tokenizer import SPECIAL_TOKEN_NAMES, Tokenizer
from herd.tokenizer.train_bpe import (
    compression,
    compression_report,
    count_disagreements,
    ranks_from_hf,
    read_records,
    train_bpe,
    train_hf_bpe,
)
from tests.tokenizer.corpus import CODE, EMOJI, MULTILINGUAL, WHITESPACE_AND_NUMBERS, random_texts

pytest.importorskip("tokenizers")

# Syllables of a few scripts: words drawn from a Zipf law over a made-up lexicon per script.
_SYLLABLES = {
    "latin": "ka to ri an en the ing ion st re de ma lo pa ver sch ung qu ar".split(),
    "cyrillic": "ка то ри ан ен ст ре де ма ло па ов ие ни ть".split(),
    "cjk": list("的一是不了人我在有他这中大来上国个到说们"),
    "arabic": "ال ب ت م ن ي و ر ل ع".split(),
    "devanagari": "क का की र ने है में स त ह".split(),
}


def synthetic_corpus(n_docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lexicons = {
        script: ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(400)]
        for script, syl in _SYLLABLES.items()
    }
    weights = [1 / (i + 1) for i in range(400)]
    docs = []
    for i in range(n_docs):
        lex = lexicons[list(lexicons)[i % len(lexicons)]]
        sep = "" if lex is lexicons["cjk"] else " "
        words = rng.choices(lex, weights, k=rng.randint(50, 200))
        sentences = [sep.join(words[j : j + 12]) + "." for j in range(0, len(words), 12)]
        docs.append(" ".join(sentences) + "\n\n" + f"{rng.randint(0, 99999)} {CODE[i % len(CODE)]}")
    return docs


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return synthetic_corpus(600)


@pytest.fixture(scope="module")
def trained(corpus):
    hf = train_hf_bpe(corpus, 1024)
    return hf, Tokenizer(ranks_from_hf(hf))


UNSEEN = MULTILINGUAL + EMOJI + CODE + WHITESPACE_AND_NUMBERS + random_texts(50, seed=3)


def test_round_trip_on_unseen_multilingual_text(trained):
    _, tok = trained
    for text in UNSEEN:
        assert tok.decode(tok.encode(text)) == text


def test_special_tokens_follow_the_ranks_with_llama3_names(trained):
    _, tok = trained
    assert tok.num_base_tokens == 1024
    assert tok.n_words == 1024 + 256
    assert [tok.special_tokens[name] - 1024 for name in SPECIAL_TOKEN_NAMES] == list(range(256))
    assert tok.bos_id == 1024 and tok.eos_id == 1025 and tok.eot_id == 1024 + 9
    ids = tok.encode("<|begin_of_text|>hi<|eot_id|>", allowed_special="all")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eot_id


def test_ranks_follow_the_learned_merges(trained):
    hf, tok = trained
    ranks = tok.mergeable_ranks
    assert sorted(ranks.values()) == list(range(len(ranks)))
    assert all(ranks[bytes([b])] == b for b in range(256))
    merges = json.loads(hf.to_str())["model"]["merges"]
    assert len(merges) == len(ranks) - 256
    by_rank = sorted(ranks, key=ranks.get)
    for rank, token in enumerate(by_rank[256:], 256):
        # every merged token splits into two tokens of lower rank
        assert any(token[:i] in ranks and token[i:] in ranks and max(ranks[token[:i]], ranks[token[i:]]) < rank
                   for i in range(1, len(token)))


def test_tiktoken_ids_equal_the_trained_models(trained, corpus):
    hf, tok = trained
    held_out = synthetic_corpus(60, seed=99) + UNSEEN
    bad, total = count_disagreements(hf, tok, held_out)
    assert total == len(held_out) and bad == 0
    bad, _ = count_disagreements(hf, tok, corpus[:100])
    assert bad == 0


def test_training_is_deterministic(corpus):
    a = train_bpe(corpus[:200], 600)
    b = train_bpe(corpus[:200], 600)
    assert a.mergeable_ranks == b.mergeable_ranks and a.hash == b.hash


def test_saved_file_loads_like_the_real_one(trained, tmp_path):
    _, tok = trained
    tok.save(tmp_path)
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.model")
    assert loaded.hash == tok.hash
    assert Tokenizer.from_file(tmp_path / "tokenizer.json").hash == tok.hash
    for text in MULTILINGUAL:
        assert loaded.encode(text) == tok.encode(text)


def test_compression_improves_with_vocab_size(corpus):
    held_out = synthetic_corpus(60, seed=7)
    cpt = [compression(train_bpe(corpus, n), held_out).chars_per_token for n in (300, 600, 1200)]
    assert cpt[0] < cpt[1] < cpt[2]
    bytes_only = compression(Tokenizer({bytes([b]): b for b in range(256)}), held_out)
    assert bytes_only.bytes_per_token == 1.0 and cpt[0] > bytes_only.chars_per_token


def test_compression_report_against_llama3(trained, llama3_tokenizer_path):
    _, tok = trained
    llama3 = Tokenizer.from_file(llama3_tokenizer_path)
    report = compression_report({"new": tok, "llama3": llama3}, {"en": [MULTILINGUAL[0]], "ru": [MULTILINGUAL[7]]})
    assert set(report) == {"en", "ru", "all"}
    en = report["en"]
    assert en["llama3"]["chars"] == len(MULTILINGUAL[0])
    # 128K tokens trained on real English beat 1K tokens trained on syllable soup
    assert en["llama3"]["chars_per_token"] > en["new"]["chars_per_token"]


def test_too_small_corpus_warns_and_returns_what_it_learned():
    with pytest.warns(UserWarning, match="only"):
        tok = train_bpe(["abc abc abd"], 5000)
    assert tok.num_base_tokens < 5000
    assert tok.decode(tok.encode("abc abd")) == "abc abd"


@pytest.mark.parametrize("vocab_size", [0, 255, 3.5])
def test_bad_vocab_size(vocab_size):
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["hello"], vocab_size)


def test_bad_texts():
    with pytest.raises(ValueError, match="no training text"):
        train_bpe([], 300)
    with pytest.raises(TypeError, match="not one string"):
        train_bpe("hello world", 300)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        train_bpe(["ok", 3], 300)


def test_read_records(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "hello", "meta": {"language": "en"}}\n\n{"text": "salut", "meta": {}}\n')
    txt = tmp_path / "fr.txt"
    txt.write_text("bonjour\n" * 10)
    records = list(read_records([jsonl, txt], lang_field="meta.language"))
    assert records == [("hello", "en"), ("salut", None), ("bonjour\n" * 10, "fr")]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: field 'text'"):
        list(read_records([bad]))
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        list(read_records([bad]))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        list(read_records([tmp_path / "missing.jsonl"]))
    with pytest.raises(ValueError, match="unsupported input type"):
        list(read_records([tmp_path / "fr.txt", _touch(tmp_path / "x.csv")]))


def _touch(path):
    path.write_text("a,b\n")
    return path


def test_cli_tokenizer_train(tmp_path, corpus, llama3_tokenizer_path):
    from typer.testing import CliRunner

    from herd.cli import app

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t, "meta": {"language": f"s{i % 5}"}}) + "\n"
                            for i, t in enumerate(corpus[:300])))
    out = tmp_path / "tok"
    result = CliRunner().invoke(app, ["tokenizer", "train", "--input", str(data), "--vocab-size", "700",
                                      "--out", str(out), "--lang-field", "meta.language", "--holdout", "0.25",
                                      "--compare", str(llama3_tokenizer_path)])
    assert result.exit_code == 0, result.output
    assert Tokenizer.from_file(out / "tokenizer.model").num_base_tokens == 700
    report = json.loads((out / "compression.json").read_text())
    assert set(report["compression"]) == {"s0", "s1", "s2", "s3", "s4", "all"}
    assert set(report["compression"]["all"]) == {"new", "compare"}
    assert "chars/token" in result.output

    bad = CliRunner().invoke(app, ["tokenizer", "train", "--input", str(tmp_path / "nope.jsonl"),
                                   "--vocab-size", "700", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "nope.jsonl" in bad.output
    assert not (tmp_path / "x").exists()
