"""Weight-only integer quantization of Linear layers: RTN, GPTQ and AWQ.

All algorithms produce *fake-quantized* weights (quantize then dequantize, stored back in the
layer's dtype) so that a quantized model can be evaluated with its ordinary forward pass.
"""

from llmc.quant.awq import apply_scales_, awq_quantize_, search_clip_, search_scales
from llmc.quant.gptq import GPTQ
from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig, check_group_size
from llmc.quant.rtn import rtn_

__all__ = [
    "GPTQ",
    "IntQuantizer",
    "WeightQuantConfig",
    "apply_scales_",
    "awq_quantize_",
    "check_group_size",
    "rtn_",
    "search_clip_",
    "search_scales",
]
