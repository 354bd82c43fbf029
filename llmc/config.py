"""Typed schema for llmc-style YAML configs.

A config has the sections of the original llmc toolkit (ModelTC/llmc)::

    base:  {seed}
    model: {type, path, adapters, tokenizer_mode, torch_dtype}
    calib: {name, type, download, path, add_answer, apply_chat_template, n_samples, bs,
            seq_len, preproc, padding, seed}
    eval:  one mapping or a list of mappings {eval_pos, type, name, download, path, bs,
            seq_len, num_samples, inference_per_block, eval_token_consist, cache}
    quant: {method, quant_objects, skip_layers, weight: {bit, symmetric, granularity,
            group_size, calib_algo}, act, special: {...per method...}, quant_out}
    save:  {save_path, save_trans, save_fake}

Only ``model`` and ``quant`` are required; ``calib`` is required by the methods that
calibrate on data (Awq, GPTQ). llmc configs load unchanged as long as they only ask for what
this engine implements; every deliberate gap is listed in :data:`UNSUPPORTED_LLMC_KEYS`.

Use :func:`load_config` to read a file (or a mapping). Every problem is reported as a
:class:`ConfigError` whose message is one line naming the YAML path and the fix, e.g.::

    quant.weight.bits: unknown key; did you mean 'bit'?
    quant.method: unknown method 'Aqw'; did you mean 'Awq'? (choose from RTN, Awq, GPTQ)
    quant.weight.bit: 9 is out of range; use 2..8

Paths are not checked for existence here (a separate check step does that); ``~`` is expanded.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "ACCEPTED_BUT_IGNORED",
    "METHODS",
    "UNSUPPORTED_LLMC_KEYS",
    "AwqSpecial",
    "BaseConfig",
    "CalibConfig",
    "Config",
    "ConfigError",
    "EvalConfig",
    "GptqSpecial",
    "ModelConfig",
    "QuantConfig",
    "RtnSpecial",
    "SaveConfig",
    "WeightConfig",
    "load_config",
]


# --------------------------------------------------------------------------------------------
# Deliberate gaps with respect to llmc
# --------------------------------------------------------------------------------------------

#: llmc keys (``section.key``) or key/value pairs (``section.key: value``) that this engine
#: deliberately does not support, each with a one-sentence reason. Entries listed in
#: :data:`ACCEPTED_BUT_IGNORED` load without error; the others are rejected with a message
#: built from the reason.
UNSUPPORTED_LLMC_KEYS: dict[str, str] = {
    "quant.quant_type": "only integer quantization (int-quant) is implemented, not float "
                        "formats such as fp8.",
    "quant.method": "only RTN, Awq, GPTQ, SmoothQuant and Quarot are implemented, not llmc's "
                    "other algorithms such as OmniQuant.",
    "quant.quant_objects: vision": "only the language model can be quantized for now, not the "
                                   "vision tower.",
    "eval.inference_per_block: True": "block-by-block evaluation is not implemented, the whole "
                                      "model is evaluated at once.",
    "calib.download: True": "datasets are never downloaded from a hub, they are read from a "
                            "local path.",
    "eval.download: True": "datasets are never downloaded from a hub, they are read from a "
                           "local path.",
    "save.save_sgl": "exporting real-quantized checkpoints for SGLang is not implemented.",
    "save.save_mlcllm": "exporting real-quantized checkpoints for MLC-LLM is not implemented.",
    "save.save_lightllm": "exporting real-quantized checkpoints for LightLLM is not implemented.",
    "sparse": "sparsification methods are not supported.",
    "model.tokenizer_mode": "accepted but ignored: the fast tokenizer is used whenever the "
                            "model ships one.",
    "calib.type": "accepted but informational: the kind of data follows from calib.name.",
    "calib.preproc": "accepted but informational: preprocessing follows from calib.name and "
                     "the model adapter.",
    "eval.eval_token_consist": "accepted but informational: token consistency between the "
                               "original and the quantized model is not measured.",
}

#: Entries of :data:`UNSUPPORTED_LLMC_KEYS` that are accepted and have no effect.
ACCEPTED_BUT_IGNORED: frozenset[str] = frozenset({
    "model.tokenizer_mode",
    "calib.type",
    "calib.preproc",
    "eval.eval_token_consist",
})

# Values of llmc-only keys (absent from the schema) that request nothing and are dropped
# silently, e.g. ``save_vllm: False``. Any other value is rejected.
_HARMLESS_VALUES: dict[str, tuple] = {
    "quant.quant_type": ("int-quant", None),
}
_DEFAULT_HARMLESS: tuple = (False, None)


def _reason(key: str) -> str:
    return UNSUPPORTED_LLMC_KEYS[key].rstrip(".")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """An invalid config. ``str(err)`` is one line: ``<yaml path>: <problem>; <fix>``.

    ``path`` is the dotted YAML path of the offending key (``None`` for file-level problems).
    """

    def __init__(self, message: str, path: str | None = None):
        message = " ".join(str(message).split("\n"))
        super().__init__(message)
        self.message = message
        self.path = path


class _KeyedError(ValueError):
    """Raised inside validators: a message about ``key`` (a loc suffix) of the model at hand.

    Model validators only know their own location; ``key`` names the entry below it.
    """

    def __init__(self, message: str, key: tuple = ()):
        super().__init__(message)
        self.key = tuple(key)


def _show(value: Any) -> str:
    """A value as the user would write it in YAML, kept short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float)):
        return str(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    except yaml.YAMLError:
        text = repr(value)
    if text.endswith("..."):
        text = text[:-3].strip()
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest choice to ``word`` (case-insensitive), or None."""
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(str(word).lower(), list(lowered), n=1)
    return lowered[hits[0]] if hits else None


_EXPECTED_TYPE = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _describe(err: Mapping[str, Any]) -> tuple[tuple, str]:
    """One pydantic error as (loc parts of the offending key, message without the path)."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "value_error" and isinstance(ctx.get("error"), Exception):
        exc = ctx["error"]
        return loc + getattr(exc, "key", ()), str(exc)
    if kind in _EXPECTED_TYPE:
        return loc, f"expected {_EXPECTED_TYPE[kind]}, got {_show(value)}"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        message = f"{_show(value)} is not allowed; choose from {', '.join(allowed)}"
        guess = _did_you_mean(value, allowed) if isinstance(value, str) and allowed else None
        if guess is not None:
            message = f"{_show(value)} is not allowed; did you mean {guess!r}? " \
                      f"(choose from {', '.join(allowed)})"
        return loc, message
    if kind == "missing":
        if len(loc) == 1:
            return loc, "required section is missing"
        return loc, f"required key is missing; add '{loc[-1]}:' to this section"
    if kind == "too_short":
        return loc, "must not be empty"
    return loc, str(err.get("msg", "invalid value")).replace("\n", " ")


def _format_path(parts: tuple, raw: Any = None) -> str:
    out = ""
    for i, part in enumerate(parts):
        if isinstance(part, int):
            # ``eval`` written as one mapping is stored as a one-element list: hide the index.
            if i == 1 and parts[0] == "eval" and isinstance(raw, Mapping) \
                    and isinstance(raw.get("eval"), Mapping):
                continue
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _to_config_error(exc: ValidationError, raw: Any = None) -> ConfigError:
    """The first error of a pydantic ValidationError as a one-line ConfigError."""
    errors = exc.errors()
    if not errors:
        return ConfigError("invalid config")
    parts, message = _describe(errors[0])
    path = _format_path(parts, raw)
    return ConfigError(f"{path}: {message}" if path else message, path=path or None)


# --------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Float = Annotated[float, Strict()]  # strict floats still accept ints


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """``${NAME}`` and ``${NAME:-default}`` replaced from the environment (only that braced form:
    a ``$`` elsewhere in a path stays as it is). An unset ``${NAME}`` without a default is an error."""
    def sub(m: re.Match) -> str:
        value = os.environ.get(m[1])
        if value:
            return value
        if m[2] is not None:
            return m[2]
        raise ValueError(f"${{{m[1]}}} is not set; set it, or write ${{{m[1]}:-<default>}}")

    return _ENV_REF.sub(sub, text)


def _as_path_str(value: Any) -> Any:
    """Path text with ``${VAR:-default}`` and ``~`` expanded; existence is checked elsewhere."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty; give a path")
        return os.path.expanduser(expand_env(value))
    return value  # the strict str check reports the wrong type


PathStr = Annotated[Str, BeforeValidator(_as_path_str)]

#: the bit widths the engine quantizes weights and activations to (inclusive ranges)
WEIGHT_BITS = (2, 8)
ACT_BITS = (2, 16)

Method = Literal["RTN", "Awq", "GPTQ", "SmoothQuant", "Quarot"]
#: Quantization methods in their canonical spelling.
METHODS: tuple[str, ...] = get_args(Method)
_METHODS_BY_LOWER = {m.lower(): m for m in METHODS}

EvalPos = Literal["pretrain", "transformed", "fake_quant"]
EvalType = Literal["vqa", "ppl"]
# llmc's eval types and their names here.
_EVAL_TYPE_ALIASES = {"vqa": "vqa", "img_txt": "vqa", "ppl": "ppl", "txt": "ppl"}
_VQA_DATASETS = frozenset({"mme"})
_PPL_DATASETS = frozenset({"wikitext2", "c4", "ptb", "pileval"})


def _positive(value: int | None, what: str = "a positive integer") -> int | None:
    if value is not None and value <= 0:
        raise ValueError(f"{_show(value)} is out of range; use {what}")
    return value


def _reject_true(value: bool, key: str, fix: str) -> bool:
    if value:
        raise ValueError(f"true is not supported: {_reason(key)}; {fix}")
    return value


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

class _Section(BaseModel):
    """Common behaviour: unknown keys are errors with a did-you-mean, None means defaults."""

    model_config = ConfigDict(extra="forbid")

    #: Dotted YAML path of this section, used to look up :data:`UNSUPPORTED_LLMC_KEYS`.
    _yaml_path: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _check_raw(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data  # a model instance, or a wrong type that pydantic reports
        data = dict(data)
        for key in list(data):
            if key not in cls.model_fields:
                cls._reject_unknown(str(key), data)
        return cls._normalize(data)

    @classmethod
    def _reject_unknown(cls, key: str, data: dict) -> None:
        """Raise for an unknown ``key``, or drop it if it is a harmless llmc-only key."""
        full = f"{cls._yaml_path}.{key}" if cls._yaml_path else key
        if full in UNSUPPORTED_LLMC_KEYS:
            value = data[key]
            harmless = _HARMLESS_VALUES.get(full, _DEFAULT_HARMLESS)
            if any(value == ok and type(value) is type(ok) for ok in harmless):
                del data[key]
                return
            raise _KeyedError(f"{_show(value)} is not supported: {_reason(full)}; remove it "
                              f"or set it to {_show(harmless[0])}", key=(key,))
        raise _KeyedError(cls._unknown_key_message(key), key=(key,))

    @classmethod
    def _unknown_key_message(cls, key: str) -> str:
        allowed = list(cls.model_fields)
        what = "section" if not cls._yaml_path else "key"
        guess = _did_you_mean(key, allowed)
        if guess is not None:
            return f"unknown {what}; did you mean {guess!r}?"
        return f"unknown {what}; allowed {what}s: {', '.join(allowed)}"

    @classmethod
    def _normalize(cls, data: dict) -> dict:
        """Hook for per-section rewriting of the raw mapping (already free of unknown keys)."""
        return data


class BaseConfig(_Section):
    """``base``: run-wide settings."""

    _yaml_path: ClassVar[str] = "base"

    seed: Int = 42


class ModelConfig(_Section):
    """``model``: which model to load and how."""

    _yaml_path: ClassVar[str] = "model"

    type: Str = Field(min_length=1, description="adapter name from the model registry")
    path: PathStr
    adapters: PathStr | None = Field(
        None, description="folder of adapter modules (model declarations) searched for model.type")
    tokenizer_mode: Literal["slow", "fast"] = Field(
        "slow", description="accepted for llmc compatibility; fast tokenizers are used if present")
    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    offload: Bool = Field(False, description="keep decoder blocks in CPU memory, one at a time on the device")
    device_map: Literal["auto"] | None = Field(None, description="spread the blocks over every GPU (accelerate)")
    max_memory: dict[Union[int, str], Str] | None = Field(
        None, description="with device_map auto: per-card cap, e.g. {0: 20GiB, 1: 20GiB}")

    @model_validator(mode="after")
    def _placement(self) -> ModelConfig:
        if self.offload and self.device_map:
            raise _KeyedError("offload and device_map: auto exclude each other; keep one "
                              "(offload for one GPU smaller than the model, auto for several GPUs)",
                              key=("device_map",))
        if self.max_memory and not self.device_map:
            raise _KeyedError("only used with device_map: auto; remove it or set device_map: auto",
                              key=("max_memory",))
        return self

    @property
    def placement(self) -> str:
        return "offload" if self.offload else "auto" if self.device_map == "auto" else "single"


class CalibConfig(_Section):
    """``calib``: the calibration data set (read from ``path``, never downloaded)."""

    _yaml_path: ClassVar[str] = "calib"

    name: Literal["custom_mm", "custom_txt", "pileval", "wikitext2", "c4"]
    type: Str | None = Field(None, description="llmc's data kind; informational")
    download: Bool = False
    path: PathStr | None = None
    add_answer: Bool = False
    apply_chat_template: Bool = False
    n_samples: Int = 128
    bs: Int = Field(-1, description="-1 = all samples in one batch")
    seq_len: Int = 512
    preproc: Str | None = Field(None, description="llmc's preprocessing name; informational")
    padding: Bool = True
    seed: Int | None = Field(None, description="defaults to base.seed")

    @field_validator("download")
    @classmethod
    def _no_download(cls, value: bool) -> bool:
        return _reject_true(value, "calib.download: True",
                            "set 'download: False' and point 'path' at a local copy")

    @field_validator("n_samples", "seq_len")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        return _positive(value)

    @field_validator("bs")
    @classmethod
    def _batch_size(cls, value: int) -> int:
        if value == -1 or value > 0:
            return value
        raise ValueError(f"{value} is out of range; use -1 (all samples in one batch) "
                         "or a positive integer")

    @model_validator(mode="after")
    def _needs_path(self) -> CalibConfig:
        if self.path is None:
            raise _KeyedError(f"required; set it to a local copy of the {self.name!r} data "
                              "(datasets are never downloaded)", key=("path",))
        return self


class EvalConfig(_Section):
    """One entry of ``eval``: a benchmark run at the positions in ``eval_pos``."""

    _yaml_path: ClassVar[str] = "eval"

    eval_pos: list[EvalPos] = Field(min_length=1)
    type: EvalType = Field(description="vqa or ppl (llmc's img_txt / txt are accepted)")
    name: Str = Field(min_length=1)
    download: Bool = False
    path: PathStr | None = None
    bs: Int = 1
    seq_len: Int = 2048
    num_samples: Int | None = Field(
        None, description="optional limit: images for vqa, windows for ppl")
    inference_per_block: Bool = False
    eval_token_consist: Bool = Field(False, description="accepted for llmc; informational")
    cache: Bool = Field(True, description="cache the original model's scores")

    @classmethod
    def _normalize(cls, data: dict) -> dict:
        if isinstance(data.get("eval_pos"), str):
            data["eval_pos"] = [data["eval_pos"]]
        name = data.get("name")
        if isinstance(name, str) and name.lower() in _VQA_DATASETS:
            data["name"] = name = name.lower()
        kind = data.get("type")
        if isinstance(kind, str):
            canonical = _EVAL_TYPE_ALIASES.get(kind.lower())
            if canonical is None:
                guess = _did_you_mean(kind, list(_EVAL_TYPE_ALIASES))
                hint = f"did you mean {guess!r}? " if guess else ""
                raise _KeyedError(f"unknown eval type {kind!r}; {hint}(choose from vqa, ppl; "
                                  "llmc's img_txt and txt mean vqa and ppl)", key=("type",))
            data["type"] = canonical
        elif kind is None and isinstance(name, str):
            if name in _VQA_DATASETS:
                data["type"] = "vqa"
            elif name in _PPL_DATASETS:
                data["type"] = "ppl"
            else:
                raise _KeyedError(f"required for data set {name!r}; set 'type: vqa' or "
                                  "'type: ppl'", key=("type",))
        return data

    @field_validator("eval_pos")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("download")
    @classmethod
    def _no_download(cls, value: bool) -> bool:
        return _reject_true(value, "eval.download: True",
                            "set 'download: False' and point 'path' at a local copy")

    @field_validator("inference_per_block")
    @classmethod
    def _no_per_block(cls, value: bool) -> bool:
        return _reject_true(value, "eval.inference_per_block: True",
                            "set 'inference_per_block: False'")

    @field_validator("bs", "seq_len", "num_samples")
    @classmethod
    def _check_positive(cls, value: int | None) -> int | None:
        return _positive(value)

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        if self.type == "ppl" and self.name in _VQA_DATASETS:
            raise _KeyedError(f"{self.name!r} is a vqa benchmark; set 'type: vqa'",
                              key=("type",))
        if self.type == "vqa" and self.name in _PPL_DATASETS:
            raise _KeyedError(f"{self.name!r} is a perplexity data set; set 'type: ppl'",
                              key=("type",))
        if self.path is None:
            raise _KeyedError(f"required; set it to a local copy of the {self.name!r} data "
                              "(datasets are never downloaded)", key=("path",))
        return self


class WeightConfig(_Section):
    """``quant.weight``: the integer weight format."""

    _yaml_path: ClassVar[str] = "quant.weight"

    bit: Int
    symmetric: Bool = False
    granularity: Literal["per_channel", "per_group"] = "per_group"
    group_size: Int | None = Field(None, description="required for per_group")
    calib_algo: Literal["minmax"] = "minmax"

    @field_validator("bit")
    @classmethod
    def _bit_range(cls, value: int) -> int:
        lo, hi = WEIGHT_BITS
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range; use {lo}..{hi}")
        return value

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

    @field_validator("n_grid")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        return _positive(value)


class GptqSpecial(_Special):
    """GPTQ: Hessian-based error compensation."""

    _method: ClassVar[str] = "GPTQ"

    actorder: Bool = False
    static_groups: Bool = False
    percdamp: Float = 0.01
    blocksize: Int = 128
    true_sequential: Bool = True
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

    @field_validator("blocksize")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        return _positive(value)


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


class ActConfig(_Section):
    """``quant.act``: dynamic activation fake quantization of every quantized Linear's input."""

    _yaml_path: ClassVar[str] = "quant.act"

    bit: Int
    symmetric: Bool = True
    granularity: Literal["per_token", "per_tensor"] = "per_token"

    @field_validator("bit")
    @classmethod
    def _bit_range(cls, value: int) -> int:
        lo, hi = ACT_BITS
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range; use {lo}..{hi}")
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


class SaveConfig(_Section):
    """``save``: where and what to write after quantization."""

    _yaml_path: ClassVar[str] = "save"

    save_path: PathStr
    save_trans: Bool = Field(False, description="save the transformed float model")
    save_fake: Bool = Field(False, description="save the fake-quantized float model")
    save_vllm: Bool = Field(False, description="save a compressed-tensors pack-quantized checkpoint "
                                               "(vLLM, transformers; symmetric int4/int8 weights)")
    save_autoawq: Bool = Field(False, description="save an AutoAWQ GEMM checkpoint (asymmetric int4, per group)")


_NEEDS_CALIB = frozenset({"Awq", "GPTQ"})


class Config(_Section):
    """A whole config. Build it with :func:`load_config`."""

    base: BaseConfig = Field(default_factory=BaseConfig)
    model: ModelConfig
    calib: CalibConfig | None = None
    eval: list[EvalConfig] = Field(
        default_factory=list, description="one mapping or a list of mappings in YAML")
    quant: QuantConfig
    save: SaveConfig | None = None

    @classmethod
    def _normalize(cls, data: dict) -> dict:
        if data.get("base") is None:
            data.pop("base", None)
        evals = data.get("eval")
        if evals is None:
            data.pop("eval", None)
        elif isinstance(evals, (Mapping, BaseModel)):
            data["eval"] = [evals]
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.quant.method in _NEEDS_CALIB and self.calib is None:
            raise _KeyedError(f"required for {self.quant.method}, which calibrates on data; "
                              "add a calib section with name and path", key=("calib",))
        if self.calib is not None and self.calib.seed is None:
            self.calib.seed = self.base.seed
        special = self.quant.special
        if getattr(special, "online_rotate", False):
            if not special.rotate:
                raise _KeyedError("needs the residual-stream rotation; set quant.special.rotate: hadamard",
                                  key=("quant", "special", "online_rotate"))
            if self.save is not None:
                for k in (k for k in SaveConfig.model_fields if k != "save_path"):
                    if getattr(self.save, k):
                        raise _KeyedError("a checkpoint cannot hold the online Hadamard before down_proj "
                                          "(quant.special.online_rotate); set it to false or remove "
                                          "quant.special.online_rotate", key=("save", k))
        if isinstance(special, AwqSpecial) and special.search == "output":
            from .quant.blockwise import OUTPUT_NO_OFFLOAD
            from .quant.methods import OUTPUT_NEEDS_LAST, default_loss_tokens

            if (special.loss_tokens if special.loss_tokens != "auto" else default_loss_tokens(self.calib)) != "last":
                raise _KeyedError(OUTPUT_NEEDS_LAST, key=("quant", "special", "search"))
            if self.model.offload:
                raise _KeyedError(OUTPUT_NO_OFFLOAD, key=("quant", "special", "search"))
        if self.save is not None:
            self._check_exports()
        return self

    def _check_exports(self) -> None:
        from llmc.export.model import FORMATS, ExportError, check_format
        from llmc.quant.methods import weight_config

        for fmt in FORMATS:
            if not getattr(self.save, f"save_{fmt}"):
                continue
            key = ("save", f"save_{fmt}")
            if self.quant.act is not None and not self.quant.skip_layers:
                raise _KeyedError("activations are quantized in the decoder blocks only, so a W8A8 export "
                                  "keeps the head in float; set quant.skip_layers: true", key=key)
            special = self.quant.special
            if isinstance(special, GptqSpecial) and special.actorder and not special.static_groups \
                    and self.quant.weight.granularity == "per_group":
                raise _KeyedError("GPTQ act-order groups cannot be stored in this format; "
                                  "set quant.special.static_groups: true", key=key)
            try:
                check_format(fmt, weight_config(self.quant), self.quant.act)
            except ExportError as exc:
                raise _KeyedError(str(exc).split(": ", 1)[1], key=key) from None

    @property
    def evals(self) -> list[EvalConfig]:
        """The eval entries, always as a list (empty when there is no eval section)."""
        return list(self.eval)

    def effective_yaml(self) -> str:
        """The effective config, defaults filled in, as YAML in section order.

        Loading the result with :func:`load_config` gives an equal :class:`Config`.
        """
        return yaml.safe_dump(self.model_dump(mode="python"), sort_keys=False,
                              default_flow_style=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate keys (a silent override hides typos)."""

    def construct_mapping(self, node, deep=False):
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None


def load_config(path_or_dict: str | os.PathLike | Mapping[str, Any] | Config) -> Config:
    """Read, validate and complete a config.

    ``path_or_dict`` is a YAML file path or an already-parsed mapping (a :class:`Config` is
    returned as is). Raises :class:`ConfigError` with a one-line message on any problem.
    """
    if isinstance(path_or_dict, Config):
        return path_or_dict
    if isinstance(path_or_dict, Mapping):
        raw: Any = path_or_dict
    elif isinstance(path_or_dict, (str, os.PathLike)):
        path = Path(os.path.expanduser(os.fspath(path_or_dict)))
        raw = _read_yaml(path)
        if raw is None:
            raise ConfigError(f"config file is empty: {path}")
    else:
        raise TypeError(f"load_config takes a path or a mapping, not {type(path_or_dict).__name__}")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections (base, model, calib, eval, "
                          f"quant, save), got {_show(raw)}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise _to_config_error(exc, raw) from None
