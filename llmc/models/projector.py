"""Find where a vision-language model writes image features into its language model, by structure.

Two questions, both answered from module types and shapes (names only break ties):

* **Which module is the projector?** (:func:`locate_mm_parts`) The language model (LM) is the
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


def _linear_count(m: nn.Module) -> int:
    return sum(isinstance(x, nn.Linear) for x in m.modules())


def is_block_list(m: nn.Module) -> bool:
    """A ModuleList of transformer blocks (each with attention and at least four Linears)."""
    return (isinstance(m, nn.ModuleList) and len(m) > 0
            and all(_linear_count(b) >= 4 and any("attn" in n or "attention" in n for n, _ in b.named_modules())
                    for b in m))


def _inside(path: str, root: str | None) -> bool:
    """``path`` is ``root`` or below it."""
    if root is None:
        return False
    return root == "" or path == root or path.startswith(root + ".")


def _ancestors(path: str) -> list[str]:
    """Proper ancestors of a dotted path, deepest first, ending with the root ""."""
    parts = path.split(".") if path else []
    return [".".join(parts[:k]) for k in range(len(parts) - 1, -1, -1)]


@dataclass
class MMParts:
    """Where the parts of a (vision-)language model are, as dotted paths from the model root."""

    language_model_path: str
    hidden_size: int
    vision_tower_path: str | None
    projector_path: str | None
    projector: nn.Module | None
    projector_candidates: list[str] = field(default_factory=list)  # every projector-like module found
    hidden_vectors: list[str] = field(default_factory=list)  # hidden-width 1-D params outside LM/tower/projector
    cross_attention_blocks: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


def find_input_embedding(model: nn.Module) -> tuple[str, nn.Embedding]:
    """The token embedding: ``get_input_embeddings()`` when it is an Embedding, else the largest one."""
    names = {id(m): n for n, m in model.named_modules()}
    emb = None
    if hasattr(model, "get_input_embeddings"):
        try:
            emb = model.get_input_embeddings()
        except (NotImplementedError, AttributeError):
            emb = None
    if isinstance(emb, nn.Embedding) and id(emb) in names:
        return names[id(emb)], emb
    embs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not embs:
        raise ValueError(f"{type(model).__name__}: no token embedding (nn.Embedding) found")
    return max(embs, key=lambda e: e[1].num_embeddings)


def find_language_model(model: nn.Module) -> tuple[str, nn.Module, int]:
    """``(path, module, hidden size)`` of the module holding the decoder blocks.

    Walks up from the token embedding to the first ancestor that contains a list of attention
    blocks: the text decoder, never the vision encoder (which has no token embedding).
    """
    emb_path, emb = find_input_embedding(model)
    for anc in _ancestors(emb_path):
        mod = model.get_submodule(anc) if anc else model
        if any(is_block_list(m) for m in mod.modules()):
            return anc, mod, int(emb.embedding_dim)
    raise ValueError(f"{type(model).__name__}: no decoder blocks next to the token embedding {emb_path}")


def find_vision_tower(model: nn.Module, lm_path: str) -> str | None:
    """Outermost encoder outside the language model (a module holding a block list, not the LM).

    Several encoders (e.g. vision + audio): the one with a Conv patch embedding, then by name.
    """
    hits = []
    for n, m in model.named_modules():
        if not n or _inside(n, lm_path) or _inside(lm_path, n):
            continue
        if any(_inside(n, h) for h in hits):
            continue
        if any(is_block_list(x) for x in m.modules()):
            hits.append(n)
    if not hits:
        return None
    if len(hits) > 1:
        def score(p: str) -> tuple[int, int]:
            mod = model.get_submodule(p)
            has_conv = any(isinstance(x, (nn.Conv2d, nn.Conv3d)) for x in mod.modules())
            return (int(has_conv), int(p.rsplit(".", 1)[-1] in VISION_NAMES))
        hits.sort(key=score, reverse=True)
    return hits[0]


def _has_writer(m: nn.Module, hidden: int) -> bool:
    for x in m.modules():
        if linear_out(x) == hidden:
            return True
        if any(p.dim() == 2 and hidden in p.shape for _, p in raw_params(x)):
            return True
    return False


def _output_spine(model: nn.Module, root: str) -> list[str]:
    """The tower's output path: from ``root``, the last child with parameters, recursively."""
    spine, mod, path = [], model.get_submodule(root), root
    while True:
        kids = [(n, c) for n, c in mod.named_children() if any(True for _ in c.parameters())]
        if not kids or isinstance(mod, nn.ModuleList):
            return spine
        n, mod = kids[-1]
        path = _join(path, n)
        spine.append(path)


