"""Block accounting: free list, reference counts, the prefix cache's chain hashes and LRU reuse."""

from __future__ import annotations

import pytest

from herd.engine.block_manager import BlockManager, NoFreeBlocks, block_hashes


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, 4)
    a, b = bm.allocate(3), bm.allocate(5)
    assert sorted(a + b) == list(range(8)) and bm.num_free == 0 and bm.num_used == 8
    with pytest.raises(NoFreeBlocks):
        bm.allocate(1)
    bm.free(a)
    assert bm.num_free == 3
    bm.free(b)
    assert bm.num_used == 0
    with pytest.raises(RuntimeError, match="freed more often"):
        bm.free([a[0]])


def test_chain_hashes_depend_on_everything_before_the_block():
    x = block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    assert len(x) == 2  # the partial third block has no hash
    y = block_hashes([0, 2, 3, 4, 5, 6, 7, 8], 4)
    assert x[1] != y[1]  # same tokens in block 2, different prefix
    assert block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4) == x


def test_prefix_blocks_are_shared_counted_and_kept_after_release():
    bm = BlockManager(6, 2)
    hashes = block_hashes([1, 2, 3, 4, 5], 2)
    first = bm.allocate(2)
    for block, h in zip(first, hashes, strict=True):
        bm.register(block, h)
    shared = bm.match_prefix(hashes)
    assert shared == first and [bm.refcount[b] for b in first] == [2, 2]
    bm.free(first)
    bm.free(shared)
    assert bm.num_used == 0 and bm.cached_blocks() == 2  # unused, still findable
    again = bm.match_prefix(hashes)
    assert again == first and bm.num_used == 2
    assert bm.match_prefix(block_hashes([9, 9, 3, 4], 2)) == []  # a different first block matches nothing
    bm.free(again)


def test_cached_blocks_are_recycled_least_recently_used_first_when_free_runs_out():
    bm = BlockManager(3, 2)
    h = block_hashes([1, 2, 3, 4], 2)
    blocks = bm.allocate(2)
    bm.register(blocks[0], h[0])
    bm.register(blocks[1], h[1])
    bm.free(blocks)  # freed tail first: block 1 becomes the oldest cached entry
    assert bm.num_free == 3
    got = bm.allocate(2)  # the never-used block, then the LRU cached one
    assert blocks[1] in got and bm.cached_blocks() == 1
    assert bm.match_prefix(h) == [blocks[0]]  # h[1]'s block was recycled, h[0] still matches
    bm.free(got)
    bm.free([blocks[0]])
    assert bm.num_used == 0


def test_registering_a_prefix_twice_keeps_the_second_block_private():
    bm = BlockManager(4, 2)
    h = block_hashes([1, 2], 2)[0]
    a, b = bm.allocate(1)[0], bm.allocate(1)[0]
    bm.register(a, h)
    bm.register(b, h)
    bm.free([b])
    assert bm.cached_blocks() == 1 and bm.match_prefix([h]) == [a]
    bm.free([a, a])
    assert bm.num_used == 0
