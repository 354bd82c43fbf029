"""Model adapter registry: ``@register("Name")`` on a BaseModel subclass."""

from __future__ import annotations

import difflib
import importlib

MODEL_REGISTRY: dict[str, type] = {}


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


def get_model_class(name: str) -> type:
    importlib.import_module("llmc.models")  # registers the built-in and generated adapters
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name]
    lowered = {k.lower(): k for k in MODEL_REGISTRY}
    if name.lower() in lowered:
        return MODEL_REGISTRY[lowered[name.lower()]]
    close = difflib.get_close_matches(name, list(MODEL_REGISTRY), n=1) or difflib.get_close_matches(
        name.lower(), list(lowered), n=1)
    hint = f"did you mean {lowered.get(close[0], close[0])!r}? " if close else ""
    raise ValueError(
        f"model.type: unknown model type {name!r}; {hint}(registered: {', '.join(sorted(MODEL_REGISTRY))})"
    )
