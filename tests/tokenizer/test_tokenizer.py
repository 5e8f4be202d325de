"""herd's Tokenizer against llama-models' Tokenizer on the same tokenizer.model."""

from __future__ import annotations

import random

import pytest

from herd.tokenizer import SPECIAL_TOKEN_NAMES, Tokenizer
from herd.tokenizer.tokenizer import split_for_tiktoken

from .corpus import CORPUS, SPECIAL_STRINGS, random_texts

# -- vocabulary and special tokens ---------------------------------------------------------


def test_sizes_and_role_ids(tok):
    assert len(tok.mergeable_ranks) == 128_000
    assert tok.n_words == tok.vocab_size == 128_256
    assert len(tok.special_tokens) == 256
    expected = {
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|reserved_special_token_0|>": 128002,
        "<|reserved_special_token_1|>": 128003,
        "<|finetune_right_pad_id|>": 128004,
        "<|reserved_special_token_2|>": 128005,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008,
        "<|eot_id|>": 128009,
        "<|python_tag|>": 128010,
        "<|reserved_special_token_3|>": 128011,
        "<|reserved_special_token_247|>": 128255,
    }
    for name, i in expected.items():
        assert tok.special_tokens[name] == i, name
    assert sorted(tok.special_tokens.values()) == list(range(128000, 128256))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (128000, 128001, 128004)
    assert (tok.start_header_id, tok.end_header_id) == (128006, 128007)
    assert (tok.eom_id, tok.eot_id, tok.python_tag_id) == (128008, 128009, 128010)
    assert tok.stop_tokens == [128001, 128008, 128009]


def test_role_ids_match_llama_models(tok, ref_tok):
    assert tok.n_words == ref_tok.n_words
    for attr in ("bos_id", "eos_id", "eot_id", "eom_id", "python_tag_id", "pad_id"):
        assert getattr(tok, attr) == getattr(ref_tok, attr), attr
    assert tok.stop_tokens == ref_tok.stop_tokens
    # llama-models 0.3 names 128005 <|step_id|> and 128011 <|image|> (HF: reserved 2 and 3)
    # and so numbers its later reserved tokens from 128012; the other specials agree.
    shared = {n for n in ref_tok.special_tokens if not n.startswith("<|reserved")} & set(tok.special_tokens)
    shared |= {"<|reserved_special_token_0|>", "<|reserved_special_token_1|>"}
    assert len(shared) == 10
    for name in shared:
        assert tok.special_tokens[name] == ref_tok.special_tokens[name], name


def test_hash_identifies_the_vocabulary(tok, llama3_tokenizer_path):
    again = Tokenizer.from_file(llama3_tokenizer_path)
    assert tok.hash == again.hash and len(tok.hash) == 64
    ranks = dict(tok.mergeable_ranks)
    a, b = next(t for t, r in ranks.items() if r == 1000), next(t for t, r in ranks.items() if r == 1001)
    ranks[a], ranks[b] = 1001, 1000  # two ranks swapped: a different tokenizer
    assert Tokenizer(ranks).hash != tok.hash
    renamed = dict(tok.special_tokens)
    renamed["<|my_token|>"] = renamed.pop("<|reserved_special_token_9|>")
    assert Tokenizer(tok.mergeable_ranks, renamed).hash != tok.hash


# -- encoding parity -----------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS, ids=lambda t: repr(t[:24]))
def test_encode_matches_llama_models(tok, ref_tok, text):
    assert tok.encode(text) == ref_tok.encode(text, bos=False, eos=False)
    assert tok.encode(text, bos=True, eos=True) == ref_tok.encode(text, bos=True, eos=True)
    assert tok.encode(text, allowed_special="all") == ref_tok.encode(
        text, bos=False, eos=False, allowed_special="all"
    )


def test_encode_matches_llama_models_on_random_unicode(tok, ref_tok):
    for text in random_texts(300, seed=1):
        assert tok.encode(text) == ref_tok.encode(text, bos=False, eos=False), repr(text)


def test_special_token_text_is_plain_unless_allowed(tok, ref_tok):
    text = "a<|eot_id|>b<|begin_of_text|>"
    plain = tok.encode(text)
    assert tok.eot_id not in plain and tok.bos_id not in plain
    assert tok.decode(plain) == text
    assert tok.encode(text, allowed_special={"<|eot_id|>"}) == ref_tok.encode(
        text, bos=False, eos=False, allowed_special={"<|eot_id|>"}
    )
    only_eot = tok.encode(text, allowed_special={"<|eot_id|>"})
    assert only_eot.count(tok.eot_id) == 1 and tok.bos_id not in only_eot
    everything = tok.encode(text, allowed_special="all")
    assert tok.eot_id in everything and tok.bos_id in everything
    with pytest.raises(ValueError, match="eot_id"):
        tok.encode(text, disallowed_special="all")


def test_lone_surrogates_match_llama_models(tok, ref_tok):
    text = "broken \ud83d pair and \udc00 alone"
    assert tok.encode(text) == ref_tok.encode(text, bos=False, eos=False)


def test_split_matches_llama_models_cuts(ref_tok):
    """The pieces handed to tiktoken are llama-models' pieces, around every boundary."""
    limit, chunk = 25_000, 400_000
    cases = [
        "a" * limit,
        "a" * (limit + 1),
        "a" * (2 * limit + 1),
        " " * (limit + 3) + "x",
        "x" + " " * (3 * limit) + "y" * (limit + 7),
        ("ab " * 9000) + "z" * 60_000 + "\n" * 26_000,
        "q" * (chunk + 30_001),
        ("word " * 90_000)[: chunk + 10],
    ]
    for s in cases:
        expected = [
            piece
            for i in range(0, len(s), chunk)
            for piece in ref_tok._split_whitespaces_or_nonwhitespaces(s[i : i + chunk], limit)
        ]
        assert split_for_tiktoken(s) == expected


