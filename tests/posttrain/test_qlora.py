"""QLoRA: adapters over an int8 / int4 base (herd.quant) equal base + B A by hand, train alone, and load in PEFT."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from herd.checkpoint import load_any, save_pretrained
from herd.posttrain.config import load_posttrain_config
from herd.posttrain.lora import add_lora, merge_lora, save_adapter
from herd.posttrain.qlora import QLoRALinear, dequantize_model
from herd.posttrain.sft import run_sft
from herd.quant import Int4Linear, Int8Linear, quantize
from herd.train import ConfigError
from tests.posttrain.conftest import make_byte_model, write_jsonl

TARGETS = ["q_proj", "v_proj", "down_proj"]


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QLoRALinear):
                m.lora_A.weight.normal_(0, 0.2, generator=g)
                m.lora_B.weight.normal_(0, 0.2, generator=g)


@pytest.mark.parametrize("scheme,kind", [("int4-g64", Int4Linear), ("int8", Int8Linear)])
def test_qlora_logits_equal_quantized_base_plus_adapters_by_hand(scheme, kind):
    model = quantize(make_byte_model(seed=3), scheme)
    tokens = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        base_logits = model(tokens)
    add_lora(model, rank=4, alpha=8, targets=TARGETS)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    assert len(layers) == 3 * model.args.n_layers and all(isinstance(m.base_layer, kind) for m in layers.values())
    randomise(model)

    # one layer: the quantized kernel's output + x A^T B^T * alpha / r
    layer = next(iter(layers.values()))
    x = torch.randn(5, layer.in_features)
    with torch.no_grad():
        by_hand = layer.base_layer(x) + (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T) * (8 / 4)
        torch.testing.assert_close(layer(x), by_hand)

    # the whole model: each adapted linear replaced by dequantize(W) + (alpha/r) B A, built here
    reference = copy.deepcopy(model)
    for name, m in list(reference.named_modules()):
        if isinstance(m, QLoRALinear):
            lin = torch.nn.Linear(m.in_features, m.out_features, bias=False)
            with torch.no_grad():
                lin.weight.copy_(m.base_layer.dequantize() + 2.0 * m.lora_B.weight @ m.lora_A.weight)
            parent, _, child = name.rpartition(".")
            setattr(reference.get_submodule(parent), child, lin)
    with torch.no_grad():
        adapted = model(tokens)
        torch.testing.assert_close(adapted, reference(tokens), rtol=1e-4, atol=1e-4)
        assert (adapted - base_logits).abs().max() > 1e-2
        # merge: dequantize -> add B A (exact); requantize: back on the grid, close but not equal
        requantized = merge_lora(copy.deepcopy(model), requantize=True)
        assert sum(isinstance(m, kind) for m in requantized.modules()) == 7 * model.args.n_layers
        merged = merge_lora(model)
        assert not any(isinstance(m, QLoRALinear) for m in merged.modules())
        torch.testing.assert_close(merged(tokens), adapted, rtol=1e-4, atol=1e-4)
        assert not torch.equal(requantized(tokens), adapted)
        # each requantized weight is the merged one rounded to its grid: within half a step
        for name, m in merged.named_modules():
            if name.endswith("q_proj"):
                q = requantized.get_submodule(name)
                step = q.weight_scale if kind is Int8Linear else q.weight_scale.repeat_interleave(64, dim=1)
                step = step[:, None] if kind is Int8Linear else step
                assert ((q.dequantize() - m.weight).abs() <= step / 2 + 1e-6).all()


def test_gradients_reach_adapters_and_the_input_through_the_dequantized_base():
    lin = torch.nn.Linear(128, 64, bias=False)
    base = Int4Linear.from_linear(lin, 64)
    layer = QLoRALinear(base, rank=4, alpha=4)
    layer.reset_lora(torch.Generator().manual_seed(0))
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 128, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    a, b = layer.lora_A.weight.detach().clone().requires_grad_(True), layer.lora_B.weight.detach().clone()
    y_ref = x_ref @ base.dequantize().T + x_ref @ a.T @ b.T
    (y_ref ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.lora_A.weight.grad, a.grad, rtol=1e-4, atol=1e-4)
    assert not any(b.requires_grad for b in base.buffers()) and not list(base.parameters())


def test_qlora_sft_run_on_int4_base_lowers_loss_trains_only_adapters(tmp_path, tiny_base):
    records = [{"messages": [{"role": "user", "content": f"tag: {w}"}, {"role": "assistant", "content": f"[[{w}]]"}]}
               for w in ["cat", "dog", "sun", "tree"] * 4]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    cfg = load_posttrain_config("sft", "configs/sft-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"sft.data=[{str(data)!r}]", f"run_dir={str(tmp_path / 'run')!r}",
        "train.steps=8", "metrics.progress='off'", "data.seq_len=64", "train.threads=1", "lora.rank=8",
        "lora.alpha=16", "lora.targets=['q_proj', 'v_proj', 'down_proj']", "lora.base_quantization='int4-g64'"])
    result = run_sft(cfg)
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.05, losses
    # the export is the dequantized int4 base with the adapters merged: only adapted weights differ from it
    base = dequantize_model(quantize(load_any(tiny_base), "int4-g64"))
    merged = load_any(result.export_dir)
    changed = {n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight")) for n in changed)
    assert (result.export_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_qlora_adapters_load_in_peft_over_the_dequantized_base(tmp_path, byte_tok):
    peft = pytest.importorskip("peft")
    from transformers import LlamaForCausalLM

    model = quantize(make_byte_model(seed=6), "int4-g32")
    save_pretrained(dequantize_model(copy.deepcopy(model)), tmp_path / "base", tokenizer=byte_tok)
    add_lora(model, rank=4, alpha=16, targets=TARGETS)
    randomise(model, seed=2)
    save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    hf = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    tokens = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(input_ids=tokens).logits, model.eval()(tokens), rtol=1e-4, atol=1e-4)


def test_base_quantization_config_errors(tiny_base):
    common = [f"base.model={str(tiny_base)!r}", "sft.data=['x.jsonl']"]
    with pytest.raises(ConfigError, match="lora.rank > 0"):
        load_posttrain_config("sft", None, [*common, "lora.base_quantization='int8'"])
    with pytest.raises(ConfigError, match="fp8"):
        load_posttrain_config("sft", None, [*common, "lora.rank=4", "lora.base_quantization='fp8'"])
    cfg = load_posttrain_config("sft", None, [*common, "lora.rank=4", "lora.base_quantization='INT4-g64'"])
    assert cfg.lora.base_quantization == "int4-g64"


def test_qlora_dpo_reference_is_the_quantized_base_and_reward_exports_plain(tmp_path, tiny_base, byte_tok):
    from transformers import LlamaForSequenceClassification

    from herd.posttrain.dpo import run_dpo
    from herd.posttrain.reward import load_reward_model, run_reward, sequence_rewards
    from tests.posttrain.test_dpo_run import case_prefs

    data = write_jsonl(tmp_path / "prefs.jsonl", case_prefs(16, 0))
    qlora = ["metrics.progress='off'", "train.threads=1", "data.seq_len=64", "train.steps=3", "lora.rank=4",
             "lora.base_quantization='int4-g64'", "lora.targets=['q_proj', 'v_proj']"]
    run_dpo(load_posttrain_config("dpo", "configs/dpo-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"dpo.data={str(data)!r}", f"run_dir={str(tmp_path / 'dpo')!r}", *qlora]))
    first = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    # B = 0 at step 1: the policy is the int4 base, and so is the reference (a full-precision one would differ)
    assert abs(first["reward_chosen"]) < 1e-3 and abs(first["reward_rejected"]) < 1e-3

    result = run_reward(load_posttrain_config("reward", "configs/reward-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"reward.data={str(data)!r}", f"reward.held_out={str(data)!r}",
        f"run_dir={str(tmp_path / 'rm')!r}", *qlora]))
    rm = load_reward_model(result.export_dir)
    hf = LlamaForSequenceClassification.from_pretrained(result.export_dir, dtype=torch.float32).eval()
    tokens = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(sequence_rewards(rm, tokens, torch.tensor([12, 12])),
                                   hf(input_ids=tokens).logits.squeeze(-1), rtol=1e-4, atol=1e-5)
