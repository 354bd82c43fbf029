"""Load the demo models through their own loaders and answer VQA requests.

``tiny-llava`` loads with transformers (``LlavaForConditionalGeneration`` + ``AutoProcessor``);
``tiny-vila`` with its package's ``load_pretrained_model`` — the package must be installed
(``pip install -e <code repo>``), exactly as for the real VILA.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from llmc.eval.vqa import VQARequest


class LlavaAnswerer:
    def __init__(self, path: Path, device: str = "cpu", dtype=torch.float32):
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(str(path))
        self.processor.tokenizer.padding_side = "left"
        self.model = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=dtype).to(device).eval()

    def prompt(self, question: str) -> str:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True)

    @torch.no_grad()
    def __call__(self, requests: Sequence[VQARequest]) -> list[str]:
        prompts = [self.prompt(r.context) for r in requests]
        images = [r.images[0].convert("RGB") for r in requests]
        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device)
        n_new = max(r.max_new_tokens for r in requests)
        out = self.model.generate(**inputs, max_new_tokens=n_new, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


class VilaAnswerer:
    def __init__(self, path: Path, device: str = "cpu", dtype=torch.float32):
        try:
            from tiny_vila.model.builder import load_pretrained_model
        except ImportError as e:  # pragma: no cover - message checked in tests
            raise ImportError(
                "tiny-vila's code is not installed; run `pip install -e <tiny-vila code repo>` first"
            ) from e
        from tiny_vila.conversation import build_prompt
        from tiny_vila.mm_utils import process_images, tokenizer_image_token

        self._build_prompt, self._process, self._tok_image = build_prompt, process_images, tokenizer_image_token
        self.tokenizer, self.model, self.image_processor, self.context_len = load_pretrained_model(
            str(path), "tiny-vila", device=device, torch_dtype=dtype)

    @torch.no_grad()
    def __call__(self, requests: Sequence[VQARequest]) -> list[str]:
        rows = [self._tok_image(self._build_prompt(r.context), self.tokenizer, return_tensors="pt") for r in requests]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = r
            mask[b, width - len(r):] = 1
        images = self._process([r.images[0] for r in requests], self.image_processor, self.model.config)
        n_new = max(r.max_new_tokens for r in requests)
        out = self.model.generate(ids, images=images, attention_mask=mask, max_new_tokens=n_new, do_sample=False)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def load_answerer(name: str, path: Path, device: str = "cpu"):
    if name == "tiny-llava":
        return LlavaAnswerer(path, device)
    if name == "tiny-vila":
        return VilaAnswerer(path, device)
    raise ValueError(f"unknown demo model {name!r}; expected tiny-llava or tiny-vila")
