"""GPTQ: each layer's columns rounded one after another, the error compensated through its Hessian."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from llmc.config.types import Bool, Float, Int, _positive_fields

from .base import Method, MethodOptions, MethodSpec


class GptqOptions(MethodOptions):
    """GPTQ: Hessian-based error compensation."""

    _method: ClassVar[str] = "GPTQ"

    actorder: Bool = Field(False, description="columns in the order of their Hessian diagonal")
    static_groups: Bool = Field(False, description="every group's range from the weights before any update "
                                "(what an export of act-order groups needs)")
    percdamp: Float = Field(0.01, description="damping added to the Hessian's diagonal, relative to its mean")
    blocksize: Int = Field(128, description="columns solved together")
    true_sequential: Bool = Field(True, description="each subset's Hessian under the block's already quantized "
                                  "subsets (true) or from the float block (false)")
    rotate: Literal["hadamard", "random"] | None = Field(
        None, description="rotate the residual stream (QuaRot) before quantizing")
    online_rotate: Bool = Field(False, description="also rotate the down_proj inputs online (Hadamard)")

    @field_validator("percdamp")
    @classmethod
    def _damp_range(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"{value} is out of range; use a number between 0 and 1 "
                             "(exclusive), e.g. 0.01")
        return value

    _check_positive = _positive_fields("blocksize")


def _export_problem(opts: GptqOptions, quant, fmt: str) -> str | None:
    if opts.actorder and not opts.static_groups and quant.weight.granularity == "per_group":
        return "GPTQ act-order groups cannot be stored in this format; set quant.special.static_groups: true"
    return None


class Gptq(Method):
    Options = GptqOptions
    name = "GPTQ"
    coalesce = True
    sample_rows = 1024  # only the per-layer error reads them: the Hessian streams every row

    def __init__(self, wcfg, options=None):
        super().__init__(wcfg, options)
        self.true_sequential = self.opts.true_sequential
        #: ``{(block, layer): GPTQ loss}`` of every layer quantized so far
        self.losses: dict[tuple[int, str], float] = {}

    def layer_fields(self, block: int, layer: str) -> dict:
        # GPTQ's own objective, summed over the layer
        loss = self.losses.get((block, layer))
        return {} if loss is None else {"gptq_loss": loss}

    def stream(self, layers):
        from llmc.quant.gptq import GptqSolver

        state = {n: GptqSolver(m, n) for n, m in layers.items()}

        def on_batch(name, x):
            state[name].add_batch(x)

        return on_batch, state

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        # layers that read one tensor (q/k/v) share its Hessian, factored once (collect_inputs
        # streamed it under the first one's name only)
        groups: dict[str, dict] = {}
        for n, layer in subset.layers.items():
            groups.setdefault(stats[n].same_as or n, {})[n] = layer
        for lead, layers in groups.items():
            results = state[lead].quantize_layers_(
                layers, self.wcfg, blocksize=self.opts.blocksize, percdamp=self.opts.percdamp,
                actorder=self.opts.actorder, static_groups=self.opts.static_groups)
            for n, res in results.items():
                self.record(layers[n], res["scale"], res["zero"])
                # GPTQ's own objective, summed over the layer (the events carry it per layer)
                self.losses[(ctx.index, n)] = res["error"]


SPEC = MethodSpec(name="GPTQ", impl=Gptq, order=30, needs_data=True, rotation="optional", hessians=True,
                  preset={"actorder": True, "static_groups": True, "percdamp": 0.01},
                  export_problem=_export_problem,
                  summary="column-by-column rounding with Hessian error compensation")
