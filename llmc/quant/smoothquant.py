"""SmoothQuant (Xiao et al., 2023, arXiv:2211.10438) as a blockwise method.

LLM activations have a few input channels with values tens of times larger than the rest;
per-token activation quantization then wastes its range on them. SmoothQuant moves that
difficulty into the weights with a per-input-channel scale

    s_j = max|X_j| ** alpha / max|W_:,j| ** (1 - alpha)

folding ``1/s`` into the op that produces the input (a norm, or a previous Linear) and ``s``
into the reading layers' weight columns, so the float model is unchanged. The weights are then
round-to-nearest quantized (per-channel symmetric int8 by default); activations are quantized
at evaluation time by :func:`llmc.quant.actquant.attach_act_quant_`.

``special`` keys:

* ``alpha`` (float, default 0.5): migration strength, 0 = none, 1 = all onto the weights;
* ``smooth_linear`` (bool, default False): also smooth o <- v and down <- up (subsets whose
  producer is a Linear); the paper only smooths the norm-fed subsets (q/k/v and gate/up).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .awq import apply_scales_
from .blockwise import BlockContext, LayerStats, Method, collect_inputs
from .quantizer import WeightQuantConfig
from .rtn import rtn_

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


class SmoothQuant(Method):
    """Smooth (activation outliers -> weights), then RTN-quantize the weights."""

    name = "SmoothQuant"

    def __init__(self, wcfg: WeightQuantConfig | None = None, special: dict | None = None):
        super().__init__(wcfg or WeightQuantConfig(bit=8, symmetric=True, granularity="per_channel"), special)
        self.alpha = float(self.special.get("alpha", 0.5))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"quant.special.alpha must be in [0, 1], got {self.alpha}")
        self.scales: dict[str, Tensor] = {}  # "<block>.<subset>" -> scales used (for reports/tests)

    def _smoothable(self, subset) -> bool:
        if subset.prev_op is None:
            return False
        if subset.name in NORM_FED:
            return True
        return subset.name in LINEAR_FED and bool(self.special.get("smooth_linear", False)) \
            and isinstance(subset.prev_op, nn.Linear)

    @torch.no_grad()
    def transform_block(self, ctx: BlockContext) -> None:
        subsets = [s for s in ctx.subsets if self._smoothable(s)]
        if not subsets:
            return
        # one pass: every subset's first layer (all layers of a subset read the same input);
        # the folds below keep the block's float function, so no subset's input statistics
        # depend on another subset having been smoothed first.
        probes = {s.name: next(iter(s.layers.values())) for s in subsets}
        amax = act_absmax(ctx.block, ctx.inputs, probes, ctx.device)
        for s in subsets:
            layers = list(s.layers.values())
            scales = smooth_scales(amax[s.name], weight_absmax(layers), self.alpha)
            apply_scales_(s.prev_op, layers, scales.to(layers[0].weight.device))
            self.scales[f"{ctx.name}.{s.name}"] = scales.cpu()

    def quantize_subset(self, ctx, subset, stats: dict[str, LayerStats], state) -> None:
        for n, layer in subset.layers.items():
            self.record(layer, *rtn_(layer, self.wcfg, f"{ctx.name}.{n}"))


__all__ = ["SmoothQuant", "act_absmax", "smooth_scales", "weight_absmax"]
