"""Which KV-cache block holds what: a free list, reference counts and the prefix cache.

The paged cache is ``num_blocks`` blocks of ``block_size`` token slots. A request owns a
block table (the ids of its blocks, in order); block ``table[i]`` holds the keys and
values of its tokens ``i * block_size .. (i + 1) * block_size - 1``. Blocks are handed
out one at a time as a request grows, so memory follows the tokens that exist, not the
longest sequence a request could reach.

Prefix caching (vLLM's scheme): once a block is full, it is registered under a hash of
its tokens *and of every token before it* (a chain hash: the parent block's hash goes
into the child's), so two requests that start with the same system prompt find the same
blocks. A full block is never written again, so sharing it is safe; ``refcount`` counts
the requests that use it. When the last user lets go, a registered block is not wiped:
it waits in an LRU list, still findable, and is recycled only when the free list is
empty. A block nobody uses is always either on the free list or in that LRU list, so
``num_used == 0`` once every request has finished or been cancelled (no leak).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence


class NoFreeBlocks(RuntimeError):
    """Raised by ``allocate`` when the cache is full (the scheduler checks first)."""


def block_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """Chain hashes of the full blocks of ``tokens`` (a partial last block has none)."""
    out: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start:start + block_size])))
        out.append(parent)
    return out


class BlockManager:
    """Hands out block ids; tracks their users and the hashes of full, cached blocks."""

    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"BlockManager needs num_blocks and block_size > 0, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.refcount = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # refcount 0 but cached, LRU first
        self._hash_of: dict[int, int] = {}  # block id -> chain hash (registered blocks only)
        self._block_of: dict[int, int] = {}  # chain hash -> block id
        self.hits = 0  # prefix-cache blocks reused
        self.queries = 0  # full blocks looked up

    # ------------------------------------------------------------------ counts

    @property
    def num_free(self) -> int:
        """Blocks that ``allocate`` can hand out now (free or evictable cached blocks)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ------------------------------------------------------------------ allocation

    def allocate(self, n: int) -> list[int]:
        """``n`` blocks for one request (refcount 1), from the free list first, then by
        recycling the least recently used cached block (its hash is forgotten)."""
        if n > self.num_free:
            raise NoFreeBlocks(f"asked for {n} KV blocks, {self.num_free} free")
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._block_of[self._hash_of.pop(block)]
            self.refcount[block] = 1
            out.append(block)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block (a finished, cancelled or preempted request).
        Freed in reverse, so a request's tail blocks are recycled before its prefix."""
        for block in reversed(blocks):
            if self.refcount[block] <= 0:
                raise RuntimeError(f"KV block {block} freed more often than it was allocated")
            self.refcount[block] -= 1
            if self.refcount[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    # ------------------------------------------------------------------ prefix cache

    def match_prefix(self, hashes: Sequence[int]) -> list[int]:
        """The cached blocks holding the longest run of leading full blocks with these
        chain hashes; each gets one more reference (the caller now uses it)."""
        if not self.prefix_caching:
            return []
        out = []
        for h in hashes:
            block = self._block_of.get(h)
            if block is None:
                break
            out.append(block)
        self.queries += len(hashes)
        self.hits += len(out)
        for block in out:
            if self.refcount[block] == 0:
                del self._evictable[block]
            self.refcount[block] += 1
        return out

    def register(self, block: int, chain_hash: int) -> None:
        """Record that ``block`` is full and holds the tokens behind ``chain_hash``. When
        another block already holds them (two requests computed the same prefix at once),
        this one stays private and is freed normally."""
        if not self.prefix_caching or chain_hash in self._block_of or block in self._hash_of:
            return
        self._block_of[chain_hash] = block
        self._hash_of[block] = chain_hash

    def cached_blocks(self) -> int:
        return len(self._block_of)
