"""Inspect a model folder without reading its weights: structure, projector injection layers, quant layers.

The model is built as a *skeleton* by :mod:`llmc.models.skeleton`: every tensor lives on the meta
device (``torch.device("meta")``, falling back to ``accelerate.init_empty_weights``), so only
``config.json`` is read and a 7B model costs no weight memory and well under a second to build.
Two kinds of model folders:

* **transformers-native** (``code_package=None``): ``AutoConfig`` + the class named in
  ``architectures[0]`` (else ``AutoModelForImageTextToText``, else ``AutoModelForCausalLM``).
* **custom code** (VILA-style, ``code_package="tiny_vila"``): ``<code_package>.model`` must export a
  ``*ForCausalLM`` class and a ``*Config`` class; the config is built from ``config.json``.

The structural analysis (where the language model, vision tower and projector are; which
projector layers inject into the residual stream) lives in :mod:`llmc.models.projector`;
:func:`inspect_module` turns it into a JSON-serialisable :class:`ModelReport`.

CLI: ``llmc-wizard inspect <model_dir> [--code <pkg>] [--group-size N] [--json]`` (:func:`print_report`).
No Textual imports here: the TUI and the CLI both use this module.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from llmc.models.dataflow import DEEPSTACK, MAIN, RESAMPLER
from llmc.models.parts import locate_mm_parts
from llmc.models.projector import (
    CONV_TYPES,
    FLAG_NORM_AFTER,
    find_injection_layers,
    norm_width,
    raw_params,
)
from llmc.models.skeleton import (  # noqa: F401 - the skeleton builder's parts, re-exported
    CodeImportError,
    SkeletonError,
    _import_code,
    _on_meta,
    _pick_classes,
    _read_config,
)
from llmc.models.skeleton import build_skeleton as _engine_build_skeleton
from llmc.models.structure import find_decoder

from .errors import WizardError

__all__ = [
    "Candidate",
    "CodePackageError",
    "ModelReport",
    "ProjectorNode",
    "QuantLayer",
    "build_skeleton",
    "format_report",
    "inspect_model",
    "inspect_module",
]


class CodePackageError(WizardError):
    """The model's own code package cannot be imported (not installed, or broken)."""


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


@dataclass
class ProjectorNode:
    """One module (or raw Parameter) of the projector tree."""

    name: str  # child name ("" for the projector itself)
    path: str  # dotted path from the model root
    cls: str  # class name ("class" in JSON)
    shape: str | None  # "in→out" (Linear/Conv, Conv adds the kernel), norm width, "vocab×dim", Parameter shape
    bias: bool | None  # for Linear/Conv/norm; None for containers
    params: int  # parameters in this subtree
    role: str | None = None  # "injection" | "norm-after" | None
    children: list[ProjectorNode] = field(default_factory=list)


@dataclass
class Candidate:
    """A layer (or Parameter) outside the language model that writes its hidden width."""

    name: str  # dotted path from the model root
    cls: str
    shape: str | None


@dataclass
class QuantLayer:
    """A Linear of the decoder blocks: what weight-only quantization will touch."""

    name: str
    in_features: int
    out_features: int
    divisible_by_group: bool | None = None  # None when no group size was given


