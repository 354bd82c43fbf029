"""Research code of the LLaVA lineage (haotian-liu/LLaVA 1.5/1.6, NVlabs/VILA 1.5), run by its own API.

The model's code package (``CODE_PACKAGE``: ``llava`` for both) must be importable. What the
engine uses from it is what the lineage shares:

* ``<pkg>.model.builder.load_pretrained_model`` — called by its parameter names, since the
  signature differs (LLaVA: ``(model_path, model_base, model_name, ...)``; VILA 1.5:
  ``(model_path, model_name, model_base=None, ...)``);
* ``<pkg>.conversation.conv_templates[conv_mode]`` — the prompt;
* ``<pkg>.mm_utils.tokenizer_image_token`` and ``process_images`` — the inputs;
* ``<pkg>.constants.IMAGE_TOKEN_INDEX`` / ``DEFAULT_IMAGE_TOKEN``.

Every forward the engine makes (calibration, answers, logits) splices the images with the code's
own ``prepare_inputs_labels_for_multimodal`` and runs the language model on the result (VILA 1.5's
``forward`` computes a training loss weight that needs labels and a process group); answers come
from a short greedy decode (one sample at a time: the lineage re-pads batches), so nothing depends
on the code's ``generate`` surviving newer transformers. The engine places the model: a loader
that asks transformers for another device (VILA 1.5 asks for CUDA whenever its tower is SigLIP)
is given the engine's. Where a model's conventions differ, a declaration overrides one of
the four named hooks — :meth:`load`, :meth:`build_inputs`, :meth:`answer`, :meth:`save_pretrained`
— each documented with what it gets and returns; the smoke test names the hook that failed.
"""

from __future__ import annotations

import importlib
import inspect as pyinspect
import types
from collections.abc import Sequence

import torch
from torch import nn

from .base import BaseModel, Sample, left_pad

#: the hooks a declaration may override (the smoke test names the one that failed)
HOOKS = ("load", "build_inputs", "answer", "save_pretrained")

#: what the lineage's code package exports (``module: names``): a package that has all of them
#: follows these conventions
CONVENTIONS = {
    "model.builder": ("load_pretrained_model",),
    "conversation": ("conv_templates",),
    "mm_utils": ("tokenizer_image_token", "process_images"),
    "constants": ("IMAGE_TOKEN_INDEX", "DEFAULT_IMAGE_TOKEN"),
}


def engine_placement(device):
    """While a research loader runs, every transformers ``from_pretrained`` it makes with a
    ``device_map`` gets the engine's device instead (one device; the engine moves and offloads)."""
    from .skeleton import replaced_from_pretrained

    def placed(original):
        def from_pretrained(cls, *args, **kwargs):
            if kwargs.get("device_map") is not None:
                kwargs["device_map"] = {"": str(device)}
            return original(cls, *args, **kwargs)
        return from_pretrained

    return replaced_from_pretrained(placed)


def default_conv_mode(package: str) -> str | None:
    """The conversation mode the code itself picks: its ``default_conversation`` when that is one of
    its ``conv_templates`` and builds a prompt (VILA 1.5's is an "auto" style that does not), under
    its most specific name (``vicuna_v1`` over its alias ``v1``, never ``default``); else ``vicuna_v1``
    (LLaVA 1.5's and VILA 1.5's); else its first template."""
    conv = importlib.import_module(f"{package}.conversation")
    templates, default = conv.conv_templates, getattr(conv, "default_conversation", None)
    names = sorted((n for n, t in templates.items() if t is default and default is not None),
                   key=lambda n: (n == "default", -len(n)))
    if names:
        try:
            probe = default.copy()
            probe.append_message(probe.roles[0], "?")
            probe.append_message(probe.roles[1], None)
            probe.get_prompt()
            return names[0]
        except Exception:  # noqa: BLE001, S110 - a style that builds no prompt by itself: not a choice
            pass
    return "vicuna_v1" if "vicuna_v1" in templates else next(iter(templates), None)


def follows_conventions(package: str) -> list[str]:
    """What ``package`` lacks of the lineage's conventions (``module.name``); empty: it follows them."""
    missing = []
    for sub, names in CONVENTIONS.items():
        try:
            mod = importlib.import_module(f"{package}.{sub}")
        except ImportError:
            missing += [f"{sub}.{n}" for n in names]
            continue
        missing += [f"{sub}.{n}" for n in names if not hasattr(mod, n)]
    return missing


