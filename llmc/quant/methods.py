"""RTN, AWQ and GPTQ as blockwise :class:`~llmc.quant.blockwise.Method` s."""

from __future__ import annotations

import torch

from . import awq
from .blockwise import BlockContext, LayerStats, Method, collect_inputs, run_block
from .gptq import GPTQ
from .quantizer import IntQuantizer, WeightQuantConfig
from .rtn import rtn_
from .smoothquant import SmoothQuant


class RTN(Method):
    name = "RTN"

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        for n, layer in subset.layers.items():
            self.record(layer, *rtn_(layer, self.wcfg, f"{ctx.name}.{n}"))


class Awq(Method):
    """Activation-aware scales folded into the preceding op, then clip search and RTN.

    The scale of each subset is searched on the *block output*: for every candidate ratio the
    subset's weights are replaced by ``Q(W * s) / s`` (what folding ``1/s`` into the preceding op
    and quantizing gives) and the block's output error on calibration inputs is measured, so
    attention and the MLP's non-linearity count, as they do for the model. ``search: layer``
    uses the layers' own outputs instead (the cheaper classic loss).
    """

    name = "Awq"
    search_inputs = 16  # calibration inputs used by the block-output search

    def transform_block(self, ctx: BlockContext) -> None:
        if not self.special.get("trans", True):
            return
        n_grid = int(self.special.get("n_grid", 20))
        for subset in ctx.subsets:
            if subset.prev_op is None:
                continue
            stats = collect_inputs(ctx.block, ctx.inputs, subset.layers, ctx.device, seed=ctx.index)
            x = next(iter(stats.values())).x  # all layers of a subset read the same input
            layers = list(subset.layers.values())
            if self.special.get("search", "block") == "layer":
                scales, _, _ = awq.search_scales(x.to(ctx.device), layers, self.wcfg, n_grid=n_grid)
            else:
                w_mean = _group_normalized_weight_mean(layers, self.wcfg) \
                    if self.special.get("trans_version", "v2") == "v2" else None
                scales = self._search_on_block(ctx, layers, x.abs().mean(0), n_grid, w_mean)
            awq.apply_scales_(subset.prev_op, layers, scales.to(layers[0].weight.device))

    @torch.no_grad()
    def _search_on_block(self, ctx: BlockContext, layers, x_mean: torch.Tensor, n_grid: int,
                         w_mean: torch.Tensor | None = None) -> torch.Tensor:
        step = max(1, len(ctx.inputs) // self.search_inputs)
        inputs = ctx.inputs[::step][: self.search_inputs]
        ref = run_block(ctx.block, inputs, ctx.device)
        q = IntQuantizer(self.wcfg)
        orig = [fc.weight.data.clone() for fc in layers]
        x_mean = x_mean.to(orig[0].device, torch.float32)
        best, best_loss = None, float("inf")
        try:
            for i in range(n_grid):
                r = i / n_grid
                if w_mean is None:  # v1: activation statistics only
                    s = x_mean.pow(r).clamp(min=1e-4)
                else:  # v2 ("duo"): salient inputs up, channels with large weights down
                    s = (x_mean.pow(r) / (w_mean.to(x_mean.device).pow(1 - r) + 1e-4)).clamp(min=1e-4)
                s = s / (s.max() * s.min()).sqrt()
                for fc, w in zip(layers, orig):
                    fc.weight.data = (q.fake(w.float() * s) / s).to(w.dtype)
                out = run_block(ctx.block, inputs, ctx.device)
                loss = sum(_token_relative_mse(o, r) for o, r in zip(out, ref))
                if loss < best_loss:
                    best, best_loss = s.clone(), loss
        finally:
            for fc, w in zip(layers, orig):
                fc.weight.data = w
        return best

    def quantize_subset(self, ctx, subset, stats: dict[str, LayerStats], state) -> None:
        clip_cfg = self.wcfg
        if self.special.get("clip_sym") is not None and self.special["clip_sym"] != self.wcfg.symmetric:
            clip_cfg = WeightQuantConfig(self.wcfg.bit, bool(self.special["clip_sym"]), self.wcfg.granularity,
                                         self.wcfg.group_size)
        for n, layer in subset.layers.items():
            clip = None
            # like AutoAWQ, no clip search for q/k: their errors are amplified by the softmax
            if self.special.get("weight_clip", True) and not n.endswith(("q_proj", "k_proj")):
                clip = awq.search_clip_(layer, stats[n].x.to(ctx.device), clip_cfg,
                                        n_grid=int(self.special.get("n_grid", 20)), name=f"{ctx.name}.{n}")
            self.record(layer, *awq.awq_quantize_(layer, self.wcfg, clip, name=f"{ctx.name}.{n}"))


class Gptq(Method):
    name = "GPTQ"

    def stream(self, layers):
        state = {n: GPTQ(m) for n, m in layers.items()}

        def on_batch(name, x):
            state[name].add_batch(x)

        return on_batch, state

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        for n, g in state.items():
            res = g.quantize_(self.wcfg, blocksize=int(self.special.get("blocksize", 128)),
                        percdamp=float(self.special.get("percdamp", 0.01)),
                        actorder=bool(self.special.get("actorder", False)),
                        static_groups=bool(self.special.get("static_groups", False)))
            self.record(subset.layers[n], res["scale"], res["zero"])


def _group_normalized_weight_mean(layers, wcfg: WeightQuantConfig) -> torch.Tensor:
    """Mean over output rows of |W| normalised by each quantization group's max (AWQ v2)."""
    w = torch.cat([fc.weight.detach().float() for fc in layers])
    gw = wcfg.group_width(w.shape[1])
    g = w.abs().reshape(w.shape[0], -1, gw)
    g = g / g.amax(dim=-1, keepdim=True).clamp_min(1e-8)
    return g.reshape(w.shape).mean(0)


def _token_relative_mse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over tokens of the squared error relative to the token's reference norm, so the few
    tokens with massive activations (e.g. the first one) do not decide the search alone."""
    err = (out - ref).float().pow(2).sum(-1)
    return float((err / ref.float().pow(2).sum(-1).clamp_min(1e-12)).mean())


class Quarot(RTN):
    """QuaRot: the runner rotates the model first (``special.rotate``); weights then get RTN."""

    name = "Quarot"


METHODS = {"RTN": RTN, "Awq": Awq, "GPTQ": Gptq, "SmoothQuant": SmoothQuant, "Quarot": Quarot}


def weight_config(qcfg) -> WeightQuantConfig:
    w = qcfg.weight
    return WeightQuantConfig(bit=w.bit, symmetric=w.symmetric, granularity=w.granularity, group_size=w.group_size)


def make_method(qcfg) -> Method:
    special = qcfg.special.model_dump() if hasattr(qcfg.special, "model_dump") else dict(qcfg.special or {})
    return METHODS[qcfg.method](weight_config(qcfg), special)


__all__ = ["RTN", "Awq", "Gptq", "METHODS", "make_method", "weight_config"]
