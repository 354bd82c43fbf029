"""Image and prompt helpers with the names and contracts of VILA 1.5's ``llava.mm_utils``."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import StoppingCriteria

from .constants import IMAGE_TOKEN_INDEX


def expand2square(pil_img, background_color):
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def process_image(image, data_args, image_folder=None):
    """One image to pixels, by ``data_args.image_aspect_ratio`` (``resize``, ``pad`` or the processor's own)."""
    processor = data_args.image_processor
    if isinstance(image, str):
        image = Image.open(image)
    image = image.convert("RGB")
    mode = getattr(data_args, "image_aspect_ratio", None)
    if mode == "resize":
        size = getattr(processor, "crop_size", None) or processor.size
        image = image.resize((size["height"], size["width"]))
    elif mode == "pad":
        image = expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


def process_images(images, image_processor, model_cfg):
    """``(N, 3, H, W)`` pixels for a list of images (a list when their shapes differ)."""
    model_cfg.image_processor = image_processor
    new_images = [process_image(image, model_cfg, None) for image in images]
    if all(x.shape == new_images[0].shape for x in new_images):
        return torch.stack(new_images, dim=0)
    return new_images


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None, lstrip=False):
    """Token ids of ``prompt`` with ``image_token_index`` for each ``<image>`` (one BOS at the start)."""
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(x, sep):
        return [ele for sublist in zip(x, [sep] * len(x)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if lstrip:
        offset = 1
    elif len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    if return_tensors is not None:
        if return_tensors == "pt":
            return torch.tensor(input_ids, dtype=torch.long)
        raise ValueError(f"Unsupported tensor type: {return_tensors}")
    return input_ids


def get_model_name_from_path(model_path):
    model_paths = model_path.strip("/").split("/")
    if model_paths[-1].startswith("checkpoint-"):
        return model_paths[-2] + "_" + model_paths[-1]
    return model_paths[-1]


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
