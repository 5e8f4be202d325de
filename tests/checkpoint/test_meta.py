"""Meta's layout (params.json + consolidated.NN.pth) against Meta's own reference code."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from herd.checkpoint import (
    CheckpointError,
    args_from_hf_config,
    args_from_params,
    convert_meta_to_hf,
    hf_config_from_args,
    load_meta,
    load_meta_with_params,
    params_from_args,
    read_meta_params,
    save_meta,
)
from herd.model import PRESETS, RopeScaling
from tests.checkpoint.helpers import (
    assert_logits_close,
    meta_reference_logits,
    meta_reference_merge,
    random_tiny,
    tokens,
)

# Meta's reference apply_scaling hard-codes factor 8 over an 8192-token original context:
# RopeScaling()'s defaults. The three cases cover GQA + scaling, tied + one KV head, MHA.
META_CASES = {
    "tiny": dict(rope_scaling=RopeScaling()),
    "tiny-tied": dict(rope_scaling=RopeScaling()),
    "tiny-nope": dict(),
}


def load_pth(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def params_of(root: Path) -> dict:
    return json.loads((root / "params.json").read_text())


@pytest.mark.parametrize("case", list(META_CASES))
def test_meta_layout_matches_meta_reference_forward(case, tmp_path):
    model = random_tiny(case, **META_CASES[case])
    save_meta(model, tmp_path / "m")
    x = tokens(1000)
    state, params = load_pth(tmp_path / "m" / "consolidated.00.pth"), params_of(tmp_path / "m")
    reference = meta_reference_logits(state, params, x)
    with torch.no_grad():
        assert_logits_close(model(x), reference)  # save_meta wrote Meta's names and rotary layout
        factor = 8 if model.args.rope_scaling else None
        loaded = load_meta(tmp_path / "m", rope_scaling_factor=factor)
        assert_logits_close(loaded(x), reference)
    assert ("output.weight" in state) == (not model.args.tie_word_embeddings)
    assert loaded.args.tie_word_embeddings == model.args.tie_word_embeddings
    assert loaded.args.rope_scaling == model.args.rope_scaling


def test_two_model_parallel_shards_merge_as_meta_merges_them(tmp_path):
    model = random_tiny("tiny", rope_scaling=RopeScaling())
    save_meta(model, tmp_path / "mp1")
    save_meta(model, tmp_path / "mp2", model_parallel=2)
    shards = [load_pth(tmp_path / "mp2" / f"consolidated.0{i}.pth") for i in range(2)]
    single = load_pth(tmp_path / "mp1" / "consolidated.00.pth")
    assert shards[0]["layers.0.attention.wq.weight"].shape == (32, 64)  # really split
    assert shards[0]["layers.0.attention.wo.weight"].shape == (64, 32)
    assert shards[0]["tok_embeddings.weight"].shape == (500, 64)
    merged_by_meta = meta_reference_merge(shards)
    assert merged_by_meta.keys() == single.keys()
    assert all(torch.equal(merged_by_meta[k], single[k]) for k in single)
    x = tokens(1000)
    with torch.no_grad():
        got = load_meta(tmp_path / "mp2", rope_scaling_factor=8)(x)
    assert_logits_close(got, meta_reference_logits(single, params_of(tmp_path / "mp1"), x))


def test_head_equal_to_embedding_means_tied(tmp_path):
    model = random_tiny("tiny-tied", rope_scaling=RopeScaling())
    save_meta(model, tmp_path / "m")
    path = tmp_path / "m" / "consolidated.00.pth"
    state = load_pth(path)
    state["output.weight"] = state["tok_embeddings.weight"].clone()  # as Llama 3.2 1B/3B store it
    torch.save(state, path)
    loaded = load_meta(tmp_path / "m", rope_scaling_factor=8)
    assert loaded.args.tie_word_embeddings and loaded.lm_head.weight is loaded.model.embed_tokens.weight


# ----------------------------------------------------------------------------- RoPE scaling


_COMMON = {"norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 128256}
PUBLISHED_PARAMS = {  # params.json of Meta's releases
    "llama3.2-1b": {"dim": 2048, "ffn_dim_multiplier": 1.5, "multiple_of": 256, "n_heads": 32,
                    "n_kv_heads": 8, "n_layers": 16, "use_scaled_rope": True, **_COMMON},
    "llama3.2-3b": {"dim": 3072, "ffn_dim_multiplier": 1.0, "multiple_of": 256, "n_heads": 24,
                    "n_kv_heads": 8, "n_layers": 28, "use_scaled_rope": True, **_COMMON},
    "llama3.1-8b": {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32,
                    "n_kv_heads": 8, "n_layers": 32, "use_scaled_rope": True, **_COMMON},
    "llama3.1-70b": {"dim": 8192, "ffn_dim_multiplier": 1.3, "multiple_of": 4096, "n_heads": 64,
                     "n_kv_heads": 8, "n_layers": 80, "use_scaled_rope": True, **_COMMON},
    "llama3-8b": {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32,
                  "n_kv_heads": 8, "n_layers": 32, **_COMMON},
}


@pytest.mark.parametrize(("release", "factor", "ffn"), [
    ("llama3.2-1b", 32, 8192), ("llama3.2-3b", 32, 8192), ("llama3.1-8b", 8, 14336),
    ("llama3.1-70b", 8, 28672), ("llama3-8b", None, 14336),
])
def test_scaling_factor_comes_from_the_preset_of_the_same_shape(release, factor, ffn):
    info = args_from_params(PUBLISHED_PARAMS[release])
    assert info.preset == release and info.args.ffn_dim == ffn  # HF intermediate_size of the release
    if factor is None:
        assert info.args.rope_scaling is None and "use_scaled_rope is false" in info.rope_scaling_source
    else:
        assert info.args.rope_scaling == RopeScaling(factor=factor)
        assert info.rope_scaling_source == f"rope scaling factor {factor} from preset {release}"
        assert info.args.max_seq_len == 131072


def test_params_written_for_a_hf_config_are_metas_published_ones():
    for release in ("llama3.2-1b", "llama3.1-8b"):
        from_hf = args_from_hf_config(hf_config_from_args(PRESETS[release], torch.bfloat16))
        assert from_hf.hidden_dim is not None  # config.json gives the FFN width only
        assert params_from_args(from_hf) == PUBLISHED_PARAMS[release]


def test_override_wins_and_is_reported():
    info = args_from_params(PUBLISHED_PARAMS["llama3.2-1b"], rope_scaling_factor=16)
    assert info.args.rope_scaling == RopeScaling(factor=16.0)
    assert info.rope_scaling_source == "rope scaling factor 16 from the rope_scaling_factor argument"


def test_unknown_shape_without_override_asks_for_the_factor():
    params = {**PUBLISHED_PARAMS["llama3.1-8b"], "n_layers": 7}
    with pytest.raises(CheckpointError, match="pass rope_scaling_factor"):
        args_from_params(params)
    assert args_from_params(params, rope_scaling_factor=8).args.rope_scaling.factor == 8


def test_preset_scaling_is_used_and_logged_when_loading(tmp_path, caplog):
    model = random_tiny("tiny-tied", vocab_size=128256, bos_token_id=128000, eos_token_id=128001)
    save_meta(model, tmp_path / "m")
    assert params_of(tmp_path / "m")["use_scaled_rope"] is True
    with caplog.at_level(logging.INFO, logger="herd.checkpoint"):
        loaded, info = load_meta_with_params(tmp_path / "m")
    assert info.preset == "tiny-tied" and loaded.args.rope_scaling == PRESETS["tiny-tied"].rope_scaling
    assert "rope scaling factor 32 from preset tiny-tied" in caplog.text
    assert loaded.args.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


# ----------------------------------------------------------------------------- conversion


def test_convert_meta_to_hf_gives_transformers_the_meta_reference_logits(tmp_path, llama3_tokenizer_path):
    model = random_tiny("tiny", rope_scaling=RopeScaling())
    save_meta(model, tmp_path / "meta", model_parallel=2, tokenizer=llama3_tokenizer_path)
    report = convert_meta_to_hf(tmp_path / "meta", tmp_path / "hf", rope_scaling_factor=8, dtype="float32")
    assert report["rope_scaling_source"] == "rope scaling factor 8 from the rope_scaling_factor argument"
    assert report["rope_scaling"]["factor"] == 8.0 and report["dtype"] == "float32"
    carried = (tmp_path / "hf" / "tokenizer.model").read_text().split()  # base64 token, rank, ...
    assert carried == llama3_tokenizer_path.read_text().split()
    peer = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    shards = [load_pth(tmp_path / "meta" / f"consolidated.0{i}.pth") for i in range(2)]
    x = tokens(1000)
    reference = meta_reference_logits(meta_reference_merge(shards), params_of(tmp_path / "meta"), x)
    with torch.no_grad():
        assert_logits_close(peer(x).logits, reference)


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def meta_dir(tmp_path) -> Path:
    return save_meta(random_tiny("tiny-nope"), tmp_path / "meta", model_parallel=2)


def edit_shards(root: Path, edit) -> None:
    for path in sorted(root.glob("consolidated.*.pth")):
        state = load_pth(path)
        edit(state)
        torch.save(state, path)


def raises(root: Path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_meta(root)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"


def test_meta_missing_tensor_is_named(meta_dir):
    edit_shards(meta_dir, lambda s: s.pop("layers.1.feed_forward.w3.weight"))
    raises(meta_dir, "missing tensor(s) layers.1.feed_forward.w3.weight")


def test_meta_extra_tensor_is_named(meta_dir):
    edit_shards(meta_dir, lambda s: s.update({"layers.0.attention.wq.bias": torch.zeros(24)}))
    raises(meta_dir, "unexpected tensor(s) layers.0.attention.wq.bias")


def test_meta_misshaped_tensor_is_named(meta_dir):
    edit_shards(meta_dir, lambda s: s.update({"layers.0.ffn_norm.weight": torch.ones(47)}))
    raises(meta_dir, "layers.0.ffn_norm.weight: expected (48,), found (47,)")


def test_meta_tensor_in_only_one_shard(meta_dir):
    path = meta_dir / "consolidated.01.pth"
    state = load_pth(path)
    del state["layers.0.attention.wk.weight"]
    torch.save(state, path)
    raises(meta_dir, "layers.0.attention.wk.weight is missing from consolidated.01.pth")


def test_meta_missing_shard(meta_dir):
    (meta_dir / "consolidated.00.pth").unlink()
    raises(meta_dir, "lacks model-parallel shard(s) consolidated.00.pth")


def test_meta_truncated_shard(meta_dir):
    path = meta_dir / "consolidated.01.pth"
    path.write_bytes(path.read_bytes()[:1000])
    raises(meta_dir, str(path), "corrupt or truncated")


def test_meta_params_contradicting_weights(meta_dir):
    (meta_dir / "params.json").write_text(json.dumps({**params_of(meta_dir), "n_layers": 3}))
    raises(meta_dir, "n_layers=3, but the weights hold layers 0..1")


def test_meta_missing_params(meta_dir):
    (meta_dir / "params.json").unlink()
    raises(meta_dir, "missing params.json")


def test_meta_vision_params_are_refused(meta_dir):
    (meta_dir / "params.json").write_text(json.dumps({**params_of(meta_dir), "vision_chunk_size": 560}))
    with pytest.raises(CheckpointError, match="vision"):
        read_meta_params(meta_dir)
