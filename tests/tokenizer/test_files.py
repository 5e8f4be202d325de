"""Loading and saving: tokenizer.model, tokenizer.json / tokenizer_config.json, model
directories, and the errors bad files give."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from herd.tokenizer import SPECIAL_TOKEN_NAMES, Tokenizer, TokenizerFileError
from herd.tokenizer.hf_files import byte_to_unicode, read_tokenizer_json, tokenizer_config

from .corpus import ASCII_CORPUS, CORPUS, random_texts


def small_tokenizer(extra: list[bytes]) -> Tokenizer:
    """256 byte tokens plus ``extra`` merges, in order."""
    ranks = {bytes([b]): b for b in range(256)}
    for token in extra:
        ranks[token] = len(ranks)
    return Tokenizer(ranks)


# -- tokenizer.model -------------------------------------------------------------------------


def test_saved_tokenizer_model_is_the_original_file(tok, saved_dir, llama3_tokenizer_path):
    assert sorted(p.name for p in saved_dir.iterdir()) == [
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]  # and no temporary files left behind
    assert (saved_dir / "tokenizer.model").read_bytes() == llama3_tokenizer_path.read_bytes()


def test_load_accepts_file_or_directory(tok, saved_dir):
    assert Tokenizer.load(saved_dir).hash == tok.hash
    assert Tokenizer.load(saved_dir / "tokenizer.model").hash == tok.hash
    assert Tokenizer.load(saved_dir / "tokenizer.json").hash == tok.hash


def test_corrupt_tokenizer_model_names_file_and_line(tmp_path):
    good = base64.b64encode(b"a").decode()
    path = tmp_path / "tokenizer.model"
    path.write_text(f"{good} 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerFileError, match=r"tokenizer\.model, line 2"):
        Tokenizer.from_file(path)
    path.write_text(f"{good} 0\n{good}\n")
    with pytest.raises(TokenizerFileError, match="line 2"):
        Tokenizer.from_file(path)
    path.write_text(f"{good} 0\n{base64.b64encode(b'b').decode()} 0\n")
    with pytest.raises(TokenizerFileError, match="line 2: duplicate"):
        Tokenizer.from_file(path)
    path.write_text("\n\n")
    with pytest.raises(TokenizerFileError, match="no BPE ranks"):
        Tokenizer.from_file(path)
    path.write_text(f"{good} 0\n")
    with pytest.raises(TokenizerFileError, match=r"tokenizer\.model: BPE ranks lack 255 single-byte"):
        Tokenizer.from_file(path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(TokenizerFileError, match="not found.*nowhere.model"):
        Tokenizer.from_file(tmp_path / "nowhere.model")
    with pytest.raises(TokenizerFileError, match="not found.*nothing.json"):
        Tokenizer.from_file(tmp_path / "nothing.json")
    with pytest.raises(TokenizerFileError, match="original/tokenizer.model"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(TokenizerFileError, match="not a directory"):
        Tokenizer.from_dir(tmp_path / "absent")


def test_from_dir_prefers_tokenizer_model_then_original_then_json(tmp_path):
    a, b, c = small_tokenizer([b"ab"]), small_tokenizer([b"bc"]), small_tokenizer([b"cd"])
    c.save(tmp_path / "json_only")
    (tmp_path / "json_only" / "tokenizer.model").unlink()
    b.save(tmp_path / "original")
    shutil.copy(tmp_path / "json_only" / "tokenizer.json", tmp_path / "tokenizer.json")
    assert Tokenizer.from_dir(tmp_path).hash == b.hash  # original/tokenizer.model before tokenizer.json
    a.save(tmp_path)
    assert Tokenizer.from_dir(tmp_path).hash == a.hash  # tokenizer.model first
    assert Tokenizer.from_dir(tmp_path / "json_only").hash == c.hash


# -- tokenizer.json --------------------------------------------------------------------------


def test_tokenizer_json_rebuilds_the_same_tokenizer(tok, ref_tok, saved_dir):
    ranks, specials, pattern = read_tokenizer_json(saved_dir / "tokenizer.json")
    assert ranks == tok.mergeable_ranks
    assert specials == tok.special_tokens
    assert pattern == tok.pattern == ref_tok.pat_str
    from_json = Tokenizer.from_file(saved_dir / "tokenizer.json")
    assert from_json.hash == tok.hash
    for text in CORPUS + random_texts(100, seed=11):
        assert from_json.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_tokenizer_json_layout(saved_dir):
    doc = json.loads((saved_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = doc["model"]
    assert model["type"] == "BPE" and model["byte_fallback"] is False and model["ignore_merges"] is True
    assert len(model["vocab"]) == 128_000
    # Every split of a token into two tokens: the count in Meta's own Llama 3 tokenizer.json.
    assert len(model["merges"]) == 280_147
    assert model["merges"][0] == "Ġ Ġ"  # rank 256 is "  " (two spaces)
    steps = doc["pre_tokenizer"]["pretokenizers"]
    assert [s["type"] for s in steps] == ["Split", "ByteLevel"]
    assert steps[0]["behavior"] == "Isolated" and steps[1]["use_regex"] is False
    assert doc["decoder"]["type"] == "ByteLevel"
    assert [t["id"] for t in doc["added_tokens"]] == list(range(128_000, 128_256))
    assert all(t["special"] for t in doc["added_tokens"])


def test_transformers_fast_tokenizer_agrees_on_english_and_code(tok, saved_dir):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(saved_dir / "tokenizer.json"))
    for text in ASCII_CORPUS:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf.encode(text) == [tok.bos_id, *ids]  # the post-processor adds <|begin_of_text|>
        assert hf.decode(ids) == text
    assert hf.convert_tokens_to_ids("<|eot_id|>") == tok.eot_id


def test_transformers_fast_tokenizer_agrees_beyond_ascii(tok, saved_dir):
    """With every two-token split as a merge and ``ignore_merges``, the tokenizers BPE
    picks tiktoken's merges on other scripts too (checked with tokenizers 0.23)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(saved_dir / "tokenizer.json"))
    for text in [t for t in CORPUS if "<|" not in t] + random_texts(200, seed=2):
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text), text


