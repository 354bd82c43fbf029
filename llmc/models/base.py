"""``BaseModel``: what the engine needs to know about a model, declared in one place.

An adapter subclasses :class:`BaseModel` and implements the abstract hooks; everything else
(blocks, embeddings, head, norms, per-block subsets) is discovered from the module structure
and checked. A subclass that misses an abstract hook fails when the class is *defined*, with
the hook's name, never deep inside an algorithm.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .structure import Subset, derive_subsets, find_decoder

# Every hook the engine may call. Abstract ones must be implemented by each adapter.
ABSTRACT_HOOKS = (
    "build_model",
    "batch_process",
    "answer",
    "get_extra_rot_module_besides_embed_layers",
    "save_pretrained",
)
DEFAULT_HOOKS = (
    "skip_layer_name",
    "get_blocks",
    "get_embed_layers",
    "get_head_layers",
    "get_pre_head_layernorm_layers",
    "get_layers_except_blocks",
    "get_subsets_in_block",
    "get_vision_tower",
    "get_projector",
    "language_model",
    "forward_calib",
    "answer_logits",
)


@dataclass
class Sample:
    """One calibration/evaluation sample: an optional image, a question, an optional answer."""

    question: str
    image: object | None = None  # PIL image
    answer: str | None = None
    text: str | None = None  # plain text sample (text calibration)
    meta: dict = field(default_factory=dict)


class BaseModel(abc.ABC):
    """Base class of every model adapter.

    After ``build_model()`` an adapter has set:

    - ``self.mm_model`` / ``self.vlm_model``: the whole model object (VLM or LM);
    - ``self.model``: the language model (a module holding the decoder blocks);
    - ``self.model_config``: the language model's config (attribute access);
    - ``self.vision_model`` / ``self.mm_projector``: vision tower and projector (None for LLMs);
    - ``self.tokenizer`` (and ``self.processor`` where the model has one).
    """

    #: registry name, set by ``@register``
    name: str = ""
    #: modality: "vlm" or "llm"
    modality: str = "vlm"
    #: set ``__abstract_ok__ = True`` in the body of an intermediate base class that is
    #: meant to stay abstract (it is not inherited)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # ABCMeta computes __abstractmethods__ only after this hook runs: look the hooks up here
        missing = sorted(h for h in ABSTRACT_HOOKS if getattr(getattr(cls, h, None), "__isabstractmethod__", False))
        if missing and not cls.__dict__.get("__abstract_ok__", False):
            raise TypeError(
                f"model adapter {cls.__name__} does not implement hook(s): {', '.join(missing)} "
                f"(declared abstract on BaseModel)"
            )

    def __init__(self, path: str | Path, torch_dtype: str | torch.dtype = "auto", device: str = "cpu",
                 config: dict | None = None):
        self.model_path = Path(path).expanduser()
        self.device = torch.device(device)
        self.torch_dtype = _resolve_dtype(torch_dtype)
        self.config = config or {}
        self.mm_model = self.vlm_model = self.model = self.model_config = None
        self.vision_model = self.mm_projector = None
        self.tokenizer = self.processor = None
        self.build_model()
        if self.vlm_model is None:
            self.vlm_model = self.mm_model
        self._decoder = find_decoder(self.language_model())
        self.mm_model.eval()

    # --- abstract hooks --------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self) -> None:
        """Load the model the way its own inference code does; set the attributes above."""

    @abc.abstractmethod
    def batch_process(self, samples: Sequence[Sample], add_answer: bool = False) -> dict:
        """Model inputs (tensors on ``self.device``) for a forward pass over ``samples``."""

    @abc.abstractmethod
    def answer(self, requests) -> list[str]:
        """Generated answers for a batch of ``llmc.eval.vqa.VQARequest`` (greedy)."""

    @abc.abstractmethod
    def get_extra_rot_module_besides_embed_layers(self) -> list[nn.Module]:
        """Layers besides the token embedding whose output enters the LM's residual stream
        (for VLMs, the projector's last layer)."""

    @abc.abstractmethod
    def save_pretrained(self, path: Path) -> None:
        """Save weights + tokenizer/processor so the model's own loader reloads them."""

    # --- hooks with defaults (structure discovery) ----------------------------------------------
    def skip_layer_name(self) -> list[str]:
        return ["lm_head"]

    def language_model(self) -> nn.Module:
        """The module that holds the decoder blocks (default: ``self.model``)."""
        return self.model

    def get_blocks(self) -> nn.ModuleList:
        return self._decoder.blocks

    def get_embed_layers(self) -> list[nn.Module]:
        return [self._decoder.embed]

    def get_head_layers(self) -> list[nn.Module]:
        head = self.mm_model.get_output_embeddings() if hasattr(self.mm_model, "get_output_embeddings") else None
        return [head] if head is not None else []

    def get_pre_head_layernorm_layers(self) -> list[nn.Module]:
        return [self._decoder.norm] if self._decoder.norm is not None else []

    def get_layers_except_blocks(self) -> list[nn.Module]:
        return [*self.get_embed_layers(), *self.get_pre_head_layernorm_layers(), *self.get_head_layers()]

    def get_subsets_in_block(self, block: nn.Module) -> list[Subset]:
        return derive_subsets(block)

    def get_vision_tower(self) -> nn.Module | None:
        return self.vision_model

    def get_projector(self) -> nn.Module | None:
        return self.mm_projector

    def forward_calib(self, inputs: dict) -> None:
        """One forward pass of the whole model on calibration inputs (no generation)."""
        self.mm_model(**inputs)

    def answer_logits(self, requests) -> torch.Tensor:
        """Next-token logits at the answer position, ``(len(requests), vocab)``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose answer logits")

    # --- helpers ---------------------------------------------------------------------------
    def block_name(self, i: int) -> str:
        return f"{self._decoder.blocks_path}.{i}"

    def named_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}

    def to(self, device) -> BaseModel:
        self.device = torch.device(device)
        self.mm_model.to(self.device)
        return self



def _resolve_dtype(d) -> torch.dtype | str:
    if isinstance(d, torch.dtype):
        return d
    if d in (None, "auto"):
        return "auto"
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if d not in table:
        raise ValueError(f"model.torch_dtype: unknown dtype {d!r}; use auto, float32, float16 or bfloat16")
    return table[d]
