"""Bit packing and checkpoint writing shared by the export formats.

Packing layout (``pack_int32`` / ``unpack_int32``) is compressed-tensors' ``pack_to_int32``:
the codes of one row form a dense little-endian bit stream, element ``j`` occupying bits
``[j*bits, (j+1)*bits)``; 32 consecutive elements fill exactly ``bits`` int32 words, and a
row's stream is zero-padded to whole words (``ceil(cols * bits / 32)`` words per row).
For 4-bit codes this means word ``k`` holds elements ``8k .. 8k+7`` with element ``8k`` in
the lowest nibble; for 8-bit codes, four bytes per word, lowest byte first.

Signed codes are stored with an ``offset`` added (compressed-tensors stores ``q + 2**(bits-1)``);
AutoAWQ stores unsigned codes and its own column interleave (see :mod:`llmc.export.autoawq`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor

from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig, check_group_size

_WORD = 32
_MASK32 = (1 << 32) - 1
# Largest safetensors shard we write (bytes); bigger checkpoints get an index file.
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


# ---------------------------------------------------------------------------- packing
def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"packing supports 1..8 bits per value, got {bits!r}")


def _to_int32(words: Tensor) -> Tensor:
    """Reinterpret unsigned 32-bit values held in int64 as int32 (two's complement)."""
    words = words & _MASK32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_int32(values: Tensor, bits: int, *, offset: int = 0) -> Tensor:
    """Pack integer codes along the last dimension of a 2-D tensor into int32 words.

    ``values + offset`` must lie in ``[0, 2**bits)``; returns int32 of shape
    ``(rows, ceil(cols * bits / 32))`` in compressed-tensors' ``pack_to_int32`` layout.
    """
    _check_bits(bits)
    if values.dim() != 2:
        raise ValueError(f"expected 2-D codes, got shape {tuple(values.shape)}")
    if values.is_floating_point():
        raise ValueError(f"expected integer codes, got {values.dtype}")
    v = values.to(torch.int64) + offset
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 2**bits):
        lo, hi = -offset, 2**bits - 1 - offset
        raise ValueError(f"codes must lie in [{lo}, {hi}] to pack into {bits} bits")
    rows, cols = v.shape
    n_words = math.ceil(cols * bits / _WORD)
    blocks = math.ceil(cols / _WORD)
    v = torch.nn.functional.pad(v, (0, blocks * _WORD - cols)).reshape(rows, blocks, _WORD)
    # 32 elements of `bits` bits fill exactly `bits` words.
    out = torch.zeros(rows, blocks, bits, dtype=torch.int64, device=v.device)
    for e in range(_WORD):
        word, off = divmod(e * bits, _WORD)
        x = v[:, :, e]
        out[:, :, word] |= (x << off) & _MASK32
        if off + bits > _WORD:  # the value straddles two words
            out[:, :, word + 1] |= x >> (_WORD - off)
    return _to_int32(out.reshape(rows, blocks * bits)[:, :n_words]).contiguous()


def unpack_int32(packed: Tensor, bits: int, cols: int, *, offset: int = 0) -> Tensor:
    """Inverse of :func:`pack_int32`: int32 codes of shape ``(rows, cols)`` (offset removed)."""
    _check_bits(bits)
    if packed.dim() != 2 or packed.dtype != torch.int32:
        raise ValueError(f"expected 2-D int32 words, got {packed.dtype} {tuple(packed.shape)}")
    rows, n_words = packed.shape
    if n_words != math.ceil(cols * bits / _WORD):
        raise ValueError(f"{n_words} words per row cannot hold {cols} values of {bits} bits")
    blocks = math.ceil(cols / _WORD)
    w = packed.to(torch.int64) & _MASK32
    w = torch.nn.functional.pad(w, (0, blocks * bits - n_words)).reshape(rows, blocks, bits)
    mask = (1 << bits) - 1
    out = torch.empty(rows, blocks, _WORD, dtype=torch.int64, device=packed.device)
    for e in range(_WORD):
        word, off = divmod(e * bits, _WORD)
        x = w[:, :, word] >> off
        if off + bits > _WORD:
            x = x | (w[:, :, word + 1] << (_WORD - off))
        out[:, :, e] = x & mask
    return (out.reshape(rows, blocks * _WORD)[:, :cols] - offset).to(torch.int32)