@dataclass
class ModelReport:
    architecture: str
    model_kind: str  # "transformers" | "custom-code"
    language_model_path: str  # module holding the decoder blocks
    blocks_path: str
    num_blocks: int
    hidden_size: int
    vision_tower_path: str | None
    projector_path: str | None
    projector_tree: ProjectorNode | None
    proposed_last_layers: list[str]  # injection layers / Parameters, dotted paths from the model root
    trailing_norms: list[str]  # hidden-width norms after the injection layer (rotate them too)
    candidates: list[Candidate]
    flags: list[str]
    quant_layers: list[QuantLayer]
    group_size: int | None = None
    group_size_problems: list[str] = field(default_factory=list)  # quant layers whose in_features % group != 0
    weights_dir: str | None = None
    #: the role of each proposed injection point (main projector, deepstack injection, resampler
    #: output, image-newline vector), when data flow found them
    injection_roles: dict[str, str] = field(default_factory=dict)
    #: how the proposal was found: "data flow", or "structure" with the reason data flow could not run
    proposal_source: str = "structure"
    #: "chat" when the model folder ships a chat template, "plain" when it does not (the
    #: processor's own format), None when not read from a folder
    prompt_format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; dataclass fields named ``cls`` become ``"class"``."""
        return _plain(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {("class" if f.name == "cls" else f.name): _plain(getattr(obj, f.name))
                for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Structure -> report
# ---------------------------------------------------------------------------------------------


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else (prefix or name)


def shape_of(m: nn.Module | nn.Parameter) -> str | None:
    """Short shape text: ``"4608→2560"`` for a Linear, ``"3→64 k14x14"`` for a Conv..."""
    if isinstance(m, nn.Parameter):
        return "×".join(str(d) for d in m.shape)
    if isinstance(m, nn.Linear):
        return f"{m.in_features}→{m.out_features}"
    if isinstance(m, CONV_TYPES):
        return f"{m.in_channels}→{m.out_channels} k{'x'.join(str(k) for k in m.kernel_size)}"
    if isinstance(m, nn.Embedding):
        return f"{m.num_embeddings}×{m.embedding_dim}"
    w = norm_width(m)
    return str(w) if w is not None else None


def _bias(m: nn.Module) -> bool | None:
    if isinstance(m, (nn.Linear, *CONV_TYPES)) or norm_width(m) is not None:
        return getattr(m, "bias", None) is not None
    return None


def _tree(m: nn.Module, name: str, path: str, roles: dict[str, str]) -> ProjectorNode:
    node = ProjectorNode(name, path, type(m).__name__, shape_of(m), _bias(m),
                         sum(p.numel() for p in m.parameters()), roles.get(path))
    for pn, p in raw_params(m):  # raw Parameters of custom modules show up as leaves
        pp = _join(path, pn)
        node.children.append(ProjectorNode(pn, pp, "Parameter", shape_of(p), None, p.numel(), roles.get(pp)))
    for cn, c in m.named_children():
        node.children.append(_tree(c, cn, _join(path, cn), roles))
    return node


def _lookup(model: nn.Module, path: str) -> nn.Module | nn.Parameter | None:
    """The module or parameter at ``path``, or None."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        try:
            return model.get_parameter(path)
        except AttributeError:
            return None


def _flow_projector(parts, injections) -> str:
    """The projector module for a data-flow proposal: the structural one when it holds the main
    injection point (or the resampler's), else the module holding that point (Qwen3-VL: the
    merger, not the deepstack mergers next to it)."""
    first = next((i for i in injections if i.role in (MAIN, RESAMPLER)), injections[0])
    main, p = first.path, parts.projector_path
    if p and (main == p or main.startswith(p + ".")):
        return p
    owner = main.rsplit(".", 1)[0] if "." in main else ""
    if first.role == RESAMPLER and p:  # the structural projector feeds the resampler: both (Idefics2's connector)
        common = ".".join(a for a, _ in itertools.takewhile(lambda ab: ab[0] == ab[1], zip(p.split("."),
                                                                                       owner.split("."))))
        tower = parts.vision_tower_path or ""
        if common.count(".") >= 1 and not (tower + ".").startswith(common + ".") and owner.startswith(common):
            return common
    return owner


