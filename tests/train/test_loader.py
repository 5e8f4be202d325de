"""PackedLoader: packing with document ids, mixing, data-parallel slices, resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from herd.data import ShardError, write_shard
from herd.train.loader import IGNORE_INDEX, PackedLoader, Source

BOS, EOS, VOCAB = 1, 2, 2000


def _make_source(tmp_path, name, n_docs, length_range, token_range, *, n_shards=2, seed=0, masks=False,
                 tokenizer_hash="tok"):
    """Shards of random documents whose tokens lie in ``token_range`` (so a token tells its source)."""
    rng = np.random.default_rng(seed)
    docs = [[BOS, *rng.integers(*token_range, int(rng.integers(*length_range))).tolist(), EOS]
            for _ in range(n_docs)]
    doc_masks = [rng.integers(0, 2, len(d)).tolist() for d in docs] if masks else None
    paths = []
    for k in range(n_shards):
        part = slice(k * n_docs // n_shards, (k + 1) * n_docs // n_shards)
        paths.append(tmp_path / f"{name}-{k:05d}")
        write_shard(paths[-1], docs[part], tokenizer_hash=tokenizer_hash, bos_id=BOS, eos_id=EOS,
                    vocab_size=VOCAB, source=name, masks=doc_masks[part] if masks else None)
    return Source(name, paths), docs, doc_masks


@pytest.fixture
def web(tmp_path):
    return _make_source(tmp_path, "web", 60, (3, 30), (3, 1000))


@pytest.fixture
def two_sources(tmp_path):
    short = _make_source(tmp_path, "short", 400, (2, 12), (3, 1000), seed=1)[0]
    long = _make_source(tmp_path, "long", 100, (40, 120), (1000, 2000), seed=2)[0]
    return short, long


def _rows(loader, steps):
    """Concatenate the batches of ``steps`` (a list of global_rows) along the row axis."""
    batches = [loader.next_batch(g) for g in steps]
    return {k: torch.cat([getattr(b, k) for b in batches]) for k in ("tokens", "labels", "document_ids", "positions")}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_labels_are_next_token_of_same_document(web):
    source, _, _ = web
    rows = _rows(PackedLoader([source], 16), [4] * 10)
    tokens, labels, ids = rows["tokens"], rows["labels"], rows["document_ids"]
    inner = labels[:, :-1]
    same_doc = ids[:, 1:] == ids[:, :-1]
    assert torch.equal(inner[same_doc], tokens[:, 1:][same_doc])
    assert torch.all(inner[~same_doc] == IGNORE_INDEX) and (~same_doc).any()
    # The last label of a row is the first token of the next row (rows share one token).
    last_ok = labels[:-1, -1] != IGNORE_INDEX
    assert torch.equal(labels[:-1, -1][last_ok], tokens[1:, 0][last_ok])
    assert torch.all(labels[:-1, -1][~last_ok] == IGNORE_INDEX)
    assert torch.all(tokens[1:, 0][~last_ok] == BOS)  # a new document starts exactly there
    assert (labels != IGNORE_INDEX).sum() > 0.9 * labels.numel()


def test_document_ids_and_positions_follow_the_offsets(web):
    source, docs, _ = web
    rows = _rows(PackedLoader([source], 16), [2] * 80)  # 2560 tokens: over two epochs of ~1000
    stream = rows["tokens"].flatten().tolist()
    ids = rows["document_ids"].flatten().tolist()
    positions = rows["positions"].flatten().tolist()
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            runs.append((start, i))
            start = i
    assert len({ids[s] for s, _ in runs}) == len(runs)  # a document's tokens are contiguous
    by_content = {tuple(d): i for i, d in enumerate(docs)}
    seen = []
    for s, e in runs[:-1]:  # the last run may be cut by the end of the data taken
        assert positions[s:e] == list(range(e - s))  # restart at 0, continue across rows
        seen.append(by_content[tuple(stream[s:e])])  # each run is exactly one whole document
    # Each epoch is a permutation of the source's documents, reshuffled per epoch.
    assert sorted(seen[:60]) == list(range(60)) and seen[:60] != seen[60:120]
    assert sorted(seen[60:120]) == list(range(60))


def test_without_document_masking(web):
    source, _, _ = web
    masked = _rows(PackedLoader([source], 16), [4] * 3)
    plain = _rows(PackedLoader([source], 16, document_masking=False), [4] * 3)
    assert torch.equal(masked["tokens"], plain["tokens"]) and torch.equal(masked["labels"], plain["labels"])
    assert torch.all(plain["document_ids"] == 0)
    assert torch.equal(plain["positions"], torch.arange(16).expand(12, 16))


def test_a_directory_stands_for_its_shards(web):
    source, _, _ = web
    from_dir = _rows(PackedLoader([Source("web", [source.paths[0].parent])], 16), [4] * 3)
    assert _same(from_dir, _rows(PackedLoader([source], 16), [4] * 3))


def test_deterministic_and_seeded(web):
    source, _, _ = web
    a = _rows(PackedLoader([source], 16, seed=3), [4] * 5)
    b = _rows(PackedLoader([source], 16, seed=3), [4] * 5)
    c = _rows(PackedLoader([source], 16, seed=4), [4] * 5)
    assert _same(a, b) and not torch.equal(a["tokens"], c["tokens"])


def test_mixing_weights_are_token_shares(two_sources):
    short, long = two_sources
    short.weight, long.weight = 3.0, 1.0
    loader = PackedLoader([short, long], 64, seed=5)
    tokens = _rows(loader, [32] * 40)["tokens"]
    share_short = (tokens < 1000).sum().item() / tokens.numel()  # BOS/EOS count with "short": tiny bias
    assert abs(share_short - 0.75) < 0.04
    mix = loader.mix()
    assert abs(mix["short"]["share"] - share_short) < 0.01 and mix["short"]["weight"] == 0.75
    assert mix["long"]["tokens"] + mix["short"]["tokens"] == 40 * 32 * 64
    assert mix["short"]["epoch"] >= 1  # 400 short documents were used up and reshuffled


@pytest.mark.parametrize("world", [2, 4])
def test_data_parallel_slices_make_up_the_global_rows(two_sources, world):
    steps = [4, 8, 4, 12]
    single = _rows(PackedLoader(list(two_sources), 32, seed=1), steps)
    ranks = [_rows(PackedLoader(list(two_sources), 32, seed=1, rank=r, world_size=world), steps)
             for r in range(world)]
    joined = {}
    for k in single:  # each step's global rows are the ranks' slices in rank order
        parts, at = [], [0] * world
        for g in steps:
            n = g // world
            parts += [ranks[r][k][at[r] : at[r] + n] for r in range(world)]
            at = [a + n for a in at]
        joined[k] = torch.cat(parts)
    assert _same(single, joined)


def test_global_rows_must_divide_by_world_size(web):
    loader = PackedLoader([web[0]], 8, rank=1, world_size=2)
    with pytest.raises(ValueError, match="global_rows=3 .* world_size=2"):
        loader.next_batch(3)


def test_batch_size_ramp_keeps_the_stream(two_sources):
    ramp = _rows(PackedLoader(list(two_sources), 32), [2, 4, 8, 16])
    one_by_one = _rows(PackedLoader(list(two_sources), 32), [1] * 30)
    assert _same(ramp, one_by_one)


def test_resume_is_exact(two_sources):
    uninterrupted = PackedLoader(list(two_sources), 32, seed=2)
    _rows(uninterrupted, [4] * 7)
    expected = _rows(uninterrupted, [4, 8, 8])

    first = PackedLoader(list(two_sources), 32, seed=2)
    _rows(first, [4] * 7)
    state = json.loads(json.dumps(first.state_dict()))  # survives JSON
    assert len(json.dumps(state)) < 1000
    resumed = PackedLoader(list(two_sources), 32, seed=2)
    resumed.load_state_dict(state)
    assert _same(_rows(resumed, [4, 8, 8]), expected)
    assert resumed.mix() == uninterrupted.mix() and resumed.rows == uninterrupted.rows


def test_resume_at_another_world_size(two_sources):
    reference = PackedLoader(list(two_sources), 32, seed=9)
    _rows(reference, [4] * 5)
    expected = _rows(reference, [8, 8])

    saved = PackedLoader(list(two_sources), 32, seed=9, rank=0, world_size=2)
    _rows(saved, [4] * 5)
    state = json.loads(json.dumps(saved.state_dict()))
    for world in (1, 4):
        loaders = [PackedLoader(list(two_sources), 32, seed=9, rank=r, world_size=world) for r in range(world)]
        for loader in loaders:
            loader.load_state_dict(state)
        per_rank = [[loader.next_batch(8) for _ in range(2)] for loader in loaders]
        got = {k: torch.cat([getattr(per_rank[r][s], k) for s in range(2) for r in range(world)])
               for k in expected}
        assert _same(got, expected), f"world size {world}"


def test_resume_with_longer_rows_continues_at_the_next_token(web):
    source, _, _ = web
    short_rows = PackedLoader([source], 16)
    flat = _rows(short_rows, [2] * 20)["tokens"].flatten()
    first = PackedLoader([source], 16)
    _rows(first, [2] * 5)  # 160 tokens
    longer = PackedLoader([source], 64)
    longer.load_state_dict(first.state_dict())
    assert torch.equal(_rows(longer, [2, 1])["tokens"].flatten(), flat[160:160 + 192])


def test_sft_loss_mask_ignores_masked_targets(tmp_path):
    source, docs, masks = _make_source(tmp_path, "sft", 20, (2, 10), (3, 1000), masks=True)
    rows = _rows(PackedLoader([source], 8, document_masking=True), [1] * 12)
    mask_of = {}  # (document id, position) -> mask of that token
    by_content = {tuple(d): i for i, d in enumerate(docs)}
    ids, pos, labels, tokens = (rows[k].flatten().tolist() for k in ("document_ids", "positions", "labels", "tokens"))
    starts = [i for i in range(len(ids)) if pos[i] == 0]
    for s, e in zip(starts, starts[1:], strict=False):
        d = by_content[tuple(tokens[s:e])]
        for j in range(e - s):
            mask_of[(ids[s], j)] = masks[d][j]
    checked = 0
    for i in range(len(ids) - 1):
        target = (ids[i + 1], pos[i + 1])
        if ids[i + 1] == ids[i] and target in mask_of:
            assert (labels[i] == IGNORE_INDEX) == (mask_of[target] == 0)
            checked += 1
    assert checked > 40


def test_refuses_other_tokenizer_and_changed_sources(tmp_path, web):
    source, _, _ = web
    with pytest.raises(ShardError, match=r"web-00000\.json.*tokenizer"):
        PackedLoader([source], 8, tokenizer_hash="another")
    other = _make_source(tmp_path, "other", 5, (1, 4), (3, 100), tokenizer_hash="different")[0]
    with pytest.raises(ShardError, match=r"other-00000\.json"):
        PackedLoader([source, other], 8)
    state = PackedLoader([source], 8).state_dict()
    fewer = Source("web", source.paths[:1])
    with pytest.raises(ValueError, match="source 'web' changed"):
        PackedLoader([fewer], 8).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        PackedLoader([source], 8, seed=1).load_state_dict(state)
