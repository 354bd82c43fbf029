"""``quant``: the weight and activation formats, and each method's own ``special`` options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal, Union

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .compat import _reason
from .errors import _describe, _did_you_mean, _KeyedError, _show
from .sections import _Section
from .types import (
    _METHODS_BY_LOWER,
    ACT_BITS,
    METHODS,
    WEIGHT_BITS,
    Bool,
    Float,
    Int,
    Method,
    _bit_field,
    _positive_fields,
)

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


class _Special(_Section):
    """Options of one method (``quant.special``)."""

    _yaml_path: ClassVar[str] = "quant.special"
    _method: ClassVar[str] = ""

    @classmethod
    def _unknown_key_message(cls, key: str) -> str:
        allowed = list(cls.model_fields)
        if not allowed:
            return f"not an option of {cls._method}; {cls._method} takes no special options"
        guess = _did_you_mean(key, allowed)
        if guess is not None:
            return f"not an option of {cls._method}; did you mean {guess!r}?"
        return f"not an option of {cls._method}; its options are {', '.join(allowed)}"


class RtnSpecial(_Special):
    """RTN: optional QuaRot-style rotation of the residual stream first."""

    _method: ClassVar[str] = "RTN"

    rotate: Literal["hadamard", "random"] | None = Field(
        None, description="rotate the residual stream (QuaRot) before quantizing")
    online_rotate: Bool = Field(False, description="also rotate the down_proj inputs online (Hadamard)")


class AwqSpecial(_Special):
    """AWQ: activation-aware scaling (``trans``) and weight clipping."""

    _method: ClassVar[str] = "Awq"

    trans: Bool = True
    trans_version: Literal["v1", "v2"] = Field(
        "v2", description="scale candidates: v1 mean|x|^r; v2 mean|x|^r / mean|W|^(1-r) (group-normalised W)")
    weight_clip: Bool = True
    clip_sym: Bool | None = Field(None, description="defaults to quant.weight.symmetric")
    n_grid: Int = 20
    search: Literal["auto", "block", "layer", "output"] = Field(
        "auto", description="scale-search loss: the block's output, the layers' outputs, or the model's answers "
        "(KL from the float model's at each prompt's last position; also gates the clip); auto: output where "
        "it is affordable and applies (at most 8 blocks, loss_tokens last, no offload), block otherwise")
    loss_tokens: Literal["auto", "all", "last"] = Field(
        "auto", description="positions the block scale search (and by default the clip search) fit: every token, or the last one "
        "of each calibration sequence (where a VQA prompt is answered); auto: last for custom_mm "
        "calibration without answers, all otherwise")
    clip_tokens: Literal["auto", "same", "all", "last"] = Field(
        "auto", description="positions the clip search fits; same: those of loss_tokens; auto: all under "
        "search: output, same otherwise")

    _check_positive = _positive_fields("n_grid")


class GptqSpecial(_Special):
    """GPTQ: Hessian-based error compensation."""

    _method: ClassVar[str] = "GPTQ"

    actorder: Bool = False
    static_groups: Bool = False
    percdamp: Float = 0.01
    blocksize: Int = 128
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


class SmoothQuantSpecial(_Special):
    """SmoothQuant: migrate activation outliers into the weights before W8A8."""

    _method: ClassVar[str] = "SmoothQuant"

    alpha: Float = 0.5
    smooth_linear: Bool = Field(False, description="also smooth o<-v and down<-up")

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{value} is out of range; use 0 < alpha <= 1, e.g. 0.5")
        return value


class QuarotSpecial(_Special):
    """QuaRot: rotate the residual stream (incl. the projector's last layer), then RTN."""

    _method: ClassVar[str] = "Quarot"

    rotate: Literal["hadamard", "random"] = "hadamard"
    online_rotate: Bool = Field(False, description="also rotate the down_proj inputs online (Hadamard)")


_SPECIALS: dict[str, type[_Special]] = {"RTN": RtnSpecial, "Awq": AwqSpecial, "GPTQ": GptqSpecial,
                                        "SmoothQuant": SmoothQuantSpecial, "Quarot": QuarotSpecial}


class QuantConfig(_Section):
    """``quant``: the method and its settings."""

    _yaml_path: ClassVar[str] = "quant"

    method: Method
    quant_objects: list[Literal["language", "vision"]] = Field(
        default_factory=lambda: ["language"], min_length=1)
    skip_layers: Bool = Field(True, description="keep skip_layer_name() layers in float")
    weight: WeightConfig
    act: ActConfig | None = Field(None, description="weight-activation quantization (dynamic)")
    special: Union[AwqSpecial, GptqSpecial, SmoothQuantSpecial, QuarotSpecial, RtnSpecial] = Field(
        default_factory=RtnSpecial)
    quant_out: Bool = Field(True, description="feed quantized block outputs to the next block")

    @classmethod
    def _normalize(cls, data: dict) -> dict:
        method = data.get("method")
        if not isinstance(method, str):
            data.pop("special", None)  # cannot be checked without a method
            return data  # missing or wrong type: pydantic reports it
        canonical = _METHODS_BY_LOWER.get(method.lower())
        if canonical is None:
            choices = f"(choose from {', '.join(METHODS)})"
            guess = _did_you_mean(method, METHODS)
            if guess is not None:
                message = f"unknown method {method!r}; did you mean {guess!r}? {choices}"
            else:
                message = f"unknown method {method!r}; {_reason('quant.method')}"
            raise _KeyedError(message, key=("method",))
        data["method"] = canonical

        if isinstance(data.get("quant_objects"), str):
            data["quant_objects"] = [data["quant_objects"]]

        special = data.get("special")
        if isinstance(special, BaseModel):
            special = special.model_dump(exclude_unset=True)
        if special is None:
            special = {}
        if not isinstance(special, Mapping):
            raise _KeyedError(f"expected a mapping of {canonical} options, got {_show(special)}",
                              key=("special",))
        try:
            data["special"] = _SPECIALS[canonical].model_validate(special)
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
        if isinstance(self.special, AwqSpecial) and self.special.clip_sym is None:
            self.special.clip_sym = self.weight.symmetric
        return self
