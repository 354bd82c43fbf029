"""RTN: round to nearest, optionally after rotating the residual stream (QuaRot-style)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from llmc.config.types import Bool

from .base import Method, MethodOptions, MethodSpec


class RtnOptions(MethodOptions):
    """RTN: optional QuaRot-style rotation of the residual stream first."""

    _method: ClassVar[str] = "RTN"

    rotate: Literal["hadamard", "random"] | None = Field(
        None, description="rotate the residual stream (QuaRot) before quantizing")
    online_rotate: Bool = Field(False, description="also rotate the down_proj inputs online (Hadamard)")


class RTN(Method):
    Options = RtnOptions
    name = "RTN"
    coalesce = True

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        from llmc.quant.rtn import rtn_

        for n, layer in subset.layers.items():
            self.record(layer, *rtn_(layer, self.wcfg, f"{ctx.name}.{n}"))


SPEC = MethodSpec(name="RTN", impl=RTN, order=10, needs_data=False, rotation="optional",
                  summary="round to nearest (no data needed; with calibration data the errors are measured)")
