"""Where image features enter the language model, found by data flow: run the model, follow the values.

The layers to propose for a vision-language model are those whose outputs reach the language
model's input sequence at image-token positions: directly, through a resampler, or as "deepstack"
injections into later layers. Names and module order cannot tell (GLM-4V's merger writes through a
``down_proj``; Qwen3-VL has a main merger and deepstack mergers; Idefics2's perceiver resampler
comes after its modality projection). The values can:

1. :func:`shrink_config` makes a small copy of the model's configuration: every attention stack
   keeps its depth, its head dimension and its layer indices (so module names and rotary
   sections stay what they are) but gets 1-2 heads; MoE blocks get few experts. Widths elsewhere
   in the configuration that equal an old width follow it.
2. :func:`trace_injections` builds that copy with random weights on the CPU, feeds one small image
   through the model's own image processor (the folder's, else the family's default one) into
   the model's own ``get_image_features``, and records every module's output.
3. Every row of the features the model hands to the language model (``pooler_output``; the
   ``deepstack_features`` for deepstack) is matched, by its exact bit pattern, against the rows
   each module produced: rearranging (reshape, split, concatenation, indexing) keeps a row's
   bits, computing changes them. The innermost module that produced a row is its writer; a norm
   as the writer is followed to its input; a learned vector among the rows (LLaVA-NeXT's
   ``image_newline``) is found the same way.

Each injection point carries its role (:data:`ROLES`). When the model cannot be run this way
(custom code, no image processor, a configuration that does not shrink), :func:`trace_injections`
raises :class:`DataFlowUnavailable` with the reason, and the caller falls back to structure.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from dataclasses import dataclass, field

import torch
from torch import nn

from .projector import CONV_TYPES
from .structure import is_norm

MAIN, DEEPSTACK, RESAMPLER, NEWLINE = "main projector", "deepstack injection", "resampler output", "image-newline vector"
ROLES = (MAIN, DEEPSTACK, RESAMPLER, NEWLINE)

_WIDTH = ("hidden_size", "embed_dim", "d_model", "width", "n_embd", "hidden_dim")
_HEADS = ("num_attention_heads", "num_heads", "attention_heads", "n_head", "encoder_attention_heads", "n_heads")
_KV = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num")
_INTER = ("intermediate_size", "ffn_dim", "mlp_dim", "encoder_ffn_dim", "decoder_ffn_dim", "ffn_hidden_size",
          "moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size", "dim_feedforward")
_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOPK = ("num_experts_per_tok", "moe_topk", "num_experts_per_token", "top_k")
#: integer settings that are never widths, whatever their value
_NOT_WIDTH = ("image_size", "patch_size", "vocab_size", "max_position_embeddings", "window_size", "merge_size",
              "temporal_patch_size", "spatial_merge_size", "num_hidden_layers", "depth", "max_window_layers")


#: the most parameters a small copy may have (its weights are drawn on the CPU)
MAX_PARAMS = 600_000_000


class DataFlowUnavailable(Exception):
    """The model cannot be traced (the message says why); the caller falls back to structure."""


@dataclass
class Injection:
    """One place where image features enter the language model's stream."""

    path: str  #: dotted path from the model root: a layer, or a Parameter
    role: str  #: one of :data:`ROLES`
    trailing_norms: list[str] = field(default_factory=list)  #: norms between the layer and the stream


@dataclass
class Trace:
    injections: list[Injection]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# A small copy of the configuration
# ---------------------------------------------------------------------------------------------


def _sub_configs(cfg) -> list:
    """``cfg`` and every configuration nested in it (text, vision, audio, ...)."""
    from transformers import PretrainedConfig

    out, stack, seen = [], [cfg], set()
    while stack:
        c = stack.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        out.append(c)
        for v in vars(c).values():
            if isinstance(v, PretrainedConfig):
                stack.append(v)
            elif isinstance(v, (list, tuple)):  # per-layer configurations
                stack.extend(x for x in v if isinstance(x, PretrainedConfig))
    return out


def _get(c, k):
    """``c.k``, or None where the configuration refuses a global read (per-layer settings)."""
    try:
        return getattr(c, k, None)
    except Exception:  # noqa: BLE001 - e.g. transformers' AmbiguousGlobalPerLayerAttributeError
        return None


