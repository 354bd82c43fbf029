"""SmoothQuant (Xiao et al., 2023, arXiv:2211.10438): activation outliers moved into the weights.

LLM activations have a few input channels with values tens of times larger than the rest;
per-token activation quantization then wastes its range on them. SmoothQuant moves that
difficulty into the weights with a per-input-channel scale

    s_j = max|X_j| ** alpha / max|W_:,j| ** (1 - alpha)

folding ``1/s`` into the op that produces the input (a norm, or a previous Linear) and ``s``
into the reading layers' weight columns, so the float model is unchanged. The weights are then
round-to-nearest quantized (per-channel symmetric int8 by default); activations are quantized
at evaluation time by :func:`llmc.quant.actquant.attach_act_quant_`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from llmc.config.types import Bool, Float

from .base import Method, MethodOptions, MethodSpec, no_grad


class SmoothQuantOptions(MethodOptions):
    """SmoothQuant: migrate activation outliers into the weights before W8A8."""

    _method: ClassVar[str] = "SmoothQuant"

    alpha: Float = Field(0.5, description="migration strength: 0 none, 1 all onto the weights")
    smooth_linear: Bool = Field(False, description="also smooth o<-v and down<-up (the paper smooths the "
                                "norm-fed subsets only)")

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{value} is out of range; use 0 < alpha <= 1, e.g. 0.5")
        return value


class SmoothQuant(Method):
    """Smooth (activation outliers -> weights), then RTN-quantize the weights."""

    Options = SmoothQuantOptions
    name = "SmoothQuant"

    def __init__(self, wcfg=None, options=None):
        if wcfg is None:
            from llmc.quant.quantizer import WeightQuantConfig

            wcfg = WeightQuantConfig(bit=8, symmetric=True, granularity="per_channel")
        super().__init__(wcfg, options)
        self.alpha = self.opts.alpha
        self.scales: dict = {}  # "<block>.<subset>" -> scales used (for reports/tests)

    def _smoothable(self, subset) -> bool:
        from torch import nn

        from llmc.quant.smoothquant import LINEAR_FED, NORM_FED

        if subset.prev_op is None:
            return False
        if subset.name in NORM_FED:
            return True
        return subset.name in LINEAR_FED and self.opts.smooth_linear and isinstance(subset.prev_op, nn.Linear)

    @no_grad
    def transform_block(self, ctx) -> None:
        from llmc.quant.awq import apply_scales_
        from llmc.quant.smoothquant import act_absmax, smooth_scales, weight_absmax

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

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        from llmc.quant.rtn import rtn_

        for n, layer in subset.layers.items():
            self.record(layer, *rtn_(layer, self.wcfg, f"{ctx.name}.{n}"))


SPEC = MethodSpec(name="SmoothQuant", impl=SmoothQuant, order=40, needs_data=True, symmetric=True,
                  preset={"alpha": 0.5, "smooth_linear": True},
                  summary="move activation outliers into the weights, then round (for W8A8)")
