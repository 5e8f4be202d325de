"""herd's native (Hugging Face) layout against transformers' LlamaForCausalLM, the peer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from herd.checkpoint import find_tokenizer, load, load_pretrained, save_pretrained
from herd.model import Transformer
from tests.checkpoint.helpers import assert_logits_close, perturb, random_tiny, tokens

# Tiny configs, written out independently of herd's presets: GQA + llama3 RoPE scaling;
# tied embeddings + one KV head + factor 32; plain multi-head attention without scaling.
ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256}
CASES = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_scaling={**ROPE, "factor": 8.0}, tie_word_embeddings=False),
    "tiny-tied": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, rope_scaling={**ROPE, "factor": 32.0}, tie_word_embeddings=True),
    "tiny-nope": dict(hidden_size=48, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=6, rope_scaling=None, tie_word_embeddings=False),
}
COMMON = dict(vocab_size=1000, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=2048,
              bos_token_id=1, eos_token_id=[2, 3])


def peer_model(case: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**COMMON, **CASES[case])).eval()
    perturb(model, seed)
    return model


@torch.no_grad()
def peer_logits(model: LlamaForCausalLM, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_what_herd_saves(case, tmp_path):
    model = random_tiny(case)
    save_pretrained(model, tmp_path / "ckpt")
    peer = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    x = tokens(1000)
    with torch.no_grad():
        want = model(x)
    assert_logits_close(peer_logits(peer, x), want)
    assert peer.config.tie_word_embeddings == model.args.tie_word_embeddings
    if model.args.rope_scaling is not None:  # the scaling is read, not ignored: without it logits move
        config = LlamaConfig.from_pretrained(tmp_path / "ckpt")
        config.rope_parameters = {"rope_type": "default", "rope_theta": model.args.rope_theta}
        unscaled = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", config=config).eval()
        assert (peer_logits(unscaled, x) - want).abs().max() > 1e-2


@pytest.mark.parametrize("case", list(CASES))
def test_herd_loads_what_transformers_saves_in_both_config_dialects(case, tmp_path):
    peer = peer_model(case)
    peer.save_pretrained(tmp_path / "v5")
    config = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert "rope_parameters" in config and "rope_scaling" not in config  # transformers 5.x dialect
    x = tokens(1000)
    want = peer_logits(peer, x)
    with torch.no_grad():
        got5 = load_pretrained(tmp_path / "v5")(x)
    assert_logits_close(got5, want)

    # The same directory with a transformers 4.x config.json (rope_theta + rope_scaling, torch_dtype).
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    config["torch_dtype"] = config.pop("dtype")
    (tmp_path / "v5" / "config.json").write_text(json.dumps(config))
    herd4 = load_pretrained(tmp_path / "v5")
    with torch.no_grad():
        got4 = herd4(x)
    assert_logits_close(got4, want)
    if CASES[case]["rope_scaling"] is not None:
        assert herd4.args.rope_scaling.factor == CASES[case]["rope_scaling"]["factor"]
        unscaled = Transformer(herd4.args.replace(rope_scaling=None))
        unscaled.load_state_dict(herd4.state_dict())
        with torch.no_grad():
            assert (unscaled(x) - want).abs().max() > 1e-2  # the test would catch a dropped scaling


def test_config_and_generation_config_contents(tmp_path):
    model = random_tiny("tiny")
    save_pretrained(model, tmp_path / "c", dtype="bfloat16")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["torch_dtype"] == "bfloat16" and config["hidden_act"] == "silu"
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
    assert (config["hidden_size"], config["intermediate_size"], config["num_key_value_heads"]) == (64, 192, 2)
    assert config["pretraining_tp"] == 1 and config["attention_bias"] is False and config["mlp_bias"] is False
    generation = json.loads((tmp_path / "c" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "do_sample": True, "eos_token_id": [2, 3],
                          "temperature": 0.6, "top_p": 0.9}
    with safe_open(tmp_path / "c" / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"


def test_tied_embeddings_are_stored_once(tmp_path):
    model = random_tiny("tiny-tied")
    save_pretrained(model, tmp_path / "t")
    with safe_open(tmp_path / "t" / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    loaded = load_pretrained(tmp_path / "t")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert loaded.num_params() == model.num_params() == model.args.num_params()


def test_tied_checkpoint_that_also_stores_an_equal_head_loads(tmp_path):
    peer = peer_model("tiny-tied")
    peer.save_pretrained(tmp_path / "p")
    from safetensors.torch import load_file, save_file

    path = tmp_path / "p" / "model.safetensors"
    state = load_file(path)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, path, metadata={"format": "pt"})
    x = tokens(1000)
    assert_logits_close(load_pretrained(tmp_path / "p")(x).detach(), peer_logits(peer, x))


def test_sharded_save_round_trips_and_transformers_reads_it(tmp_path):
    model = random_tiny("tiny")
    save_pretrained(model, tmp_path / "s", max_shard_size="150KB")
    shards = sorted(p.name for p in (tmp_path / "s").glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "s" / "model.safetensors").exists()
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    sizes, where = 0, {}
    for name in shards:
        with safe_open(tmp_path / "s" / name, "pt") as f:
            shard_bytes = [f.get_tensor(key).nbytes for key in f.keys()]
            assert sum(shard_bytes) <= 150_000 or len(shard_bytes) == 1  # a bigger tensor sits alone
            where.update(dict.fromkeys(f.keys(), name))
            sizes += sum(shard_bytes)
    assert index["weight_map"] == where and index["metadata"]["total_size"] == sizes
    assert set(where) == set(model.state_dict())
    loaded = load_pretrained(tmp_path / "s")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = tokens(1000)
    peer = LlamaForCausalLM.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        assert_logits_close(peer_logits(peer, x), model(x))


def test_resaving_replaces_old_shards_and_keeps_other_files(tmp_path):
    model = random_tiny("tiny")
    save_pretrained(model, tmp_path / "r", max_shard_size="150KB")
    (tmp_path / "r" / "README.md").write_text("notes")
    save_pretrained(model, tmp_path / "r")
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "model.safetensors"]
    assert torch.equal(load_pretrained(tmp_path / "r").lm_head.weight, model.lm_head.weight)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_dtype_on_load_and_on_save(tmp_path):
    model = random_tiny("tiny")
    save_pretrained(model, tmp_path / "f32")
    bf = load_pretrained(tmp_path / "f32", dtype=torch.bfloat16)
    assert {p.dtype for p in bf.parameters()} == {torch.bfloat16}
    x = tokens(1000, seq_len=64)
    with torch.no_grad():
        ref, got = model(x), bf(x).float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert {p.dtype for p in load_pretrained(tmp_path / "f32").parameters()} == {torch.float32}
    save_pretrained(model, tmp_path / "bf16", dtype=torch.bfloat16)
    assert {p.dtype for p in load_pretrained(tmp_path / "bf16").parameters()} == {torch.bfloat16}  # config's


class ExplodingTokenizer:
    def save(self, directory):
        (directory / "tokenizer.model").write_text("partial")
        raise OSError("disk full")


def test_a_failed_save_leaves_nothing_half_written(tmp_path):
    model = random_tiny("tiny")
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, tmp_path / "new", tokenizer=ExplodingTokenizer())
    assert list(tmp_path.iterdir()) == []
    save_pretrained(model, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(random_tiny("tiny", seed=1), tmp_path / "old", tokenizer=ExplodingTokenizer())
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_tokenizer_file_is_copied_and_found(tmp_path, llama3_tokenizer_path):
    save_pretrained(random_tiny("tiny"), tmp_path / "k", tokenizer=llama3_tokenizer_path)
    assert (tmp_path / "k" / "tokenizer.model").read_bytes() == llama3_tokenizer_path.read_bytes()
    assert find_tokenizer(tmp_path / "k") == tmp_path / "k" / "tokenizer.model"


def test_herd_tokenizer_is_saved_and_loaded_beside_the_weights(tmp_path, llama3_tokenizer_path):
    tokenizer_module = pytest.importorskip("herd.tokenizer")
    if not hasattr(tokenizer_module, "Tokenizer"):
        pytest.skip("herd.tokenizer.Tokenizer is not written yet")
    tok = tokenizer_module.Tokenizer.from_file(llama3_tokenizer_path)
    model = random_tiny("tiny", vocab_size=128256, bos_token_id=128000, eos_token_id=128001)
    save_pretrained(model, tmp_path / "w", tokenizer=tok)
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (tmp_path / "w").iterdir()}
    loaded, loaded_tok = load(tmp_path / "w")
    assert loaded_tok.vocab_size == 128256
    text = "hello world"
    assert loaded_tok.encode(text, bos=False, eos=False) == tok.encode(text, bos=False, eos=False)


def test_compiled_model_saves_under_plain_names(tmp_path):
    model = random_tiny("tiny-nope")
    save_pretrained(torch.compile(model), tmp_path / "c")  # no forward: nothing is compiled
    with safe_open(tmp_path / "c" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(model.state_dict())


def test_rotary_buffers_saved_by_old_transformers_are_skipped(tmp_path):
    from safetensors.torch import load_file, save_file

    model = random_tiny("tiny-nope")
    path = save_pretrained(model, tmp_path / "old") / "model.safetensors"
    state = load_file(path)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(state, path, metadata={"format": "pt"})
    assert torch.equal(load_pretrained(tmp_path / "old").lm_head.weight, model.lm_head.weight)
