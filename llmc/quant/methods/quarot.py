"""QuaRot: rotate the residual stream (the projector's last layer included), then round to nearest."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from llmc.config.types import Bool

from .base import MethodOptions, MethodSpec
from .rtn import RTN


class QuarotOptions(MethodOptions):
    """QuaRot: rotate the residual stream (incl. the projector's last layer), then RTN."""

    _method: ClassVar[str] = "Quarot"

    rotate: Literal["hadamard", "random"] = "hadamard"
    online_rotate: Bool = Field(False, description="also rotate the down_proj inputs online (Hadamard)")


class Quarot(RTN):
    """The runner rotates the model first (``rotate``); weights then get RTN."""

    Options = QuarotOptions
    name = "Quarot"


SPEC = MethodSpec(name="Quarot", impl=Quarot, order=50, needs_data=False, rotation="always",
                  preset={"rotate": "hadamard"},
                  summary="rotate the residual stream (Hadamard), then round to nearest")