class LlavaLineage(BaseModel):
    """A LLaVA-lineage model through its own code; see the module docstring."""

    __abstract_ok__ = True
    CODE_PACKAGE = "llava"
    #: key of ``<pkg>.conversation.conv_templates``; None: the code's own choice (:func:`default_conv_mode`)
    conv_mode = None
    #: the name the loader sees: it picks its multimodal branch by the name (``llava``/``vila`` in
    #: it); empty: the model folder's name, prefixed with ``llava-`` when it has neither
    loader_model_name = ""
    #: a Python file of hand-written hooks (relative to the declaration's folder): functions named
    #: like the hooks below, taking ``self``, replace them; a missing file changes nothing
    hooks_file = ""

    def __init__(self, *args, **kwargs):
        self._bind_hooks()
        super().__init__(*args, **kwargs)

    def _bind_hooks(self) -> None:
        import sys
        from pathlib import Path

        from .registry import import_adapter_file

        if not self.hooks_file:
            return
        decl = sys.modules.get(type(self).__module__)
        base = Path(decl.__file__).parent if decl is not None and getattr(decl, "__file__", None) else Path.cwd()
        path = base / self.hooks_file
        if not path.is_file():
            return
        mod = import_adapter_file(path)
        for name in HOOKS:
            fn = getattr(mod, name, None)
            if callable(fn):
                setattr(self, name, types.MethodType(fn, self))

    # --- the named hooks -------------------------------------------------------------------
    def load(self):
        """Load the model with the code's own loader. Gets nothing (``self.model_path``,
        ``self.device``); returns ``(tokenizer, model, image_processor)`` with the model on
        ``self.device``."""
        builder = self._code("model.builder")
        loader = builder.load_pretrained_model
        name = self.loader_model_name or self.model_path.name
        if not self.loader_model_name and not any(k in name.lower() for k in ("llava", "vila")):
            name = f"llava-{name}"
        want = {"model_path": str(self.model_path), "model_base": None, "model_name": name,
                "device": str(self.device)}
        params = pyinspect.signature(loader).parameters
        missing = [p.name for p in params.values() if p.default is p.empty and p.name not in want
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            raise TypeError(f"{self.CODE_PACKAGE}.model.builder.load_pretrained_model needs {', '.join(missing)}, "
                            "which the lineage's loader does not: override the load hook")
        with engine_placement(self.device):
            out = loader(**{k: v for k, v in want.items() if k in params})
        tokenizer, model, image_processor = out[0], out[1], out[2]
        return tokenizer, model.to(self.device), image_processor

    def image_token_ids(self) -> set[int]:
        """The code's own ``IMAGE_TOKEN_INDEX`` (a negative id its forward replaces by image rows)."""
        return super().image_token_ids() | {int(self._code("constants").IMAGE_TOKEN_INDEX)}

    def build_inputs(self, samples: Sequence[Sample], add_answer: bool = False) -> dict:
        """The model's ``forward`` keyword inputs for a batch of :class:`~llmc.models.base.Sample`
        (question, PIL image or ``None``, answer): each prompt from the conversation template
        (:meth:`prompt`), token ids through ``mm_utils.tokenizer_image_token`` left-padded with an
        attention mask, pixels through ``mm_utils.process_images`` in the model's dtype."""
        mm = self._code("mm_utils")
        index = self._code("constants").IMAGE_TOKEN_INDEX
        prompts = [self.prompt(s.question, s.answer if add_answer else None, s.image is not None) for s in samples]
        rows = [mm.tokenizer_image_token(p, self.tokenizer, index, return_tensors="pt") for p in prompts]
        ids, mask = left_pad(rows, self.tokenizer.pad_token_id, self.device)
        inputs = {"input_ids": ids, "attention_mask": mask}
        real = [s.image.convert("RGB") for s in samples if s.image is not None]
        if real:
            px = mm.process_images(real, self.image_processor, self.mm_model.config)
            inputs["images"] = px.to(self.device, dtype=self._dtype())
        return inputs

    @torch.no_grad()
    def answer(self, requests) -> list[str]:
        """Greedy answers (strings, without the prompt) for ``llmc.eval.vqa.VQARequest``s: each
        sample's question and image through :meth:`build_inputs`, then up to ``max_new_tokens``
        steps of ``forward`` (no KV cache, no ``generate``), stopping at the end-of-sequence token."""
        eos = self.tokenizer.eos_token_id
        out = []
        for r in requests:
            inputs = self.build_inputs([Sample(r.context, r.images[0] if r.images else None)])
            new: list[int] = []
            for _ in range(int(r.max_new_tokens)):
                nxt = int(self.lm_forward(inputs).logits[0, -1].argmax())
                if nxt == eos:
                    break
                new.append(nxt)
                step = torch.tensor([[nxt]], device=self.device)
                inputs["input_ids"] = torch.cat([inputs["input_ids"], step], 1)
                inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(step)], 1)
            out.append(self.tokenizer.decode(new, skip_special_tokens=True).strip())
        return out

    def save_pretrained(self, path) -> None:
        """Write the model and its tokenizer to ``path`` (a folder) so the code's loader reloads it."""
        cfg = self.mm_model.config
        if not isinstance(getattr(cfg, "image_processor", None), (str, dict, type(None))):
            del cfg.image_processor  # VILA's process_images leaves its processor object there
        self.mm_model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    # --- the rest follows from them ----------------------------------------------------------
    def build_model(self) -> None:
        from .parts import locate_mm_parts

        self.tokenizer, model, self.image_processor = self.load()
        if self.torch_dtype != "auto" or self.device.type == "cpu":  # the loaders default to float16
            model = model.to(torch.float32 if self.torch_dtype == "auto" else self.torch_dtype)
        self.mm_model = self.vlm_model = model.eval()
        parts = locate_mm_parts(model)
        self.model = model.get_submodule(parts.language_model_path) if parts.language_model_path else model
        self.vision_model = model.get_submodule(parts.vision_tower_path) if parts.vision_tower_path else None
        self.mm_projector = model.get_submodule(parts.projector_path) if parts.projector_path else None
        lm_config = getattr(self.model, "config", None)  # the language model's own (its widths and depth)
        self.model_config = lm_config if getattr(lm_config, "hidden_size", None) == parts.hidden_size else \
            types.SimpleNamespace(hidden_size=parts.hidden_size)

    def _code(self, sub: str):
        try:
            return importlib.import_module(f"{self.CODE_PACKAGE}.{sub}")
        except ImportError as e:
            raise ImportError(f"cannot import {self.CODE_PACKAGE}.{sub} ({e}); install the model's code "
                              "(the wizard's Install step)") from e

    def _dtype(self) -> torch.dtype:
        return next(self.mm_model.parameters()).dtype

    def prompt(self, question: str, answer: str | None = None, with_image: bool = True) -> str:
        """The conversation template's prompt for one question (the image token first)."""
        consts = self._code("constants")
        mode = self.conv_mode or default_conv_mode(self.CODE_PACKAGE)
        conv = self._code("conversation").conv_templates[mode].copy()
        image = consts.DEFAULT_IMAGE_TOKEN
        if getattr(self.mm_model.config, "mm_use_im_start_end", False):
            image = consts.DEFAULT_IM_START_TOKEN + image + consts.DEFAULT_IM_END_TOKEN
        conv.append_message(conv.roles[0], (image + "\n" if with_image else "") + question)
        conv.append_message(conv.roles[1], answer)
        return conv.get_prompt()

    def batch_process(self, samples: Sequence[Sample], add_answer: bool = False) -> dict:
        return self.build_inputs(samples, add_answer)

    def lm_forward(self, inputs: dict):
        """The language model's output for :meth:`build_inputs`' ``inputs``: the images spliced in by
        the code's ``prepare_inputs_labels_for_multimodal``, then the language model (``get_llm()``
        where the code has it, else the model itself) on the input embeddings."""
        ids, mask, images = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("images")
        lm = self.mm_model.get_llm() if hasattr(self.mm_model, "get_llm") else self.mm_model
        prepare = getattr(self.mm_model, "prepare_inputs_labels_for_multimodal", None)
        if images is None or prepare is None:
            return lm(input_ids=ids, attention_mask=mask) if images is None else self.mm_model(**inputs)
        out = prepare(ids, None, mask, None, None, images)
        _, positions, mask, _, embeds = out[:5]
        return lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)

    def forward_calib(self, inputs: dict) -> None:
        self.lm_forward(inputs)

    @torch.no_grad()
    def answer_logits(self, requests) -> torch.Tensor:
        rows = [self.lm_forward(self.build_inputs([Sample(r.context, r.images[0])])).logits[0, -1] for r in requests]
        return torch.stack(rows).float()

    def get_extra_rot_module_besides_embed_layers(self) -> list[nn.Module]:
        if self.projector_last_layers:
            return self.declared_injection_layers()
        from .projector import find_injection_layers

        if self.mm_projector is None:
            return []
        return [m for _, m in find_injection_layers(self.mm_projector, int(self.model_config.hidden_size)).layers]
