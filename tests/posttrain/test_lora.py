"""LoRA: merge equals base + adapters; PEFT (the peer) loads herd's adapters and gives the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from herd.checkpoint import load_any, save_pretrained
from herd.posttrain.config import load_posttrain_config
from herd.posttrain.lora import LoRALinear, add_lora, load_adapter, merge_lora, save_adapter
from herd.posttrain.sft import run_sft
from tests.posttrain.conftest import make_byte_model, write_jsonl

TARGETS = ["q_proj", "v_proj", "down_proj"]


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero A and B, so the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.weight.normal_(0, 0.2, generator=g)
                m.lora_B.weight.normal_(0, 0.2, generator=g)


def test_merged_model_equals_base_plus_adapters_and_differs_from_base():
    base = make_byte_model(seed=4)
    tokens = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        base_logits = base(tokens)
    wrapped = add_lora(base, rank=4, alpha=8, targets=TARGETS)
    assert len(wrapped) == 3 * base.args.n_layers
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(base(tokens), base_logits)  # B = 0 at init: exactly the base
    randomise(base)
    with torch.no_grad():
        adapted = base(tokens)
        merge_lora(base)
        merged = base(tokens)
    assert not any(isinstance(m, LoRALinear) for m in base.modules())
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert (merged - base_logits).abs().max() > 1e-2


def test_adapters_load_in_peft_and_match(tmp_path, byte_tok):
    peft = pytest.importorskip("peft")
    from transformers import LlamaForCausalLM

    base = make_byte_model(seed=5)
    save_pretrained(base, tmp_path / "base", tokenizer=byte_tok)
    add_lora(base, rank=4, alpha=16, dropout=0.1, targets=TARGETS)
    randomise(base, seed=1)
    save_adapter(base, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 16 and sorted(config["target_modules"]) == sorted(TARGETS)

    hf = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    hf.eval()
    base.eval()
    tokens = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=tokens).logits, base(tokens), rtol=1e-4, atol=1e-4)
        # PEFT's merge agrees with herd's
        merged_hf = hf.merge_and_unload()
        torch.testing.assert_close(merged_hf(input_ids=tokens).logits, merge_lora(base)(tokens), rtol=1e-4, atol=1e-4)
    # and herd reads the adapters back
    again = load_adapter(load_any(tmp_path / "base"), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), base(tokens), rtol=1e-5, atol=1e-5)


def test_lora_sft_run_trains_only_adapters_and_exports_both(tmp_path, tiny_base):
    records = [{"messages": [{"role": "user", "content": f"tag: {w}"}, {"role": "assistant", "content": f"[[{w}]]"}]}
               for w in ["cat", "dog", "sun", "tree"] * 4]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    cfg = load_posttrain_config("sft", "configs/sft-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"sft.data=[{str(data)!r}]", f"run_dir={str(tmp_path / 'run')!r}",
        "train.steps=4", "metrics.progress='off'", "data.seq_len=64", "train.threads=1", "lora.rank=4",
        "lora.targets=['q_proj', 'v_proj']"])
    result = run_sft(cfg)
    base, merged = load_any(tiny_base), load_any(result.export_dir)
    changed = {n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)
    adapted = load_adapter(load_any(tiny_base), result.export_dir / "adapter").eval()
    tokens = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(adapted(tokens), merged(tokens), rtol=1e-4, atol=1e-4)
