"""The network against transformers' LlamaForCausalLM (the peer), and its own invariants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from herd.model import PRESETS, ModelArgs, RopeScaling, Transformer, rope_inv_freq

transformers = pytest.importorskip("transformers")


def hf_config(args: ModelArgs):
    """An equivalent transformers LlamaConfig, written independently of herd's checkpoint code."""
    rope = None
    if args.rope_scaling is not None:
        rope = dict(rope_type="llama3", **dataclasses.asdict(args.rope_scaling))
    return transformers.LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        rms_norm_eps=args.norm_eps,
        max_position_embeddings=args.max_seq_len,
        rope_theta=args.rope_theta,
        rope_scaling=rope,
        tie_word_embeddings=args.tie_word_embeddings,
        attn_implementation="eager",
    )


def hf_twin(model: Transformer):
    hf = transformers.LlamaForCausalLM(hf_config(model.args)).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return hf


@pytest.mark.parametrize("preset", PRESETS)
def test_rope_inverse_frequencies_equal_transformers_exactly(preset):
    args = PRESETS[preset]
    cfg = hf_config(args)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if args.rope_scaling is None:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        expected = LlamaRotaryEmbedding(cfg).inv_freq
    else:
        expected, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    assert torch.equal(rope_inv_freq(args), expected)


def test_presets_match_published_parameter_counts():
    published = {
        "llama3-8b": 8_030_261_248,
        "llama3.1-8b": 8_030_261_248,
        "llama3-70b": 70_553_706_496,
        "llama3.1-70b": 70_553_706_496,
        "llama3.3-70b": 70_553_706_496,
        "llama3.1-405b": 405_853_388_800,
        "llama3.2-1b": 1_235_814_400,
        "llama3.2-3b": 3_212_749_824,
    }
    for name, count in published.items():
        assert PRESETS[name].num_params() == count, name
    # The closed form agrees with the module tree (built on the meta device: no memory).
    for name in ("llama3.2-1b", "llama3-8b"):
        with torch.device("meta"):
            model = Transformer(PRESETS[name])
        assert model.num_params() == published[name]


def test_preset_rope_factors_follow_published_configs():
    assert PRESETS["llama3-8b"].rope_scaling is None and PRESETS["llama3-70b"].rope_scaling is None
    for name in ("llama3.1-8b", "llama3.1-70b", "llama3.1-405b", "llama3.3-70b"):
        assert PRESETS[name].rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)
    for name in ("llama3.2-1b", "llama3.2-3b"):
        assert PRESETS[name].rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
        assert PRESETS[name].tie_word_embeddings
    assert all(p.rope_theta == 500000.0 and p.norm_eps == 1e-5 for p in PRESETS.values())


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied", "tiny-nope"])
def test_logits_match_transformers_far_beyond_original_context(preset):
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name(preset))
    model.init_weights()
    model.eval()
    hf = hf_twin(model)
    # tiny presets use original_max_position_embeddings=256: positions up to 1200 make scaling bite.
    t = 1200 if model.args.max_seq_len >= 1200 else model.args.max_seq_len
    tokens = torch.randint(0, model.args.vocab_size, (2, t))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - theirs).abs().max() / scale <= 1e-5


def test_a_wrong_rope_factor_fails_parity_at_far_positions():
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny"))
    model.init_weights()
    model.eval()
    wrong = Transformer(model.args.replace(rope_scaling=RopeScaling(factor=32.0, original_max_position_embeddings=256)))
    wrong.load_state_dict(model.state_dict())
    hf = hf_twin(model)
    tokens = torch.randint(0, model.args.vocab_size, (1, 1024))
    with torch.no_grad():
        # A wrong factor misses the parity tolerance (1e-4) by far.
        assert (wrong(tokens) - hf(tokens).logits).abs()[:, 900:].max() > 1e-3
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-4


def test_bf16_forward_tracks_fp32():
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny"))
    model.init_weights()
    model.eval()
    tokens = torch.randint(0, model.args.vocab_size, (1, 64))
    with torch.no_grad():
        ref = model(tokens)
        low = model.to(torch.bfloat16)(tokens)
    assert low.dtype == torch.bfloat16
    # RoPE frequencies stay fp32 after the cast.
    assert model.model.rotary.inv_freq_cpu.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(low.float().flatten(), ref.flatten(), dim=0) > 0.999


def test_bad_shapes_are_rejected_with_the_culprit_named():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="dim"):
        ModelArgs(dim=65, n_heads=4)
    with pytest.raises(KeyError, match="llama3-9b"):
        ModelArgs.from_name("llama3-9b")
    model = Transformer(ModelArgs.from_name("tiny-nope"))
    with pytest.raises(ValueError, match="tokens must be"):
        model(torch.zeros(5, dtype=torch.long))


def test_init_is_seeded_and_depth_scaled():
    a = Transformer(ModelArgs.from_name("tiny"))
    b = Transformer(ModelArgs.from_name("tiny"))
    a.init_weights(generator=torch.Generator().manual_seed(3))
    b.init_weights(generator=torch.Generator().manual_seed(3))
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na
    std0 = a.model.layers[0].mlp.down_proj.weight.std()
    std1 = a.model.layers[1].mlp.down_proj.weight.std()
    assert std1 < std0  # deeper output projections start smaller
    assert abs(a.model.layers[0].self_attn.q_proj.weight.std().item() - 0.02) < 0.003
