"""Uniform integer quantizer for 2-D weights (out_features, in_features).

Two granularities are supported:

* ``per_channel``: one (scale, zero) pair per output row;
* ``per_group``: one pair per run of ``group_size`` consecutive input columns of each row.

Parameters always have shape ``(out, n_groups)`` (``n_groups == 1`` for per-channel).
Asymmetric quantization maps ``[min, max]`` (widened to include 0, so that 0 is exactly
representable) onto ``[0, 2**bit - 1]`` with an integer zero point; symmetric quantization uses
the full signed grid ``[-2**(bit-1), 2**(bit-1) - 1]`` with zero point 0 and the scale
compressed-tensors uses, ``absmax / ((qmax - qmin) / 2)`` (``absmax / 7.5`` for int4): codes are
clamped to the grid, so ``+absmax`` rounds to ``qmax`` and ``-absmax`` to ``qmin``, every value
within half a step. Checkpoints exported from these parameters dequantize exactly like the ones
llm-compressor writes for the same weights.

Parameters come from each group's range as it is (``calib_algo: minmax``) or from the range shrunk
by the factor, per group, that minimises the group's rounding error (``calib_algo: mse``;
:meth:`IntQuantizer.search_clip`: ``sum |w - q(w)|^2.4`` over the factors ``1, 0.99, ..., 0.21``,
as GPTQ's reference code and llm-compressor's MSE observer search). The search reads the weights
only, so it needs no calibration data.

Every computation runs in float32; :meth:`IntQuantizer.fake` returns the input's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GRANULARITIES = ("per_channel", "per_group")
MIN_BIT, MAX_BIT = 2, 8
# Smallest scale a group may get (an all-zero group would otherwise divide by zero).
MIN_SCALE = 1e-8
# The MSE range search: shrink factors 1 - i / MSE_GRID for i < MSE_MAXSHRINK * MSE_GRID, error norm.
MSE_GRID, MSE_MAXSHRINK, MSE_NORM = 100, 0.8, 2.4
CALIB_ALGOS = ("minmax", "mse")
# Elements of a weight the torch MSE search handles at once (its temporaries are this large).
_MSE_CHUNK = 1 << 22
# Group sizes worth suggesting when a configured one does not fit a layer.
_COMMON_GROUP_SIZES = (32, 64, 128, 256)


@dataclass
class WeightQuantConfig:
    """How weights are quantized.

    Attributes:
        bit: integer width, 2..8.
        symmetric: signed grid with zero point 0 (else unsigned grid with a zero point).
        granularity: ``"per_channel"`` or ``"per_group"``.
        group_size: input columns per group (per_group only; ignored for per_channel).
        calib_algo: ``"minmax"`` (each group's range) or ``"mse"`` (the range shrunk to minimise
            the group's rounding error, see :meth:`IntQuantizer.search_clip`).
    """

    bit: int = 4
    symmetric: bool = False
    granularity: str = "per_group"
    group_size: int | None = 128
    calib_algo: str = "minmax"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for a bit width, granularity or group size that cannot work."""
        if isinstance(self.bit, bool) or not isinstance(self.bit, int) or not MIN_BIT <= self.bit <= MAX_BIT:
            raise ValueError(f"bit must be an integer in {MIN_BIT}..{MAX_BIT}, got {self.bit!r}")
        if self.calib_algo not in CALIB_ALGOS:
            raise ValueError(f"calib_algo must be one of {', '.join(CALIB_ALGOS)}, got {self.calib_algo!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.granularity == "per_group":
            gs = self.group_size
            if isinstance(gs, bool) or not isinstance(gs, int) or gs <= 0:
                raise ValueError(f"per_group quantization needs a positive integer group_size, got {gs!r}")

    def n_groups(self, in_features: int) -> int:
        """Number of groups per output row for a layer of this input width."""
        if self.granularity == "per_channel":
            return 1
        return in_features // self.group_size

    def group_width(self, in_features: int) -> int:
        """Input columns covered by one group."""
        return in_features if self.granularity == "per_channel" else self.group_size


def _suggest_group_sizes(in_features: int, group_size: int) -> list[int]:
    """Up to three group sizes that divide ``in_features``: common ones first, else the nearest."""
    common = [d for d in _COMMON_GROUP_SIZES if d < in_features and in_features % d == 0]
    if common:
        # Prefer the common sizes closest to what the user asked for.
        common.sort(key=lambda d: (abs(d - group_size), d))
        return sorted(common[:3])
    divisors = [d for d in range(2, in_features + 1) if in_features % d == 0]
    divisors.sort(key=lambda d: (abs(d - group_size), d))
    return sorted(divisors[:3])


def _human_list(items: list[int]) -> str:
    if len(items) == 1:
        return str(items[0])
    return ", ".join(str(i) for i in items[:-1]) + f" or {items[-1]}"


def check_group_size(in_features: int, cfg: WeightQuantConfig, layer_name: str) -> None:
    """Check that ``cfg`` can quantize a layer of input width ``in_features``.

    Raises ``ValueError`` with one line naming the layer, its width and fitting group sizes
    when a per-group ``group_size`` does not divide the width; also re-validates the bit width.
    """
    cfg.validate()
    if cfg.granularity != "per_group":
        return
    gs = cfg.group_size
    if in_features % gs == 0:
        return
    suggestions = _suggest_group_sizes(in_features, gs)
    raise ValueError(
        f"layer {layer_name}: group_size {gs} does not divide its input width {in_features}; "
        f"choose a divisor of {in_features} such as {_human_list(suggestions)}"
    )


def range_params(vmax: Tensor, vmin: Tensor, qmin: int, qmax: int, symmetric: bool,
                 min_scale: float) -> tuple[Tensor, Tensor]:
    """(scale, zero) mapping values in ``[vmin, vmax]`` onto the integer grid ``[qmin, qmax]``.

    Symmetric: zero point 0 and ``scale = absmax / ((qmax - qmin) / 2)``, compressed-tensors'
    rule (``absmax / 7.5`` on the int4 grid ``[-8, 7]``; ``absmax / 127`` on the restricted
    grid ``[-127, 127]`` that activations use). Asymmetric: the range is widened to contain 0
    (so zeros stay exactly zero) and the zero point is rounded onto the grid.
    """
    if symmetric:
        half_range = (qmax - qmin) / 2
        scale = (torch.maximum(vmax.abs(), vmin.abs()) / half_range).clamp(min=min_scale)
        return scale, torch.zeros_like(scale)
    vmax, vmin = vmax.clamp(min=0), vmin.clamp(max=0)
    scale = ((vmax - vmin) / (qmax - qmin)).clamp(min=min_scale)
    return scale, torch.round(-vmin / scale).clamp(qmin, qmax)


_FACTORS: dict[str, Tensor] = {}


def mse_factors(device=None) -> Tensor:
    """The shrink factors the MSE search tries, in order (float32): ``1 - i / MSE_GRID``. Kept per
    device (a CUDA graph capture may read them, never copy them in)."""
    key = str(torch.device(device) if device is not None else "cpu")
    if key not in _FACTORS:
        n = int(MSE_MAXSHRINK * MSE_GRID)
        _FACTORS[key] = torch.tensor([1 - i / MSE_GRID for i in range(n)], dtype=torch.float32, device=device)
    return _FACTORS[key]


class IntQuantizer:
    """Quantize / dequantize 2-D weights according to a :class:`WeightQuantConfig`."""

    def __init__(self, cfg: WeightQuantConfig):
        cfg.validate()
        self.cfg = cfg

    # ------------------------------------------------------------------ grid
    def qrange(self) -> tuple[int, int]:
        """Smallest and largest integer code."""
        bit = self.cfg.bit
        if self.cfg.symmetric:
            return -(2 ** (bit - 1)), 2 ** (bit - 1) - 1
        return 0, 2**bit - 1

    # ------------------------------------------------------------ parameters
    def _grouped(self, w: Tensor) -> Tensor:
        """``w`` (out, in) as float32 (out, n_groups, group_width); checks the group size."""
        if w.dim() != 2:
            raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
        out, in_features = w.shape
        check_group_size(in_features, self.cfg, "<weight>")
        gw = self.cfg.group_width(in_features)
        return w.float().reshape(out, in_features // gw, gw)

    def params_from_range(self, wmax: Tensor, wmin: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, zero) for groups whose values span ``[wmin, wmax]`` (any matching shapes)."""
        qmin, qmax = self.qrange()
        return range_params(wmax.float(), wmin.float(), qmin, qmax, self.cfg.symmetric, MIN_SCALE)

    def params(self, w: Tensor, clip: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scale and zero point of each group of ``w``, both of shape (out, n_groups).

        ``clip`` (out, n_groups), values in (0, 1], shrinks each group's max and min (or its
        absolute maximum) before the parameters are derived, trading clipping error on the
        extreme values for finer resolution of the others.
        """
        wg = self._grouped(w)
        wmax, wmin = wg.amax(dim=-1), wg.amin(dim=-1)
        if clip is not None:
            clip = clip.to(device=wmax.device, dtype=torch.float32)
            if clip.shape != wmax.shape:
                raise ValueError(f"clip must have shape {tuple(wmax.shape)}, got {tuple(clip.shape)}")
            wmax, wmin = wmax * clip, wmin * clip
        return self.params_from_range(wmax, wmin)

    def row_params(self, w: Tensor, clip: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One (scale, zero) per row over *all* columns of ``w``: shapes (out, 1); ``clip``
        (out, 1) shrinks each row's range first.

        Used by GPTQ to compute a group's parameters from the group's columns alone.
        """
        w = w.float()
        wmax, wmin = w.amax(dim=1, keepdim=True), w.amin(dim=1, keepdim=True)
        if clip is not None:
            wmax, wmin = wmax * clip, wmin * clip
        return self.params_from_range(wmax, wmin)

    def clip_for(self, w: Tensor, groups: int | None = None) -> Tensor | None:
        """The range factors ``calib_algo`` asks for: ``None`` (minmax) or :meth:`search_clip`."""
        return self.search_clip(w, groups) if self.cfg.calib_algo == "mse" else None

    @torch.no_grad()
    def search_clip(self, w: Tensor, groups: int | None = None) -> Tensor:
        """Per-(row, group) factor in (0, 1] that minimises ``sum |w - q(w)|^MSE_NORM`` over the
        group when its range (max and min, or absmax) is multiplied by it; shape (out, G).

        ``groups`` splits each row into that many runs of columns (default: the config's groups).
        Ties keep the larger factor. On a GPU one Triton kernel reads the weight once; elsewhere
        the same search runs in torch, a slice of rows at a time."""
        from llmc.quant import mse_kernel

        out, n = w.shape
        groups = groups or (n // self.cfg.group_width(n))
        wg = w.float().reshape(out, groups, n // groups)
        qmin, qmax = self.qrange()
        factors = mse_factors(w.device)
        if mse_kernel.fits(wg):
            return mse_kernel.mse_clip(wg, factors, qmin, qmax, self.cfg.symmetric, MIN_SCALE, MSE_NORM)
        best_clip = torch.ones(out, groups, device=w.device)
        rows = max(1, _MSE_CHUNK // n)
        for r0 in range(0, out, rows):
            g = wg[r0:r0 + rows]
            vmax, vmin = g.amax(-1), g.amin(-1)
            best = torch.full(vmax.shape, float("inf"), device=w.device)
            clip = best_clip[r0:r0 + rows]
            flat = g.reshape(g.shape[0], -1)
            for p in factors:
                scale, zero = self.params_from_range(vmax * p, vmin * p)
                err = (self.fake_with(flat, scale, zero).view(g.shape) - g).abs_().pow_(MSE_NORM).sum(-1)
                better = err < best
                best = torch.where(better, err, best)
                clip.copy_(torch.where(better, p, clip))  # no masked write: no host sync (CUDA graphs)
        return best_clip

    # ------------------------------------------------------ (de)quantization
    @staticmethod
    def _by_group(t: Tensor, groups: int) -> Tensor:
        """View an (out, in) tensor as float32 (out, groups, in // groups)."""
        if t.dim() != 2:
            raise ValueError(f"expected a 2-D tensor (out, in), got shape {tuple(t.shape)}")
        out, in_features = t.shape
        if in_features % groups != 0:
            raise ValueError(f"{groups} groups do not tile {in_features} columns")
        return t.float().reshape(out, groups, in_features // groups)

    def quant(self, w: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
        """Integer codes (int32, in ``qrange()``) of ``w`` (out, in) under (out, G) parameters."""
        qmin, qmax = self.qrange()
        wg = self._by_group(w, scale.shape[-1])
        q = torch.round(wg / scale.float().unsqueeze(-1)) + zero.float().unsqueeze(-1)
        return q.clamp(qmin, qmax).to(torch.int32).reshape(w.shape)

    def dequant(self, q: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
        """Float32 values of integer codes ``q`` (out, in) under (out, G) parameters."""
        qg = self._by_group(q, scale.shape[-1])
        return ((qg - zero.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)).reshape(q.shape)

    def fake_with(self, w: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
        """Quantize-dequantize ``w`` with given parameters; float32 result."""
        return self.dequant(self.quant(w, scale, zero), scale, zero)

    def fake(self, w: Tensor, clip: Tensor | None = None) -> Tensor:
        """Quantize-dequantize ``w`` with its own (optionally clipped) parameters.

        Returns a tensor of ``w``'s shape and dtype.
        """
        scale, zero = self.params(w, clip)
        return self.fake_with(w, scale, zero).to(w.dtype)


class tf32:
    """Allow TF32 matrix products inside the block (when ``on``), restoring the setting after."""

    def __init__(self, on: bool):
        self.on, self.old = on, None

    def __enter__(self):
        if self.on:
            self.old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True

    def __exit__(self, *exc):
        if self.on:
            torch.backends.cuda.matmul.allow_tf32 = self.old
