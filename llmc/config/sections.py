"""The config sections: common behaviour (:class:`_Section`) and base, model, calib, eval, save."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .compat import _DEFAULT_HARMLESS, _HARMLESS_VALUES, UNSUPPORTED_LLMC_KEYS, _reason
from .errors import _did_you_mean, _KeyedError, _show
from .types import (
    _EVAL_TYPE_ALIASES,
    _PPL_DATASETS,
    _VQA_DATASETS,
    Bool,
    EvalPos,
    EvalType,
    Int,
    PathStr,
    Str,
    _positive_fields,
    _reject_true,
)

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


class CalibPart(_Section):
    """One part of a ``mixture`` calibration set: image-text pairs from a ``custom_mm`` folder or an
    MME-format (lmms-eval) data set, or text-only prompts, one per line of a text file."""

    _yaml_path: ClassVar[str] = "calib.parts"

    name: Literal["custom_mm", "mme", "text_lines"]
    path: PathStr
    n_samples: Int | None = Field(None, description="how many samples of this part (default: all)")

    _check_positive = _positive_fields("n_samples")


class CalibConfig(_Section):
    """``calib``: the calibration data set (read from ``path``, never downloaded)."""

    _yaml_path: ClassVar[str] = "calib"

    name: Literal["custom_mm", "custom_txt", "pileval", "wikitext2", "c4", "token_ids", "mixture"]
    parts: list[CalibPart] | None = Field(
        None, description="name: mixture only; its parts, interleaved (each rendered by the model's processor)")
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

    _check_positive = _positive_fields("n_samples", "seq_len")

    @field_validator("bs")
    @classmethod
    def _batch_size(cls, value: int) -> int:
        if value == -1 or value > 0:
            return value
        raise ValueError(f"{value} is out of range; use -1 (all samples in one batch) "
                         "or a positive integer")

    @model_validator(mode="after")
    def _needs_path(self) -> CalibConfig:
        if self.name == "mixture":
            if not self.parts:
                raise _KeyedError("required for a mixture: a list of parts, each with name (custom_mm, mme or "
                                  "text_lines), path and n_samples", key=("parts",))
            if self.path is not None:
                raise _KeyedError("a mixture reads its parts' paths; remove calib.path", key=("path",))
            return self
        if self.parts is not None:
            raise _KeyedError(f"only used with name: mixture (this set is {self.name!r}); remove it", key=("parts",))
        _require_local_path(self)
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

    _check_positive = _positive_fields("bs", "seq_len", "num_samples")

    @model_validator(mode="after")
    def _consistent(self) -> EvalConfig:
        if self.type == "ppl" and self.name in _VQA_DATASETS:
            raise _KeyedError(f"{self.name!r} is a vqa benchmark; set 'type: vqa'",
                              key=("type",))
        if self.type == "vqa" and self.name in _PPL_DATASETS:
            raise _KeyedError(f"{self.name!r} is a perplexity data set; set 'type: ppl'",
                              key=("type",))
        _require_local_path(self)
        return self


def _require_local_path(section: CalibConfig | EvalConfig) -> None:
    """``path`` is required: data sets are read from a local copy, never downloaded."""
    if section.path is None:
        raise _KeyedError(f"required; set it to a local copy of the {section.name!r} data "
                          "(datasets are never downloaded)", key=("path",))


class RunConfig(_Section):
    """llmc-tpu's ``run`` section (``task_name``, ``task_type``): accepted, informational."""

    _yaml_path: ClassVar[str] = "run"

    task_name: Str | None = None
    task_type: Str | None = None


class SaveConfig(_Section):
    """``save``: where and what to write after quantization."""

    _yaml_path: ClassVar[str] = "save"

    save_path: PathStr
    save_trans: Bool = Field(False, description="save the transformed float model")
    save_fake: Bool = Field(False, description="save the fake-quantized float model")
    save_vllm: Bool = Field(False, description="save a compressed-tensors pack-quantized checkpoint "
                                               "(vLLM, transformers; symmetric int4/int8 weights)")
    save_autoawq: Bool = Field(False, description="save an AutoAWQ GEMM checkpoint (asymmetric int4, per group)")