def inspect_module(model: nn.Module, architecture: str | None = None, model_kind: str = "transformers",
                   group_size: int | None = None, weights_dir: str | None = None, trace=None,
                   trace_note: str | None = None) -> ModelReport:
    """Report the structure of an (already built, possibly meta-device) model. ``trace`` (a
    :class:`llmc.models.dataflow.Trace`) gives the injection points found by data flow; without
    it they are found by structure (``trace_note`` says why)."""
    if group_size is not None and group_size <= 0:
        raise WizardError(f"group size must be a positive integer, got {group_size}", "pass --group-size N with N > 0")
    parts = locate_mm_parts(model)
    hidden = parts.hidden_size
    lm = model.get_submodule(parts.language_model_path) if parts.language_model_path else model
    dec = find_decoder(lm)
    blocks_path = _join(parts.language_model_path, dec.blocks_path)
    flags = list(parts.flags)

    proposed: list[str] = []
    norms: list[str] = []
    tree = None
    injection_roles: dict[str, str] = {}
    source = "structure" + (f" (data flow: {trace_note})" if trace_note else "")
    if trace is not None:
        missing = [i.path for i in trace.injections if _lookup(model, i.path) is None]
        if missing:
            source = f"structure (data flow named {missing[0]}, which this model lacks)"
            trace = None
    if trace is not None:
        source = "data flow"
        proposed = [i.path for i in trace.injections]
        injection_roles = {i.path: i.role for i in trace.injections}
        norms = [n for i in trace.injections for n in i.trailing_norms]
        ppath = _flow_projector(parts, trace.injections)
        parts.projector_path, parts.projector = ppath, (model.get_submodule(ppath) if ppath else None)
        flags += _flow_flags(trace.injections)
        tree_roles = {p: "injection" for p in proposed} | {p: "norm-after" for p in norms}
        if parts.projector is not None:
            tree = _tree(parts.projector, "", ppath, tree_roles)
    elif parts.projector is not None:
        inj = find_injection_layers(parts.projector, hidden, parts.projector_path)
        proposed = [_join(parts.projector_path, n) for n in inj.names]
        norms = [_join(parts.projector_path, n) for n, _ in inj.norms]
        flags = inj.flags + flags
        roles = {p: "injection" for p in proposed} | {p: "norm-after" for p in norms}
        tree = _tree(parts.projector, "", parts.projector_path, roles)
    elif parts.vision_tower_path is None:
        flags.append("text-only model: no vision tower or projector found")
    else:
        flags.append(f"no projector found: no module outside the language model writes its width {hidden}")

    candidates: list[Candidate] = []
    for path in parts.projector_candidates:
        inj = find_injection_layers(model.get_submodule(path), hidden)
        for n, m in inj.candidates:
            candidates.append(Candidate(_join(path, n), type(m).__name__, shape_of(m)))
        for n, p in inj.param_candidates:
            candidates.append(Candidate(_join(path, n), "Parameter", shape_of(p)))
    for v in parts.hidden_vectors:
        candidates.append(Candidate(v, "Parameter", shape_of(model.get_parameter(v))))
        if proposed and trace is None:  # spliced among the image tokens: it enters the stream too
            proposed.append(v)

    named = {c.name for c in candidates}
    for p in proposed:  # what data flow found is offered even where structure saw no candidate
        if p not in named:
            obj = _lookup(model, p)
            candidates.append(Candidate(p, "Parameter" if isinstance(obj, nn.Parameter) else type(obj).__name__,
                                        shape_of(obj)))

    quant = _quant_layers(dec.blocks, blocks_path, group_size)
    problems = [q.name for q in quant if q.divisible_by_group is False]

    return ModelReport(
        architecture=architecture or type(model).__name__,
        model_kind=model_kind,
        language_model_path=parts.language_model_path,
        blocks_path=blocks_path,
        num_blocks=len(dec.blocks),
        hidden_size=hidden,
        vision_tower_path=parts.vision_tower_path,
        projector_path=parts.projector_path,
        projector_tree=tree,
        proposed_last_layers=proposed,
        trailing_norms=norms,
        candidates=candidates,
        flags=flags,
        quant_layers=quant,
        group_size=group_size,
        group_size_problems=problems,
        weights_dir=weights_dir,
        injection_roles=injection_roles,
        proposal_source=source,
    )