def _first(c, keys) -> tuple[str | None, object]:
    for k in keys:
        v = _get(c, k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return k, v
    return None, None


def shrink_config(config):
    """A copy of ``config`` whose attention stacks have 1-2 heads of their own head dimension and
    whose MoE blocks have few experts; depths, layer indices and token ids are kept."""
    cfg = copy.deepcopy(config)
    widths: dict[int, int] = {}
    shrunk: set[int] = set()
    # the language model's configuration first: a width another configuration repeats (a vision
    # tower's output width) is the language model's, and follows it
    for c in sorted(_sub_configs(cfg), key=lambda c: _get(c, "vocab_size") is None):
        for k in _EXPERTS:
            v = _get(c, k)
            if isinstance(v, int) and v > 4:
                setattr(c, k, 4)
        for k in _TOPK:
            v = _get(c, k)
            if isinstance(v, int) and v > 2:
                setattr(c, k, 2)
        hk, heads = _first(c, _HEADS)
        own = [(k, v) for k in _WIDTH for v in [_get(c, k)] if isinstance(v, int) and v > 0 and v not in widths]
        if hk is not None and not own:  # every width of it is another's (a Q-Former as wide as the tower)
            w = next((v for k in _WIDTH for v in [_get(c, k)] if isinstance(v, int) and v in widths), None)
            if w is not None:
                new_heads = 2 if heads % 2 == 0 and widths[w] % 2 == 0 else 1
                setattr(c, hk, new_heads)
                kk, kv = _first(c, _KV)
                if kk is not None:
                    setattr(c, kk, new_heads if kv == heads else 1)
            continue
        if hk is None or not own:
            continue
        wk, w = own[0]
        shrunk.add(id(c))
        hd = _get(c, "head_dim")
        head_dim = hd if isinstance(hd, int) and hd > 0 else w // heads
        if w % heads and not (isinstance(hd, int) and hd > 0):
            head_dim -= head_dim % 2  # an even head dimension of its own (rotary halves)
            c.head_dim = head_dim
        new_heads = 2 if heads % 2 == 0 else 1
        new_w = new_heads * head_dim
        widths.setdefault(w, new_w)
        setattr(c, wk, new_w)
        setattr(c, hk, new_heads)
        for k2, w2 in own[1:]:  # more widths of its own (Qwen2-VL's tower: embed_dim and its output width)
            widths.setdefault(w2, new_heads * max(2, w2 // heads))
            setattr(c, k2, widths[w2])
        kk, kv = _first(c, _KV)
        if kk is not None:
            setattr(c, kk, new_heads if kv == heads else 1)
        for k in _INTER:
            v = _get(c, k)
            if isinstance(v, int) and v > 0:
                setattr(c, k, 2 * new_w)
    # other widths that equal an old width follow it (a vision tower's out_hidden_size, a
    # projection_dim): they say "as wide as that"
    for c in _sub_configs(cfg):
        for k, v in list(vars(c).items()):
            if (isinstance(v, int) and not isinstance(v, bool) and v in widths and k not in _NOT_WIDTH
                    and (k not in _WIDTH or id(c) not in shrunk) and not k.endswith(("_id", "_index", "_token", "layers")) and
                    any(s in k for s in ("hidden", "dim", "size", "embed", "width", "channels", "proj"))):
                setattr(c, k, widths[v])
    return cfg


def _fewer_text_layers(config, keep: int = 2):
    """A copy whose language model (the configuration with a vocabulary) has ``keep`` layers;
    per-layer lists are cut to match."""
    cfg = copy.deepcopy(config)
    for c in _sub_configs(cfg):
        n = _get(c, "num_hidden_layers")
        if _get(c, "vocab_size") is None or not isinstance(n, int) or n <= keep:
            continue
        c.num_hidden_layers = keep
        for k, v in list(vars(c).items()):
            if isinstance(v, list) and len(v) == n:
                setattr(c, k, v[:keep])
    return cfg


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------


def _has_processor_files(weights_dir) -> bool:
    return weights_dir is not None and any((Path(weights_dir) / f).is_file()
                                           for f in ("preprocessor_config.json", "processor_config.json"))


def default_image_processor(model_type: str, weights_dir=None):
    """The folder's own image processor when it has one, else the family's default one."""
    from pathlib import Path

    if _has_processor_files(weights_dir):
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(str(weights_dir), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means: use the family's default
            note = f"the folder's image processor did not load ({type(e).__name__})"
        else:
            note = ""
    else:
        note = ""
    from transformers.models.auto.image_processing_auto import (
        IMAGE_PROCESSOR_MAPPING_NAMES,
        get_image_processor_class_from_name,
    )

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or IMAGE_PROCESSOR_MAPPING_NAMES.get(
        _processor_family(model_type) or "")
    if not names:
        raise DataFlowUnavailable(f"transformers has no image processor for {model_type!r}" +
                                  (f"; {note}" if note else ""))
    if isinstance(names, str):
        names = (names,)
    elif isinstance(names, dict):  # backend -> class name: the PIL one first (no torchvision needed)
        names = tuple(v for k, v in sorted(names.items(), key=lambda kv: kv[0] != "pil") if v)
    else:
        names = tuple(n for n in names if n)
    errors = []
    for name in names:
        try:
            cls = get_image_processor_class_from_name(name)
            if cls is None:
                continue
            return cls()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {type(e).__name__}: {e}")
    raise DataFlowUnavailable(f"no image processor of {model_type!r} builds with its defaults "
                              f"({'; '.join(errors)[:200] or 'none importable'})")


def _processor_family(model_type: str) -> str | None:
    """The model type whose processor this type uses (GLM-4.5V's is GLM-4V's), from transformers'
    processor mapping."""
    try:
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES, processor_class_from_name

        name = PROCESSOR_MAPPING_NAMES.get(model_type)
        cls = processor_class_from_name(name) if name else None
    except Exception:  # noqa: BLE001
        return None
    parts = (getattr(cls, "__module__", "") or "").split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["transformers", "models"] else None


def fit_processor(processor, config) -> None:
    """Make a default image processor agree with the configuration it feeds (a family's default
    processor and default configuration need not describe the same checkpoint): the vision
    tower's image size, patch size, temporal patch and merge sizes."""
    for c in _sub_configs(config):
        size = getattr(c, "image_size", None)
        if isinstance(size, (list, tuple)) and size:
            size = size[0]
        if isinstance(size, int) and size > 0:
            for attr in ("size", "crop_size"):
                v = getattr(processor, attr, None)
                if v is None:
                    continue
                get = v.get if isinstance(v, dict) else (lambda k, v=v: getattr(v, k, None))
                make = dict if isinstance(v, dict) else type(v)
                if get("height") or get("width"):
                    setattr(processor, attr, make(height=size, width=size))
                elif get("shortest_edge") and not get("longest_edge"):
                    setattr(processor, attr, make(shortest_edge=size))
            tile = getattr(processor, "max_image_size", None)  # image splitting: tiles of the tower's size
            if isinstance(tile, dict) and "longest_edge" in tile:
                processor.max_image_size = {"longest_edge": size}
        for mine, theirs in (("patch_size", "patch_size"), ("temporal_patch_size", "temporal_patch_size"),
                             ("merge_size", "spatial_merge_size")):
            v = getattr(c, theirs, None)
            if isinstance(v, int) and v > 0 and isinstance(getattr(processor, mine, None), int):
                setattr(processor, mine, v)


def _image():
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (240, 240, 240))
    ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=(200, 40, 40))
    return img


def _features_function(model):
    for owner in (model, getattr(model, "model", None)):
        fn = getattr(owner, "get_image_features", None)
        if callable(fn):
            return fn
    raise DataFlowUnavailable(f"{type(model).__name__} has no get_image_features")


def _call_features(model, processor):
    fn = _features_function(model)
    try:
        inputs = processor(images=[_image()], return_tensors="pt")
    except TypeError:
        inputs = processor([_image()], return_tensors="pt")
    params = inspect.signature(fn).parameters
    given = dict(inputs)
    if "pixel_values" not in given:  # a processor naming its images pixel_values_images & co.
        alias = next((k for k in given if k.startswith("pixel_values")), None)
        if alias:
            given["pixel_values"] = given.pop(alias)
    args = {k: v for k, v in given.items() if k in params}
    if "pixel_values" not in args:
        raise DataFlowUnavailable(f"get_image_features takes none of the image processor's outputs "
                                  f"({', '.join(dict(inputs))})")
    for k, v in args.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            args[k] = v.float()
    with torch.no_grad():
        return fn(**args)


def _slots(out) -> dict[str, list[torch.Tensor]]:
    """The tensors the language model receives, by role: ``pooler_output`` (or the value itself)
    as the main stream, ``deepstack_features`` as deepstack injections."""
    def leaves(x) -> list[torch.Tensor]:
        if isinstance(x, torch.Tensor):
            return [x]
        if isinstance(x, (list, tuple)):
            return [t for y in x for t in leaves(y)]
        return []

    if isinstance(out, (torch.Tensor, list, tuple)):
        return {MAIN: leaves(out)}
    main = getattr(out, "pooler_output", None)
    if main is None:
        main = getattr(out, "image_embeds", None)
    if main is None:
        main = getattr(out, "last_hidden_state", None)
    slots = {MAIN: leaves(main)}
    deep = getattr(out, "deepstack_features", None)
    if deep is not None:
        slots[DEEPSTACK] = leaves(deep)
    return slots


class _RowKeys:
    """Exact fingerprints of rows: a row's float32 bits, summed with fixed random integer weights."""

    def __init__(self, width: int):
        g = torch.Generator().manual_seed(width)
        self.w = torch.randint(1, 2**31 - 1, (width,), generator=g, dtype=torch.int64)

    def __call__(self, t: torch.Tensor) -> set[int]:
        bits = t.detach().to(torch.float32).contiguous().reshape(-1, t.shape[-1]).view(torch.int32).to(torch.int64)
        return set((bits * self.w).sum(-1).tolist())


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x] if x.is_floating_point() and x.dim() >= 1 else []
    if isinstance(x, (list, tuple)):
        return [t for y in x for t in _tensors(y)]
    if hasattr(x, "to_tuple"):
        return _tensors(x.to_tuple())
    return []


def _writes_stream(m: nn.Module) -> bool:
    """A layer that computes with a weight matrix (what rotation and quantization act on)."""
    return isinstance(m, (nn.Linear, *CONV_TYPES)) or any(p.dim() == 2 for p in m.parameters(recurse=False))


def small_copy(config, weights_dir=None, processor=None, seed: int = 0):
    """``(model, processor)``: a small random copy of the model ``config`` describes (module names
    as in the full model) and an image processor that feeds it. Raises :class:`DataFlowUnavailable`."""
    from transformers import AutoModelForImageTextToText

    model_type = getattr(config, "model_type", None) or "?"
    if model_type not in _image_text_types():
        raise DataFlowUnavailable(f"{model_type!r} is not an image-text-to-text model type of transformers")
    small = shrink_config(config)
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForImageTextToText.from_config(small).parameters())
    except Exception as e:  # noqa: BLE001 - any failure: not traceable this way
        raise DataFlowUnavailable(f"a small copy of {model_type!r} does not build: {type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:200]}") from None
    if n > MAX_PARAMS:  # the language model is not run to make image features: fewer of its layers
        small = _fewer_text_layers(small)
        try:
            with torch.device("meta"):
                n = sum(p.numel() for p in AutoModelForImageTextToText.from_config(small).parameters())
        except Exception:  # noqa: BLE001
            pass
    if n > MAX_PARAMS:
        raise DataFlowUnavailable(f"a small copy of {model_type!r} still has {n / 1e6:.0f}M parameters "
                                  f"(the limit is {MAX_PARAMS / 1e6:.0f}M)")
    torch.manual_seed(seed)
    try:
        with torch.device("cpu"):
            model = AutoModelForImageTextToText.from_config(small, dtype=torch.float32).eval()
    except Exception as e:  # noqa: BLE001 - any failure: not traceable this way
        raise DataFlowUnavailable(f"a small copy of {model_type!r} does not build: {type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:200]}") from None
    if processor is None:
        processor = default_image_processor(model_type, weights_dir)
        if not _has_processor_files(weights_dir):
            fit_processor(processor, config)
    return model, processor


