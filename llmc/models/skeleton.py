"""A model *skeleton*: the model built from its ``config.json`` alone, every tensor on the meta device.

No weight file is opened and a 7B model costs no weight memory and well under a second to build.
Two kinds of model folders:

* **transformers-native** (``code_package=None``): ``AutoConfig`` + the class named by
  ``model_cls_name`` (an adapter's ``model_cls_name``), else the class in ``architectures[0]``,
  else ``AutoModelForImageTextToText``, else ``AutoModelForCausalLM``.
* **custom code** (VILA-style, ``code_package="tiny_vila"``): ``<code_package>.model`` must export a
  ``*ForCausalLM`` class and a ``*Config`` class; the config is built from ``config.json``.

Errors are :class:`SkeletonError` (a ``ValueError`` carrying ``message`` and ``fix``);
:class:`CodeImportError` when the model's code package cannot be imported. The engine must not
import the wizard: ``wizard.services.inspect`` converts these into its own error types.
"""

from __future__ import annotations

import contextlib

import importlib
import inspect as pyinspect
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = ["CodeImportError", "SkeletonError", "build_skeleton", "skeleton_view"]


class SkeletonError(ValueError):
    """The skeleton cannot be built: ``message`` names the bad input, ``fix`` says what to do."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message, fix)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        msg = " ".join(str(self.message).split())
        return f"{msg}; {' '.join(self.fix.split())}" if self.fix else msg


class CodeImportError(SkeletonError):
    """The model's own code package cannot be imported (not installed, or broken)."""


def _read_config(weights_dir: Path) -> dict:
    if not weights_dir.is_dir():
        raise SkeletonError(f"no such model folder: {weights_dir}", "check the path (download the model first)")
    from llmc.paths import LINKS_FIX, links_leaving, links_leaving_message

    bad = links_leaving(weights_dir)
    if bad:
        raise SkeletonError(links_leaving_message(weights_dir, bad), LINKS_FIX)
    cfg = weights_dir / "config.json"
    if not cfg.is_file():
        raise SkeletonError(f"{weights_dir} has no config.json",
                            "point at the folder that holds the model's config.json")
    try:
        raw = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SkeletonError(f"{cfg} is not valid JSON ({e})", "re-download the model's config.json") from e
    if not isinstance(raw, dict):
        raise SkeletonError(f"{cfg} is not a JSON object", "re-download the model's config.json")
    from llmc.textsafe import identity_problem

    problem = identity_problem(raw)
    if problem:
        raise SkeletonError(f"{cfg}: {problem}", "use the model's real config.json (this one may be hostile)")
    return raw


def _import_code(code_package: str):
    """``<code_package>.model``: an install hint when the package is missing, and the import
    error itself when it is there but does not import (code pinned to older libraries)."""
    def failure(e: ImportError, what: str) -> CodeImportError:
        top = code_package.split(".")[0]
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == top and what == code_package:
            return CodeImportError(
                f"cannot import the model's code package {code_package!r}: it is not installed ({e})",
                "install it with `pip install -e <code repo>` (or the wizard's Install step)")
        return CodeImportError(
            f"{what} is installed but does not import: {type(e).__name__}: {' '.join(str(e).split())}",
            "the code may need other versions of its dependencies (e.g. an older transformers): install it "
            "with its own pins in a separate environment, or a missing dependency")

    try:
        importlib.import_module(code_package)
    except ImportError as e:
        raise failure(e, code_package) from e
    try:
        return importlib.import_module(f"{code_package}.model")
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == f"{code_package}.model":
            raise CodeImportError(f"{code_package} has no `model` module",
                                  f"check that {code_package!r} is a VILA- or LLaVA-style package "
                                  "(with <package>.model exporting the model class)") from e
        raise failure(e, f"{code_package}.model") from e


#: name endings of a code package's whole-model classes (what ``architectures`` usually names)
MODEL_CLASS_ENDINGS = ("ForCausalLM", "ForConditionalGeneration", "Model")