def _flow_flags(injections) -> list[str]:
    """What the user must know about injection points that are not one plain layer."""
    flags = []
    deep = [i.path for i in injections if i.role == DEEPSTACK]
    if deep:
        flags.append(f"{len(deep)} deepstack injection(s) add image features to later decoder layers' inputs "
                     f"({', '.join(deep)}): rotation must rotate each of them")
    after = [n for i in injections for n in i.trailing_norms]
    if after:  # as the structural search says it
        flags.append(f"{FLAG_NORM_AFTER} ({', '.join(after)})")
    for i in injections:
        if i.role == RESAMPLER:
            flags.append(f"the image rows are written by a resampler's norm ({i.path}), not a Linear: rotation "
                         "cannot be carried through it")
    return flags


# ---------------------------------------------------------------------------------------------
# Building a skeleton from a model folder (config only, never the weights)
# ---------------------------------------------------------------------------------------------


def build_skeleton(weights_dir: str | Path, code_package: str | None = None) -> tuple[nn.Module, str, str]:
    """``(model on the meta device, architecture name, model kind)``; reads only ``config.json``.

    The engine's :func:`llmc.models.skeleton.build_skeleton`, with its errors as the wizard's:
    :class:`CodePackageError` when the code package cannot be imported, else :class:`WizardError`.
    """
    try:
        return _engine_build_skeleton(weights_dir, code_package)
    except CodeImportError as e:
        raise CodePackageError(e.message, e.fix) from e
    except SkeletonError as e:
        raise WizardError(e.message, e.fix) from e


def inspect_model(weights_dir: str | Path, code_package: str | None = None,
                  group_size: int | None = None) -> ModelReport:
    """Build ``weights_dir``'s skeleton (no weight file is opened) and report its structure."""
    model, arch, kind = build_skeleton(weights_dir, code_package)
    trace, note = injections_by_data_flow(model, kind, weights_dir)
    rep = inspect_module(model, arch, kind, group_size, str(weights_dir), trace=trace, trace_note=note)
    rep.prompt_format = prompt_format_of(weights_dir)
    return rep


def injections_by_data_flow(model: nn.Module, kind: str, weights_dir=None):
    """``(trace, None)`` from :func:`llmc.models.dataflow.trace_injections` on a small copy of the
    model, or ``(None, why not)``. Research code (custom-code models) is not run here."""
    from llmc.models.dataflow import DataFlowUnavailable, trace_injections

    config = getattr(model, "config", None)
    if kind != "transformers" or config is None:
        return None, "the model's own code is not run to trace it"
    try:
        return trace_injections(config, weights_dir), None
    except DataFlowUnavailable as e:
        return None, str(e)


def _quant_layers(blocks: nn.Module, blocks_path: str, group_size: int | None) -> list[QuantLayer]:
    """The Linears of the decoder blocks, each with whether ``group_size`` divides its width."""
    out = []
    for n, m in blocks.named_modules():
        if isinstance(m, nn.Linear):
            ok = None if not group_size else m.in_features % group_size == 0
            out.append(QuantLayer(_join(blocks_path, n), m.in_features, m.out_features, ok))
    return out


def layer_problems(weights_dir: str | Path, code_package: str | None, layers,
                   group_size: int | None) -> tuple[list[str], list[str]]:
    """From the model's skeleton (config.json only), built once: the names in ``layers`` it has
    neither as a module nor as a parameter, and the quantized layers whose input width
    ``group_size`` does not divide."""
    model, _, _ = build_skeleton(weights_dir, code_package)
    missing = [p for p in layers if _lookup(model, p) is None]
    if not group_size:
        return missing, []
    parts = locate_mm_parts(model)
    lm = model.get_submodule(parts.language_model_path) if parts.language_model_path else model
    dec = find_decoder(lm)
    quant = _quant_layers(dec.blocks, _join(parts.language_model_path, dec.blocks_path), group_size)
    return missing, [q.name for q in quant if q.divisible_by_group is False]


