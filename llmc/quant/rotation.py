"""QuaRot-style rotation of a language model's residual stream by an orthogonal matrix ``Q``.

The residual stream ``x`` (row vectors of width ``hidden``) is replaced by ``x·Q`` everywhere:

* every norm scale is folded first into the linears that read the norm's output
  (``W ← W·diag(g)``, ``g ← 1``; Gemma's ``(1 + weight)`` norms too): RMSNorm is rotation-invariant
  (``RMSNorm(x·Q) = RMSNorm(x)·Q``) only when its scale is 1;
* the stream's **sources** are rotated on their output side: token embedding rows (``E ← E·Q``),
  the attention/MLP writers ``o_proj``/``down_proj`` and, for a VLM, the projector's injection
  layers (``W ← Qᵀ·W``, ``b ← Qᵀ·b``): image tokens enter the same residual stream;
* the stream's **readers** are rotated on their input side: ``q/k/v``, ``gate/up`` and
  ``lm_head`` (``W ← W·Q``), so every reader sees ``x·Q·Qᵀ = x`` and the float model computes
  the same function (up to rounding).

The math runs in float64 and each tensor is cast back to its dtype. Only RMSNorm language
models (Llama, Qwen2, Mistral...) are supported: LayerNorm's mean subtraction does not commute
with a general rotation and raises a clear error. The optional online Hadamard transform before
``down_proj`` (QuaRot's activation-side rotation) is *not* implemented: this module only
rotates weights, which is what weight-only quantization benefits from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from llmc.models.projector import CONV_TYPES
from llmc.models.structure import is_norm

from .orthogonal import (  # noqa: F401 - part of this module's interface
    KINDS,
    hadamard_matrix,
    is_power_of_two,
    random_hadamard,
    random_orthogonal,
    rotation_matrix,
)


@dataclass
class RotationReport:
    """What :func:`rotate_model_` did."""

    kind: str  # "hadamard" or "random" (the Q actually used: "random" when Hadamard fell back)
    requested: str  # the kind that was asked for
    hidden_size: int
    seed: int
    rotated: list[str] = field(default_factory=list)  # names of every rotated layer/parameter
    folded_norms: list[str] = field(default_factory=list)  # names of the norms whose scale was folded
    untied: bool = False  # the word embeddings were tied and have been untied
    notes: list[str] = field(default_factory=list)
    Q: torch.Tensor | None = field(default=None, repr=False)  # the rotation (float64, CPU)


# ---------------------------------------------------------------------------------------------
# Tensor updates (float64 math, cast back)
# ---------------------------------------------------------------------------------------------


def _set(t: torch.Tensor, value: torch.Tensor) -> None:
    t.data.copy_(value.to(dtype=t.dtype, device=t.device))


def _q(Q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return Q.to(t.device)


@torch.no_grad()
def rotate_input_(weight: torch.Tensor, Q: torch.Tensor) -> None:
    """Reader ``(out, hidden)``: ``W ← W·Q``."""
    _set(weight, weight.detach().double() @ _q(Q, weight))


@torch.no_grad()
def rotate_output_(weight: torch.Tensor, Q: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Writer ``(hidden, ...)`` (Linear or Conv weight): ``W ← Qᵀ·W`` along dim 0; ``b ← Qᵀ·b``."""
    w = weight.detach().double()
    shape = w.shape
    _set(weight, (_q(Q, weight).T @ w.reshape(shape[0], -1)).reshape(shape))
    if bias is not None:
        _set(bias, _q(Q, bias).T @ bias.detach().double())


def _norm_kind_ok(norm: nn.Module, where: str) -> None:
    cls = type(norm).__name__
    if isinstance(norm, nn.LayerNorm) or ("rmsnorm" not in cls.lower() and not isinstance(norm, nn.RMSNorm)):
        raise ValueError(
            f"rotation supports RMSNorm language models only (Llama, Qwen2...): {where} is a {cls}, whose "
            "mean subtraction does not commute with a rotation (LayerNorm models need their norms "
            "converted first)")
    w = getattr(norm, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        raise ValueError(f"rotation: {where} ({cls}) has no per-channel weight to fold")
    if getattr(norm, "bias", None) is not None:
        raise ValueError(f"rotation: {where} ({cls}) has a bias; only bias-free RMSNorm can be folded")


@torch.no_grad()
def _norm_offset(norm: nn.Module) -> float:
    """``0.0`` for a norm computing ``normalised * weight``, ``1.0`` for ``normalised * (1 + weight)``
    (Gemma's): the convention is not visible from outside, so it is read off a fixed probe."""
    w = norm.weight.detach()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, w.numel(), generator=gen, dtype=torch.float64)
    y = norm(x.to(device=w.device, dtype=w.dtype)).double().cpu()
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    base = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    wd = w.double().cpu()
    errs = {off: float((base * (wd + off) - y).norm()) for off in (0.0, 1.0)}
    return min(errs, key=errs.get)


