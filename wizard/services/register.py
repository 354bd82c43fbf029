"""Make a generated model declaration known to the engine — by discovery, not by editing files.

The engine finds declarations in the folder that a config names in ``model.adapters`` (or that
``$LLMC_ADAPTERS`` lists), so "registering" writes nothing: it imports the declaration the way
the engine will and checks that it defines the model type the config asks for. Two wizards
generating into one folder at once cannot lose each other's work: there is no shared file.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import WizardError


def default_models_dir(workdir: Path) -> Path:
    """Where the wizard keeps model declarations: beside its configs, never inside the engine."""
    return Path(workdir) / "adapters"


def adapter_path(module: str, models_dir: Path) -> Path:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", module):
        raise WizardError(f"not a valid adapter module name: {module!r}", "use the name the Generate step produced")
    path = Path(models_dir) / f"{module}.py"
    if not path.exists():
        raise WizardError(f"adapter {path} does not exist", "run the Generate step first")
    return path


def import_adapter(module: str, models_dir: Path):
    """Import (or re-import) a generated declaration from ``models_dir`` and return the module."""
    from llmc.models.registry import import_adapter_file

    path = adapter_path(module, models_dir)
    try:
        return import_adapter_file(path)
    except Exception as e:  # noqa: BLE001 - a hand-edited declaration can raise anything
        raise WizardError(f"{path} fails to import: {type(e).__name__}: {e}",
                          "fix the file, or remove it and run the Generate step again") from None


def register_adapter(module: str, models_dir: Path, model_type: str | None = None) -> str:
    """Check that the engine discovers ``module`` in ``models_dir``; returns the model type."""
    from llmc.models.registry import MODEL_REGISTRY

    import sys

    mod = import_adapter(module, models_dir)
    types = sorted(k for k, cls in MODEL_REGISTRY.items() if cls.__module__ == mod.__name__)
    for k in types:  # a check only: the engine's own processes discover it; this one keeps nothing
        del MODEL_REGISTRY[k]
    sys.modules.pop(mod.__name__, None)
    if not types:
        raise WizardError(f"{adapter_path(module, models_dir)} registers no model type",
                          "run the Generate step again")
    if model_type is not None and model_type not in types:
        raise WizardError(f"{adapter_path(module, models_dir)} registers {', '.join(types)}, not {model_type}",
                          "run the Generate step again so the config and the declaration agree")
    return model_type or types[0]
