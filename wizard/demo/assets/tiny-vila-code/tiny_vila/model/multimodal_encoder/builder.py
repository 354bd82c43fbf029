"""``build_vision_tower``: the tower class from ``<root>/vision_tower/config.json``'s architecture."""

import json
import os

from .vision_encoder import CLIPVisionTower, SiglipVisionTower


def build_vision_tower(model_name_or_path: str, config):
    if model_name_or_path is None:
        return None
    with open(os.path.join(model_name_or_path, "config.json")) as f:
        arch = (json.load(f).get("architectures") or [""])[0].lower()
    if "clip" in arch:
        vision_tower = CLIPVisionTower(model_name_or_path, config)
    elif "siglip" in arch:
        vision_tower = SiglipVisionTower(model_name_or_path, config)
    else:
        raise ValueError(f"Unknown vision tower: {model_name_or_path}")
    config.mm_hidden_size = vision_tower.config.hidden_size
    return vision_tower