def test_long_inputs_match_llama_models(tok, ref_tok):
    rng = random.Random(7)
    words = [t for t in CORPUS if t.strip()]
    mixed = " ".join(rng.choice(words) for _ in range(5000))
    assert len(mixed) > 400_000
    no_space = "".join(rng.choice("abcdefghij0123456789漢字") for _ in range(60_000))
    for text in (mixed, no_space, mixed[:200_000] + no_space + "\n" * 30_000 + mixed[:300_000]):
        ids = tok.encode(text)
        assert ids == ref_tok.encode(text, bos=False, eos=False)
        assert tok.decode(ids) == text


# -- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS, ids=lambda t: repr(t[:24]))
def test_decode_round_trip(tok, ref_tok, text):
    ids = tok.encode(text, bos=True, allowed_special="all")
    assert tok.decode(ids) == ref_tok.decode(ids) == "<|begin_of_text|>" + text
    assert tok.decode_bytes(ids) == ("<|begin_of_text|>" + text).encode()


def test_decode_token_bytes_and_bad_ids(tok):
    assert tok.decode_token_bytes(tok.eot_id) == b"<|eot_id|>"
    assert b"".join(tok.decode_token_bytes(i) for i in tok.encode("héllo wörld")) == "héllo wörld".encode()
    for bad in (-1, 128_256, 10**12):
        with pytest.raises(ValueError, match="not in the vocabulary"):
            tok.decode([1, bad])
        with pytest.raises(ValueError, match="not in the vocabulary"):
            tok.decode_token_bytes(bad)


def test_invalid_utf8_decodes_with_replacement(tok, ref_tok):
    lone = [tok.mergeable_ranks[bytes([b])] for b in (0xE6, 0x97, 0x41, 0xFF)]
    # E6 97 is an unfinished 3-byte sequence (one U+FFFD), FF is never valid.
    assert tok.decode(lone) == ref_tok.decode(lone) == "\ufffdA\ufffd"


# -- streaming -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS, ids=lambda t: repr(t[:24]))
def test_stream_emits_whole_characters(tok, text):
    ids = tok.encode(text)
    stream = tok.stream()
    deltas = [stream.feed(i) for i in ids]
    deltas.append(stream.flush())
    assert "".join(deltas) == text == tok.decode(ids)
    assert not any("\ufffd" in d for d in deltas)  # no half character was ever emitted


def test_stream_holds_back_a_split_character(tok):
    # A rare CJK character that the BPE spells as separate byte tokens.
    ids = tok.encode("𠜎")
    assert len(ids) > 1 and all(len(tok.decode_token_bytes(i)) < 4 for i in ids)
    stream = tok.stream()
    assert [stream.feed(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.feed(ids[-1]) == "𠜎"


def test_stream_of_random_ids_concatenates_to_decode(tok):
    rng = random.Random(3)
    byte_ids = [tok.mergeable_ranks[bytes([b])] for b in range(256)]
    for _ in range(200):
        ids = [rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(128_000) for _ in range(30)]
        ids += [tok.eot_id] if rng.random() < 0.3 else []
        assert "".join(tok.stream()(ids)) == tok.decode(ids)
    stream = tok.stream()
    assert stream.feed(tok.mergeable_ranks[b"\xe6"]) == ""
    assert stream.flush() == "\ufffd"  # an unfinished character at the end


# -- batches -------------------------------------------------------------------------------


def test_encode_batch_equals_single(tok):
    texts = CORPUS + random_texts(50, seed=5) + ["x" * 30_000 + " y" * 10, ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, bos=True, eos=True, num_threads=2) == [
        tok.encode(t, bos=True, eos=True) for t in texts
    ]
    assert tok.encode_batch(SPECIAL_STRINGS, allowed_special="all", num_threads=1) == [
        tok.encode(t, allowed_special="all") for t in SPECIAL_STRINGS
    ]
    assert tok.encode_batch([]) == []
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok.encode_batch(["ok", b"bytes"])


# -- other vocabularies ----------------------------------------------------------------------


def test_tokenizer_accepts_other_special_names_by_id(tok, ref_tok):
    """llama-models' names for the specials (<|step_id|>, <|image|>, reserved from 128012)."""
    other = Tokenizer(tok.mergeable_ranks, ref_tok.special_tokens)
    assert (other.eot_id, other.eom_id, other.python_tag_id, other.pad_id) == (128009, 128008, 128010, 128004)
    text = "<|image|> and <|step_id|> and <|reserved_special_token_2|>"
    assert other.encode(text, allowed_special="all") == ref_tok.encode(
        text, bos=False, eos=False, allowed_special="all"
    )


def test_role_ids_fall_back_to_their_place():
    """A vocabulary whose file names reserved ids only (as Llama 3.0's HF files do for
    128008) still has eom at the eom id."""
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256}
    names = dict(zip(SPECIAL_TOKEN_NAMES, range(257, 257 + 256), strict=True))
    names["<|reserved_special_token_4|>"] = names.pop("<|eom_id|>")
    small = Tokenizer(ranks, names)
    assert small.eom_id == 257 + 8 and small.bos_id == 257 and small.n_words == 257 + 256
    assert small.encode("abc") == [256, ord("c")]


def test_bad_vocabularies_are_refused():
    with pytest.raises(ValueError, match="single-byte"):
        Tokenizer({bytes([b]): b for b in range(255)})
    ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match="inside the BPE ranks"):
        Tokenizer(ranks, {"<|begin_of_text|>": 10})
    with pytest.raises(TypeError):
        Tokenizer(ranks).encode(b"bytes")
