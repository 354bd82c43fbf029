"""Field types and value tables shared by the config sections."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Strict, field_validator

from .compat import _reason
from .errors import _show

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


def _bit_field(bits: tuple[int, int]):
    """A field validator: ``bit`` must lie in ``bits`` (inclusive)."""
    def check(cls, value: int) -> int:
        lo, hi = bits
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range; use {lo}..{hi}")
        return value

    return field_validator("bit")(classmethod(check))


def _positive_fields(*fields: str):
    """A field validator: each of ``fields`` must be a positive integer (``None`` passes)."""
    return field_validator(*fields)(classmethod(lambda cls, value: _positive(value)))


def _reject_true(value: bool, key: str, fix: str) -> bool:
    if value:
        raise ValueError(f"true is not supported: {_reason(key)}; {fix}")
    return value
