"""Where a checkpoint's parts live, as VILA 1.5's ``llava.model.utils`` finds them."""

import os

from transformers import AutoConfig, PretrainedConfig


def get_model_config(config):
    """The folders of the parts: ``<root>/llm``, ``<root>/vision_tower``, ``<root>/mm_projector``."""
    root_path = config._name_or_path if len(getattr(config, "_name_or_path", "") or "") >= 2 else config.resume_path
    paths = []
    for key in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg"):
        cfg = getattr(config, key, None)
        if isinstance(cfg, (dict, PretrainedConfig)):
            paths.append(os.path.join(root_path, key[:-4]))
        elif isinstance(cfg, str):
            paths.append(cfg)
        else:
            raise ValueError(f"Invalid {key} configuration!")
    return paths


def is_mm_model(model_path):
    config = AutoConfig.from_pretrained(model_path)
    return any("llava" in a.lower() for a in (config.architectures or []))


def dtype_of(config):
    """``config.model_dtype`` ("torch.float16") as a torch dtype."""
    import torch

    return getattr(torch, str(getattr(config, "model_dtype", None) or "torch.float16").split(".")[-1])
