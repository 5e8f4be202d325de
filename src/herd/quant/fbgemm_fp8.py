"""Meta's fbgemm row-wise FP8 layout, as published in Llama-3.1-405B-Instruct-FP8 (HF form).

Per converted linear ``NAME``: ``NAME.weight`` (float8 e4m3 [out, in]) and
``NAME.weight_scale`` (fp32 [out, 1]); ``config.json`` carries
``{"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert":
[...]}`` — transformers' ``FbgemmFp8Config`` fields. Every other linear is plain.
"""

from __future__ import annotations

import torch
from torch import Tensor

from herd.checkpoint.errors import CheckpointError
from herd.quant.fp8 import ACTIVATION_SCALE_UB, FP8, Fp8RowwiseLinear

QUANT_METHOD = "fbgemm_fp8"


def quantization_config(activation_scale_ub: float, not_converted: list[str]) -> dict:
    return {"quant_method": QUANT_METHOD, "activation_scale_ub": activation_scale_ub,
            "modules_to_not_convert": not_converted}


def module_tensors(name: str, module: Fp8RowwiseLinear) -> dict[str, Tensor]:
    if module.shards > 1:
        raise CheckpointError(f"{name} keeps {module.shards} model-parallel scale columns (read from Meta's "
                              f"layout); the fbgemm_fp8 layout holds one scale per row: save it with "
                              f"herd.quant.meta_fp8.save_meta_fp8(..., model_parallel={module.shards})")
    return {f"{name}.weight": module.weight.cpu().contiguous(),
            f"{name}.weight_scale": module.weight_scale.cpu().float().reshape(-1, 1).contiguous()}


def is_converted(name: str, tensors: dict[str, Tensor]) -> bool:
    return f"{name}.weight_scale" in tensors


def load_module(name: str, tensors: dict[str, Tensor], config: dict, source: str) -> Fp8RowwiseLinear:
    weight = tensors.pop(f"{name}.weight", None)
    scale = tensors.pop(f"{name}.weight_scale")
    tensors.pop(f"{name}.input_scale_ub", None)  # a runtime buffer some writers keep
    if weight is None:
        raise CheckpointError(f"{source}: {name}.weight_scale has no {name}.weight")
    if weight.dtype != FP8:
        raise CheckpointError(f"{source}: {name}.weight is {weight.dtype}, expected float8_e4m3fn")
    if tuple(scale.shape) not in ((weight.shape[0], 1), (weight.shape[0],)):
        raise CheckpointError(f"{source}: {name}.weight_scale has shape {tuple(scale.shape)}, "
                              f"expected ({weight.shape[0]}, 1)")
    ub = float(config.get("activation_scale_ub", ACTIVATION_SCALE_UB))
    return Fp8RowwiseLinear.from_quantized(weight, scale.to(torch.float32), ub)
