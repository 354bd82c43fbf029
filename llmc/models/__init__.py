"""Model adapters. Importing this package registers the built-in adapters; others are discovered
(see :mod:`llmc.models.registry`): nothing edits this package to add a model."""

from __future__ import annotations

from .base import BaseModel, Sample  # noqa: F401
from .llama import Llama, Qwen2  # noqa: F401
from .llava import Llava  # noqa: F401
from .registry import MODEL_REGISTRY, get_model_class, load_adapter_dirs, register  # noqa: F401
from .vila import Vila  # noqa: F401
