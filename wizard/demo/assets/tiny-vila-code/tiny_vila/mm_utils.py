"""Prompt and image helpers, with the same names and contracts as VILA's ``llava.mm_utils``."""

from __future__ import annotations

import torch
from transformers import StoppingCriteria

from .constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenize ``prompt``, replacing each ``<image>`` by ``image_token_index`` (a negative id)."""
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    ids: list[int] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(image_token_index)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    if return_tensors is not None:
        raise ValueError(f"unsupported tensor type {return_tensors!r}")
    return ids


def process_images(images, image_processor, model_cfg=None):
    """Pixel tensor ``(N, 3, H, W)`` for a list of PIL images."""
    return image_processor([img.convert("RGB") for img in images], return_tensors="pt")["pixel_values"]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop once every sequence's generated text ends with one of ``keywords``."""

    def __init__(self, keywords, tokenizer, input_ids):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.start_len = input_ids.shape[1] if input_ids is not None else 0

    def __call__(self, output_ids, scores, **kwargs):
        done = []
        for row in output_ids:
            text = self.tokenizer.decode(row[-8:], skip_special_tokens=True)
            done.append(any(text.rstrip().endswith(k) for k in self.keywords))
        return torch.tensor(done, dtype=torch.bool, device=output_ids.device)
