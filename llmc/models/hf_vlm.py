"""Shared pieces of adapters for transformers-native VLMs (AutoProcessor + generate)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import BaseModel, Sample, dtype_kwargs
from .projector import find_injection_layers


#: what a processor may need besides transformers: the module an ImportError names, or the
#: library transformers says it "requires"
_PROCESSOR_PACKAGES = {"torchvision": "torchvision", "num2words": "num2words", "PIL": "pillow",
                       "sentencepiece": "sentencepiece", "google.protobuf": "protobuf", "protobuf": "protobuf"}


def _missing_packages(e: BaseException) -> list[str]:
    import re

    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        return [_PROCESSOR_PACKAGES.get(e.name, _PROCESSOR_PACKAGES.get(top, top))]
    text = str(e)
    said = re.findall(r"(?:requires the|Package) `?([A-Za-z0-9_.]+)`? (?:library|is required)", text)
    return [_PROCESSOR_PACKAGES.get(m, m.lower()) for m in dict.fromkeys(said)]


def load_processor(path):
    """``AutoProcessor.from_pretrained(path)``; a missing optional package is named in one line."""
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(str(path), trust_remote_code=False)
    except (ImportError, ValueError, OSError) as e:
        missing = _missing_packages(e)
        if missing:
            raise ValueError(f"the processor in {path} cannot load: it needs {', '.join(missing)} "
                             f"(pip install {' '.join(missing)})") from None
        raise ValueError(f"the processor in {path} cannot load: {' '.join(str(e).split())[:300]}") from None


#: ``prompt_format`` values besides a template: the processor's chat template, or its own format
#: (the question alone; the processor adds the image tokens itself, as PaliGemma's does)
PROMPT_CHAT, PROMPT_PLAIN = "chat", "plain"


class HFVisionLanguageModel(BaseModel):
    """transformers VLM: processor, ``generate``, ``save_pretrained``; where its parts live is data.

    A generated declaration sets the dotted paths inspect found (``language_model_path``,
    ``vision_tower_path``, ``projector_path``: empty means found by structure here, as inspect
    does) and ``prompt_format``: ``"chat"`` (the processor's chat template), ``"plain"`` (the
    question as is; the processor's own format adds the image tokens) or a template holding
    ``{question}``.
    """

    __abstract_ok__ = True
    model_cls_name = "AutoModelForImageTextToText"
    language_model_path = ""
    vision_tower_path = ""
    projector_path = ""
    prompt_format = PROMPT_CHAT

    def build_model(self) -> None:
        import transformers

        cls = getattr(transformers, self.model_cls_name, None)
        if cls is None:
            raise ValueError(f"transformers {transformers.__version__} has no class {self.model_cls_name!r}; "
                             "upgrade transformers or fix model_cls_name")
        self.processor = load_processor(self.model_path)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"
        # the chat template: the processor's, else the tokenizer's (some folders keep it there only)
        self._templater = next((t for t in (self.processor, self.tokenizer) if getattr(t, "chat_template", None)), None)
        if self.prompt_format == PROMPT_CHAT and self._templater is None:
            raise ValueError(f"{type(self).__name__}: neither the processor nor the tokenizer in {self.model_path} has "
                             "a chat template; set prompt_format = 'plain' (the processor's own format) or a "
                             "template with {question}")
        dtype = self.torch_dtype if self.torch_dtype != "auto" else "auto"
        self.mm_model = cls.from_pretrained(str(self.model_path), trust_remote_code=False,
                                            **dtype_kwargs(dtype)).to(self.device).eval()
        self.vlm_model = self.mm_model
        self._locate_parts()

    def _locate_parts(self) -> None:
        """The language model, vision tower and projector: at the declared paths, else by structure."""
        from .parts import locate_mm_parts

        found = None
        if not (self.language_model_path and self.vision_tower_path and self.projector_path):
            try:
                found = locate_mm_parts(self.mm_model)
            except ValueError as e:
                if not self.language_model_path:
                    raise ValueError(f"{type(self).__name__}: no language model found (searched every module for "
                                     f"decoder blocks after a token embedding: {e}); set language_model_path") from None

        def part(path: str, kind: str, fallback: str | None) -> nn.Module | None:
            path = path or fallback or ""
            if not path:
                return None
            try:
                return self.mm_model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"{type(self).__name__}: {kind} {path!r} is not in {type(self.mm_model).__name__}; "
                                 "re-run the wizard's Inspect step or fix the declaration") from None

        lm_path = self.language_model_path or (found.language_model_path if found else "")
        self.model = part(lm_path, "language_model_path", None) if lm_path else self.mm_model
        self.vision_model = part(self.vision_tower_path, "vision_tower_path", found and found.vision_tower_path)
        self.mm_projector = part(self.projector_path, "projector_path", found and found.projector_path)
        cfg = self.mm_model.config
        self.model_config = getattr(cfg, "text_config", None) or getattr(self.model, "config", None) or cfg

    def hidden_size(self) -> int:
        return int(self.model_config.hidden_size)

    def get_extra_rot_module_besides_embed_layers(self) -> list[nn.Module]:
        if self.projector_last_layers:
            return self.declared_injection_layers()
        if self.mm_projector is None:
            return []
        return [m for _, m in find_injection_layers(self.mm_projector, self.hidden_size()).layers]

    def prompt(self, question: str, answer: str | None = None, with_image: bool = True) -> str:
        fmt = self.prompt_format
        if fmt == PROMPT_PLAIN:  # the processor adds the image tokens (and its own prefix)
            return question + (f" {answer}" if answer is not None else "")
        if fmt != PROMPT_CHAT:  # a template of the user's: it holds the image placeholder, so text-only
            text = fmt.replace("{question}", question) if with_image else question  # samples go plain
            return text + (f" {answer}" if answer is not None else "")
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        msgs = [{"role": "user", "content": content}]
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
            return self._templater.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
        return self._templater.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def _inputs(self, texts, images) -> dict:
        """Processor inputs for a batch; images nested per sample (``[[img], [img], …]``), the form
        every multi-image processor reads as one image per sample."""
        kwargs = {"text": texts, "return_tensors": "pt", "padding": True}
        if any(i is not None for i in images):
            kwargs["images"] = [[i.convert("RGB")] if i is not None else [] for i in images]
        out = self.processor(**kwargs)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

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
