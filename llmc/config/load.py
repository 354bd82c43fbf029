"""The whole config (:class:`Config`, cross-section checks) and :func:`load_config`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from ..yamlload import BoundedLoader
from .errors import ConfigError, _KeyedError, _show, _to_config_error
from .quant import QuantConfig
from .compat import ACCEPTED_BUT_IGNORED, UNSUPPORTED_LLMC_KEYS
from .sections import BaseConfig, CalibConfig, EvalConfig, ModelConfig, RunConfig, SaveConfig, _Section


class Config(_Section):
    """A whole config. Build it with :func:`load_config`."""

    base: BaseConfig = Field(default_factory=BaseConfig)
    model: ModelConfig
    calib: CalibConfig | None = None
    eval: list[EvalConfig] = Field(
        default_factory=list, description="one mapping or a list of mappings in YAML")
    quant: QuantConfig
    save: SaveConfig | None = None
    run: RunConfig | None = Field(None, description="llmc-tpu's task name and type; informational")

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
        from llmc.quant.methods import registry, spec

        method = spec(self.quant.method)
        if method.needs_data and self.calib is None:
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
        if not method.range_search and self.quant.weight.calib_algo == "mse":
            others = ", ".join(s.name for s in registry().values() if s.range_search)
            raise _KeyedError(f"{method.name} searches each group's range itself (quant.special.{method.own_ranges}); "
                              f"mse applies to {others}: "
                              "set calib_algo: minmax or remove it", key=("quant", "weight", "calib_algo"))
        special.check(self)
        if self.save is not None:
            self._check_exports()
        return self

    def _check_exports(self) -> None:
        from llmc.export.model import FORMATS, ExportError, check_format
        from llmc.quant.methods import spec, weight_config

        method = spec(self.quant.method)

        for fmt in FORMATS:
            if not getattr(self.save, f"save_{fmt}"):
                continue
            key = ("save", f"save_{fmt}")
            if self.quant.act is not None and not self.quant.skip_layers:
                raise _KeyedError("activations are quantized in the decoder blocks only, so a W8A8 export "
                                  "keeps the head in float; set quant.skip_layers: true", key=key)
            problem = method.export_problem and method.export_problem(self.quant.special, self.quant, fmt)
            if problem:
                raise _KeyedError(problem, key=key)
            try:
                check_format(fmt, weight_config(self.quant), self.quant.act)
            except ExportError as exc:
                raise _KeyedError(str(exc).split(": ", 1)[1], key=key) from None

    def notices(self) -> list[str]:
        """One line for every key this config sets that is accepted but has no effect."""
        out = []
        for full in sorted(ACCEPTED_BUT_IGNORED):
            section, _, key = full.partition(".")
            values = getattr(self, section, None)
            values = values if isinstance(values, list) else [values]
            if any(v is not None and (not key or key in v.model_fields_set) for v in values):
                out.append(f"{full}: {UNSUPPORTED_LLMC_KEYS[full]}")
        return out

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

class _Loader(BoundedLoader):
    """A safe YAML loader that rejects duplicate keys (a silent override hides typos) and documents
    whose aliases expand without bound."""

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
