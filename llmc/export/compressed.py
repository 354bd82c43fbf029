"""compressed-tensors export: ``pack-quantized`` (symmetric int4 / int8 weights) and, with
dynamic activation quantization, ``int-quantized`` W8A8.

Each quantized ``Linear`` named ``<name>`` is stored as

* ``<name>.weight_packed``: int32 ``(out, ceil(in * bits / 32))``, the signed codes plus
  ``2**(bits-1)`` packed densely, lowest bits first (compressed-tensors' ``pack_to_int32``);
* ``<name>.weight_scale``: ``(out, n_groups)`` (``(out, 1)`` per-channel) in the model's dtype;
* ``<name>.weight_shape``: int64 ``[out, in]``;

and ``config.json`` gains a ``quantization_config`` with ``quant_method: compressed-tensors``
and ``format: pack-quantized``. Loaders (compressed-tensors, vLLM, transformers) dequantize a
weight as ``code * scale``.

W8A8 (``quant.act`` 8-bit symmetric per-token, weights 8-bit symmetric per-channel) is written
as ``format: int-quantized``: ``<name>.weight`` holds the int8 codes, ``<name>.weight_scale`` the
``(out, 1)`` scale, and the scheme's ``input_activations`` declares dynamic per-token int8, the
scheme vLLM runs with its int8 GEMM. The codes are computed by :class:`IntQuantizer` from the float
weight against the stored scale, so the dequantized weight equals our fake quantization
exactly when the scale dtype is float32; for fp16 / bf16 models the scale is rounded once to
that dtype (the same as compressed-tensors' own compressor does) and the codes follow it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor

from llmc.export.packing import (
    DEFAULT_MAX_SHARD_BYTES,
    check_names,
    model_dtype,
    pack_int32,
    quantize_for_export,
    save_packed,
)
from llmc.quant.quantizer import WeightQuantConfig

FORMAT = "pack-quantized"
W8A8_FORMAT = "int-quantized"
SUPPORTED_BITS = (4, 8)


def check_config(wcfg: WeightQuantConfig, act=None) -> None:
    """Raise ``ValueError`` unless ``wcfg`` (and the activation config ``act``: anything with
    ``bit``, ``symmetric``, ``granularity``) can be written as pack-quantized / int-quantized."""
    wcfg.validate()
    if not wcfg.symmetric:
        raise ValueError("pack-quantized export needs symmetric weights; set quant.weight.symmetric: true")
    if act is not None:
        if (act.bit, act.symmetric, act.granularity) != (8, True, "per_token"):
            raise ValueError("with activation quantization the export writes W8A8 (int8, dynamic per-token "
                             "activations); set quant.act to bit: 8, symmetric: true, granularity: per_token")
        if wcfg.bit != 8:
            raise ValueError(f"W8A8 export needs 8-bit weights, got {wcfg.bit}; set quant.weight.bit: 8")
        if wcfg.granularity != "per_channel":
            raise ValueError("W8A8 export needs per-channel weights (vLLM's int8 kernels); "
                             "set quant.weight.granularity: per_channel")
        return
    if wcfg.bit not in SUPPORTED_BITS:
        raise ValueError(
            f"pack-quantized export supports {' or '.join(map(str, SUPPORTED_BITS))}-bit weights, "
            f"got {wcfg.bit}; set quant.weight.bit to 4 or 8"
        )


def pack_codes(q: Tensor, scale: Tensor, wcfg: WeightQuantConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Pack signed integer codes ``q`` (out, in) with their scale (out, G) as stored tensors.

    Returns ``(weight_packed int32, weight_scale, weight_shape int64)``.
    """
    check_config(wcfg)
    offset = 1 << (wcfg.bit - 1)
    packed = pack_int32(q, wcfg.bit, offset=offset)
    return packed, scale.contiguous(), torch.tensor(list(q.shape), dtype=torch.int64)


def pack_layer(
    w: Tensor,
    wcfg: WeightQuantConfig,
    *,
    scale_dtype: torch.dtype | None = None,
    clip: Tensor | None = None,
    name: str = "<weight>",
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize the float weight ``w`` (out, in) with :class:`IntQuantizer` and pack it.

    ``scale_dtype`` defaults to ``w.dtype``; ``clip`` is passed to ``IntQuantizer.params``.
    Returns ``(weight_packed int32, weight_scale (out, G), weight_shape int64 [out, in])``.
    """
    check_config(wcfg)
    q, scale, _ = quantize_for_export(w, wcfg, scale_dtype=scale_dtype or w.dtype, clip=clip, name=name)
    return pack_codes(q, scale, wcfg)


def quantization_config(wcfg: WeightQuantConfig, ignore: Iterable[str], act=None) -> dict:
    """The ``quantization_config`` entry of ``config.json`` for ``wcfg`` (and ``act``: W8A8)."""
    check_config(wcfg, act)
    fmt = FORMAT if act is None else W8A8_FORMAT
    per_group = wcfg.granularity == "per_group"
    weights = {
        "num_bits": wcfg.bit,
        "type": "int",
        "symmetric": True,
        "strategy": "group" if per_group else "channel",
        "group_size": wcfg.group_size if per_group else None,
        "dynamic": False,
        "actorder": None,
        "block_structure": None,
        "observer": "minmax",
        "observer_kwargs": {},
    }
    inputs = None
    if act is not None:
        inputs = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True,
                  "group_size": None, "actorder": None, "block_structure": None, "observer": None,
                  "observer_kwargs": {}}
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": inputs,
                "output_activations": None,
                "format": fmt,
            }
        },
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def save_compressed_tensors(
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
    """Write a compressed-tensors pack-quantized checkpoint to ``out_dir``.

    Args:
        state_dict: the model's tensors with the ORIGINAL float weights of the layers to
            quantize (e.g. ``model.state_dict()`` before fake quantization was applied).
        config: the model's config as a dict (``model.config.to_dict()``); not modified.
        wcfg: symmetric 4- or 8-bit weight config (per-group or per-channel).
        quantize_names: module names of the Linear layers to quantize (``<name>.weight``).
        ignore: module names kept in float (e.g. ``["lm_head"]``): stored as-is and listed in
            ``quantization_config.ignore``. Loaders quantize every ``Linear`` not listed there,
            so every float Linear must be named here (full module names, or ``re:`` patterns).
        save_extra: called with the output directory last (tokenizer, processor, ...).

    Returns the output directory.
    """
    check_config(wcfg)
    names = check_names(state_dict, quantize_names, list(dict.fromkeys(ignore)))
    scale_dtype = model_dtype(state_dict, names)

    def pack(module: str, w: Tensor) -> dict[str, Tensor]:
        packed, scale, shape = pack_layer(w, wcfg, scale_dtype=scale_dtype, name=module)
        return {"weight_packed": packed, "weight_scale": scale, "weight_shape": shape}

    return save_packed(state_dict, config, out_dir, quantize_names, ignore, pack,
                       lambda ign: quantization_config(wcfg, ign), save_extra=save_extra,
                       max_shard_bytes=max_shard_bytes)
