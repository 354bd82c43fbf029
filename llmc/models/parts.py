"""Where a (vision-)language model keeps its parts, found by structure: the language model (the
module holding the decoder blocks next to the token embedding), the vision tower, the projector
(the module outside the text model writing its hidden width), learned stream vectors and
cross-attention blocks. Parts kept inside the language model's module (the original LLaVA) count
as outside the text model (:func:`attached_parts`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .projector import (
    CROSS_ATTN_MARKERS,
    FLAG_CROSS_ATTENTION,
    PROJECTOR_NAMES,
    VISION_NAMES,
    _join,
    linear_out,
    raw_params,
)
from .structure import is_block_list, is_norm


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


def attached_parts(model: nn.Module, lm_path: str) -> list[str]:
    """Multimodal parts kept *inside* the language model's module (the original LLaVA keeps
    ``vision_tower`` and ``mm_projector`` in ``LlavaLlamaModel``, beside ``layers``): children of the
    module holding the decoder blocks that are an encoder (a block list of their own) or, when
    there is such an encoder, that write the hidden width. Empty for a plain language model."""
    from .structure import find_decoder

    lm = model.get_submodule(lm_path) if lm_path else model
    try:
        dec = find_decoder(lm)
    except ValueError:
        return []
    parent_rel = dec.blocks_path.rsplit(".", 1)[0] if "." in dec.blocks_path else ""
    parent = lm.get_submodule(parent_rel) if parent_rel else lm
    base = _join(lm_path, parent_rel)
    encoders, writers = [], []
    hidden = dec.hidden_size
    for n, c in parent.named_children():
        if c is dec.blocks or c is dec.embed or isinstance(c, nn.Embedding) or is_norm(c):
            continue
        # an encoder; or a tower named so but loaded later (LLaVA builds its CLIP tower lazily)
        if any(is_block_list(x) for x in c.modules()) or n in VISION_NAMES:
            encoders.append(_join(base, n))
        elif not any(True for _ in c.parameters()):
            continue
        elif hidden and _has_writer(c, hidden):
            writers.append(_join(base, n))
    return encoders + writers if encoders else []


def _text_part(n: str, lm_path: str, attached: list[str]) -> bool:
    """``n`` belongs to the text model: inside the language model and not in an attached part."""
    return _inside(n, lm_path) and not any(_inside(n, a) for a in attached)


def find_vision_tower(model: nn.Module, lm_path: str, attached: list[str] | None = None) -> str | None:
    """Outermost encoder outside the text model (a module holding a block list, not the LM).

    Several encoders (e.g. vision + audio): the one with a Conv patch embedding, then by name.
    """
    attached = attached_parts(model, lm_path) if attached is None else attached
    hits = []
    for n, m in model.named_modules():
        if not n or _text_part(n, lm_path, attached) or _inside(lm_path, n):
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
    attached = attached_parts(model, lm_path)
    vision = find_vision_tower(model, lm_path, attached)
    heads = _output_embeddings(model)
    blocks = [n for n, m in model.named_modules() if is_block_list(m)]

    def qualifies(n: str, m: nn.Module) -> bool:
        if not n or _text_part(n, lm_path, attached) or _inside(lm_path, n) or id(m) in heads:
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
        if _text_part(n, lm_path, attached) or _inside(n, vision) or (proj_path and _inside(n, proj_path)):
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
