"""Weight-only integer quantization of Linear layers: RTN, GPTQ and AWQ arithmetic.

All algorithms produce *fake-quantized* weights (quantize then dequantize, stored back in the
layer's dtype) so that a quantized model can be evaluated with its ordinary forward pass. The
methods that drive them block by block are :mod:`llmc.quant.methods`. Names below load on first
use, so that the method registry (which the config reads) does not import torch.
"""

import importlib

_EXPORTS = {
    "apply_scales_": "awq", "awq_quantize_": "awq", "search_clip_": "awq", "search_scales": "awq",
    "GptqSolver": "gptq", "IntQuantizer": "quantizer", "WeightQuantConfig": "quantizer",
    "check_group_size": "quantizer", "rtn_": "rtn",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
