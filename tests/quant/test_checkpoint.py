"""Quantized checkpoints in compressed-tensors' and fbgemm's layouts, checked against the
compressed-tensors package, transformers and herd's own round trip."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from herd.checkpoint import CheckpointError, load_any
from herd.quant import Fp8RowwiseLinear, Int4Linear, Int8Linear, load_quantized, quantize, save_quantized
from herd.quant.compressed_tensors import pack_int32, unpack_int32
from tests.quant.helpers import calibration_tokens, small_model

ct = pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    return small_model(vocab_size=256)


def _quantized_dir(reference: nn.Module, scheme: str, tmp_path, tied: bool = False):
    source = small_model(vocab_size=256, tied=True) if tied else reference
    model = quantize(copy.deepcopy(source), scheme)
    save_quantized(model, tmp_path / scheme, dtype=torch.float32)
    return model, tmp_path / scheme


@pytest.mark.parametrize("scheme,tied", [("int8", False), ("int4-g32", False), ("int4-g128", False), ("fp8", False),
                                         ("int8+lm_head", True), ("int4-g32+lm_head", False)])
def test_round_trip_gives_identical_logits(reference: nn.Module, scheme: str, tied: bool, tmp_path) -> None:
    model, path = _quantized_dir(reference, scheme, tmp_path, tied)
    loaded = load_any(path)  # herd's loader detects the quantized layout
    assert loaded.quant_scheme == model.quant_scheme
    if tied:  # the quantized head is its own matrix: the checkpoint says untied, and holds it
        assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is False
        assert not loaded.args.tie_word_embeddings and isinstance(loaded.lm_head, Int8Linear)
    tokens = calibration_tokens(256, rows=2, seq_len=12)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_pack_int32_matches_compressed_tensors() -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    for bits in (4, 8):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        q = torch.randint(lo, hi + 1, (24, 40), dtype=torch.int8)  # 40 columns: a partial last word
        for dim in (0, 1):
            ours = pack_int32(q, bits, dim=dim)
            assert torch.equal(ours, pack_to_int32(q, bits, packed_dim=dim))
            assert torch.equal(unpack_int32(ours, bits, tuple(q.shape), dim=dim), q)
            assert torch.equal(unpack_from_int32(ours, bits, q.shape, packed_dim=dim), q)


@pytest.mark.parametrize("scheme", ["int8", "int4-g64", "int8+lm_head"])
def test_compressed_tensors_reads_what_herd_writes(reference: nn.Module, scheme: str, tmp_path) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    model, path = _quantized_dir(reference, scheme, tmp_path)
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)  # the package's own schema
    assert parsed.format == "pack-quantized" and parsed.ignore == ([] if scheme.endswith("+lm_head") else ["lm_head"])
    scheme_ct = parsed.config_groups["group_0"]
    tensors = load_file(path / "model.safetensors")
    for name, module in model.named_modules():
        if not isinstance(module, (Int8Linear, Int4Linear)):
            continue
        local = {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
        assert "weight" not in local
        dense = PackedQuantizationCompressor.decompress(local, scheme_ct)["weight"]
        assert torch.equal(dense.float(), module.dequantize()), name


def test_herd_reads_what_compressed_tensors_writes(tmp_path) -> None:
    """A GPTQ/AWQ-style asymmetric int4 checkpoint, compressed by compressed-tensors itself."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from safetensors.torch import save_file

    from herd.checkpoint import save_pretrained
    from herd.quant.int4 import int4_params

    dense = small_model(n_layers=2, vocab_size=256)
    save_pretrained(dense, tmp_path / "dense", dtype=torch.float32)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = {k: v for k, v in dense.state_dict().items()}
    out, expected = {}, {}
    for name, module in dense.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            w = module.weight.detach()
            scale, zp = int4_params(w.reshape(w.shape[0], -1, 32))
            local = {"weight": w, "weight_scale": scale, "weight_zero_point": zp.to(torch.int8)}
            for k, v in PackedQuantizationCompressor.compress(local, scheme).items():
                out[f"{name}.{k}"] = v
            expected[name] = PackedQuantizationCompressor.decompress(
                {k.removeprefix(name + "."): v for k, v in out.items() if k.startswith(name + ".")}, scheme)["weight"]
            state.pop(f"{name}.weight")
    out.update({k: v.contiguous() for k, v in state.items()})
    ckpt = tmp_path / "ct"
    ckpt.mkdir()
    save_file(out, ckpt / "model.safetensors")
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized", ignore=["lm_head"],
                            quantization_status="compressed")
    config["quantization_config"] = qc.model_dump(mode="json")
    (ckpt / "config.json").write_text(json.dumps(config))
    loaded = load_any(ckpt)
    for name, weight in expected.items():
        module = loaded.get_submodule(name)
        assert isinstance(module, Int4Linear) and module.group_size == 32
        assert torch.equal(module.dequantize(), weight.float()), name


@pytest.mark.parametrize("scheme,tied", [("int8", False), ("int8+lm_head", True)])
def test_transformers_with_compressed_tensors_matches_herd_int8(reference: nn.Module, scheme: str, tied: bool,
                                                                tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model, path = _quantized_dir(reference, scheme, tmp_path, tied)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokens = calibration_tokens(256, rows=1, seq_len=10)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-4, rtol=1e-4)


def test_fbgemm_fp8_layout_matches_transformers(reference: nn.Module, tmp_path) -> None:
    from safetensors import safe_open
    from transformers import FbgemmFp8Config
    from transformers.integrations.fbgemm_fp8 import FbgemmFp8Linear

    model, path = _quantized_dir(reference, "fp8", tmp_path)
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    peer = FbgemmFp8Config(activation_scale_ub=qc["activation_scale_ub"],
                           modules_to_not_convert=qc["modules_to_not_convert"]).to_dict()
    assert {k: peer[k] for k in qc} == qc
    assert "model.layers.0.mlp.down_proj" in qc["modules_to_not_convert"]
    assert "model.layers.1.mlp.down_proj" not in qc["modules_to_not_convert"]
    ref_layer = FbgemmFp8Linear(128, 384, bias=False)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        for key, ref_tensor in ref_layer.state_dict().items():
            ours = f.get_tensor(f"model.layers.1.mlp.up_proj.{key}")
            assert ours.dtype == ref_tensor.dtype and ours.shape == ref_tensor.shape, key
        assert f.get_tensor("model.layers.0.mlp.up_proj.weight").dtype == torch.float32
    assert isinstance(load_quantized(path).model.layers[2].mlp.gate_proj, Fp8RowwiseLinear)


def test_broken_checkpoints_are_named(reference: nn.Module, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    _, path = _quantized_dir(reference, "int4-g32", tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight_scale"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj.*weight_scale"):
        load_any(path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["quant_method"] = "awq"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'awq' is not read by herd"):
        load_any(path)
    with pytest.raises(ValueError, match="no quantized layers"):
        save_quantized(small_model(n_layers=1, vocab_size=256), tmp_path / "x")