def _image_text_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def image_features(model, processor):
    """What ``get_image_features`` hands the language model for one small image, by role
    (:func:`_slots`). Raises :class:`DataFlowUnavailable`."""
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    try:
        return _slots(_call_features(model, processor))
    except DataFlowUnavailable:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataFlowUnavailable(f"get_image_features of a small copy of {model_type!r} failed on one image: "
                                  f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def trace_injections(config, weights_dir=None, processor=None, seed: int = 0) -> Trace:
    """The injection points of the model ``config`` describes, by data flow on a small random copy
    (module names are those of the full model). Raises :class:`DataFlowUnavailable`."""
    model, processor = small_copy(config, weights_dir, processor, seed)
    return trace_model(model, processor)


def trace_model(model, processor) -> Trace:
    """The injection points of ``model`` (built, with real weights of any values), by data flow."""
    names = {id(m): n for n, m in model.named_modules()}
    produced: list[tuple[str, torch.Tensor]] = []  # (module path, output), in call order
    consumed: dict[str, list[torch.Tensor]] = {}  # norm path -> its inputs

    def hook(mod, args, out):
        path = names.get(id(mod), "?")
        for t in _tensors(out):
            produced.append((path, t))
        if is_norm(mod):
            consumed.setdefault(path, []).extend(_tensors(args))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        slots = image_features(model, processor)
    finally:
        for h in handles:
            h.remove()

    modules = dict(model.named_modules())
    injections: list[Injection] = []
    notes: list[str] = []
    for role, feats in slots.items():
        feats = [f for f in feats if f.dim() >= 1 and f.numel()]
        if not feats:
            if role == MAIN:
                raise DataFlowUnavailable("get_image_features returned no image features")
            continue
        width = feats[0].shape[-1]
        keys = _RowKeys(width)
        wanted: set[int] = set().union(*(keys(f) for f in feats))
        for path in _writers(wanted, produced, keys, width):
            injections.extend(_resolve(path, role, modules, produced, consumed, keys))
        # learned vectors spliced among the image rows (LLaVA-NeXT's image_newline)
        if role == MAIN:
            for pn, p in model.named_parameters():
                if (p.shape[-1] == width and p.dim() <= 2 and p.numel() <= 4 * width
                        and bool(p.max() != p.min()) and keys(p) & wanted):  # not a constant init
                    injections.append(Injection(pn, NEWLINE))
    writers = [i.path for i in injections if i.role != NEWLINE and i.path in modules]
    injections = [i for i in injections if not (i.role == NEWLINE and any(i.path.startswith(w + ".")
                                                                           for w in writers))]
    seen: set[str] = set()
    unique = [i for i in injections if not (i.path in seen or seen.add(i.path))]
    if not any(i.role in (MAIN, RESAMPLER) for i in unique):
        raise DataFlowUnavailable("no module's output reaches the image features unchanged")
    return Trace(unique, notes)


def _writers(wanted: set[int], produced, keys, width: int) -> list[str]:
    """The modules that computed the wanted rows: whose outputs hold rows that no module inside
    them produced (a parent that passes its children's outputs on is not a writer)."""
    cover: dict[str, set[int]] = {}
    for path, t in produced:
        if t.shape[-1] != width:
            continue
        hit = keys(t) & wanted
        if hit:
            cover.setdefault(path, set()).update(hit)
    writers = []
    for path, rows in cover.items():
        below: set[int] = set()
        for q, qrows in cover.items():
            if q != path and (path == "" or q.startswith(path + ".")):
                below |= qrows
        if rows - below:  # rows no module inside it produced: it computed them
            writers.append(path)
    return sorted(writers)


def _resolve(path: str, role: str, modules, produced, consumed, keys) -> list[Injection]:
    """A writer as injection points: a layer with a weight matrix is one; a module computing with a
    raw weight Parameter gives that Parameter; a norm is followed to what it normalises."""
    m = modules[path]
    if isinstance(m, (nn.Linear, *CONV_TYPES)):
        return [Injection(path, role)]
    if is_norm(m):
        ins = [t for t in consumed.get(path, []) if t.dim() >= 1]
        if ins:
            width = ins[0].shape[-1]
            k = _RowKeys(width)
            wanted = set().union(*(k(t) for t in ins))
            inner = [w for w in _writers(wanted, produced, k, width) if w != path and not is_norm(modules[w])]
            layers = [w for w in inner if isinstance(modules[w], (nn.Linear, *CONV_TYPES))]
            if layers:
                return [Injection(w, role, trailing_norms=[path]) for w in layers]
        # what the norm normalises is a sum (a resampler's residual stream): the norm writes it
        return [Injection(path, RESAMPLER if role == MAIN else role)]
    raw = [(pn, p) for pn, p in m.named_parameters(recurse=False) if p.dim() == 2]
    if raw:
        return [Injection(f"{path}.{pn}" if path else pn, role) for pn, _ in raw]
    return [Injection(path, role)]
