"""Activation fake quantization for the inputs of Linear layers (the "A" of W8A8 / W4A8 / W4A4).

Dynamic quantization only: the scale (and zero point) is derived from the tensor being
quantized at run time, either

* ``per_token``: one (scale, zero) per token, i.e. per row of the flattened ``(tokens, in)``
  input (the reduction runs over the last dimension), or
* ``per_tensor``: one (scale, zero) for the whole input tensor.

Symmetric quantization maps ``[-absmax, absmax]`` onto ``[-(2**(bit-1) - 1), 2**(bit-1) - 1]``
(the restricted signed grid, so the absmax itself is exactly representable and ``-x`` quantizes
like ``x``): scale ``absmax / (2**(bit-1) - 1)``, which is :func:`range_params`' symmetric rule
``absmax / ((qmax - qmin) / 2)`` on that grid. Weights use the full grid (compressed-tensors'
``absmax / 7.5`` for int4) because their scales are stored and must dequantize alike; activation
scales are never stored, the runtime computes them, and vLLM's dynamic per-token int8 kernel
divides by 127. Asymmetric quantization maps ``[min, max]`` (widened to include 0) onto
``[0, 2**bit - 1]`` with an integer zero point.

:func:`attach_act_quant_` registers forward pre-hooks on ``nn.Linear`` layers that replace the
layer's input by its fake-quantized version, so a weight-fake-quantized model evaluated with
its ordinary forward pass measures weight *and* activation quantization. The hooks are removable.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .quantizer import range_params

ACT_GRANULARITIES = ("per_token", "per_tensor")
ACT_MIN_BIT, ACT_MAX_BIT = 2, 16
# Smallest scale (an all-zero token would otherwise divide by zero).
ACT_MIN_SCALE = 1e-8


@dataclass
class ActQuantConfig:
    """How Linear inputs are (dynamically) fake-quantized.

    Attributes:
        bit: integer width, 2..16.
        symmetric: signed grid with zero point 0 (else unsigned grid with a zero point).
        granularity: ``"per_token"`` (one scale per token row) or ``"per_tensor"``.
    """

    bit: int = 8
    symmetric: bool = True
    granularity: str = "per_token"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.bit, bool) or not isinstance(self.bit, int) or not ACT_MIN_BIT <= self.bit <= ACT_MAX_BIT:
            raise ValueError(f"act bit must be an integer in {ACT_MIN_BIT}..{ACT_MAX_BIT}, got {self.bit!r}")
        if self.granularity not in ACT_GRANULARITIES:
            raise ValueError(
                f"act granularity must be one of {', '.join(ACT_GRANULARITIES)}, got {self.granularity!r}"
            )

    def qrange(self) -> tuple[int, int]:
        """Smallest and largest integer code."""
        if self.symmetric:
            q = 2 ** (self.bit - 1) - 1
            return -q, q
        return 0, 2**self.bit - 1

    @property
    def label(self) -> str:
        """``"A8"``-style tag for result tables."""
        return f"A{self.bit}"


def act_params(x: Tensor, cfg: ActQuantConfig) -> tuple[Tensor, Tensor]:
    """(scale, zero) of ``x`` under ``cfg``, float32.

    Shapes: ``x.shape[:-1] + (1,)`` for per_token, ``(1,) * x.dim()`` for per_tensor, so they
    broadcast against ``x``.
    """
    xf = x.float()
    if cfg.granularity == "per_token":
        xmax = xf.amax(dim=-1, keepdim=True)
        xmin = xf.amin(dim=-1, keepdim=True)
    else:
        shape = (1,) * xf.dim()
        xmax = xf.max().reshape(shape)
        xmin = xf.min().reshape(shape)
    qmin, qmax = cfg.qrange()
    return range_params(xmax, xmin, qmin, qmax, cfg.symmetric, ACT_MIN_SCALE)


def quant_act(x: Tensor, cfg: ActQuantConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Integer codes (float32 tensor of integers in ``cfg.qrange()``), scale and zero of ``x``."""
    scale, zero = act_params(x, cfg)
    qmin, qmax = cfg.qrange()
    q = (torch.round(x.float() / scale) + zero).clamp(qmin, qmax)
    return q, scale, zero


