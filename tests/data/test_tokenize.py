"""tokenize_corpus against the real Llama 3 tokenizer, one document at a time."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from herd.data import CorpusError, find_shards, open_shards, tokenize_corpus
from herd.tokenizer import Tokenizer

WORDS = ["the", "herd", "llama", "Ünïcödé", "数据", "🙂", "<|eot_id|>", "  ", "\n", "1234567", "tab\t", "ok."]


@pytest.fixture(scope="module")
def tokenizer(llama3_tokenizer_path) -> Tokenizer:
    return Tokenizer.load(llama3_tokenizer_path)


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 120))) for _ in range(n)]


def _write_jsonl(path, texts, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"d{i}", "text": text, "meta": {"n": i}}) + "\n")
    return path


def _all_documents(prefixes) -> list[list[int]]:
    return [s.document(i).tolist() for s in open_shards(prefixes) for i in range(s.n_documents)]


def test_two_workers_equal_single_threaded_encode(tmp_path, tokenizer):
    texts = _texts(300)
    a = _write_jsonl(tmp_path / "a.jsonl", texts[:200])
    b = _write_jsonl(tmp_path / "b.jsonl.gz", texts[200:], opener=gzip.open)
    summary = tokenize_corpus([a, b], tmp_path / "out", tokenizer, source="web", workers=2, progress=False,
                              chunk_records=16, provenance={"mix": {"web": 1.0}})
    expected = [tokenizer.encode(t, bos=True, eos=True) for t in texts]
    assert _all_documents(summary.shards) == expected
    assert summary.n_documents == 300 and summary.n_tokens == sum(map(len, expected))
    info = open_shards(summary.shards)[0].info
    assert info.tokenizer_hash == tokenizer.hash and info.dtype == "uint32"
    assert (info.bos_id, info.eos_id, info.vocab_size) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.n_words)
    assert info.source == "web" and info.provenance["mix"] == {"web": 1.0}
    assert info.provenance["inputs"] == [str(a), str(b)]


def test_rollover_makes_several_shards_without_splitting_documents(tmp_path, tokenizer):
    texts = _texts(120, seed=1)
    path = _write_jsonl(tmp_path / "c.jsonl", texts)
    summary = tokenize_corpus([path], tmp_path / "out", tokenizer, source="c", shard_tokens=500, workers=1,
                              progress=False)
    shards = open_shards(summary.shards)
    assert len(shards) >= 4 and summary.shards == find_shards(tmp_path / "out")
    assert all(s.n_tokens >= 500 for s in shards[:-1])  # roll over only once a shard is full
    assert all(s.n_tokens - len(s.document(s.n_documents - 1)) < 500 for s in shards)  # ... and at once
    assert _all_documents(summary.shards) == [tokenizer.encode(t, bos=True, eos=True) for t in texts]


def test_text_files_are_one_document_each(tmp_path, tokenizer):
    texts = ["first file\n\nwith two paragraphs", "second file"]
    for i, text in enumerate(texts):
        (tmp_path / f"in{i}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "in2.txt").write_text("", encoding="utf-8")
    summary = tokenize_corpus([tmp_path], tmp_path / "out", tokenizer, source="txt", workers=1, progress=False)
    assert _all_documents(summary.shards) == [tokenizer.encode(t, bos=True, eos=True) for t in texts]
    assert summary.n_empty == 1


def test_bad_line_names_file_and_line_and_leaves_nothing(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"text": t}) for t in _texts(40)]
    path.write_text("\n".join(good[:30] + ["{not json"] + good[30:]) + "\n")
    out = tmp_path / "out"
    with pytest.raises(CorpusError, match=r"bad\.jsonl:31: not valid JSON"):
        tokenize_corpus([path], out, tokenizer, source="bad", shard_tokens=200, workers=2, progress=False,
                        chunk_records=4)
    assert not out.exists() or list(out.iterdir()) == []

    summary = tokenize_corpus([path], out, tokenizer, source="bad", workers=1, skip_bad=True, progress=False)
    assert summary.n_bad == 1 and summary.n_documents == 40 and "bad.jsonl:31" in summary.bad_examples[0]


@pytest.mark.parametrize(("line", "message"), [
    ({"id": 1, "content": "x"}, r"m\.jsonl:2: no field 'text'"),
    ({"text": 5}, r"m\.jsonl:2: field 'text' is int"),
    ([1, 2], r"m\.jsonl:2: expected a JSON object"),
])
def test_bad_record_fields(tmp_path, tokenizer, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(CorpusError, match=message):
        tokenize_corpus([path], tmp_path / "out", tokenizer, source="m", workers=1, progress=False)


def test_custom_field_and_existing_shards(tmp_path, tokenizer):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"body": "hello world"}) + "\n")
    summary = tokenize_corpus([path], tmp_path / "out", tokenizer, text_field="body", workers=1, progress=False)
    assert summary.source == "out"  # defaults to the output directory's name
    assert _all_documents(summary.shards) == [tokenizer.encode("hello world", bos=True, eos=True)]
    with pytest.raises(FileExistsError, match="overwrite"):
        tokenize_corpus([path], tmp_path / "out", tokenizer, text_field="body", workers=1, progress=False)
    again = tokenize_corpus([path], tmp_path / "out", tokenizer, text_field="body", workers=1, progress=False,
                            overwrite=True)
    assert again.shards == summary.shards


def test_missing_input_is_named(tmp_path, tokenizer):
    with pytest.raises(CorpusError, match=r"nope\.jsonl"):
        tokenize_corpus([tmp_path / "nope.jsonl"], tmp_path / "out", tokenizer, progress=False)
