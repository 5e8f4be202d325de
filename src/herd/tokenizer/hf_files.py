"""Hugging Face tokenizer files: ``tokenizer.json`` (the ``tokenizers`` schema) and
``tokenizer_config.json`` (special tokens and the chat template).

Reading rebuilds tiktoken ranks from a byte-level BPE vocabulary: each vocabulary string
maps back to bytes through GPT-2's byte-to-unicode table and its id is its rank; the
special tokens are the ``added_tokens`` with their ids. Writing derives the merges from
the ranks: every split of a token into two tokens, ordered by the token's rank, which
lets ``tokenizers``' BPE pick the same merges tiktoken does.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.tokenizer.chat_template import CHAT_TEMPLATE
from herd.tokenizer.tokenizer import TokenizerFileError

if TYPE_CHECKING:
    from herd.tokenizer.tokenizer import Tokenizer

# GPT-2's pre-tokenizer regex, used by ByteLevel(use_regex=True).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (printable Latin-1 bytes map
    to themselves, the rest to U+0100 onwards)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def token_to_str(token: bytes) -> str:
    """A token's bytes in GPT-2's byte alphabet (how tokenizer.json spells tokens)."""
    return token.decode("latin-1").translate(byte_to_unicode())


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file in the same directory, then rename."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- reading ------------------------------------------------------------------------------


def _pattern_of(pre_tokenizer: dict[str, Any] | None, path: Path) -> str:
    """The pre-tokenizer regex: a Split with a Regex pattern, else GPT-2's when a
    ByteLevel pre-tokenizer splits by itself."""
    steps = [] if pre_tokenizer is None else pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    for step in steps:
        if step.get("type") == "Split" and "Regex" in (step.get("pattern") or {}):
            return step["pattern"]["Regex"]
    for step in steps:
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return GPT2_PATTERN
    raise TokenizerFileError(f"{path}: pre_tokenizer has no Split regex (not a tiktoken-style BPE)")


def read_tokenizer_json(path: str | os.PathLike) -> tuple[dict[bytes, int], dict[str, int], str]:
    """``(ranks, special_tokens, pattern)`` from a byte-level BPE ``tokenizer.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerFileError(f"tokenizer file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerFileError(f"cannot read {path} as JSON: {e}") from e
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise TokenizerFileError(f"{path}: no model.vocab; not a tokenizers tokenizer.json")
    if model.get("type", "BPE") != "BPE":
        raise TokenizerFileError(f"{path}: model type {model.get('type')!r}; herd reads byte-level BPE only")
    if model.get("byte_fallback"):
        raise TokenizerFileError(f"{path}: a byte-fallback (SentencePiece-style) BPE, not byte-level BPE")

    to_byte = {c: b for b, c in byte_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for text, rank in model["vocab"].items():
        try:
            ranks[bytes(to_byte[c] for c in text)] = rank
        except KeyError:
            raise TokenizerFileError(
                f"{path}: vocabulary entry {text!r} is not byte-level BPE text (GPT-2 byte alphabet)"
            ) from None
    if len(ranks) != len(model["vocab"]) or len(set(ranks.values())) != len(ranks):
        raise TokenizerFileError(f"{path}: vocabulary entries or ids are not unique")

    ids = set(ranks.values())
    specials: dict[str, int] = {}
    for entry in data.get("added_tokens") or []:
        try:
            name, token_id = entry["content"], int(entry["id"])
        except (KeyError, TypeError, ValueError):
            raise TokenizerFileError(f"{path}: malformed added_tokens entry {entry!r}") from None
        if token_id not in ids:
            specials[name] = token_id
    return ranks, specials, _pattern_of(data.get("pre_tokenizer"), path)


# -- writing ------------------------------------------------------------------------------


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[int, int]]:
    """Every pair ``(left rank, right rank)`` of tokens whose concatenation is a token,
    ordered by that token's rank, then the left part's rank."""
    found = []
    get = ranks.get
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left = get(token[:cut])
            if left is not None:
                right = get(token[cut:])
                if right is not None:
                    found.append((rank, left, right))
    found.sort()
    return [(left, right) for _, left, right in found]


def tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """The ``tokenizer.json`` document for ``tokenizer``."""
    bos = next(n for n, i in tokenizer.special_tokens.items() if i == tokenizer.bos_id)
    spelled = {rank: token_to_str(token) for token, rank in tokenizer.mergeable_ranks.items()}
    merges = [f"{spelled[a]} {spelled[b]}" for a, b in merges_from_ranks(tokenizer.mergeable_ranks)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": name,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for name, i in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": tokenizer.pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {
                    "type": "TemplateProcessing",
                    "single": [
                        {"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                    ],
                    "pair": [
                        {"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": bos, "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {bos: {"id": bos, "ids": [tokenizer.bos_id], "tokens": [bos]}},
                },
            ],
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {spelled[r]: r for r in sorted(spelled)},
            "merges": merges,
        },
    }


def tokenizer_config(
    tokenizer: Tokenizer,
    *,
    eos_token: str | None = None,
    chat_template: str | None = CHAT_TEMPLATE,
    model_max_length: int = 131072,
) -> dict[str, Any]:
    """The ``tokenizer_config.json`` document: special tokens, bos/eos/pad and the chat
    template. ``eos_token`` defaults to ``<|end_of_text|>``; instruct models use
    ``<|eot_id|>``."""
    names = {i: n for n, i in tokenizer.special_tokens.items()}
    config: dict[str, Any] = {
        "added_tokens_decoder": {
            str(i): {
                "content": names[i],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i in sorted(names)
        },
        "bos_token": names[tokenizer.bos_id],
        "eos_token": eos_token or names[tokenizer.eos_id],
        "pad_token": names[tokenizer.pad_id],
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if chat_template:
        config["chat_template"] = chat_template
    return config


def hf_tokenizer_files(
    tokenizer: Tokenizer,
    *,
    eos_token: str | None = None,
    chat_template: str | None = CHAT_TEMPLATE,
    model_max_length: int = 131072,
) -> dict[str, str]:
    """``{"tokenizer.json": text, "tokenizer_config.json": text}`` for ``tokenizer``."""
    config = tokenizer_config(
        tokenizer, eos_token=eos_token, chat_template=chat_template, model_max_length=model_max_length
    )
    if config["eos_token"] not in tokenizer.special_tokens:
        raise ValueError(f"eos_token {config['eos_token']!r} is not a special token of this tokenizer")
    return {
        "tokenizer.json": json.dumps(tokenizer_json(tokenizer), ensure_ascii=False, indent=2),
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2) + "\n",
    }


def write_hf_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike, **options: Any) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``
    (options as for :func:`hf_tokenizer_files`)."""
    files = hf_tokenizer_files(tokenizer, **options)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write(directory / name, text)