def rotation_refusal(weights_dir: str | Path, code_package: str | None, language_model_path: str | None,
                     injection: list[str], hidden_size: int | None) -> str | None:
    """Why the engine could not rotate this model (one line), or None when it can: the engine's
    own pre-rotation checks run on the skeleton (config.json only, no weights)."""
    from llmc.models.skeleton import skeleton_view
    from llmc.quant.rotation import check_rotation

    model, _, _ = build_skeleton(weights_dir, code_package)
    try:
        if language_model_path is None or not hidden_size:
            parts = locate_mm_parts(model)
            language_model_path, hidden_size = parts.language_model_path, parts.hidden_size
        check_rotation(skeleton_view(model, language_model_path, injection, hidden_size))
    except ValueError as e:
        return " ".join(str(e).split())
    return None


def code_conventions(package: str) -> tuple[str, str | None, list[str]]:
    """Whether a model's code package follows the LLaVA lineage's conventions (the loader,
    conversation templates and mm_utils of LLaVA and VILA 1.5): ``("llava-lineage", conv_mode, [])``
    with the conversation mode the code picks (:func:`llmc.models.llava_lineage.default_conv_mode`),
    else ``("llava-lineage", None, missing)``: what it lacks."""
    from llmc.models.llava_lineage import default_conv_mode, follows_conventions

    missing = follows_conventions(package)
    if missing:
        return "llava-lineage", None, missing
    return "llava-lineage", default_conv_mode(package), []


#: where a transformers model folder keeps a chat template (its own file, or a key of a config)
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_TEMPLATE_KEYS = ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json")


def prompt_format_of(weights_dir: str | Path) -> str:
    """``"chat"`` when the folder ships a chat template (a processor's or a tokenizer's), else
    ``"plain"``: the question as is, in the processor's own format (PaliGemma's)."""
    import json

    d = Path(weights_dir)
    if any((d / f).is_file() for f in _TEMPLATE_FILES) or list(d.glob("additional_chat_templates/*.jinja")):
        return "chat"
    for f in _TEMPLATE_KEYS:
        try:
            if json.loads((d / f).read_text()).get("chat_template"):
                return "chat"
        except (OSError, ValueError, AttributeError):
            continue
    return "plain"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def format_report(r: ModelReport) -> str:
    """A short human-readable summary of a report."""
    lines = [
        f"{r.architecture} ({r.model_kind})",
        (f"  language model : {r.language_model_path or '<root>'}  ({r.num_blocks} blocks at {r.blocks_path}, "
         f"hidden {r.hidden_size})"),
        f"  vision tower   : {r.vision_tower_path or '-'}",
        f"  projector      : {r.projector_path or '-'}",
        f"  last layer(s)  : {', '.join(_with_role(r, p) for p in r.proposed_last_layers) or '-'}",
        f"  found by       : {r.proposal_source}",
    ]
    if r.trailing_norms:
        lines.append(f"  trailing norms : {', '.join(r.trailing_norms)}")
    lines.append(f"  quant layers   : {len(r.quant_layers)} Linear in the decoder blocks")
    if r.group_size is not None:
        lines.append(f"  group size {r.group_size}: "
                     + (f"{len(r.group_size_problems)} layer(s) not divisible: {', '.join(r.group_size_problems)}"
                        if r.group_size_problems else "every layer divisible"))
    lines += [f"  ! {f}" for f in r.flags]
    return "\n".join(lines)


def _with_role(r: ModelReport, path: str) -> str:
    role = r.injection_roles.get(path)
    return f"{path} ({role})" if role else path


def print_report(model_dir: Path, code: str | None = None, group_size: int | None = None,
                 as_json: bool = False) -> int:
    """``llmc-wizard inspect MODEL_DIR``: print the report; errors are one line."""
    try:
        report = inspect_model(model_dir, code, group_size)
    except (WizardError, ValueError, ImportError, RuntimeError, OSError) as e:
        msg = " ".join(str(e).split())  # one line
        print(f"llmc-wizard inspect: error: {msg}", file=sys.stderr)
        return 1
    print(report.to_json() if as_json else format_report(report))
    return 0