@torch.no_grad()
def fold_norm_(norm: nn.Module, readers: list[nn.Module], where: str) -> None:
    """Fold an RMSNorm's scale ``g`` into the linears that read its output: ``W ← W·diag(g)``, then
    ``g ← 1`` (``weight`` 1, or 0 for a ``(1 + weight)`` norm)."""
    _norm_kind_ok(norm, where)
    offset = _norm_offset(norm)
    g = norm.weight.detach().double() + offset
    for r in readers:
        if r.weight.shape[-1] != g.shape[0]:
            raise ValueError(f"rotation: a reader of {where} takes width {r.weight.shape[-1]}, the norm is {g.shape[0]}")
        _set(r.weight, r.weight.detach().double() * g.to(r.weight.device))
    norm.weight.data.fill_(1.0 - offset)


# ---------------------------------------------------------------------------------------------
# Extra injection targets (the projector's last layer)
# ---------------------------------------------------------------------------------------------


def _raw_orientation(p: torch.Tensor, hidden: int, name: str) -> str:
    """``"in_hidden"`` for a ``(in, hidden)`` Parameter used as ``x @ P`` (or a ``(hidden,)`` vector
    placed in the stream), ``"hidden_in"`` for a ``(hidden, in)`` one used as ``F.linear(x, P)``."""
    if p.dim() == 1 and p.shape[0] == hidden:  # a learned stream vector (image_newline): v ← v·Q
        return "in_hidden"
    if p.dim() != 2:
        raise ValueError(f"{name}: a raw projection Parameter must be 2-D (or a {hidden}-wide vector), "
                         f"got shape {tuple(p.shape)}")
    a, b = p.shape
    if a == hidden and b == hidden:
        raise ValueError(f"{name}: a square {hidden}x{hidden} raw Parameter is ambiguous (x @ P or P @ x?); "
                         "wrap it in an nn.Linear so its orientation is known")
    if b == hidden:
        return "in_hidden"
    if a == hidden:
        return "hidden_in"
    raise ValueError(f"{name} writes width {b} (shape {a}x{b}), not the language model hidden size {hidden}")


def _extra_plan(target, hidden: int, name: str) -> list[tuple[str, torch.Tensor, torch.Tensor | None, str]]:
    """Check an extra target and list ``(name, weight, bias, orientation)`` to rotate."""
    if isinstance(target, nn.Parameter):
        return [(name, target, None, _raw_orientation(target, hidden, name))]
    if isinstance(target, (nn.Linear, *CONV_TYPES)):
        out = target.weight.shape[0]
        if out != hidden:
            raise ValueError(f"{name} writes width {out}, not the language model hidden size {hidden}: "
                             "it cannot be a residual-stream injection layer")
        return [(name, target.weight, target.bias, "hidden_in")]
    if is_norm(target):
        w = getattr(target, "weight", None)
        width = int(w.shape[-1]) if isinstance(w, torch.Tensor) and w.dim() >= 1 else None
        if width != hidden:
            raise ValueError(f"{name} writes width {width}, not the language model hidden size {hidden}")
        raise ValueError(f"{name} is a norm ({type(target).__name__}): its per-channel scale does not commute "
                         "with a rotation; rotate the Linear before it and fold or drop the norm")
    if isinstance(target, nn.Module):  # custom module holding a raw projection Parameter (+ bias)
        params = list(target.named_parameters(recurse=False))
        mats = [(n, p) for n, p in params if p.dim() == 2]
        vecs = [(n, p) for n, p in params if p.dim() == 1]
        if len(mats) != 1:
            raise ValueError(f"{name} ({type(target).__name__}): expected exactly one 2-D weight Parameter to "
                             f"rotate, found {len(mats)}")
        pn, p = mats[0]
        orient = _raw_orientation(p, hidden, f"{name}.{pn}")
        bias = None
        for bn, b in vecs:
            if b.shape[0] != hidden:
                raise ValueError(f"{name}.{bn}: bias of width {b.shape[0]}, not the language model hidden size {hidden}")
            bias = b
        return [(f"{name}.{pn}", p, bias, orient)]
    raise ValueError(f"{name}: cannot rotate a {type(target).__name__}")


