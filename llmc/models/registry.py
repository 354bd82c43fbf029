"""Model adapter registry: ``@register("Name")`` on a BaseModel subclass, and adapter discovery.

Nothing edits the engine's files to add a model. Adapters are found, in this order, among:

- the built-in adapters of this package (``Llava``, ``Vila``, ``Llama``, ``Qwen2``);
- installed distributions that declare an ``llmc.adapters`` entry point (a module to import);
- every ``*.py`` in the folders named by ``model.adapters`` in a config, or by ``$LLMC_ADAPTERS``
  (``os.pathsep``-separated) — the wizard writes its model declarations into such a folder.

A folder's module is imported under a name that includes a digest of its path, so two folders
holding files of the same name never shadow each other. A module that fails to import is
remembered, and the error for an unknown model type names it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

MODEL_REGISTRY: dict[str, type] = {}
#: adapter file -> the import error it raised (reported with unknown model types)
FAILED_ADAPTERS: dict[str, str] = {}
_LOADED: set[str] = set()
ENTRY_POINT_GROUP = "llmc.adapters"


def register(name: str):
    def deco(cls):
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
            existing = MODEL_REGISTRY[name]
            if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(f"model type {name!r} is already registered by {existing.__module__}")
        cls.name = name
        MODEL_REGISTRY[name] = cls
        return cls

    return deco


def adapter_module_name(path: Path) -> str:
    """The import name of an adapter file: unique per absolute path."""
    path = Path(path).resolve()
    digest = hashlib.sha256(str(path.parent).encode()).hexdigest()[:10]
    return f"llmc_adapters_{digest}.{path.stem}"


def import_adapter_file(path: Path):
    """Import one adapter file (again, when it changed since it was imported) and return the module."""
    path = Path(path).resolve()
    name = adapter_module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    mod = importlib.util.module_from_spec(spec)
    # drop the registrations of an earlier import of the same file (its classes are replaced)
    for key, cls in list(MODEL_REGISTRY.items()):
        if cls.__module__ == name:
            del MODEL_REGISTRY[key]
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def env_adapter_dirs() -> list[str]:
    return [d for d in os.environ.get("LLMC_ADAPTERS", "").split(os.pathsep) if d]


def load_adapter_dirs(dirs: Iterable[str | os.PathLike] = ()) -> None:
    """Import every ``*.py`` of ``dirs`` and of ``$LLMC_ADAPTERS`` that is not imported yet."""
    for d in [*dirs, *env_adapter_dirs()]:
        root = Path(d).expanduser()
        if not root.is_dir():
            continue
        for f in sorted(root.glob("*.py")):
            key = str(f.resolve())
            if key in _LOADED:
                continue
            _LOADED.add(key)
            try:
                import_adapter_file(f)
            except Exception as e:  # noqa: BLE001 - a broken adapter must not break the engine
                FAILED_ADAPTERS[key] = f"{type(e).__name__}: {e}"


def load_entry_points() -> None:
    from importlib.metadata import entry_points

    try:
        eps = list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception as e:  # noqa: BLE001 - a distribution's broken metadata must not break the engine
        FAILED_ADAPTERS["entry points"] = f"{type(e).__name__}: {e}"
        return
    for ep in eps:
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        key = f"entry point {ep.name} ({ep.value}) of the package {dist}"
        if key in _LOADED:
            continue
        _LOADED.add(key)
        try:
            ep.load()
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a third-party plugin must not break the engine
            FAILED_ADAPTERS[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def get_model_class(name: str, adapter_dirs: Iterable[str | os.PathLike] = ()) -> type:
    """The adapter registered as ``name``; ``adapter_dirs`` (and ``$LLMC_ADAPTERS``) are searched."""
    importlib.import_module("llmc.models")  # the built-in adapters
    if name not in MODEL_REGISTRY:
        load_entry_points()
        load_adapter_dirs(adapter_dirs)
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name]
    lowered = {k.lower(): k for k in MODEL_REGISTRY}
    if name.lower() in lowered:
        return MODEL_REGISTRY[lowered[name.lower()]]
    close = difflib.get_close_matches(name, list(MODEL_REGISTRY), n=1) or difflib.get_close_matches(
        name.lower(), list(lowered), n=1)
    hint = f"did you mean {lowered.get(close[0], close[0])!r}? " if close else ""
    failed = "".join(f"; {path} failed to import: {err}" for path, err in FAILED_ADAPTERS.items())
    where = ", ".join(str(d) for d in [*adapter_dirs, *env_adapter_dirs()]) or "none given"
    raise ValueError(
        f"model.type: unknown model type {name!r}; {hint}(registered: {', '.join(sorted(MODEL_REGISTRY))}; "
        f"adapter folders searched: {where}{failed})"
    )
