"""The model code's pinned dependencies against this environment: what installing it with its
dependencies would replace (research code pins old torch / transformers / tokenizers).

Read from the code's ``pyproject.toml`` (``[project] dependencies``) or ``requirements.txt``;
``setup.py`` is not executed to find them (it is the cloned code, run only at install time).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

#: packages built against the local CUDA / torch: an isolated environment keeps this environment's
#: version of them (or leaves them out) unless the answers keep the code's pin
DEFAULT_RELAX = ("torch", "torchvision", "torchaudio", "triton", "bitsandbytes", "xformers", "flash-attn",
                 "deepspeed")


@dataclass(frozen=True)
class Conflict:
    name: str
    wanted: str  #: the code's requirement, e.g. ``transformers==4.37.2``
    installed: str  #: the version in this environment

    def __str__(self) -> str:
        return f"{self.wanted} (this environment has {self.name} {self.installed})"


def declared_requirements(code_dir: Path) -> list[str]:
    """The requirement strings the code declares (empty when it declares none we can read)."""
    code_dir = Path(code_dir)
    py = code_dir / "pyproject.toml"
    if py.is_file():
        try:
            deps = tomllib.loads(py.read_text(encoding="utf-8")).get("project", {}).get("dependencies")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            deps = None
        if isinstance(deps, list):
            return [str(d) for d in deps]
    req = code_dir / "requirements.txt"
    if req.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in req.read_text(encoding="utf-8", errors="replace").splitlines()]
        return [ln for ln in lines if ln and not ln.startswith("-")]
    return []


def optional_requirements(code_dir: Path) -> dict[str, list[str]]:
    """``{extra: [requirement, ...]}`` of ``pyproject.toml``'s optional dependencies (what the code
    declares for training, evaluation... only)."""
    py = Path(code_dir) / "pyproject.toml"
    try:
        extras = tomllib.loads(py.read_text(encoding="utf-8")).get("project", {}).get("optional-dependencies")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    return {str(k): [str(r) for r in v] for k, v in extras.items() if isinstance(v, list)} if isinstance(extras, dict) else {}


def conflicts(code_dir: Path) -> list[Conflict]:
    """The code's requirements that the packages installed here do not satisfy."""
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for text in declared_requirements(code_dir):
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # not here: installing adds it, replaces nothing
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(Conflict(req.name, text.strip(), have))
    return out
