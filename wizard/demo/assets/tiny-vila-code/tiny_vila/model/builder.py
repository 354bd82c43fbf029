"""``load_pretrained_model``: the loader VILA's inference scripts use, same contract."""

from __future__ import annotations

import torch

from .tiny_vila_arch import TinyVilaForCausalLM, load_tokenizer


def load_pretrained_model(model_path, model_name=None, model_base=None, load_8bit=False, load_4bit=False,
                          device_map=None, device="cpu", torch_dtype=torch.float32, **kwargs):
    """Returns ``(tokenizer, model, image_processor, context_len)``."""
    if load_8bit or load_4bit:
        raise NotImplementedError("tiny-vila has no 8-bit/4-bit loading")
    if device_map not in (None, "auto") and not isinstance(device_map, str):
        raise NotImplementedError("tiny-vila loads on one device")
    if isinstance(device_map, str) and device_map != "auto":
        device = device_map
    tokenizer = load_tokenizer(model_path)
    model = TinyVilaForCausalLM.from_pretrained(model_path, torch_dtype=torch_dtype, device=device)
    image_processor = model.get_vision_tower().image_processor
    context_len = getattr(model.llm.config, "max_position_embeddings", 2048)
    return tokenizer, model, image_processor, context_len
