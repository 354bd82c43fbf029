"""The tiny-vila model: vision tower -> mm_projector -> image tokens spliced into the LLM input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .multimodal_projector import MultimodalProjector


class TinyVilaConfig(PretrainedConfig):
    model_type = "tiny_vila"

    def __init__(self, llm_cfg=None, vision_tower_cfg=None, mm_projector_cfg=None,
                 mm_vision_select_layer=-2, **kwargs):
        super().__init__(**kwargs)
        self.llm_cfg = llm_cfg or {}
        self.vision_tower_cfg = vision_tower_cfg or {}
        self.mm_projector_cfg = mm_projector_cfg or {"mm_projector_type": "mlp_downsample"}
        self.mm_vision_select_layer = mm_vision_select_layer


class VisionTower(nn.Module):
    """Wraps the HF vision model; returns the hidden states of ``select_layer``."""

    def __init__(self, vision_tower: nn.Module, image_processor, select_layer: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.image_processor = image_processor
        self.select_layer = select_layer

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return self.vision_tower.config.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(images, output_hidden_states=True)
        return out.hidden_states[self.select_layer]


class TinyVilaForCausalLM(nn.Module):
    """VILA-shaped VLM: ``get_llm()``, ``get_vision_tower()``, ``get_mm_projector()``."""

    def __init__(self, config: TinyVilaConfig, llm=None, vision_tower=None, image_processor=None,
                 mm_projector=None):
        super().__init__()
        self.config = config
        self.llm = llm if llm is not None else LlamaForCausalLM(LlamaConfig(**config.llm_cfg))
        vt = vision_tower if vision_tower is not None else SiglipVisionModel(
            SiglipVisionConfig(**config.vision_tower_cfg))
        self.vision_tower = VisionTower(vt, image_processor, config.mm_vision_select_layer)
        self.mm_projector = mm_projector if mm_projector is not None else MultimodalProjector(
            vt.config.hidden_size, self.llm.config.hidden_size)

    # --- VILA accessors -------------------------------------------------------------------
    def get_llm(self):
        return self.llm

    def get_vision_tower(self):
        return self.vision_tower

    def get_mm_projector(self):
        return self.mm_projector

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- multimodal input building ----------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(device=self.device, dtype=self.dtype)
        return self.mm_projector(self.vision_tower(images))

    def prepare_inputs_labels_for_multimodal(self, input_ids, images, attention_mask=None, labels=None):
        """Splice image features where ``input_ids == IMAGE_TOKEN_INDEX``; pad on the left."""
        embed = self.llm.get_input_embeddings()
        feats = self.encode_images(images) if images is not None else None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        rows, row_labels = [], []
        img_i = 0
        for b in range(input_ids.shape[0]):
            ids = input_ids[b][attention_mask[b].bool()]
            lab = labels[b][attention_mask[b].bool()] if labels is not None else None
            pos = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            parts, part_labels, start = [], [], 0
            for p in pos + [len(ids)]:
                seg = ids[start:p]
                parts.append(embed(seg))
                part_labels.append(lab[start:p] if lab is not None else None)
                if p < len(ids):
                    f = feats[img_i]
                    img_i += 1
                    parts.append(f)
                    part_labels.append(torch.full((f.shape[0],), IGNORE_INDEX, device=ids.device))
                start = p + 1
            rows.append(torch.cat(parts))
            if labels is not None:
                row_labels.append(torch.cat(part_labels))
        width = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[1]
        out = rows[0].new_zeros(len(rows), width, hidden)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=out.device)
        out_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long, device=out.device)
        for b, r in enumerate(rows):
            out[b, width - r.shape[0]:] = r
            mask[b, width - r.shape[0]:] = 1
            if labels is not None:
                out_labels[b, width - r.shape[0]:] = row_labels[b]
        return out, mask, (out_labels if labels is not None else None)

    def forward(self, input_ids, images=None, attention_mask=None, labels=None, **kwargs):
        embeds, mask, labels = self.prepare_inputs_labels_for_multimodal(input_ids, images, attention_mask, labels)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, images=None, attention_mask=None, **generation_kwargs):
        """Returns only the generated token ids, as VILA's ``generate`` does."""
        embeds, mask, _ = self.prepare_inputs_labels_for_multimodal(input_ids, images, attention_mask)
        generation_kwargs.setdefault("pad_token_id", self.llm.generation_config.pad_token_id)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **generation_kwargs)

    # --- persistence (VILA's sub-folder layout) ------------------------------------------------
    def save_pretrained(self, path, tokenizer=None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.llm.save_pretrained(path / "llm")
        if tokenizer is not None:
            tokenizer.save_pretrained(path / "llm")
        self.vision_tower.vision_tower.save_pretrained(path / "vision_tower")
        if self.vision_tower.image_processor is not None:
            self.vision_tower.image_processor.save_pretrained(path / "vision_tower")
        proj_dir = path / "mm_projector"
        proj_dir.mkdir(exist_ok=True)
        (proj_dir / "config.json").write_text(json.dumps({
            "mm_projector_type": "mlp_downsample",
            "vision_hidden_size": self.vision_tower.hidden_size,
            "llm_hidden_size": self.llm.config.hidden_size,
        }, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.mm_projector.state_dict().items()}
        save_file(state, str(proj_dir / "model.safetensors"), metadata={"format": "pt"})
        cfg = self.config.to_dict()
        cfg.update(
            architectures=["TinyVilaForCausalLM"],
            llm_cfg=self.llm.config.to_dict(),
            vision_tower_cfg=self.vision_tower.config.to_dict(),
        )
        for key in ("transformers_version",):
            cfg.pop(key, None)
        (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, path, torch_dtype=torch.float32, device="cpu"):
        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        config = TinyVilaConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
        llm = LlamaForCausalLM.from_pretrained(path / "llm", dtype=torch_dtype)
        vt = SiglipVisionModel.from_pretrained(path / "vision_tower", dtype=torch_dtype)
        image_processor = SiglipImageProcessor.from_pretrained(path / "vision_tower")
        proj_cfg = json.loads((path / "mm_projector" / "config.json").read_text())
        projector = MultimodalProjector(proj_cfg["vision_hidden_size"], proj_cfg["llm_hidden_size"])
        projector.load_state_dict(load_file(str(path / "mm_projector" / "model.safetensors")))
        model = cls(config, llm=llm, vision_tower=vt, image_processor=image_processor, mm_projector=projector)
        return model.to(device=device, dtype=torch_dtype).eval()


def load_tokenizer(path):
    return AutoTokenizer.from_pretrained(os.fspath(Path(path) / "llm"))
