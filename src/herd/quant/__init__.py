"""Quantization: int8 / int4 (RTN, GPTQ, HQQ) weight-only and Llama 3.1's FP8 row-wise, as module swaps.

    from herd.quant import quantize, save_quantized, load_quantized
    quantize(model, "int4-gptq", calibration=batches)   # or "int8", "int4-g64", "int4-hqq", "fp8"
    save_quantized(model, "out", tokenizer=tok)         # compressed-tensors / fbgemm_fp8 layouts
    model = load_quantized("out")                       # also via herd.checkpoint.load_any
"""

from herd.quant.checkpoint import load_quantized, quantization_method, save_quantized
from herd.quant.fp8 import Fp8RowwiseLinear
from herd.quant.int4 import Int4Linear
from herd.quant.int8 import Int8Linear
from herd.quant.quantize import SCHEMES, QuantScheme, model_bytes, quantize

__all__ = [
    "SCHEMES",
    "Fp8RowwiseLinear",
    "Int4Linear",
    "Int8Linear",
    "QuantScheme",
    "load_quantized",
    "model_bytes",
    "quantization_method",
    "quantize",
    "save_quantized",
]
