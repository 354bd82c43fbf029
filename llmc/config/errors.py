"""Config errors: :class:`ConfigError` and the translation of pydantic's errors into one line."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

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
