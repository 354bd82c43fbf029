"""AWQ: activation-aware weight quantization (Lin et al., 2023, arXiv:2306.00978).

A few input channels of an LLM's Linear layers carry much larger activations than the rest;
their weights matter most. AWQ multiplies those weight columns by a per-channel scale ``s > 1``
before quantizing (shrinking their relative rounding error) and divides the layer's input by
``s``, folding ``1/s`` into the op that produces the input (a norm or a previous Linear), so
the float model is unchanged. The scale is ``mean|x|**ratio`` with ``ratio`` picked by a grid
search on the layers' output error. A second search (``search_clip_``) then shrinks each
group's quantization range where clipping its extreme weights lowers the group's output error.

Everything here is functional: the caller captures the calibration inputs and decides which
layers share a scale (a *subset*: the layers that read one op's output).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig, check_group_size
from llmc.quant.rtn import rtn_

# Rows of calibration input used by the scale search and the clip search.
MAX_SCALE_ROWS = 4096
MAX_CLIP_ROWS = 512
# Elements of the (rows, tokens, groups) output tensor the clip search materialises at once.
_CLIP_CHUNK_ELEMS = 1 << 22
# Relative output error under which a fold into a norm counts as exact.
_FOLD_RTOL = 5e-2


def _rows(x: Tensor, in_features: int, limit: int) -> Tensor:
    """``x`` flattened to (n, in_features) float32, evenly subsampled to at most ``limit`` rows."""
    x = x.reshape(-1, in_features).float()
    n = x.shape[0]
    if n > limit:
        idx = torch.linspace(0, n - 1, limit, device=x.device).round().long()
        x = x[idx]
    return x


def _check_layers(layers: list[nn.Linear], in_features: int) -> None:
    if not layers:
        raise ValueError("AWQ needs at least one layer")
    for fc in layers:
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"AWQ scales nn.Linear layers, got {type(fc).__name__}")
        if fc.in_features != in_features:
            raise ValueError(
                f"layers sharing a scale must have one input width; got {fc.in_features} and {in_features}"
            )


@torch.no_grad()
def search_scales(
    x: Tensor, layers: list[nn.Linear], cfg: WeightQuantConfig, n_grid: int = 20
) -> tuple[Tensor, float, dict[float, float]]:
    """Grid-search AWQ's per-input-channel scales for ``layers``, which all read ``x``.

    For each ``ratio`` in ``0, 1/n_grid, ..., (n_grid-1)/n_grid`` the candidate scale is
    ``s = mean|x|**ratio`` (normalised so ``max(s) * min(s) == 1``) and its loss is the sum over
    layers of the mean squared difference between ``x @ W^T`` and ``x @ (Q(W * s) / s)^T``.
    ``ratio = 0`` (``s == 1``) is plain RTN, so the chosen scale never does worse on this loss.

    Args:
        x: calibration inputs (..., in_features); at most 4096 evenly spaced rows are used.
        layers: Linear layers that read ``x`` (they will share the scale).
        cfg: the quantization the scale is tuned for.
        n_grid: number of ratios tried.

    Returns:
        ``(scales (in_features,) float32 on x's device, best ratio, {ratio: loss})``.
    """
    in_features = layers[0].in_features if layers else x.shape[-1]
    _check_layers(layers, in_features)
    check_group_size(in_features, cfg, type(layers[0]).__name__)
    if n_grid < 1:
        raise ValueError(f"n_grid must be >= 1, got {n_grid}")
    quantizer = IntQuantizer(cfg)
    x = _rows(x, in_features, MAX_SCALE_ROWS)
    x_mean = x.abs().mean(dim=0)
    weights = [fc.weight.detach().to(device=x.device, dtype=torch.float32) for fc in layers]
    refs = [x @ w.t() for w in weights]

    errors: dict[float, float] = {}
    best_loss, best_ratio, best_scales = float("inf"), 0.0, torch.ones_like(x_mean)
    for step in range(n_grid):
        ratio = step / n_grid
        s = x_mean.pow(ratio).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = 0.0
        for w, ref in zip(weights, refs):
            wq = quantizer.fake(w * s) / s
            loss += (x @ wq.t() - ref).pow(2).mean().item()
        errors[ratio] = loss
        if loss < best_loss:
            best_loss, best_ratio, best_scales = loss, ratio, s
    return best_scales, best_ratio, errors


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or "norm" in type(m).__name__.lower()


@torch.no_grad()
def _fold_into_norm(norm: nn.Module, s: Tensor) -> None:
    """Divide a norm's output channels by ``s`` through its affine parameters.

    Most norms compute ``normalised * weight (+ bias)``; some (Gemma, Qwen3-Next...) compute
    ``normalised * (1 + weight)``. The convention is not visible from the outside, so the fold
    is checked on a fixed probe input: the plain convention is tried first, then the offset one.
    """
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(f"cannot fold scales into {type(norm).__name__}: it has no affine weight")
    if weight.numel() != s.numel():
        raise ValueError(f"{type(norm).__name__} has {weight.numel()} channels, scales have {s.numel()}")
    bias = getattr(norm, "bias", None)
    bias = bias if isinstance(bias, Tensor) else None
    w0 = weight.data.clone()
    b0 = bias.data.clone() if bias is not None else None
    sw = s.to(device=weight.device, dtype=torch.float32).reshape(w0.shape)

    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(8, s.numel(), generator=gen).to(device=weight.device, dtype=weight.dtype)
    try:
        target = norm(probe).float() / sw
    except Exception:  # a norm that needs more than one input: trust the common convention
        target = None

    candidates = {
        "plain": lambda: w0.float() / sw,
        "offset": lambda: (1.0 + w0.float()) / sw - 1.0,
    }
    for make_weight in candidates.values():
        weight.data.copy_(make_weight().to(weight.dtype))
        if bias is not None:
            bias.data.copy_((b0.float() / sw.reshape(b0.shape)).to(bias.dtype))
        if target is None:
            return
        out = norm(probe).float()
        if (out - target).norm() <= _FOLD_RTOL * target.norm() + 1e-6:
            return
    weight.data.copy_(w0)
    if bias is not None:
        bias.data.copy_(b0)
    raise ValueError(
        f"cannot fold scales into {type(norm).__name__}: its output is not proportional to its weight"
    )


@torch.no_grad()
def apply_scales_(prev_op: nn.Module, layers: list[nn.Linear], scales: Tensor) -> None:
    """Fold AWQ scales so the float function is unchanged: ``1/s`` into ``prev_op``, ``s`` into ``layers``.

    ``prev_op`` produces the layers' input and may be a LayerNorm / RMSNorm-like module (any
    module whose class name contains "Norm", with an affine ``weight`` and optional ``bias``) or
    an ``nn.Linear`` (its output rows, weight and bias, are divided by ``s``). Each layer's input
    column ``j`` is multiplied by ``s[j]``.
    """
    s = scales.detach().float().reshape(-1)
    _check_layers(layers, s.numel())
    if isinstance(prev_op, nn.Linear):
        if prev_op.out_features != s.numel():
            raise ValueError(
                f"previous Linear has {prev_op.out_features} outputs, scales have {s.numel()}"
            )
        sp = s.to(prev_op.weight.device)
        prev_op.weight.data.copy_((prev_op.weight.data.float() / sp.unsqueeze(1)).to(prev_op.weight.dtype))
        if prev_op.bias is not None:
            prev_op.bias.data.copy_((prev_op.bias.data.float() / sp).to(prev_op.bias.dtype))
    elif _is_norm(prev_op):
        _fold_into_norm(prev_op, s)
    else:
        raise TypeError(
            f"cannot fold scales into {type(prev_op).__name__}: expected a norm module or nn.Linear"
        )
    for fc in layers:
        sf = s.to(fc.weight.device)
        fc.weight.data.copy_((fc.weight.data.float() * sf.unsqueeze(0)).to(fc.weight.dtype))


@torch.no_grad()
def search_clip_(
    layer: nn.Linear,
    x: Tensor,
    cfg: WeightQuantConfig,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    name: str = "<linear>",
) -> Tensor:
    """Per-(row, group) clip ratios that minimise each group's output error on ``x``.

    For each shrink ratio ``r`` in ``1, 1 - 1/n_grid, ...`` (down to ``1 - max_shrink``,
    exclusive) every group is fake-quantized with its max/min (or absmax) scaled by ``r``;
    the group's error is the mean over rows of ``(x_g @ w_g^T - x_g @ q_g^T)^2``, where ``x_g``
    is the input restricted to the group's columns. ``r = 1`` (no clipping) is always a
    candidate. The weight is not modified.

    Args:
        layer: the (already AWQ-scaled) layer.
        x: inputs it reads (..., in_features); at most 512 evenly spaced rows are used.
        name: labels the error raised when the group size does not fit the layer.

    Returns:
        clip ratios (out, n_groups) for :meth:`IntQuantizer.fake` / :func:`awq_quantize_`.
    """
    check_group_size(layer.in_features, cfg, name)
    if not 0.0 <= max_shrink < 1.0:
        raise ValueError(f"max_shrink must be in [0, 1), got {max_shrink}")
    quantizer = IntQuantizer(cfg)
    out_f, in_f = layer.out_features, layer.in_features
    groups, gw = cfg.n_groups(in_f), cfg.group_width(in_f)
    w_all = layer.weight.detach().float()
    x = _rows(x, in_f, MAX_CLIP_ROWS).to(w_all.device)
    n = x.shape[0]
    xg = x.reshape(n, groups, gw)
    ratios = [1.0 - i / n_grid for i in range(max(1, int(max_shrink * n_grid)))]

    best_clip = torch.ones(out_f, groups, dtype=torch.float32, device=w_all.device)
    chunk = max(1, min(out_f, _CLIP_CHUNK_ELEMS // max(1, n * groups)))
    for r0 in range(0, out_f, chunk):
        w = w_all[r0 : r0 + chunk]
        rows = w.shape[0]
        ref = torch.einsum("ngk,ogk->ong", xg, w.reshape(rows, groups, gw))
        min_err = torch.full((rows, groups), float("inf"), device=w.device)
        for r in ratios:
            clip = torch.full((rows, groups), r, device=w.device)
            q = quantizer.fake(w, clip).reshape(rows, groups, gw)
            err = (torch.einsum("ngk,ogk->ong", xg, q) - ref).pow(2).mean(dim=1)
            better = err < min_err
            min_err = torch.where(better, err, min_err)
            best_clip[r0 : r0 + rows] = torch.where(better, clip, best_clip[r0 : r0 + rows])
    return best_clip


@torch.no_grad()
def awq_quantize_(
    layer: nn.Linear, cfg: WeightQuantConfig, clip: Tensor | None = None, name: str = "<linear>"
) -> tuple[Tensor, Tensor]:
    """Fake-quantize ``layer.weight`` in place, with per-group clip ratios from :func:`search_clip_`.

    Call it after :func:`apply_scales_`; ``name`` labels the group-size error. Returns the
    ``(scale, zero)`` used (for exports).
    """
    return rtn_(layer, cfg, name, clip)
