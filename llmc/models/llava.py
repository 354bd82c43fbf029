"""LLaVA family (``LlavaForConditionalGeneration``), transformers 4 and 5 layouts."""

from __future__ import annotations

from .hf_vlm import HFVisionLanguageModel
from .registry import register


@register("Llava")
class Llava(HFVisionLanguageModel):
    model_cls_name = "LlavaForConditionalGeneration"
