"""Text-only causal LMs (Llama, Qwen2 and relatives) through ``AutoModelForCausalLM``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import BaseModel, Sample, dtype_kwargs
from .registry import register


class CausalLM(BaseModel):
    __abstract_ok__ = True
    modality = "llm"

    def build_model(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), trust_remote_code=False)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = self.torch_dtype if self.torch_dtype != "auto" else "auto"
        self.mm_model = AutoModelForCausalLM.from_pretrained(str(self.model_path), trust_remote_code=False,
                                                             **dtype_kwargs(dtype)).to(self.device).eval()
        self.vlm_model = self.mm_model
        self.model = self.mm_model.get_decoder() if hasattr(self.mm_model, "get_decoder") else self.mm_model.model
        self.model_config = self.mm_model.config

    def get_extra_rot_module_besides_embed_layers(self) -> list[nn.Module]:
        return []  # no projector: only the token embedding writes the residual stream

    def batch_process(self, samples: Sequence[Sample], add_answer: bool = False) -> dict:
        texts = [s.text if s.text is not None else (s.question + (f" {s.answer}" if add_answer and s.answer else ""))
                 for s in samples]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.no_grad()
    def answer(self, requests) -> list[str]:
        enc = self.tokenizer([r.context for r in requests], return_tensors="pt", padding=True).to(self.device)
        n_new = max(r.max_new_tokens for r in requests)
        out = self.mm_model.generate(**enc, max_new_tokens=n_new, do_sample=False,
                                     pad_token_id=self.tokenizer.pad_token_id)
        return [t.strip() for t in self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]

    def save_pretrained(self, path) -> None:
        self.mm_model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))


@register("Llama")
class Llama(CausalLM):
    pass


@register("Qwen2")
class Qwen2(CausalLM):
    pass