# ---------------------------------------------------------------------------------------------
# The model-level transform
# ---------------------------------------------------------------------------------------------


def _namer(root: nn.Module):
    mods = {id(m): n for n, m in root.named_modules()}
    params = {id(p): n for n, p in root.named_parameters(remove_duplicate=False)}

    def name(x) -> str:
        return mods.get(id(x)) or params.get(id(x)) or f"<{type(x).__name__}>"

    return name


def _untie_config(adapter) -> None:
    """Record the untying in every config a reload may read (so the loader does not re-tie)."""
    top = getattr(adapter.mm_model, "config", None)
    cfgs = [top, getattr(adapter.model, "config", None), getattr(top, "text_config", None),
            getattr(top, "llm_cfg", None), adapter.model_config]
    for c in cfgs:
        if isinstance(c, dict):
            c["tie_word_embeddings"] = False
        elif c is not None and hasattr(c, "tie_word_embeddings"):
            c.tie_word_embeddings = False


@torch.no_grad()
def check_rotation(adapter):
    """Everything a rotation of ``adapter`` needs, checked before any weight is touched (works on a
    skeleton on the meta device too: shapes and module kinds only). Returns ``(embeds, heads,
    final_norms, per-block subsets, extra targets)``; raises ValueError naming what cannot rotate."""
    from llmc.models.parts import cross_attention_blocks

    hidden = int(adapter.model_config.hidden_size)
    name = _namer(adapter.mm_model)
    xattn = cross_attention_blocks(adapter.language_model())
    if xattn:  # their k/v read the image features, not the norm folded into them
        raise ValueError(f"rotation: blocks {', '.join(xattn)} use cross-attention, whose key/value layers read "
                         "the image features rather than the residual stream: this layout is not supported")

    embeds = [e for e in adapter.get_embed_layers() if e is not None]
    heads = [h for h in adapter.get_head_layers() if h is not None]
    final_norms = adapter.get_pre_head_layernorm_layers()
    blocks = adapter.get_blocks()

    for e in embeds:
        if e.weight.shape[-1] != hidden:
            raise ValueError(f"{name(e)}: embedding width {e.weight.shape[-1]}, not the hidden size {hidden}")
    for h in heads:
        if h.weight.shape[-1] != hidden:
            raise ValueError(f"{name(h)}: head reads width {h.weight.shape[-1]}, not the hidden size {hidden}")
    if len(final_norms) != 1:
        raise ValueError(f"rotation needs exactly one norm before the head, found {len(final_norms)}")
    _norm_kind_ok(final_norms[0], name(final_norms[0]))
    plans = []
    for blk_i, block in enumerate(blocks):
        subsets = {s.name: s for s in adapter.get_subsets_in_block(block)}
        for role in ("attn_in", "mlp_in"):
            s = subsets[role]
            if s.prev_op is None:
                raise ValueError(f"rotation: block {blk_i} {role} has no norm before it to fold")
            _norm_kind_ok(s.prev_op, name(s.prev_op))
        folded = {id(subsets[r].prev_op) for r in ("attn_in", "mlp_in")}
        for cn, child in block.named_children():
            if is_norm(child) and id(child) not in folded:
                raise ValueError(f"rotation: {name(child)} is a norm outside the attn/MLP inputs "
                                 "(e.g. a post-norm): this block layout is not supported")
        for role in ("attn_out", "mlp_out"):
            for n, lin in subsets[role].layers.items():
                if lin.weight.shape[0] != hidden:
                    raise ValueError(f"{name(lin)} writes width {lin.weight.shape[0]}, not the hidden size {hidden}")
        plans.append(subsets)
    extras = []
    for t in adapter.get_extra_rot_module_besides_embed_layers():
        extras += _extra_plan(t, hidden, name(t))

    return embeds, heads, final_norms, plans, extras


