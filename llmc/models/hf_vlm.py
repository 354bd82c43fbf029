"""Shared pieces of adapters for transformers-native VLMs (AutoProcessor + generate)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import BaseModel, Sample
from .projector import find_injection_layers


def find_submodule(root: nn.Module, suffixes: Sequence[str]) -> tuple[str, nn.Module] | tuple[None, None]:
    """First module whose dotted name ends with one of ``suffixes`` (shallowest wins)."""
    hits = [(n, m) for n, m in root.named_modules() if n and n.rsplit(".", 1)[-1] in suffixes]
    if not hits:
        return None, None
    return min(hits, key=lambda h: h[0].count("."))


class HFVisionLanguageModel(BaseModel):
    """transformers VLM: processor chat template, ``generate``, ``save_pretrained``."""

    __abstract_ok__ = True
    model_cls_name = "AutoModelForImageTextToText"
    language_suffixes = ("language_model",)
    vision_suffixes = ("vision_tower", "vision_model", "visual")
    projector_suffixes = ("multi_modal_projector", "mm_projector", "connector", "merger")

    def build_model(self) -> None:
        import transformers

        cls = getattr(transformers, self.model_cls_name)
        self.processor = transformers.AutoProcessor.from_pretrained(str(self.model_path))
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        dtype = self.torch_dtype if self.torch_dtype != "auto" else "auto"
        self.mm_model = cls.from_pretrained(str(self.model_path), dtype=dtype).to(self.device).eval()
        self.vlm_model = self.mm_model
        _, lm = find_submodule(self.mm_model, self.language_suffixes)
        if lm is None:
            raise ValueError(f"{type(self.mm_model).__name__}: no language model module found")
        self.model = lm
        self.model_config = getattr(lm, "config", None) or self.mm_model.config.text_config
        _, self.vision_model = find_submodule(self.mm_model, self.vision_suffixes)
        _, self.mm_projector = find_submodule(self.mm_model, self.projector_suffixes)

    def hidden_size(self) -> int:
        return int(self.model_config.hidden_size)

    def get_extra_rot_module_besides_embed_layers(self) -> list[nn.Module]:
        if self.projector_last_layers:
            return self.declared_injection_layers()
        if self.mm_projector is None:
            return []
        return [m for _, m in find_injection_layers(self.mm_projector, self.hidden_size()).layers]

    def prompt(self, question: str, answer: str | None = None, with_image: bool = True) -> str:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        msgs = [{"role": "user", "content": content}]
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
            return self.processor.apply_chat_template(msgs, add_generation_prompt=False)
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True)

    def _inputs(self, texts, images) -> dict:
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if any(i is not None for i in images):
            kwargs["images"] = [i.convert("RGB") for i in images]
        return dict(self.processor(**kwargs).to(self.device))

    def batch_process(self, samples: Sequence[Sample], add_answer: bool = False) -> dict:
        texts = [self.prompt(s.question, s.answer if add_answer else None, s.image is not None) for s in samples]
        return self._inputs(texts, [s.image for s in samples])

    @torch.no_grad()
    def answer(self, requests) -> list[str]:
        inputs = self._inputs([self.prompt(r.context) for r in requests], [r.images[0] for r in requests])
        n_new = max(r.max_new_tokens for r in requests)
        out = self.mm_model.generate(**inputs, max_new_tokens=n_new, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    @torch.no_grad()
    def answer_logits(self, requests) -> torch.Tensor:
        inputs = self._inputs([self.prompt(r.context) for r in requests], [r.images[0] for r in requests])
        return self.mm_model(**inputs).logits[:, -1].float()

    def save_pretrained(self, path) -> None:
        self.mm_model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))
