"""QLoRA on CUDA: the int4 base re-packed for the GPU gives the CPU's logits and adapter gradients, and a
QLoRA SFT run on the GPU exports the right weights (int4 bytes are packed per device). Skipped without a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from herd.checkpoint import load_any
from herd.posttrain.config import load_posttrain_config
from herd.posttrain.lora import add_lora
from herd.posttrain.qlora import QLoRALinear, copy_int4_values, dequantize_model
from herd.posttrain.sft import run_sft
from herd.quant import quantize
from tests.posttrain.conftest import make_byte_model, write_jsonl

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_qlora_int4_on_cuda_matches_cpu_logits_and_gradients():
    cpu = quantize(make_byte_model(seed=3), "int4-g64")
    add_lora(cpu, rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in cpu.modules():
            if isinstance(m, QLoRALinear):
                m.lora_B.weight.normal_(0, 0.2, generator=g)
    gpu = copy.deepcopy(cpu).to("cuda")
    tokens = torch.randint(0, 512, (2, 24))
    losses = []
    for model, t in ((cpu, tokens), (gpu, tokens.cuda())):
        logits = model(t)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), t[:, 1:].flatten())
        loss.backward()
        losses.append((logits.detach().cpu(), model.model.layers[0].self_attn.q_proj.lora_A.weight.grad.cpu()))
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(losses[1][1], losses[0][1], rtol=1e-3, atol=1e-4)
    # the integers survive the device's packing: copied back into a CPU model they give the CPU logits
    back = quantize(make_byte_model(seed=99), "int4-g64")
    add_lora(back, rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    back.load_state_dict({k: v.cpu() for k, v in gpu.state_dict().items()})
    assert copy_int4_values(gpu, back) == 7 * cpu.args.n_layers
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), cpu(tokens), rtol=1e-5, atol=1e-5)


@cuda
def test_qlora_sft_run_on_cuda_exports_the_dequantized_base_plus_adapters(tmp_path, tiny_base):
    records = [{"messages": [{"role": "user", "content": f"tag: {w}"}, {"role": "assistant", "content": f"[[{w}]]"}]}
               for w in ["cat", "dog", "sun", "tree"] * 4]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    result = run_sft(load_posttrain_config("sft", "configs/sft-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"sft.data=[{str(data)!r}]", f"run_dir={str(tmp_path / 'run')!r}",
        "train.steps=3", "metrics.progress='off'", "data.seq_len=64", "train.device='cuda'", "train.dtype='float32'",
        "lora.rank=4", "lora.targets=['q_proj']", "lora.base_quantization='int4-g64'"]))
    # CUDA's division by a scalar multiplies by its reciprocal, so int4 scales computed on the GPU may
    # differ from the CPU's in the last bit (and a value on a rounding boundary by one step): compare
    # the share of elements that differ, which packed bytes read in the wrong layout would make ~100%
    base = dequantize_model(quantize(load_any(tiny_base), "int4-g64")).state_dict()
    merged = load_any(result.export_dir).state_dict()
    for name, w in merged.items():
        share = float(((w.float() - base[name].float()).abs() > 1e-5).float().mean())
        if name.endswith("q_proj.weight"):
            assert share > 0.5, (name, share)  # the adapter, merged
        else:
            assert share < 0.01, (name, share)