def cross_attention_blocks(lm: nn.Module, lm_path: str = "") -> list[str]:
    """Blocks of the language model that attend to image features through cross-attention."""
    out = []
    for n, m in lm.named_modules():
        if not is_block_list(m):
            continue
        for i, block in enumerate(m):
            if any(any(k in sub.lower() for k in CROSS_ATTN_MARKERS) or "crossattention" in type(x).__name__.lower()
                   for sub, x in block.named_modules()):
                out.append(_join(lm_path, _join(n, str(i))))
    return out


def _output_embeddings(model: nn.Module) -> set[int]:
    """ids of every LM head (``get_output_embeddings()`` of the model or any submodule)."""
    heads = set()
    for m in model.modules():
        fn = getattr(m, "get_output_embeddings", None)
        if callable(fn):
            try:
                head = fn()
            except (NotImplementedError, AttributeError, TypeError):
                continue
            if isinstance(head, nn.Module):
                heads.add(id(head))
    return heads


def locate_mm_parts(model: nn.Module) -> MMParts:
    """Find the language model, vision tower and projector of ``model`` by structure."""
    lm_path, lm, hidden = find_language_model(model)
    vision = find_vision_tower(model, lm_path)
    heads = _output_embeddings(model)
    blocks = [n for n, m in model.named_modules() if is_block_list(m)]

    def qualifies(n: str, m: nn.Module) -> bool:
        if not n or _inside(n, lm_path) or _inside(lm_path, n) or id(m) in heads:
            return False
        if any(_inside(n, b) for b in blocks) or any(_inside(b, n) for b in blocks):
            return False  # inside an encoder's blocks, or an encoder itself
        return _has_writer(m, hidden)

    outside, inside = [], []
    spine = set(_output_spine(model, vision)) if vision else set()
    for n, m in model.named_modules():
        if not qualifies(n, m):
            continue
        if _inside(n, vision):
            if n in spine and not any(_inside(n, h) for h in inside):
                inside.append(n)
        elif not any(_inside(n, h) for h in outside):
            outside.append(n)
    cands = outside or inside
    flags: list[str] = []
    proj_path = None
    if cands:
        by_name = [c for c in cands if c.rsplit(".", 1)[-1] in PROJECTOR_NAMES]
        proj_path = (by_name or cands)[-1]
        if len(cands) > 1:
            flags.append(f"{len(cands)} modules outside the language model write its width {hidden} "
                         f"({', '.join(cands)}); picked {proj_path}"
                         + (" by name" if by_name else " (the last registered)"))
    projector = model.get_submodule(proj_path) if proj_path else None

    # learned hidden-width vectors spliced among the image tokens (LLaVA-NeXT/OneVision image_newline)
    vectors = []
    for n, m in model.named_modules():
        if _inside(n, lm_path) or _inside(n, vision) or (proj_path and _inside(n, proj_path)):
            continue
        for pn, p in raw_params(m):
            if p.dim() == 1 and p.shape[0] == hidden:
                vectors.append(_join(n, pn))
    for v in vectors:
        flags.append(f"{v}: a learned {hidden}-wide vector placed among the image tokens; rotate it like the "
                     "projector output")

    xattn = cross_attention_blocks(lm, lm_path)
    if xattn and projector is not None:
        flags.append(f"{FLAG_CROSS_ATTENTION} (cross-attention blocks: {', '.join(xattn)}): the image features are "
                     "keys/values of those blocks, so rotating the projector output also needs their k/v "
                     "projections' inputs rotated")
    return MMParts(lm_path, hidden, vision, proj_path, projector, cands, vectors, xattn, flags)


@torch.no_grad()
def check_writes_hidden(layer: nn.Module, hidden_size: int, name: str) -> None:
    w = getattr(layer, "weight", layer)
    out = w.shape[0]
    if out != hidden_size:
        raise ValueError(f"{name} writes width {out}, not the language model hidden size {hidden_size}: "
                         "it cannot be a residual-stream injection layer")
