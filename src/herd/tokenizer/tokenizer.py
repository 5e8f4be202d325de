"""The Llama 3 tokenizer: tiktoken byte-level BPE plus 256 special tokens.

Encoding follows llama-models token for token: text that spells a special token is plain
text unless ``allowed_special`` names it, and long inputs are cut into the same pieces
(at most 400,000 characters, no run of more than 25,000 whitespace or non-whitespace
characters) so tiktoken neither panics nor gives different ids.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import operator
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import tiktoken

# The pre-tokenizer regex of Llama 3 (tiktoken / fancy-regex syntax).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_SPECIAL_TOKENS = 256
_NAMED_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
# The 256 special tokens in id order (offset from the first id after the BPE ranks).
SPECIAL_TOKEN_NAMES: tuple[str, ...] = _NAMED_SPECIALS + tuple(
    f"<|reserved_special_token_{i}|>" for i in range(3, 3 + NUM_SPECIAL_TOKENS - len(_NAMED_SPECIALS))
)

# tiktoken panics on some very long inputs; these are llama-models' limits.
TIKTOKEN_MAX_ENCODE_CHARS = 400_000
MAX_NO_WHITESPACES_CHARS = 25_000
_LONG_RUN = re.compile(
    rf"(?<!\S)\S{{{MAX_NO_WHITESPACES_CHARS + 1},}}|(?<!\s)\s{{{MAX_NO_WHITESPACES_CHARS + 1},}}"
)

SpecialSet = Literal["all"] | AbstractSet[str]


class TokenizerFileError(ValueError):
    """A tokenizer file is missing, unreadable or malformed; the message names the file."""


def load_tiktoken_bpe(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a tiktoken BPE file (``base64-token rank`` per line) into ``{token bytes: rank}``."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise TokenizerFileError(f"tokenizer file not found: {path}") from None
    except OSError as e:
        raise TokenizerFileError(f"cannot read tokenizer file {path}: {e}") from e
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
        except (ValueError, binascii.Error):
            shown = line[:80].decode("utf-8", "replace")
            raise TokenizerFileError(
                f"{path}, line {lineno}: expected '<base64 token> <rank>', got {shown!r}"
            ) from None
        if token in ranks or rank in seen_ranks or rank < 0:
            raise TokenizerFileError(f"{path}, line {lineno}: duplicate or negative token/rank {rank}")
        ranks[token] = rank
        seen_ranks.add(rank)
    if not ranks:
        raise TokenizerFileError(f"tokenizer file {path} holds no BPE ranks")
    return ranks


def dump_tiktoken_bpe(ranks: dict[bytes, int]) -> bytes:
    """The tiktoken file text for ``ranks``, in rank order."""
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    return b"".join(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n" for tok, rank in ordered)


def split_for_tiktoken(s: str) -> list[str]:
    """Cut ``s`` exactly where llama-models does: into 400,000-character chunks, then
    before character 25,001, 50,001, ... of every run of whitespace or non-whitespace."""
    pieces: list[str] = []
    for start in range(0, len(s), TIKTOKEN_MAX_ENCODE_CHARS):
        chunk = s[start : start + TIKTOKEN_MAX_ENCODE_CHARS]
        cuts = [0]
        if len(chunk) > MAX_NO_WHITESPACES_CHARS:
            for m in _LONG_RUN.finditer(chunk):
                cuts.extend(range(m.start() + MAX_NO_WHITESPACES_CHARS, m.end(), MAX_NO_WHITESPACES_CHARS))
        cuts.append(len(chunk))
        pieces.extend(chunk[a:b] for a, b in zip(cuts, cuts[1:], strict=False))
    return pieces or [""]


class Tokenizer:
    """Llama 3 tokenizer (tiktoken BPE ranks + special tokens).

    Build it with :meth:`from_file` (``tokenizer.model`` or ``tokenizer.json``),
    :meth:`from_dir` (a model directory) or :meth:`load` (either).
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        *,
        pattern: str = LLAMA3_PATTERN,
        name: str = "llama3",
    ) -> None:
        self.mergeable_ranks = mergeable_ranks
        self.num_base_tokens = max(mergeable_ranks.values()) + 1
        if special_tokens is None:
            special_tokens = {t: self.num_base_tokens + i for i, t in enumerate(SPECIAL_TOKEN_NAMES)}
        self.special_tokens: dict[str, int] = dict(special_tokens)
        self.pattern = pattern
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing:
            raise ValueError(f"BPE ranks lack {len(missing)} single-byte tokens (e.g. byte {missing[0]})")
        clash = [t for t, i in self.special_tokens.items() if i < self.num_base_tokens]
        if clash:
            bad = clash[0]
            raise ValueError(f"special token {bad} has id {self.special_tokens[bad]} inside the BPE ranks")
        self.model = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens
        )
        self.n_words: int = max([self.num_base_tokens - 1, *self.special_tokens.values()]) + 1
        self._id_to_special = {i: t for t, i in self.special_tokens.items()}

        self.bos_id = self._role_id("<|begin_of_text|>")
        self.eos_id = self._role_id("<|end_of_text|>")
        self.pad_id = self._role_id("<|finetune_right_pad_id|>")
        self.start_header_id = self._role_id("<|start_header_id|>")
        self.end_header_id = self._role_id("<|end_header_id|>")
        self.eom_id = self._role_id("<|eom_id|>")
        self.eot_id = self._role_id("<|eot_id|>")
        self.python_tag_id = self._role_id("<|python_tag|>")
        self.stop_tokens: list[int] = [self.eos_id, self.eom_id, self.eot_id]

    def _role_id(self, name: str) -> int:
        """Id of a Llama 3 special token: by name, else by its fixed place after the ranks
        (files that name reserved ids differently still mean the same ids)."""
        if name in self.special_tokens:
            return self.special_tokens[name]
        token_id = self.num_base_tokens + SPECIAL_TOKEN_NAMES.index(name)
        if token_id not in self._id_to_special:
            raise ValueError(f"the special tokens have no {name} (nor any token at its id {token_id})")
        return token_id

    # -- loading and saving -------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """From a tiktoken ``tokenizer.model`` file, or a Hugging Face ``tokenizer.json``."""
        path = Path(path)
        if path.suffix == ".json":
            from herd.tokenizer.hf_files import read_tokenizer_json

            ranks, specials, pattern = read_tokenizer_json(path)
        else:
            ranks, specials, pattern = load_tiktoken_bpe(path), None, LLAMA3_PATTERN
        try:
            return cls(ranks, specials, pattern=pattern, name=path.name)
        except ValueError as e:
            raise TokenizerFileError(f"{path}: {e}") from e

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """From a model directory: ``tokenizer.model``, ``original/tokenizer.model`` or
        ``tokenizer.json``, the first that exists."""
        root = Path(path)
        if not root.is_dir():
            raise TokenizerFileError(f"not a directory: {root}")
        for candidate in ("tokenizer.model", "original/tokenizer.model", "tokenizer.json"):
            if (root / candidate).is_file():
                return cls.from_file(root / candidate)
        raise TokenizerFileError(
            f"no tokenizer in {root} (looked for tokenizer.model, original/tokenizer.model, tokenizer.json)"
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """From a directory (see :meth:`from_dir`) or a file (see :meth:`from_file`)."""
        return cls.from_dir(path) if Path(path).is_dir() else cls.from_file(path)

    def save(self, directory: str | os.PathLike, **hf_options: Any) -> None:
        """Write ``tokenizer.model``, ``tokenizer.json`` and ``tokenizer_config.json`` into
        ``directory`` (options as for :func:`herd.tokenizer.hf_files.hf_tokenizer_files`:
        ``eos_token``, ``chat_template``, ``model_max_length``)."""
        from herd.tokenizer.hf_files import atomic_write, hf_tokenizer_files

        files: dict[str, str | bytes] = {"tokenizer.model": dump_tiktoken_bpe(self.mergeable_ranks)}
        files.update(hf_tokenizer_files(self, **hf_options))
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            atomic_write(directory / name, data)

    # -- properties ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.n_words

    @cached_property
    def hash(self) -> str:
        """sha256 of the pattern, the ranks and the special tokens: equal hashes mean the
        same ids for every text."""
        h = hashlib.sha256()
        h.update(self.pattern.encode() + b"\0")
        h.update(dump_tiktoken_bpe(self.mergeable_ranks))
        for name, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1]):
            h.update(f"{i} {name}\n".encode())
        return h.hexdigest()

    def is_special(self, token_id: int) -> bool:
        return token_id in self._id_to_special

    def __repr__(self) -> str:
        return f"Tokenizer(n_words={self.n_words}, hash={self.hash[:12]})"

    # -- encoding -----------------------------------------------------------------------

    def encode(
        self,
        s: str,
        *,
        bos: bool = False,
        eos: bool = False,
        allowed_special: SpecialSet = (),
        disallowed_special: SpecialSet | Collection[str] = (),
    ) -> list[int]:
        """Token ids of ``s``. Special-token text is plain text unless ``allowed_special``
        names it (``"all"`` for every one); ``disallowed_special`` names those that raise."""
        if not isinstance(s, str):
            raise TypeError(f"encode expects str, got {type(s).__name__}")
        allowed = allowed_special if allowed_special == "all" else set(allowed_special)
        ids: list[int] = [self.bos_id] if bos else []
        for piece in split_for_tiktoken(s):
            ids.extend(
                self.model.encode(piece, allowed_special=allowed, disallowed_special=disallowed_special)
            )
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        bos: bool = False,
        eos: bool = False,
        allowed_special: SpecialSet = (),
        disallowed_special: SpecialSet | Collection[str] = (),
        num_threads: int | None = None,
    ) -> list[list[int]]:
        """``[encode(t) for t in texts]``, on all cores (tiktoken drops the GIL)."""
        allowed = allowed_special if allowed_special == "all" else set(allowed_special)
        owners: list[int] = []
        pieces: list[str] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch: texts[{i}] is {type(text).__name__}, not str")
            split = split_for_tiktoken(text)
            pieces.extend(split)
            owners.extend([i] * len(split))
        threads = num_threads or os.cpu_count() or 1
        # Larger jobs than one piece per task keep the thread pool's overhead small.
        step = max(1, len(pieces) // (threads * 4))
        batches = [pieces[i : i + step] for i in range(0, len(pieces), step)]

        def run(batch: list[str]) -> list[list[int]]:
            return [
                self.model.encode(p, allowed_special=allowed, disallowed_special=disallowed_special)
                for p in batch
            ]

        if threads > 1 and len(batches) > 1:
            with ThreadPoolExecutor(threads) as pool:
                encoded = [ids for part in pool.map(run, batches) for ids in part]
        else:
            encoded = [ids for batch in batches for ids in run(batch)]
        out: list[list[int]] = [[self.bos_id] if bos else [] for _ in texts]
        for owner, ids in zip(owners, encoded, strict=True):
            out[owner].extend(ids)
        if eos:
            for ids in out:
                ids.append(self.eos_id)
        return out

    # -- decoding -----------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids`` concatenated (special tokens as their names)."""
        ids = list(ids)
        try:
            return self.model.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            bad = next((i for i in ids if not self._valid_id(i)), None)
            raise ValueError(f"token id {bad!r} is not in the vocabulary (n_words={self.n_words})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD, as in llama-models."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token."""
        if not self._valid_id(token_id):
            raise ValueError(f"token id {token_id!r} is not in the vocabulary (n_words={self.n_words})")
        return self.model.decode_single_token_bytes(token_id)

    def _valid_id(self, token_id: object) -> bool:
        try:
            i = operator.index(token_id)  # ints, and numpy / torch integer scalars
        except TypeError:
            return False
        return 0 <= i < self.num_base_tokens or i in self._id_to_special

    def stream(self) -> StreamingDecoder:
        """A decoder that turns ids fed one at a time into whole-character text deltas."""
        return StreamingDecoder(self)


class StreamingDecoder:
    """Incremental detokenizer: ``feed(id)`` returns the text completed so far, holding
    back bytes of a character that is not finished yet; ``flush()`` ends the stream
    (an unfinished character becomes U+FFFD). The deltas concatenate to ``decode(ids)``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer.decode_token_bytes(token_id))

    def feed_many(self, ids: Iterable[int]) -> str:
        return "".join(self.feed(i) for i in ids)

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    def __call__(self, ids: Iterable[int]) -> Iterator[str]:
        """Deltas for ``ids`` then the flush, skipping empty ones."""
        for i in ids:
            if delta := self.feed(i):
                yield delta
        if tail := self.flush():
            yield tail
