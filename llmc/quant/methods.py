"""RTN, AWQ and GPTQ as blockwise :class:`~llmc.quant.blockwise.Method` s."""

from __future__ import annotations

from . import awq
from .blockwise import BlockContext, LayerStats, Method, collect_inputs
from .gptq import GPTQ
from .quantizer import WeightQuantConfig
from .rtn import rtn_


class RTN(Method):
    name = "RTN"

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        for n, layer in subset.layers.items():
            rtn_(layer, self.wcfg, f"{ctx.name}.{n}")


class Awq(Method):
    """Activation-aware scales folded into the preceding op, then clip search and RTN."""

    name = "Awq"

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
            scales, _, _ = awq.search_scales(x.to(ctx.device), layers, self.wcfg, n_grid=n_grid)
            awq.apply_scales_(subset.prev_op, layers, scales.to(layers[0].weight.device))

    def quantize_subset(self, ctx, subset, stats: dict[str, LayerStats], state) -> None:
        clip_cfg = self.wcfg
        if self.special.get("clip_sym") is not None and self.special["clip_sym"] != self.wcfg.symmetric:
            clip_cfg = WeightQuantConfig(self.wcfg.bit, bool(self.special["clip_sym"]), self.wcfg.granularity,
                                         self.wcfg.group_size)
        for n, layer in subset.layers.items():
            clip = None
            if self.special.get("weight_clip", True):
                clip = awq.search_clip_(layer, stats[n].x.to(ctx.device), clip_cfg,
                                        n_grid=int(self.special.get("n_grid", 20)), name=f"{ctx.name}.{n}")
            awq.awq_quantize_(layer, self.wcfg, clip, name=f"{ctx.name}.{n}")


class Gptq(Method):
    name = "GPTQ"

    def stream(self, layers):
        state = {n: GPTQ(m) for n, m in layers.items()}

        def on_batch(name, x):
            state[name].add_batch(x)

        return on_batch, state

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        for n, g in state.items():
            g.quantize_(self.wcfg, blocksize=int(self.special.get("blocksize", 128)),
                        percdamp=float(self.special.get("percdamp", 0.01)),
                        actorder=bool(self.special.get("actorder", False)),
                        static_groups=bool(self.special.get("static_groups", False)))


METHODS = {"RTN": RTN, "Awq": Awq, "GPTQ": Gptq}


def weight_config(qcfg) -> WeightQuantConfig:
    w = qcfg.weight
    return WeightQuantConfig(bit=w.bit, symmetric=w.symmetric, granularity=w.granularity, group_size=w.group_size)


def make_method(qcfg) -> Method:
    special = qcfg.special.model_dump() if hasattr(qcfg.special, "model_dump") else dict(qcfg.special or {})
    return METHODS[qcfg.method](weight_config(qcfg), special)


__all__ = ["RTN", "Awq", "Gptq", "METHODS", "make_method", "weight_config"]
