"""VILA 1.5's ``LlavaMetaModel`` / ``LlavaMetaForCausalLM``: the parts, their folders, image tokens
spliced into the language model's input embeddings."""

import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .multimodal_encoder.builder import build_vision_tower
from .multimodal_encoder.vision_encoder import _dtype_kw
from .multimodal_projector.builder import build_mm_projector
from .utils import dtype_of, get_model_config


class LlavaMetaModel:
    def init_vlm(self, config=None, *args, **kwargs):
        if hasattr(self, "llm") or hasattr(self, "vision_tower") or hasattr(self, "mm_projector"):
            return
        llm_cfg, vision_tower_cfg, mm_projector_cfg = get_model_config(config)
        self.llm = AutoModelForCausalLM.from_pretrained(llm_cfg, **_dtype_kw(dtype_of(config)))
        self.tokenizer = AutoTokenizer.from_pretrained(llm_cfg)
        config.hidden_size = self.llm.config.hidden_size
        self.vision_tower = build_vision_tower(vision_tower_cfg, config)
        self.mm_projector = build_mm_projector(mm_projector_cfg, config)
        self.is_loaded = True

    def get_llm(self):
        llm = getattr(self, "llm", None)
        return llm[0] if isinstance(llm, list) else llm

    def get_lm_head(self):
        return self.get_llm().get_output_embeddings()

    def get_vision_tower(self):
        vision_tower = getattr(self, "vision_tower", None)
        return vision_tower[0] if isinstance(vision_tower, list) else vision_tower

    def get_mm_projector(self):
        mm_projector = getattr(self, "mm_projector", None)
        return mm_projector[0] if isinstance(mm_projector, list) else mm_projector

    def get_input_embeddings(self):
        return self.get_llm().get_input_embeddings()

    def get_output_embeddings(self):
        return self.get_llm().get_output_embeddings()

    def save_pretrained(self, output_dir, state_dict=None):
        """``llm/`` (with the tokenizer), ``vision_tower/`` (with the image processor), ``mm_projector/``
        and the top ``config.json``: the layout :func:`load_pretrained_model` reads."""
        os.makedirs(output_dir, exist_ok=True)
        llm_dir = os.path.join(output_dir, "llm")
        self.get_llm().save_pretrained(llm_dir)
        if getattr(self, "tokenizer", None) is not None:
            self.tokenizer.save_pretrained(llm_dir)
        self.config.llm_cfg = self.get_llm().config.to_dict()
        tower = self.get_vision_tower()
        tower_dir = os.path.join(output_dir, "vision_tower")
        tower.vision_tower.save_pretrained(tower_dir)
        tower.image_processor.save_pretrained(tower_dir)
        self.config.vision_tower_cfg = tower.vision_tower.config.to_dict()
        proj = self.get_mm_projector()
        proj.config.architectures = [type(proj).__name__]
        proj.save_pretrained(os.path.join(output_dir, "mm_projector"))
        self.config.mm_projector_cfg = proj.config.to_dict()
        self.config.architectures = [self.__class__.__name__]
        self.config.model_dtype = str(next(self.parameters()).dtype)
        cfg = self.config.to_dict()
        for key in ("image_processor", "transformers_version", "_name_or_path"):
            cfg.pop(key, None)
        cfg["resume_path"] = "./vlm"
        with open(os.path.join(output_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True, default=str)


class LlavaMetaForCausalLM:
    def encode_images(self, images):
        return self.get_mm_projector()(self.get_vision_tower()(images))

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images):
        """``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``: each
        ``IMAGE_TOKEN_INDEX`` replaced by the next image's features, rows re-padded on the side the
        language model's config names (``tokenizer_padding_side``, right by default)."""
        if images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        if isinstance(images, list):
            images = torch.cat(images, dim=0)
        elif images.ndim == 5:
            images = images.flatten(0, 1)
        image_features = self.encode_images(images).to(self.device)
        embed = self.get_llm().get_input_embeddings()
        keep_mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        rows, row_labels, img = [], [], 0
        for b in range(input_ids.shape[0]):
            ids = input_ids[b][keep_mask[b]]
            lab = labels[b][keep_mask[b]] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
            where = torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist()
            parts, part_labels, start = [], [], 0
            for p in where + [ids.shape[0]]:
                parts.append(embed(ids[start:p]))
                part_labels.append(lab[start:p])
                if p < ids.shape[0]:
                    feat = image_features[img]
                    img += 1
                    parts.append(feat.to(parts[-1].dtype))
                    part_labels.append(torch.full((feat.shape[0],), IGNORE_INDEX, device=lab.device, dtype=lab.dtype))
                start = p + 1
            rows.append(torch.cat(parts))
            row_labels.append(torch.cat(part_labels))
        width = max(r.shape[0] for r in rows)
        left = getattr(self.get_llm().config, "tokenizer_padding_side", "right") == "left"
        embeds = rows[0].new_zeros(len(rows), width, rows[0].shape[1])
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=embeds.device)
        new_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long, device=embeds.device)
        positions = torch.zeros(len(rows), width, dtype=torch.long, device=embeds.device)
        for b, r in enumerate(rows):
            n = r.shape[0]
            sl = slice(width - n, width) if left else slice(0, n)
            embeds[b, sl], mask[b, sl], new_labels[b, sl] = r, 1, row_labels[b]
            positions[b, sl] = torch.arange(n, device=embeds.device)
        return None, positions, mask, past_key_values, embeds, (new_labels if labels is not None else None)

    @torch.inference_mode()
    def generate(self, input_ids=None, images=None, attention_mask=None, **generation_kwargs):
        """Only the new tokens (generation runs from the input embeddings)."""
        if images is not None:
            _, _, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                input_ids, None, attention_mask, None, None, images)
        else:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        generation_kwargs.setdefault("pad_token_id", self.get_llm().generation_config.pad_token_id)
        return self.get_llm().generate(inputs_embeds=inputs_embeds.to(self.dtype), attention_mask=attention_mask,
                                       **generation_kwargs)
