"""SmoothQuant's arithmetic (Xiao et al., 2023, arXiv:2211.10438): the smoothing scales and the
statistics they read. The method itself is :mod:`llmc.quant.methods.smoothquant`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blockwise import collect_inputs

# Lower bound of a smoothing scale, and of the max statistics it is computed from.
MIN_SMOOTH = 1e-5
NORM_FED = ("attn_in", "mlp_in")
LINEAR_FED = ("attn_out", "mlp_out")


def smooth_scales(act_max: Tensor, w_max: Tensor, alpha: float = 0.5) -> Tensor:
    """``s = act_max**alpha / w_max**(1-alpha)``, clamped to ``>= 1e-5``; float32, shape of ``act_max``.

    ``act_max`` / ``w_max`` are the per-input-channel absolute maxima of the activations
    (over calibration tokens) and of the weights (over every output row of every layer sharing
    the input). Channels that never fired during calibration (``act_max == 0``) or have all-zero
    weights get ``s = 1``: there is nothing to balance, and a huge ``1/s`` folded into the
    producer would blow up inputs the calibration set did not show.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    a = act_max.detach().float().reshape(-1)
    w = w_max.detach().float().reshape(-1).to(a.device)
    if a.shape != w.shape:
        raise ValueError(f"act_max has {a.numel()} channels, w_max has {w.numel()}")
    s = (a.clamp(min=MIN_SMOOTH).pow(alpha) / w.clamp(min=MIN_SMOOTH).pow(1 - alpha)).clamp(min=MIN_SMOOTH)
    dead = (a <= 0) | (w <= 0)
    return torch.where(dead, torch.ones_like(s), s)


def weight_absmax(layers: list[nn.Linear]) -> Tensor:
    """Per-input-channel ``max |W|`` over all output rows of ``layers`` (float32)."""
    return torch.cat([fc.weight.detach().float().abs() for fc in layers]).amax(dim=0)


@torch.no_grad()
def act_absmax(block: nn.Module, inputs, layers: dict[str, nn.Linear], device) -> dict[str, Tensor]:
    """Per-input-channel ``max |x|`` of each layer's input over *every* calibration token."""
    acc: dict[str, Tensor] = {}

    def on_batch(name, x):
        m = x.detach().abs().amax(dim=0).float().cpu()
        acc[name] = m if name not in acc else torch.maximum(acc[name], m)

    # rows are only streamed to on_batch; keep the sampled copies collect_inputs makes tiny
    stats = collect_inputs(block, inputs, layers, device, max_rows=max(1, len(inputs)), on_batch=on_batch)
    return {n: acc[st.same_as or n] for n, st in stats.items()}


__all__ = ["act_absmax", "smooth_scales", "weight_absmax"]
