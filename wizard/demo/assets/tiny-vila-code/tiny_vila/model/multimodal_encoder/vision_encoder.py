"""VILA 1.5's vision towers: a transformers vision model, the hidden states of a chosen layer."""

import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionModel, SiglipImageProcessor, SiglipVisionModel

from ..utils import dtype_of


def _dtype_kw(dtype):
    import transformers

    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}


class VisionTower(nn.Module):
    def __init__(self, vision_tower, args):
        super().__init__()
        self.vision_tower_name = vision_tower
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")

    def feature_select(self, image_forward_outs):
        image_features = image_forward_outs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            image_features = image_features[:, 1:]
        elif self.select_feature != "cls_patch":
            raise ValueError(f"Unexpected select feature: {self.select_feature}")
        return image_features

    def forward(self, images):
        outs = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(outs).to(images.dtype)

    @property
    def dtype(self):
        return self.vision_tower.dtype

    @property
    def device(self):
        return self.vision_tower.device

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self):
        return self.config.hidden_size


class _PretrainedTower(VisionTower):
    """A tower loaded from its folder: ``PROCESSOR`` and ``MODEL`` are the transformers classes."""

    PROCESSOR = MODEL = None

    def __init__(self, model_name_or_path: str, config):
        super().__init__(model_name_or_path, config)
        self.image_processor = self.PROCESSOR.from_pretrained(model_name_or_path)
        self.vision_tower = self.MODEL.from_pretrained(model_name_or_path, **_dtype_kw(dtype_of(config)))
        self.is_loaded = True


class SiglipVisionTower(_PretrainedTower):
    PROCESSOR, MODEL = SiglipImageProcessor, SiglipVisionModel


class CLIPVisionTower(_PretrainedTower):
    PROCESSOR, MODEL = CLIPImageProcessor, CLIPVisionModel
