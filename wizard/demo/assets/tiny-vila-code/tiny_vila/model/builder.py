"""``load_pretrained_model``: VILA 1.5's loader (``llava.model.builder``), same signature and result."""

import os

import torch
from transformers import AutoConfig

from .language_model.llava_llama import LlavaLlamaModel
from .utils import is_mm_model


def load_pretrained_model(model_path, model_name, model_base=None, load_8bit=False, load_4bit=False,
                          device_map="auto", device="cuda", **kwargs):
    """``(tokenizer, model, image_processor, context_len)``. Like VILA's, a CUDA device loads in
    float16; elsewhere the weights keep float32 (``torch_dtype`` overrides both)."""
    if load_8bit or load_4bit:
        raise NotImplementedError("tiny-vila has no 8-bit/4-bit loading")
    if model_base is not None:
        raise NotImplementedError("tiny-vila has no LoRA / model_base loading")
    if not is_mm_model(model_path):
        raise ValueError(f"{model_path} is not a VILA checkpoint (architectures name no Llava model)")
    dtype = kwargs.pop("torch_dtype", torch.float16 if str(device).startswith("cuda") else torch.float32)
    config = AutoConfig.from_pretrained(model_path)
    config.resume_path = os.fspath(model_path)
    config.model_dtype = str(dtype)
    model = LlavaLlamaModel(config=config)
    model.eval()
    tokenizer = model.tokenizer
    model.resize_token_embeddings(len(tokenizer)) if len(tokenizer) != model.get_input_embeddings().num_embeddings else None
    vision_tower = model.get_vision_tower()
    model.to(device=device, dtype=dtype)
    image_processor = vision_tower.image_processor
    context_len = getattr(model.get_llm().config, "max_position_embeddings", 2048)
    return tokenizer, model, image_processor, context_len
