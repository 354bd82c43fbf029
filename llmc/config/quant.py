"""``quant``: the weight and activation formats; ``special`` holds the chosen method's options,
as its module in :mod:`llmc.quant.methods` declares them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from .compat import _reason
from .errors import _describe, _did_you_mean, _KeyedError, _show
from .sections import _Section
from .types import ACT_BITS, WEIGHT_BITS, Bool, Int, Str, _bit_field

class WeightConfig(_Section):
    """``quant.weight``: the integer weight format."""

    _yaml_path: ClassVar[str] = "quant.weight"

    bit: Int
    symmetric: Bool = False
    granularity: Literal["per_channel", "per_group"] = "per_group"
    group_size: Int | None = Field(None, description="required for per_group")
    calib_algo: Literal["minmax", "mse"] = Field(
        "minmax", description="each group's range: minmax (as it is) or mse (shrunk by the factor that minimises "
        "the group's rounding error; searched on the weights, no data needed)")

    _bit_range = _bit_field(WEIGHT_BITS)

    @model_validator(mode="after")
    def _group_size(self) -> WeightConfig:
        if self.granularity == "per_group":
            if self.group_size is None:
                raise _KeyedError("required when granularity is per_group; set e.g. "
                                  "'group_size: 128' or use 'granularity: per_channel'",
                                  key=("group_size",))
            if self.group_size <= 0:
                raise _KeyedError(f"{self.group_size} is out of range; use a positive "
                                  "integer such as 128", key=("group_size",))
        elif self.group_size is not None:
            if self.group_size != -1:  # llmc's "no groups" marker
                raise _KeyedError("only used with granularity per_group; remove it or set "
                                  "'granularity: per_group'", key=("group_size",))
            self.group_size = None
        return self


class ActConfig(_Section):
    """``quant.act``: dynamic activation fake quantization of every quantized Linear's input."""

    _yaml_path: ClassVar[str] = "quant.act"

    bit: Int
    symmetric: Bool = True
    granularity: Literal["per_token", "per_tensor"] = "per_token"

    _bit_range = _bit_field(ACT_BITS)


class QuantConfig(_Section):
    """``quant``: the method and its settings."""

    _yaml_path: ClassVar[str] = "quant"

    method: Str = Field(description="a method of the registry (llmc.quant.methods), any case")
    quant_objects: list[Literal["language", "vision"]] = Field(
        default_factory=lambda: ["language"], min_length=1)
    skip_layers: Bool = Field(True, description="keep skip_layer_name() layers in float")
    weight: WeightConfig
    act: ActConfig | None = Field(None, description="weight-activation quantization (dynamic)")
    special: SerializeAsAny[Any] = Field(None, description="the method's own options")
    quant_out: Bool = Field(True, description="feed quantized block outputs to the next block")

    @classmethod
    def _normalize(cls, data: dict) -> dict:
        method = data.get("method")
        if not isinstance(method, str):
            data.pop("special", None)  # cannot be checked without a method
            return data  # missing or wrong type: pydantic reports it
        from llmc.quant.methods import canonical as _canonical, names, spec

        canonical = _canonical(method)
        if canonical is None:
            choices = f"(choose from {', '.join(names())})"
            guess = _did_you_mean(method, names())
            if guess is not None:
                message = f"unknown method {method!r}; did you mean {guess!r}? {choices}"
            else:
                message = f"unknown method {method!r}; {_reason('quant.method')} {choices}"
            raise _KeyedError(message, key=("method",))
        data["method"] = canonical

        if isinstance(data.get("quant_objects"), str):
            data["quant_objects"] = [data["quant_objects"]]

        options = spec(canonical).options
        special = data.get("special")
        if isinstance(special, options):
            return data
        if isinstance(special, BaseModel):
            special = special.model_dump(exclude_unset=True)
        if special is None:
            special = {}
        if not isinstance(special, Mapping):
            raise _KeyedError(f"expected a mapping of {canonical} options, got {_show(special)}",
                              key=("special",))
        try:
            data["special"] = options.model_validate(special)
        except ValidationError as exc:
            parts, message = _describe(exc.errors()[0])
            raise _KeyedError(message, key=("special",) + parts) from None
        return data

    @field_validator("quant_objects")
    @classmethod
    def _language_only(cls, value: list[str]) -> list[str]:
        if "vision" in value:
            raise ValueError(f"'vision' is not supported: "
                             f"{_reason('quant.quant_objects: vision')}; use [language]")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _fill_defaults(self) -> QuantConfig:
        self.special.complete(self)
        return self