def test_tokenizer_config(tok, saved_dir, tmp_path):
    config = json.loads((saved_dir / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|begin_of_text|>"
    assert config["eos_token"] == "<|end_of_text|>"
    assert config["pad_token"] == "<|finetune_right_pad_id|>"
    assert config["added_tokens_decoder"]["128009"]["content"] == "<|eot_id|>"
    assert len(config["added_tokens_decoder"]) == 256
    assert "Cutting Knowledge Date" in config["chat_template"]

    assert tokenizer_config(tok, eos_token="<|eot_id|>")["eos_token"] == "<|eot_id|>"  # instruct models
    with pytest.raises(ValueError, match="not a special token"):
        small_tokenizer([]).save(tmp_path, eos_token="</s>")
    assert not any(tmp_path.iterdir())  # nothing half-written


def llama30_names() -> dict[str, int]:
    """The special-token names of Llama 3.0's HF files: no pad, eom or python_tag names."""
    names = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    names += ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    names += [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
    return {n: 128_000 + i for i, n in enumerate(names)}


def test_hf_special_names_are_taken_by_id(tok, saved_dir, tmp_path):
    doc = json.loads((saved_dir / "tokenizer.json").read_text(encoding="utf-8"))
    names = llama30_names()
    assert len(names) == 256
    doc["added_tokens"] = [dict(t, content=n) for t, n in zip(doc["added_tokens"], names, strict=True)]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    old = Tokenizer.from_file(path)
    assert old.special_tokens == names
    assert (old.bos_id, old.eos_id, old.eot_id, old.start_header_id) == (128000, 128001, 128009, 128006)
    assert (old.eom_id, old.python_tag_id, old.pad_id) == (128008, 128010, 128004)  # by their place
    assert old.encode("<|reserved_special_token_4|>", allowed_special="all") == [128008]
    assert old.decode([128008]) == "<|reserved_special_token_4|>"
    assert old.encode("plain text") == tok.encode("plain text")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(model={"type": "WordPiece", "vocab": {"a": 0}}), "WordPiece"),
        (lambda d: d["model"].update(byte_fallback=True), "byte-fallback"),
        (lambda d: d["model"]["vocab"].update({"héllo wörld": 300}), "not byte-level BPE text"),
        (lambda d: d.pop("model"), "no model.vocab"),
        (lambda d: d.update(pre_tokenizer=None), "no Split regex"),
        (lambda d: d["added_tokens"].append({"content": "<|x|>"}), "malformed added_tokens"),
    ],
)
def test_bad_tokenizer_json_names_the_problem(tmp_path, mutate, message):
    small_tokenizer([b"ab"]).save(tmp_path)
    path = tmp_path / "tokenizer.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    mutate(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=message) as err:
        Tokenizer.from_file(path)
    assert str(path) in str(err.value)


def test_unreadable_json_names_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{ not json")
    with pytest.raises(TokenizerFileError, match=f"cannot read {path}"):
        Tokenizer.from_file(path)


def test_small_vocabulary_round_trips_through_hf(tmp_path):
    from transformers import PreTrainedTokenizerFast

    small = small_tokenizer([b"th", b"the", b" the", b"in", b"ing", b" th", b"er", b"  "])
    small.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    assert again.hash == small.hash and again.n_words == 256 + 8 + 256
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    text = "the thing   in the other thinking"
    assert hf.encode(text, add_special_tokens=False) == small.encode(text)
    assert len(small.encode(text)) < len(text.encode())


def test_byte_alphabet_is_gpt2s():
    table = byte_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert SPECIAL_TOKEN_NAMES[0] == "<|begin_of_text|>" and len(SPECIAL_TOKEN_NAMES) == 256