def fake_quant_act(x: Tensor, cfg: ActQuantConfig) -> Tensor:
    """Quantize-dequantize ``x`` (..., in_features) dynamically; same shape and dtype as ``x``."""
    if x.numel() == 0:
        return x
    q, scale, zero = quant_act(x, cfg)
    return ((q - zero) * scale).to(x.dtype)


class ActQuantHooks(list):
    """The removable handles returned by :func:`attach_act_quant_` (a list), plus the names."""

    def __init__(self, handles=(), names=()):
        super().__init__(handles)
        self.names = list(names)

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self:
            h.remove()
        self.clear()
        self.names.clear()


def _skipped(name: str, skip: Iterable[str]) -> bool:
    """``name`` matches a pattern: fnmatch on the full name, or equality / suffix ``.pattern``."""
    for p in skip:
        if name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p):
            return True
    return False


def _linears(target) -> dict[str, nn.Linear]:
    """Name -> Linear for a model adapter (its decoder blocks), a module, a dict or a list."""
    if hasattr(target, "get_blocks") and hasattr(target, "block_name"):  # llmc model adapter
        out = {}
        for i, block in enumerate(target.get_blocks()):
            for n, m in block.named_modules():
                if isinstance(m, nn.Linear):
                    out[f"{target.block_name(i)}.{n}"] = m
        return out
    if isinstance(target, nn.Linear):
        return {"": target}
    if isinstance(target, nn.Module):
        return {n: m for n, m in target.named_modules() if isinstance(m, nn.Linear)}
    if isinstance(target, Mapping):
        items = list(target.items())
    else:
        items = [(str(i), m) for i, m in enumerate(target)]
    for n, m in items:
        if not isinstance(m, nn.Linear):
            raise TypeError(f"act quantization hooks go on nn.Linear layers; {n!r} is {type(m).__name__}")
    return dict(items)


def attach_act_quant_(module_or_linears, cfg: ActQuantConfig, skip: Iterable[str] = ()) -> ActQuantHooks:
    """Fake-quantize the input of every selected ``nn.Linear`` on each forward.

    Args:
        module_or_linears: an llmc model adapter (hooks go on the Linear layers of its decoder
            blocks only: not the vision tower, projector or lm_head), an ``nn.Module`` (all its
            Linear submodules, itself included), a dict name -> Linear, or a list of Linears.
        cfg: the activation quantization.
        skip: name patterns of layers to leave alone: exact name, a ``.``-suffix (``"lm_head"``,
            ``"mlp.down_proj"``) or an fnmatch pattern (``"*.k_proj"``).

    Returns:
        :class:`ActQuantHooks`: a list of removable handles with ``.remove()`` and ``.names``.
    """
    cfg.validate()
    skip = [skip] if isinstance(skip, str) else list(skip)
    hooks = ActQuantHooks()

    def pre_hook(mod, args):
        if not args:
            return None
        return (fake_quant_act(args[0], cfg), *args[1:])

    seen: set[int] = set()
    for name, lin in _linears(module_or_linears).items():
        if id(lin) in seen or _skipped(name, skip):
            continue
        seen.add(id(lin))
        hooks.append(lin.register_forward_pre_hook(pre_hook))
        hooks.names.append(name)
    return hooks


def act_config(qcfg) -> ActQuantConfig | None:
    """``ActQuantConfig`` from a config section with ``act: {bit, symmetric, granularity}`` (or None)."""
    a = getattr(qcfg, "act", None) if not isinstance(qcfg, Mapping) else qcfg.get("act")
    if a is None:
        return None
    if hasattr(a, "model_dump"):
        a = a.model_dump()
    elif not isinstance(a, Mapping):
        a = {k: getattr(a, k) for k in ("bit", "symmetric", "granularity") if hasattr(a, k)}
    return ActQuantConfig(**{k: v for k, v in a.items() if k in ("bit", "symmetric", "granularity")})


__all__ = ["ActQuantConfig", "ActQuantHooks", "act_config", "act_params", "attach_act_quant_", "fake_quant_act",
           "quant_act"]