def _pick_classes(mod, raw: dict) -> tuple[type, type]:
    """The model class ``config.json``'s ``architectures[0]`` names among everything ``mod``
    exports (any ``nn.Module`` class: VILA's is ``LlavaLlamaModel``), and its ``*Config`` class.
    Without such a name, the one whole-model class (``*ForCausalLM``, ``*ForConditionalGeneration``,
    ``*Model``); several: an error naming them, never a silent first pick."""
    own = mod.__name__.split(".")[0]  # the package's own classes, not what it imports (LlamaModel...)
    classes = [c for _, c in pyinspect.getmembers(mod, pyinspect.isclass)
               if (c.__module__ or "").split(".")[0] == own]
    modules = [c for c in classes if issubclass(c, nn.Module)]
    arch = (raw.get("architectures") or [None])[0]
    model_cls = next((c for c in modules if c.__name__ == arch), None)
    if model_cls is None:
        models = [c for c in modules if c.__name__.endswith(MODEL_CLASS_ENDINGS[:2])] \
            or [c for c in modules if c.__name__.endswith(MODEL_CLASS_ENDINGS[2])]
        if not models:
            raise SkeletonError(f"{mod.__name__} exports no model class (*ForCausalLM, *ForConditionalGeneration, "
                                "*Model)", "check the --code package name")
        if len(models) > 1:
            names = ", ".join(sorted(c.__name__ for c in models))
            said = f"config.json names {arch!r}, which it does not export" if arch else "config.json names none"
            raise SkeletonError(f"{mod.__name__} exports several model classes ({names}); {said}",
                                "set architectures in config.json to the model's class")
        model_cls = models[0]
    configs = [c for c in classes if c.__name__.endswith("Config")]
    config_cls = getattr(model_cls, "config_class", None)
    if config_cls is None or config_cls not in configs:
        stem = model_cls.__name__
        for end in MODEL_CLASS_ENDINGS:
            stem = stem[: -len(end)] if stem.endswith(end) else stem
        config_cls = (next((c for c in configs if getattr(c, "model_type", None) == raw.get("model_type")), None)
                      or next((c for c in configs if c.__name__ == f"{stem}Config"), None)
                      or (configs[0] if len(configs) == 1 else None)
                      or getattr(model_cls, "config_class", None))  # one it takes from a library
    if config_cls is None:
        found = ", ".join(c.__name__ for c in configs) or "none"
        raise SkeletonError(f"{mod.__name__}: no config class for {model_cls.__name__} (model_type "
                            f"{raw.get('model_type')!r}; *Config classes: {found})", "check the --code package name")
    return model_cls, config_cls


@contextlib.contextmanager
def replaced_from_pretrained(replace: Callable[[Callable], Callable]):
    """While the block runs, transformers' ``from_pretrained`` (of models and of Auto classes) is
    ``replace(original)``: a function ``(cls, *args, **kwargs)``; the originals are put back after."""
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    saved = {cls: cls.__dict__["from_pretrained"] for cls in (transformers.PreTrainedModel, _BaseAutoModelClass)}
    for cls, original in saved.items():
        cls.from_pretrained = classmethod(replace(original.__func__))
    try:
        yield
    finally:
        for cls, original in saved.items():
            cls.from_pretrained = original


