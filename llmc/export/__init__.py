"""Export quantized models as real low-bit checkpoints.

* :func:`save_compressed_tensors`: compressed-tensors ``pack-quantized`` (symmetric int4 / int8,
  per-group or per-channel), loadable by vLLM, transformers and compressed-tensors;
* :func:`save_autoawq`: AutoAWQ ``GEMM`` (asymmetric int4, per-group);
* :func:`llmc.export.model.export_quantized`: a whole model through its adapter, in either
  format, or as compressed-tensors ``int-quantized`` W8A8 when activations are quantized too.

Both take the model's state dict holding the ORIGINAL float weights of the layers to quantize,
recompute the integer codes with :class:`llmc.quant.quantizer.IntQuantizer` (so the stored
weights dequantize to our fake quantization, up to the documented scale-dtype rounding), and
write ``config.json`` with a ``quantization_config`` plus safetensors weights.
"""

from llmc.export.autoawq import pack_awq_gemm, save_autoawq, unpack_awq_gemm
from llmc.export.compressed import pack_codes, pack_layer, save_compressed_tensors
from llmc.export.packing import pack_int32, unpack_int32, write_checkpoint

__all__ = [
    "pack_awq_gemm",
    "pack_codes",
    "pack_int32",
    "pack_layer",
    "save_autoawq",
    "save_compressed_tensors",
    "unpack_awq_gemm",
    "unpack_int32",
    "write_checkpoint",
]
