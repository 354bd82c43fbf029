"""Facts about the demo models, read from their files without loading any weights."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .zoo import ASSETS, DEMO_MODELS

SCORES_FILE = ASSETS / "scores.json"


def safetensors_params(path: Path) -> int:
    """Parameter count from a safetensors header (reads the header only)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    total = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        count = 1
        for d in v["shape"]:
            count *= d
        total += count
    return total


@dataclass
class ModelFacts:
    name: str
    kind: str
    description: str
    parameters: int
    size_bytes: int
    llm_hidden: int
    llm_layers: int
    llm_intermediate: int
    vision_patch: int
    image_tokens: int
    scores: dict = field(default_factory=dict)  # float MME scores (categories + total), if measured

    @property
    def total(self) -> float | None:
        return self.scores.get("total")


def model_facts(name: str, weights: Path | None = None) -> ModelFacts:
    m = DEMO_MODELS[name]
    root = Path(weights) if weights else ASSETS / m.weights_asset
    st = sorted(root.rglob("*.safetensors"))
    params = sum(safetensors_params(p) for p in st)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)
    cfg = json.loads((root / "config.json").read_text())
    if m.kind == "transformers":
        text, vision = cfg["text_config"], cfg["vision_config"]
        patch = vision["patch_size"]
        tokens = (vision["image_size"] // patch) ** 2
    else:
        text, vision = cfg["llm_cfg"], cfg["vision_tower_cfg"]
        patch = vision["patch_size"]
        tokens = (vision["image_size"] // patch // 2) ** 2  # DownSampleBlock merges 2x2
    scores = {}
    if SCORES_FILE.exists():
        scores = json.loads(SCORES_FILE.read_text()).get(name, {})
    return ModelFacts(name, m.kind, m.description, params, size, text["hidden_size"],
                      text["num_hidden_layers"], text["intermediate_size"], patch, tokens, scores)


def all_facts() -> list[ModelFacts]:
    return [model_facts(n) for n in DEMO_MODELS]
