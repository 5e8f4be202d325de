"""Data: token shards (the format training reads) and corpus tokenization."""

from herd.data.shards import (
    FORMAT_VERSION,
    Shard,
    ShardError,
    ShardInfo,
    ShardWriter,
    SidecarSpec,
    find_shards,
    open_shard,
    open_shards,
    token_dtype,
    write_shard,
)
from herd.data.tokenize import CorpusError, TokenizeSummary, tokenize_corpus

__all__ = [
    "FORMAT_VERSION",
    "CorpusError",
    "Shard",
    "ShardError",
    "ShardInfo",
    "ShardWriter",
    "SidecarSpec",
    "TokenizeSummary",
    "find_shards",
    "open_shard",
    "open_shards",
    "token_dtype",
    "tokenize_corpus",
    "write_shard",
]