def rotate_model_(adapter, kind: str = "hadamard", seed: int = 0, *, skip_extra: bool = False,
                  skip_extra_bias: bool = False) -> RotationReport:
    """Rotate the residual stream of ``adapter``'s language model in place by an orthogonal ``Q``.

    ``kind``: ``"hadamard"`` (randomized Hadamard ``H·diag(±1)/sqrt(d)``; a random orthogonal
    matrix with a note when the hidden size is not a power of two) or ``"random"`` (QR of a
    seeded Gaussian). The float model's outputs are unchanged up to rounding.

    ``skip_extra`` / ``skip_extra_bias`` leave the projector's injection layers (resp. their
    biases) unrotated: they exist to demonstrate that equivalence *needs* them, never for use.
    """
    hidden = int(adapter.model_config.hidden_size)
    embeds, heads, final_norms, plans, extras = check_rotation(adapter)
    Q, used, notes = rotation_matrix(hidden, kind, seed)
    name = _namer(adapter.mm_model)
    report = RotationReport(used, kind, hidden, seed, notes=notes, Q=Q)

    # --- untie ------------------------------------------------------------------------------
    emb_ids = {id(e.weight) for e in embeds} | {e.weight.data_ptr() for e in embeds}
    for h in heads:
        if id(h.weight) in emb_ids or h.weight.data_ptr() in emb_ids:
            h.weight = nn.Parameter(h.weight.detach().clone(), requires_grad=h.weight.requires_grad)
            report.untied = True
    if report.untied:
        _untie_config(adapter)
        report.notes.append("word embeddings were tied: lm_head now has its own copy")

    # --- fold norms ---------------------------------------------------------------------------
    for subsets in plans:
        for role in ("attn_in", "mlp_in"):
            s = subsets[role]
            fold_norm_(s.prev_op, list(s.layers.values()), name(s.prev_op))
            report.folded_norms.append(name(s.prev_op))
    fold_norm_(final_norms[0], heads, name(final_norms[0]))
    report.folded_norms.append(name(final_norms[0]))

    # --- rotate -------------------------------------------------------------------------------
    for e in embeds:  # rows are stream vectors: E ← E·Q (same op as a reader's W·Q)
        rotate_input_(e.weight, Q)
        report.rotated.append(name(e))
    for subsets in plans:
        for role in ("attn_in", "mlp_in"):
            for lin in subsets[role].layers.values():
                rotate_input_(lin.weight, Q)
                report.rotated.append(name(lin))
        for role in ("attn_out", "mlp_out"):
            for lin in subsets[role].layers.values():
                rotate_output_(lin.weight, Q, lin.bias)
                report.rotated.append(name(lin))
    for h in heads:
        rotate_input_(h.weight, Q)
        report.rotated.append(name(h))
    if skip_extra:
        report.notes.append("skip_extra: projector injection layers NOT rotated (model no longer equivalent)")
    else:
        for n, w, b, orient in extras:
            if orient == "in_hidden":  # y = x @ P (+ b): y·Q = x @ (P·Q) (+ b·Q)
                rotate_input_(w, Q)
                if b is not None and not skip_extra_bias:
                    _set(b, b.detach().double() @ _q(Q, b))
            else:
                rotate_output_(w, Q, None if skip_extra_bias else b)
            report.rotated.append(n)
        if skip_extra_bias:
            report.notes.append("skip_extra_bias: projector biases NOT rotated (model no longer equivalent)")
    return report


# ---------------------------------------------------------------------------------------------
# Online Hadamard before down_proj (QuaRot's R4)
# ---------------------------------------------------------------------------------------------


@dataclass
class OnlineHadamard:
    """Handles of :func:`attach_online_hadamard_`: the rotated layers and their input hooks."""

    layers: list[str] = field(default_factory=list)
    handles: list = field(default_factory=list, repr=False)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


@torch.no_grad()
def attach_online_hadamard_(adapter, seed: int = 0) -> OnlineHadamard:
    """Rotate the input of every block's MLP output layer (down_proj) by a randomized Hadamard ``H``.

    The weight gets ``W ← W·H`` once and a forward pre-hook computes ``x·H`` on every call, so
    the float function is unchanged while the down_proj input (the MLP's most outlier-heavy
    activation) is spread evenly over its channels before it is quantized. The hook is part of
    the model: checkpoints saved without it do not compute the same function.
    """
    name = _namer(adapter.mm_model)
    targets = []
    for block in adapter.get_blocks():
        subsets = {s.name: s for s in adapter.get_subsets_in_block(block)}
        for lin in subsets["mlp_out"].layers.values():
            d = lin.weight.shape[1]
            if not is_power_of_two(d):
                raise ValueError(f"{name(lin)}: online Hadamard needs a power-of-two input width, got {d}; "
                                 "remove quant.special.online_rotate")
            targets.append(lin)
    out = OnlineHadamard()
    for lin in targets:
        H = random_hadamard(lin.weight.shape[1], seed)
        rotate_input_(lin.weight, H)
        cache: dict = {}

        def hook(mod, args, H=H, cache=cache):
            x = args[0]
            key = (x.device, x.dtype)
            if key not in cache:
                cache[key] = H.to(device=x.device, dtype=x.dtype)
            return (x @ cache[key], *args[1:])

        out.handles.append(lin.register_forward_pre_hook(hook))
        out.layers.append(name(lin))
    return out
