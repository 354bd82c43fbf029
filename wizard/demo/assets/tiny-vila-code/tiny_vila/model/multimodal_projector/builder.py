"""``build_mm_projector``: the projector from ``<root>/mm_projector`` (or a type name)."""

import os

from ..multimodal_encoder.vision_encoder import _dtype_kw
from ..utils import dtype_of
from .base_projector import MultimodalProjector, MultimodalProjectorConfig


def build_mm_projector(model_type_or_path: str, config):
    if config.resume_path:
        assert os.path.exists(model_type_or_path), f"Resume mm projector path {model_type_or_path} does not exist!"
        return MultimodalProjector.from_pretrained(model_type_or_path, config, **_dtype_kw(dtype_of(config)))
    return MultimodalProjector(MultimodalProjectorConfig(model_type_or_path), config).to(dtype_of(config))