def weightless_from_pretrained():
    """While a skeleton is built, a ``from_pretrained`` the model's own code calls (VILA's builds its
    ``llm/``, ``vision_tower/`` and ``mm_projector/`` that way) makes the model from its folder's config
    instead: no weight file is read, and what is built lands on the meta device like the rest."""
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    def config_of(cls, path, kwargs):
        cfg = kwargs.get("config")
        if isinstance(cfg, transformers.PretrainedConfig):
            return cfg
        own = getattr(cls, "config_class", None)
        if own is not None and own is not transformers.PretrainedConfig:
            return own.from_pretrained(cfg or path)
        return transformers.AutoConfig.from_pretrained(cfg or path, trust_remote_code=False)

    def from_config(_original):
        def build(cls, path, *model_args, **kwargs):
            config = config_of(cls, path, kwargs)
            if issubclass(cls, _BaseAutoModelClass):
                return cls.from_config(config)
            return cls(config, *model_args) if model_args else cls._from_config(config)
        return build

    return replaced_from_pretrained(from_config)


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build()`` with every tensor created on the meta device: no memory, no init cost.

    ``torch.device("meta")`` puts parameters *and* buffers on meta at creation (fast: a 7B model
    in ~0.1 s). Model code that computes with a tensor in ``__init__`` (``.item()``, ``.tolist()``)
    fails there; it is retried under ``accelerate.init_empty_weights``, which keeps buffers real.
    """
    try:
        with torch.device("meta"):
            return build()
    except Exception:  # noqa: BLE001 - any failure is retried; a real config error fails again below
        from accelerate import init_empty_weights

        with init_empty_weights():
            return build()


def _transformers_builder(cls) -> Callable | None:
    """How to build ``cls`` from a config: Auto classes have ``from_config``, models ``_from_config``."""
    if not isinstance(cls, type):
        return None
    if issubclass(cls, nn.Module):
        return getattr(cls, "_from_config", None) or cls
    return getattr(cls, "from_config", None)  # AutoModelFor...


def build_skeleton(weights_dir: str | Path, code_package: str | None = None,
                   model_cls_name: str | None = None) -> tuple[nn.Module, str, str]:
    """``(model on the meta device, architecture name, model kind)``; reads only ``config.json``.

    ``model_cls_name`` (a ``transformers`` class name, as adapters declare it) builds the same class
    the engine's run builds; without it the class named in ``architectures[0]`` is used.
    """
    weights_dir = Path(weights_dir)
    raw = _read_config(weights_dir)
    if code_package:
        mod = _import_code(code_package)
        model_cls, config_cls = _pick_classes(mod, raw)
        config = config_cls(**{k: v for k, v in raw.items() if k != "model_type"})
        # as the lineage's loaders do: the parts' folders are found from the checkpoint's own path
        config._name_or_path = str(weights_dir)
        if "resume_path" in raw:
            config.resume_path = str(weights_dir)
        with weightless_from_pretrained():
            model = _on_meta(lambda: model_cls(config))
        return model, (raw.get("architectures") or [model_cls.__name__])[0], "custom-code"

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if raw.get("auto_map") and raw.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise SkeletonError(f"{weights_dir}: config.json's auto_map names code shipped with the weights "
                            f"({', '.join(sorted({str(v).split('.')[0] for v in raw['auto_map'].values()}))}); the "
                            "wizard never runs a repository's code without consent",
                            "onboard its code as custom code (source.code_url and the Install step), or use a "
                            "model transformers ships")
    try:
        config = transformers.AutoConfig.from_pretrained(str(weights_dir), trust_remote_code=False)
        if not type(config).__module__.startswith("transformers."):  # registered by a code package imported here
            raise ValueError(f"its config class {type(config).__name__} comes from {type(config).__module__}")
    except (ValueError, KeyError) as e:
        raise SkeletonError(
            f"{weights_dir}: model_type {raw.get('model_type')!r} is not a transformers architecture ({e})",
            "if the model ships its own code, pass its package with --code <package>") from e
    arch = (getattr(config, "architectures", None) or [None])[0]
    build = None
    if model_cls_name:
        build = _transformers_builder(getattr(transformers, model_cls_name, None))
        if build is None:
            raise SkeletonError(f"transformers has no model class {model_cls_name!r}",
                                "fix the adapter's model_cls_name (or upgrade transformers)")
    elif arch:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            build = _transformers_builder(cls)
    if build is not None:
        model = _on_meta(lambda: build(config))
    else:
        try:
            model = _on_meta(lambda: transformers.AutoModelForImageTextToText.from_config(config))
        except ValueError:  # not a vision-language config: a text-only LM
            model = _on_meta(lambda: transformers.AutoModelForCausalLM.from_config(config))
    return model, arch or type(model).__name__, "transformers"


def skeleton_view(model: nn.Module, language_model_path: str, injection: tuple[str, ...] | list[str],
                  hidden_size: int):
    """The engine's structural view of a skeleton (blocks, embeddings, head, norms, per-block
    subsets, the declared injection points) for checks that need no weights, e.g. whether a
    rotation is possible (:func:`llmc.quant.rotation.check_rotation`) before a run is generated."""
    from types import SimpleNamespace

    from .base import BaseModel

    class SkeletonView(BaseModel):
        projector_last_layers = tuple(injection)
        reads_model_path = False  # a view of a model already built: no folder is read

        def build_model(self) -> None:
            self.mm_model = model
            self.model = model.get_submodule(language_model_path) if language_model_path else model
            self.model_config = SimpleNamespace(hidden_size=int(hidden_size))

        def batch_process(self, samples, add_answer: bool = False) -> dict:
            raise NotImplementedError("a skeleton has no weights to run")

        def answer(self, requests) -> list[str]:
            raise NotImplementedError("a skeleton has no weights to run")

        def get_extra_rot_module_besides_embed_layers(self) -> list:
            return self.declared_injection_layers()

        def save_pretrained(self, path) -> None:
            raise NotImplementedError("a skeleton has no weights to save")

    return SkeletonView(".", "auto", "cpu")
