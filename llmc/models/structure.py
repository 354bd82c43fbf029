"""Discover a language model's decoder and derive each block's quantization subsets.

A *subset* is a group of Linear layers that read the same input, with the op that produces
that input (``prev_op``): the place where AWQ/SmoothQuant fold their per-channel scales.
For a Llama-family block the subsets are::

    q,k,v      <- input norm       (attention readers)
    o          <- v                (when v's output width equals o's input width)
    gate,up    <- post-attn norm   (MLP readers)
    down       <- up

Subsets are derived from module names and shapes and then *checked*: every Linear of the
block belongs to exactly one subset and the shapes chain (readers take the hidden width,
writers produce it). An unknown block layout fails with the names of the uncovered layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

# Name suffixes of each role, across common HF families (Llama, Qwen2, Mistral, Gemma, Phi3...).
ROLE_SUFFIXES = {
    "attn_in": ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "Wqkv"),
    "attn_out": ("o_proj", "out_proj", "dense"),
    "mlp_in": ("gate_proj", "up_proj", "gate_up_proj", "w1", "w3", "fc1"),
    "mlp_out": ("down_proj", "w2", "fc2"),
}


def is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or "norm" in type(m).__name__.lower()


@dataclass
class Subset:
    name: str  # "attn_in", "attn_out", "mlp_in", "mlp_out"
    layers: dict[str, nn.Linear]  # block-relative name -> layer
    prev_op: nn.Module | None  # producer of the layers' shared input (None: no folding)
    prev_name: str | None = None
    inspect: nn.Module | None = None  # module whose output AWQ-style losses may inspect

    @property
    def in_features(self) -> int:
        return next(iter(self.layers.values())).in_features


@dataclass
class Decoder:
    blocks: nn.ModuleList
    blocks_path: str
    embed: nn.Module | None
    norm: nn.Module | None
    hidden_size: int = 0
    extra: dict = field(default_factory=dict)


def _linear_count(m: nn.Module) -> int:
    return sum(isinstance(x, nn.Linear) for x in m.modules())


def is_block_list(m: nn.Module) -> bool:
    """A ModuleList of transformer blocks: each with at least four Linears, and attention in them
    (in every block, or, for a hybrid stack of attention and convolution or state-space blocks
    such as LFM's, in some of them)."""
    return (isinstance(m, nn.ModuleList) and len(m) > 0 and all(_linear_count(b) >= 4 for b in m)
            and any(any("attn" in n or "attention" in n for n, _ in b.named_modules()) for b in m))


def find_decoder(lm: nn.Module) -> Decoder:
    """The decoder stack of a language model: the ModuleList of attention blocks beside the token
    embedding (a vision tower kept inside the same module, as in the original LLaVA, has its own
    list elsewhere); without one there, the longest such list."""
    try:
        token_embed = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    except (NotImplementedError, AttributeError):
        token_embed = None
    best = None
    for name, mod in lm.named_modules():
        if not is_block_list(mod):
            continue
        parent_path = name.rsplit(".", 1)[0] if "." in name else ""
        parent = lm.get_submodule(parent_path) if parent_path else lm
        key = (any(c is token_embed for c in parent.children()), len(mod))
        if best is None or key > best[0]:
            best = (key, name, mod)
    if best is None:
        raise ValueError(f"no decoder blocks found in {type(lm).__name__}: expected a ModuleList of attention blocks")
    _, path, blocks = best
    parent_path = path.rsplit(".", 1)[0] if "." in path else ""
    parent = lm.get_submodule(parent_path) if parent_path else lm
    embed = token_embed
    if embed is None:
        embed = next((m for m in parent.children() if isinstance(m, nn.Embedding)), None)
    norm = None
    for cname, child in parent.named_children():
        if child is not blocks and is_norm(child):
            norm = child
    hidden = embed.embedding_dim if isinstance(embed, nn.Embedding) else 0
    return Decoder(blocks, path, embed, norm, hidden)


def _role(name: str) -> str | None:
    leaf = name.rsplit(".", 1)[-1]
    for role, suffixes in ROLE_SUFFIXES.items():
        if leaf in suffixes:
            if role == "attn_out" and leaf == "dense" and "attn" not in name and "attention" not in name:
                continue
            return role
    return None


def derive_subsets(block: nn.Module) -> list[Subset]:
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    groups: dict[str, dict[str, nn.Linear]] = {r: {} for r in ROLE_SUFFIXES}
    uncovered = []
    for n, m in linears.items():
        r = _role(n)
        (groups[r].__setitem__(n, m) if r else uncovered.append(n))
    if uncovered:
        raise ValueError(
            f"block layout not understood: Linear layer(s) {', '.join(uncovered)} match no role "
            f"(known suffixes: {', '.join(s for v in ROLE_SUFFIXES.values() for s in v)}); "
            "override get_subsets_in_block() in the adapter"
        )
    missing = [r for r in ("attn_in", "attn_out", "mlp_in", "mlp_out") if not groups[r]]
    if missing:
        raise ValueError(f"block layout not understood: no layers for {', '.join(missing)}")

    def first(d):
        return next(iter(d.values()))

    hidden = first(groups["attn_in"]).in_features
    top_norms = [(n, m) for n, m in block.named_children() if is_norm(m)]
    # pre-attention norm first, pre-MLP norm second (registration order of Llama-family blocks)
    in_norm = top_norms[0] if top_norms else (None, None)
    mlp_norm = top_norms[1] if len(top_norms) > 1 else (None, None)
    if len(top_norms) > 2:  # e.g. Gemma's extra post-norms: pick by name
        in_norm = next(((n, m) for n, m in top_norms if "input" in n), in_norm)
        mlp_norm = next(((n, m) for n, m in top_norms if "pre_feedforward" in n), mlp_norm)

    v = next((m for n, m in groups["attn_in"].items() if n.endswith("v_proj")), None)
    o = first(groups["attn_out"])
    up = next((m for n, m in groups["mlp_in"].items() if n.endswith(("up_proj", "w3", "fc1"))), None)
    down = first(groups["mlp_out"])
    up_name = next((n for n, m in groups["mlp_in"].items() if m is up), None)
    v_name = next((n for n, m in groups["attn_in"].items() if m is v), None)

    subsets = [
        Subset("attn_in", groups["attn_in"], in_norm[1], in_norm[0],
               inspect=_parent(block, next(iter(groups["attn_in"])))),
        Subset("attn_out", groups["attn_out"], v if v is not None and v.out_features == o.in_features else None,
               v_name if v is not None and v.out_features == o.in_features else None, inspect=o),
        Subset("mlp_in", groups["mlp_in"], mlp_norm[1], mlp_norm[0],
               inspect=_parent(block, next(iter(groups["mlp_in"])))),
        Subset("mlp_out", groups["mlp_out"], up if up is not None and up.out_features == down.in_features
               and len(groups["mlp_in"]) > 1 else None, up_name, inspect=down),
    ]
    # shape checks: readers take the hidden width; writers produce it; down reads the MLP width
    for s in (subsets[0], subsets[2]):
        for n, m in s.layers.items():
            if m.in_features != hidden:
                raise ValueError(f"shape check failed: {n} reads {m.in_features}, expected hidden size {hidden}")
    for s in (subsets[1], subsets[3]):
        for n, m in s.layers.items():
            if m.out_features != hidden:
                raise ValueError(f"shape check failed: {n} writes {m.out_features}, expected hidden size {hidden}")
    mlp_widths = {m.out_features for n, m in groups["mlp_in"].items() if not n.endswith("gate_up_proj")}
    if mlp_widths and down.in_features not in mlp_widths:
        raise ValueError(f"shape check failed: down projection reads {down.in_features}, MLP inputs write {mlp_widths}")
    covered = [n for s in subsets for n in s.layers]
    assert sorted(covered) == sorted(linears), "every Linear belongs to exactly one subset"
    return subsets


def _parent(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name.rsplit(".", 1)[0]) if "." in name else root
