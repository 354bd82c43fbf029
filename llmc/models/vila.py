"""VILA-style custom-code VLMs (``load_pretrained_model`` from the model's own package).

The model's code must be installed (``pip install -e <code repo>``). ``CODE_PACKAGE`` names the
package that provides ``model.builder.load_pretrained_model``, ``mm_utils`` and a prompt
builder; NVIDIA's VILA calls it ``llava``, the demo's tiny-vila ``tiny_vila``.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Sequence

import torch
from torch import nn

from .base import BaseModel, Sample, left_pad
from .projector import find_injection_layers
from .registry import register


@register("Vila")
class Vila(BaseModel):
    CODE_PACKAGE = "tiny_vila"

    def _import(self, sub: str):
        name = f"{self.CODE_PACKAGE}.{sub}"
        try:
            return importlib.import_module(name)
        except ImportError as e:
            raise ImportError(
                f"cannot import {name}: the model's code package {self.CODE_PACKAGE!r} is not installed; "
                "install it with `pip install -e <code repo>` (or the wizard's Install step)"
            ) from e

    def build_model(self) -> None:
        builder = self._import("model.builder")
        self.mm_utils = self._import("mm_utils")
        self.conversation = self._import("conversation")
        dtype = torch.float32 if self.torch_dtype == "auto" else self.torch_dtype
        self.tokenizer, model, self.image_processor, self.context_len = builder.load_pretrained_model(
            str(self.model_path), self.model_path.name, device=str(self.device), torch_dtype=dtype)
        self.mm_model = self.vlm_model = model
        self.vision_model = model.get_vision_tower()
        self.mm_projector = model.get_mm_projector()
        self.llm = model.get_llm()
        self.model = self.llm
        cfg = model.config.llm_cfg
        self.model_config = types.SimpleNamespace(**cfg) if isinstance(cfg, dict) else cfg

    def get_head_layers(self) -> list[nn.Module]:
        return [self.llm.get_output_embeddings()]

    def get_extra_rot_module_besides_embed_layers(self) -> list[nn.Module]:
        # VILA's projector: Sequential(DownSampleBlock, LayerNorm, Linear, GELU, Linear); the
        # structural pick finds its last Linear (layers[-1]).
        if self.projector_last_layers:
            return self.declared_injection_layers()
        report = find_injection_layers(self.mm_projector, int(self.model_config.hidden_size))
        return [m for _, m in report.layers]

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.mm_utils.tokenizer_image_token(p, self.tokenizer, return_tensors="pt") for p in prompts]
        return left_pad(rows, self.tokenizer.pad_token_id, self.device)

    def _images(self, images) -> torch.Tensor:
        return self.mm_utils.process_images(list(images), self.image_processor, self.mm_model.config).to(self.device)

    def batch_process(self, samples: Sequence[Sample], add_answer: bool = False) -> dict:
        prompts = []
        for s in samples:
            p = self.conversation.build_prompt(s.question, with_image=s.image is not None)
            if add_answer and s.answer:
                p = f"{p} {s.answer}{self.tokenizer.eos_token}"
            prompts.append(p)
        ids, mask = self._encode(prompts)
        images = [s.image for s in samples if s.image is not None]
        return {"input_ids": ids, "attention_mask": mask, "images": self._images(images) if images else None}

    @torch.no_grad()
    def answer(self, requests) -> list[str]:
        ids, mask = self._encode([self.conversation.build_prompt(r.context) for r in requests])
        images = self._images([r.images[0] for r in requests])
        n_new = max(r.max_new_tokens for r in requests)
        out = self.mm_model.generate(ids, images=images, attention_mask=mask, max_new_tokens=n_new, do_sample=False)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def answer_logits(self, requests) -> torch.Tensor:
        ids, mask = self._encode([self.conversation.build_prompt(r.context) for r in requests])
        images = self._images([r.images[0] for r in requests])
        return self.mm_model(ids, images=images, attention_mask=mask).logits[:, -1].float()

    def save_pretrained(self, path) -> None:
        self.mm_model.save_pretrained(path, tokenizer=self.tokenizer)