# ----------------------------------------------------------------------- quantization
def quantize_for_export(
    w: Tensor,
    wcfg: WeightQuantConfig,
    *,
    scale_dtype: torch.dtype,
    clip: Tensor | None = None,
    name: str = "<weight>",
) -> tuple[Tensor, Tensor, Tensor]:
    """Integer codes, stored scale and zero point of a float weight ``w`` (out, in).

    The scale is computed in float32 by :class:`IntQuantizer` and rounded once to
    ``scale_dtype`` (the dtype the checkpoint stores); the codes are then computed against
    that stored scale, so that ``(q - zero) * scale`` is exactly ``IntQuantizer.fake_with(w,
    stored_scale, zero)``. For a float32 ``scale_dtype`` this is exactly ``IntQuantizer.fake(w)``.
    A scale that would round to 0 in ``scale_dtype`` (float16 cannot hold the 1e-8 floor of an
    all-zero group) is stored as the dtype's smallest positive value instead (see
    :func:`store_scale`).

    Returns ``(q int32 (out, in), scale (out, G) in scale_dtype, zero float32 (out, G))``.
    """
    if w.dim() != 2:
        raise ValueError(f"layer {name}: expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
    check_group_size(w.shape[1], wcfg, name)
    quantizer = IntQuantizer(wcfg)
    scale, zero = quantizer.params(w, clip)
    scale = store_scale(scale, scale_dtype)
    q = quantizer.quant(w, scale.float(), zero)
    return q, scale, zero


def store_scale(scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``scale`` rounded to ``dtype``, never 0: values that underflow become the smallest
    positive ``dtype`` value (float16: 2**-24)."""
    stored = scale.to(dtype)
    tiny = torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype))
    return torch.where(stored > 0, stored, tiny)


# ----------------------------------------------------------------------- checkpoints
def check_names(state_dict: dict[str, Tensor], quantize_names: Iterable[str], ignore: Iterable[str]) -> list[str]:
    """Validate the module names to quantize against the state dict; return them as a list."""
    names = list(dict.fromkeys(quantize_names))
    clash = sorted(set(names) & set(ignore))
    if clash:
        raise ValueError(f"layers both quantized and ignored: {', '.join(clash)}")
    missing = [n for n in names if f"{n}.weight" not in state_dict]
    if missing:
        raise ValueError(f"no '<name>.weight' in the state dict for: {', '.join(missing)}")
    return names


def _dedupe_storage(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors with no shared storage (tied weights are cloned)."""
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
        out[k] = t
    return out


def write_checkpoint(
    tensors: dict[str, Tensor],
    config: dict,
    out_dir: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    save_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``config.json`` and safetensors weights (sharded with an index when large).

    ``save_extra(out_dir)``, when given, runs last (e.g. to save a tokenizer or processor).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _dedupe_storage(tensors)

    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes

    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        total = 0
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata=meta)
            for k, t in shard.items():
                weight_map[k] = fname
                total += t.numel() * t.element_size()
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))

    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if save_extra is not None:
        save_extra(out)
    return out


def model_dtype(state_dict: dict[str, Tensor], quantize_names: Iterable[str]) -> torch.dtype:
    """The float dtype of the first weight to quantize (float32 if none)."""
    for n in quantize_names:
        return state_dict[f"{n}.weight"].dtype
    return torch.float32


def save_packed(
    state_dict: dict[str, Tensor],
    config: dict,
    out_dir: str | Path,
    quantize_names: Iterable[str],
    ignore: Iterable[str],
    pack: Callable[[str, Tensor], dict[str, Tensor]],
    quantization_config: Callable[[list[str]], dict],
    *,
    save_extra: Callable[[Path], None] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """The shared body of the export formats: each ``<module>.weight`` of ``quantize_names``
    is replaced by ``pack(module, weight)`` (leaf name -> tensor), every other tensor is kept,
    and ``config`` gains ``quantization_config(ignore)``; ``config`` itself is not modified."""
    ignore = list(dict.fromkeys(ignore))
    qnames = set(check_names(state_dict, quantize_names, ignore))
    tensors: dict[str, Tensor] = {}
    for key, t in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if module in qnames and leaf == "weight":
            tensors.update({f"{module}.{k}": v for k, v in pack(module, t).items()})
        else:
            tensors[key] = t
    cfg = dict(config)
    cfg["quantization_config"] = quantization_config(ignore)
    return write_checkpoint(tensors, cfg, out_dir, max_shard_bytes=max_shard_bytes, save_extra=save_extra)
