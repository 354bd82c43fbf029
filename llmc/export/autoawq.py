"""AutoAWQ ``GEMM`` export (asymmetric int4, per-group).

A quantized ``Linear`` ``<name>`` (weight ``(out, in)``, ``G = in / group_size`` groups) is
stored as

* ``<name>.qweight``: int32 ``(in, out / 8)``: the unsigned codes transposed to ``(in, out)``;
  word ``k`` of a row holds output columns ``8k .. 8k+7`` in the interleaved order
  ``[0, 2, 4, 6, 1, 3, 5, 7]``: nibble ``i`` (bits ``4i .. 4i+3``) holds column
  ``8k + AWQ_ORDER[i]``;
* ``<name>.qzeros``: int32 ``(G, out / 8)``: the integer zero points, packed the same way;
* ``<name>.scales``: float16 ``(G, out)``.

Dequantization (AutoAWQ's ``dequantize_gemm``): ``W.T[i, o] = (q[i, o] - z[i // g, o]) *
s[i // g, o]``.

Scales are stored in float16, so the scale :class:`IntQuantizer` computes in float32 is rounded
once to float16; the codes are computed against that rounded scale (the zero point is the one
computed with the float32 scale). The stored weight therefore equals exactly
``IntQuantizer.fake_with(w, scale.half().float(), zero)`` and differs from the float32 fake
quantization ``IntQuantizer.fake(w)`` only through that rounding (relative scale error
<= 2**-11, occasionally moving a code by one step). A scale below float16's range (an all-zero
group gets the 1e-8 floor) is stored as 2**-24 instead of 0; such a group still dequantizes to
zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor

from llmc.export.packing import (
    DEFAULT_MAX_SHARD_BYTES,
    pack_int32,
    quantize_for_export,
    save_packed,
    store_scale,
    unpack_int32,
)
from llmc.quant.quantizer import WeightQuantConfig

BITS = 4
PACK = 32 // BITS
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Nibble that holds column j of a block of 8 (AutoAWQ's AWQ_REVERSE_ORDER). Written out rather
# than derived from AWQ_ORDER so that the dequantizer stays an independent reference.
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def check_config(wcfg: WeightQuantConfig, act=None) -> None:
    """Raise ``ValueError`` unless ``wcfg`` can be written as AutoAWQ GEMM (weight-only: ``act``,
    an activation quantization, is refused)."""
    wcfg.validate()
    if act is not None:
        raise ValueError("this format is weight-only; remove quant.act, or export W8A8 with save_vllm")
    if wcfg.symmetric:
        raise ValueError("AutoAWQ export needs asymmetric weights (zero points); set quant.weight.symmetric: false")
    if wcfg.bit != BITS:
        raise ValueError(f"AutoAWQ export supports 4-bit weights only, got {wcfg.bit}; set quant.weight.bit: 4")
    if wcfg.granularity != "per_group":
        raise ValueError("AutoAWQ export needs per-group weights; set quant.weight.granularity: per_group")


def _interleave(x: Tensor) -> Tensor:
    """Reorder columns in blocks of 8 so that dense packing yields AWQ's word layout."""
    rows, cols = x.shape
    return x.reshape(rows, cols // PACK, PACK)[:, :, list(AWQ_ORDER)].reshape(rows, cols)


def _pack_awq(x: Tensor) -> Tensor:
    """Unsigned 4-bit codes (rows, cols) -> int32 (rows, cols / 8) in AWQ order."""
    return pack_int32(_interleave(x), BITS)


def pack_awq_gemm(
    w: Tensor,
    wcfg: WeightQuantConfig,
    *,
    clip: Tensor | None = None,
    name: str = "<weight>",
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize a float weight ``w`` (out, in) and pack it in AutoAWQ GEMM layout.

    Returns ``(qweight int32 (in, out/8), qzeros int32 (in/g, out/8), scales fp16 (in/g, out))``.
    """
    check_config(wcfg)
    if w.dim() == 2 and w.shape[0] % PACK:
        raise ValueError(
            f"layer {name}: AutoAWQ GEMM packs 8 output columns per int32 word; "
            f"output width {w.shape[0]} is not a multiple of 8"
        )
    q, scale, zero = quantize_for_export(w, wcfg, scale_dtype=torch.float16, clip=clip, name=name)
    return pack_awq_codes(q, scale, zero)


def pack_awq_codes(q: Tensor, scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pack unsigned 4-bit codes ``q`` (out, in) with their (out, G) scale and zero point.

    Returns ``(qweight, qzeros, scales fp16)`` as :func:`pack_awq_gemm`.
    """
    if q.shape[0] % PACK:
        raise ValueError(f"AutoAWQ GEMM packs 8 output columns per int32 word; output width {q.shape[0]} "
                         "is not a multiple of 8")
    scale = store_scale(scale, torch.float16)
    qweight = _pack_awq(q.t().contiguous())
    qzeros = _pack_awq(zero.to(torch.int32).t().contiguous())
    return qweight, qzeros, scale.t().contiguous()


def unpack_awq_gemm(qweight: Tensor, qzeros: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """Dequantize an AutoAWQ GEMM layer: float32 weight ``(out, in)`` (``nn.Linear`` layout).

    Independent of :func:`pack_awq_gemm`: shifts each word right by ``0, 4, ..., 28`` bits,
    masks 4 bits, undoes the ``[0, 2, 4, 6, 1, 3, 5, 7]`` interleave and computes
    ``(q - z) * s`` per group, in float32 (AutoAWQ's kernels compute in float16).
    """
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError("qweight and qzeros must be int32")
    in_features, words = qweight.shape
    out_features = words * PACK
    if in_features % group_size or scales.shape != (in_features // group_size, out_features):
        raise ValueError(
            f"scales {tuple(scales.shape)} do not match qweight {tuple(qweight.shape)} "
            f"with group_size {group_size}"
        )
    if qzeros.shape != (in_features // group_size, words):
        raise ValueError(f"qzeros {tuple(qzeros.shape)} do not match qweight {tuple(qweight.shape)}")

    shifts = torch.arange(0, 32, BITS, dtype=torch.int32)

    def unpack(x: Tensor) -> Tensor:
        nib = (x.unsqueeze(-1) >> shifts) & 0xF  # (rows, words, 8): nibble i = column AWQ_ORDER[i]
        return nib[:, :, list(AWQ_REVERSE_ORDER)].reshape(x.shape[0], -1)

    iw = unpack(qweight).float()  # (in, out)
    iz = unpack(qzeros).float().repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    return ((iw - iz) * s).t().contiguous()


def unpack_awq_codes(qweight: Tensor, qzeros: Tensor, out_features: int) -> tuple[Tensor, Tensor]:
    """Codes ``(out, in)`` and zero points ``(out, G)`` via the generic unpacker (for checks)."""

    def unpack(x: Tensor) -> Tensor:
        v = unpack_int32(x, BITS, out_features)
        rows = v.shape[0]
        return v.reshape(rows, -1, PACK)[:, :, list(AWQ_REVERSE_ORDER)].reshape(rows, -1)

    return unpack(qweight).t().contiguous(), unpack(qzeros).t().contiguous()


def quantization_config(wcfg: WeightQuantConfig, ignore: Iterable[str], act=None) -> dict:
    """The ``quantization_config`` entry of ``config.json`` (transformers' ``AwqConfig``)."""
    check_config(wcfg, act)
    return {
        "quant_method": "awq",
        "bits": BITS,
        "group_size": wcfg.group_size,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": list(ignore) or None,
    }


def save_autoawq(
    state_dict: dict[str, Tensor],
    config: dict,
    out_dir: str | Path,
    wcfg: WeightQuantConfig,
    quantize_names: Iterable[str],
    ignore: Iterable[str],
    *,
    save_extra: Callable[[Path], None] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write an AutoAWQ GEMM checkpoint to ``out_dir``.

    ``state_dict`` holds the ORIGINAL float weights of ``quantize_names`` (module names);
    each becomes ``<name>.qweight / .qzeros / .scales``; every other tensor (biases included)
    is stored as-is. ``ignore`` names layers kept in float,
    stored as-is and listed as ``modules_to_not_convert``. ``config`` is not modified.
    """
    check_config(wcfg)

    def pack(module: str, w: Tensor) -> dict[str, Tensor]:
        qweight, qzeros, scales = pack_awq_gemm(w, wcfg, name=module)
        return {"qweight": qweight, "qzeros": qzeros, "scales": scales}

    return save_packed(state_dict, config, out_dir, quantize_names, ignore, pack,
                       lambda ign: quantization_config(wcfg, ign), save_extra=save_extra,
                       max_shard_bytes=max_shard_bytes)
