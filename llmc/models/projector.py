"""Find where a vision-language model writes image features into its language model, by structure.

Two questions, both answered from module types and shapes (names only break ties):

* **Which module is the projector?** (:func:`llmc.models.parts.locate_mm_parts`) The language model (LM) is the
  module holding the decoder blocks next to the input embedding; the vision tower is an encoder
  (a list of attention blocks) outside the LM. The projector is the outermost module, outside
  the LM and outside every encoder's block list, that contains a layer writing the LM hidden
  width. Modules beside the vision tower win over modules inside it; inside the vision tower only
  the tower's *output spine* (the last parameterised child at every level, e.g. Qwen2-VL's
  ``visual.merger``) is searched.

* **Which of its layers are injection layers?** (:func:`find_injection_layers`) The layers whose
  output becomes image tokens in the LM's residual stream: a Linear / Conv / raw weight
  Parameter that writes the hidden width and whose output no later layer of the projector reads.
  Rotation methods (QuaRot-style) must rotate their weight and bias. Registration order is taken
  as forward order, which holds for ``Sequential`` projectors and for the MLP projectors of the
  transformers VLM families.

Flags tell the user what needs a decision: a norm after the last writer (its weight and bias must
be rotated too), a raw Parameter instead of a Linear, several parallel writers, or image features
that reach the LM through cross-attention rather than the input sequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .structure import is_norm

# Tie-breakers only: the usual names of projector modules across VLM families.
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "merger", "projector",
                   "modality_projection", "vision_projection", "visual_projection", "resampler", "aligner")
VISION_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder", "vit")
CROSS_ATTN_MARKERS = ("cross_attn", "cross_attention", "crossattention", "encoder_attn")

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SHAPED_TYPES = (nn.Linear, nn.Embedding) + CONV_TYPES  # modules whose own params are not "raw"

FLAG_CROSS_ATTENTION = "projector output feeds cross-attention, not the input sequence"
FLAG_NORM_AFTER = ("a norm follows the last Linear: the injection is the norm's output; "
                   "rotate the norm's weight and bias too")


@dataclass
class InjectionReport:
    """Injection points of one projector; names are relative to the projector ("" = itself)."""

    layers: list[tuple[str, nn.Module]]  # chosen Linear/Conv injection layers
    candidates: list[tuple[str, nn.Module]]  # every Linear/Conv writing the hidden width
    flags: list[str] = field(default_factory=list)
    parameters: list[tuple[str, nn.Parameter]] = field(default_factory=list)  # chosen raw weight Parameters
    norms: list[tuple[str, nn.Module]] = field(default_factory=list)  # hidden-width norms after the injection
    param_candidates: list[tuple[str, nn.Parameter]] = field(default_factory=list)  # raw 2-D hidden-width Params

    @property
    def names(self) -> list[str]:
        """Every chosen injection point: layers first, then raw Parameters."""
        return [n for n, _ in self.layers] + [n for n, _ in self.parameters]


def linear_out(m: nn.Module) -> int | None:
    """Output width of a Linear or Conv layer (None for anything else)."""
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, CONV_TYPES):
        return m.out_channels
    return None


def linear_in(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return m.in_features
    if isinstance(m, CONV_TYPES):
        return m.in_channels
    return None


def norm_width(m: nn.Module) -> int | None:
    """Feature width of a norm module (LayerNorm, RMSNorm, GroupNorm...), from its weight."""
    if not is_norm(m):
        return None
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1]) if m.normalized_shape else None
    w = getattr(m, "weight", None)
    return int(w.shape[-1]) if isinstance(w, torch.Tensor) and w.dim() >= 1 else None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else (prefix or name)


def raw_params(m: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    """Direct parameters of a module that is not a Linear/Conv/Embedding/norm."""
    if isinstance(m, SHAPED_TYPES) or is_norm(m):
        return ()
    return m.named_parameters(recurse=False)


def find_injection_layers(projector: nn.Module, hidden_size: int, prefix: str = "") -> InjectionReport:
    """The projector's injection points: hidden-width writers whose output no later layer reads.

    Writers are Linear/Conv layers with output width ``hidden_size`` and raw 2-D Parameters with a
    ``hidden_size`` dimension. A writer is *consumed* when a later Linear/Conv/raw Parameter reads
    the hidden width (LLaVA's ``linear_1 -> linear_2`` when the vision width is projected to the
    hidden width first); the unconsumed writers are the injection points. Hidden-width norms
    registered after the last injection point are reported in ``norms``: they transform the
    injected features, so a rotation must go through them.

    ``prefix`` (the projector's path in the model) qualifies the names quoted in the flags; the
    returned names stay relative to ``projector``.
    """
    def q(name: str) -> str:
        return _join(prefix, name) or "<projector>"

    order = [(i, n, m) for i, (n, m) in enumerate(projector.named_modules())]
    writers: list[tuple[int, str, object, str]] = []  # (position, name, layer or param, kind)
    readers: list[int] = []  # positions of layers reading the hidden width
    norms: list[tuple[int, str, nn.Module]] = []
    for i, n, m in order:
        if linear_out(m) is not None:
            if linear_out(m) == hidden_size:
                writers.append((i, n, m, "layer"))
            if linear_in(m) == hidden_size:
                readers.append(i)
        elif norm_width(m) == hidden_size:
            norms.append((i, n, m))
        for pn, p in raw_params(m):
            if p.dim() == 2 and hidden_size in p.shape:
                writers.append((i, _join(n, pn), p, "param"))
                readers.append(i)

    candidates = [(n, w) for _, n, w, kind in writers if kind == "layer"]
    param_cands = [(n, w) for _, n, w, kind in writers if kind == "param"]
    # a writer is consumed if a reader comes after it (a raw (h, h) Parameter reads what came before)
    chosen = [(i, n, w, kind) for i, n, w, kind in writers if not any(r > i for r in readers)]
    flags: list[str] = []
    if not chosen:
        flags.append(f"no projector layer writes the language model width {hidden_size}")
        return InjectionReport([], candidates, flags, param_candidates=param_cands)

    layers = [(n, w) for _, n, w, kind in chosen if kind == "layer"]
    params = [(n, w) for _, n, w, kind in chosen if kind == "param"]
    last_pos = max(i for i, *_ in chosen)
    after = [(n, m) for i, n, m in norms if i > last_pos]
    for n, w in params:
        flags.append(f"projector writes the hidden width through a raw weight Parameter ({q(n)}, "
                     f"shape {'x'.join(map(str, w.shape))}), not a Linear: rotate it along its "
                     f"{hidden_size}-wide dimension")
    if len(chosen) > 1:
        flags.append(f"{len(chosen)} parallel layers write the language model width {hidden_size} "
                     f"({', '.join(q(n) for _, n, _, _ in chosen)}): each is an injection "
                     "point; rotate every one of them")
    if after:
        flags.append(f"{FLAG_NORM_AFTER} ({', '.join(q(n) for n, _ in after)})")
    return InjectionReport(layers, candidates, flags, params, after, param_cands)


# ---------------------------------------------------------------------------------------------
# Locating the language model, the vision tower and the projector in a whole VLM
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def check_writes_hidden(layer: nn.Module, hidden_size: int, name: str) -> None:
    w = getattr(layer, "weight", layer)
    out = w.shape[0]
    if out != hidden_size:
        raise ValueError(f"{name} writes width {out}, not the language model hidden size {hidden_size}: "
                         "it cannot be a residual-stream injection layer")
