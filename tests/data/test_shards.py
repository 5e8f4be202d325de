"""Token shard format: round trip, dtypes, sidecars, validation and atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from herd.data import ShardError, ShardWriter, SidecarSpec, open_shard, open_shards, token_dtype, write_shard


def _docs(rng: np.random.Generator, n: int, vocab: int) -> list[list[int]]:
    return [[1, *rng.integers(3, vocab, int(rng.integers(0, 40))).tolist(), 2] for _ in range(n)]


@pytest.mark.parametrize(("vocab", "dtype"), [(1000, np.uint16), (65536, np.uint16), (128256, np.uint32)])
def test_round_trip(tmp_path, vocab, dtype):
    docs = _docs(np.random.default_rng(0), 50, vocab)
    docs[3] = [1, vocab - 1, 2]  # the largest id survives the narrow dtype
    info = write_shard(tmp_path / "s-00000", docs, tokenizer_hash="abc", bos_id=1, eos_id=2, vocab_size=vocab,
                       source="web", provenance={"mix": {"web": 1.0}})
    assert info.dtype == np.dtype(dtype).name
    shard = open_shard(tmp_path / "s-00000.bin")  # any of the file names opens it
    assert shard.tokens.dtype == dtype and isinstance(shard.tokens, np.memmap)
    assert shard.n_documents == 50 and shard.n_tokens == sum(map(len, docs))
    assert [shard.document(i).tolist() for i in range(50)] == docs
    assert shard.offsets.dtype == np.uint64
    assert shard.offsets.tolist() == np.cumsum([0] + [len(d) for d in docs]).tolist()
    assert (tmp_path / "s-00000.bin").stat().st_size == shard.n_tokens * np.dtype(dtype).itemsize
    sidecar = json.loads((tmp_path / "s-00000.json").read_text())
    assert sidecar["tokenizer_hash"] == "abc" and sidecar["bos_id"] == 1 and sidecar["eos_id"] == 2
    assert sidecar["vocab_size"] == vocab and sidecar["n_documents"] == 50 and sidecar["source"] == "web"
    assert sidecar["provenance"]["mix"] == {"web": 1.0} and sidecar["format_version"] == 1
    assert shard.mask is None


def test_token_dtype_boundary():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_loss_mask_and_wide_sidecar(tmp_path):
    docs = [[1, 5, 6, 2], [1, 7, 2]]
    masks = [[0, 0, 1, 1], [0, 1, 1]]
    write_shard(tmp_path / "sft", docs, tokenizer_hash="h", bos_id=1, eos_id=2, vocab_size=10, masks=masks)
    assert open_shard(tmp_path / "sft").mask.tolist() == [0, 0, 1, 1, 0, 1, 1]

    topk = {"topk_ids": SidecarSpec("uint32", 3), "topk_logprobs": SidecarSpec("float16", 3)}
    with ShardWriter(tmp_path / "distill", tokenizer_hash="h", bos_id=1, eos_id=2, vocab_size=10,
                     sidecars=topk) as w:
        w.add([1, 4, 2], topk_ids=np.arange(9).reshape(3, 3), topk_logprobs=-np.ones((3, 3)))
    shard = open_shard(tmp_path / "distill")
    assert shard.sidecar("topk_ids").shape == (3, 3) and shard.sidecar("topk_ids")[2].tolist() == [6, 7, 8]
    assert shard.sidecar("topk_logprobs").dtype == np.float16
    with pytest.raises(ValueError, match="shape"):
        ShardWriter(tmp_path / "bad", tokenizer_hash="h", bos_id=1, eos_id=2, vocab_size=10,
                    sidecars={"mask": SidecarSpec("uint8")}).add([1, 2], mask=[1])


@pytest.mark.parametrize("suffix", [".bin", ".idx", ".mask"])
def test_truncated_file_is_named(tmp_path, suffix):
    write_shard(tmp_path / "t", [[1, 5, 6, 2]] * 10, tokenizer_hash="h", bos_id=1, eos_id=2, vocab_size=10,
                masks=[[1, 1, 1, 1]] * 10)
    path = tmp_path / f"t{suffix}"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ShardError, match=rf"t\{suffix}.*truncated"):
        open_shard(tmp_path / "t")


def test_missing_sidecar_and_corrupt_offsets(tmp_path):
    write_shard(tmp_path / "t", [[1, 2], [1, 3, 2]], tokenizer_hash="h", bos_id=1, eos_id=2, vocab_size=10)
    offsets = np.fromfile(tmp_path / "t.idx", dtype=np.uint64)
    offsets[1] = 6  # past offsets[2] = 5: not non-decreasing
    offsets.tofile(tmp_path / "t.idx")
    with pytest.raises(ShardError, match=r"t\.idx"):
        open_shard(tmp_path / "t")
    (tmp_path / "t.json").unlink()
    with pytest.raises(ShardError, match=r"t\.json"):
        open_shard(tmp_path / "t")


def test_other_tokenizer_is_refused(tmp_path):
    write_shard(tmp_path / "a", [[1, 2]], tokenizer_hash="aaaa", bos_id=1, eos_id=2, vocab_size=10)
    write_shard(tmp_path / "b", [[1, 2]], tokenizer_hash="bbbb", bos_id=1, eos_id=2, vocab_size=10)
    assert len(open_shards([tmp_path / "a"], expect_tokenizer_hash="aaaa")) == 1
    with pytest.raises(ShardError, match=r"b\.json.*tokenizer bbbb"):
        open_shards([tmp_path / "a", tmp_path / "b"], expect_tokenizer_hash="aaaa")
    with pytest.raises(ShardError, match=r"b\.json"):  # shards must also agree among themselves
        open_shards([tmp_path / "a", tmp_path / "b"])


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        with ShardWriter(tmp_path / "x", tokenizer_hash="h", bos_id=1, eos_id=2, vocab_size=10) as w:
            w.add([1, 5, 2])
            w.add([1, 10, 2])
    assert list(tmp_path.iterdir()) == []
