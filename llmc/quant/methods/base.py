"""What every quantization method is made of: its options, its capabilities and its blockwise code.

A method is one module of :mod:`llmc.quant.methods` that defines ``SPEC``, a :class:`MethodSpec`:

* ``options``: a :class:`MethodOptions` model, the method's ``quant.special`` keys with their one
  set of defaults, validated once when the config loads (the method reads the validated object);
* its capabilities (:class:`MethodSpec` fields: needs data, rotation, range search, Hessians,
  activation quantization, exports) that the config schema, ``llmc check``, the runner, the
  wizard's form and its config template read instead of naming methods;
* ``impl``: the :class:`Method` subclass the blockwise pipeline drives.

Modules here import nothing heavy at import time (the config loads without torch): they use
:data:`torch` below, which imports torch on first use, and :func:`no_grad` instead of
``@torch.no_grad()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from llmc.config.errors import _did_you_mean
from llmc.config.sections import _Section

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from llmc.models.structure import Subset
    from llmc.quant.blockwise import BlockContext
    from llmc.quant.collect import LayerStats
    from llmc.quant.quantizer import WeightQuantConfig


class _Torch:
    """``torch``, imported on first attribute access (method modules load with the config)."""

    def __getattr__(self, name: str):
        import torch as _t

        return getattr(_t, name)


torch: Any = _Torch()


def no_grad(fn: Callable) -> Callable:
    """``@torch.no_grad()`` without importing torch at class definition."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch as _t

        with _t.no_grad():
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class RunFacts:
    """What ``auto`` options resolve against: the calib section, the model's depth, its placement."""

    calib: Any = None
    n_blocks: int | None = None
    placement: str = "single"


class MethodOptions(_Section):
    """A method's ``quant.special`` keys. Subclasses add fields (each with its default) and may
    override :meth:`check` (cross-section rules, at config load) and :meth:`resolve` (``auto``
    values, once the model is loaded)."""

    _yaml_path: ClassVar[str] = "quant.special"
    _method: ClassVar[str] = ""

    @classmethod
    def _unknown_key_message(cls, key: str) -> str:
        from . import registry

        if key in ROTATION_KEYS and "rotate" not in cls.model_fields:
            rotating = [s.name for s in registry().values() if s.rotation != "never"]
            return f"{cls._method} does not rotate; use {', '.join(rotating)} to rotate the residual stream"
        allowed = list(cls.model_fields)
        if not allowed:
            return f"not an option of {cls._method}; {cls._method} takes no special options"
        guess = _did_you_mean(key, allowed)
        if guess is not None:
            return f"not an option of {cls._method}; did you mean {guess!r}?"
        return f"not an option of {cls._method}; its options are {', '.join(allowed)}"

    def check(self, config) -> None:
        """Rules that read other sections of ``config`` (a whole :class:`~llmc.config.Config`);
        raise :class:`~llmc.config.errors._KeyedError` keyed from the config's root."""

    def complete(self, quant) -> None:
        """Fill defaults that follow from the rest of ``quant`` (the quant section)."""

    def resolve(self, facts: RunFacts) -> MethodOptions:
        """A copy with every ``auto`` value decided for this run (default: as it is)."""
        return self.model_copy()


#: the option keys that rotate the residual stream (offered by methods whose rotation is not "never")
ROTATION_KEYS = ("rotate", "online_rotate")


class Method:
    """A blockwise weight quantization method (:func:`llmc.quant.blockwise.quantize_blockwise`
    drives it: ``transform_block``, then per subset ``stream`` and ``quantize_subset``)."""

    #: the options model (set by each method)
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    name = "base"
    #: rows the method fits on: ``"all"`` tokens, or the ``"last"`` of each calibration sequence
    loss_tokens = "all"
    #: rows its layer-level fits (the layer inputs it is given, e.g. AWQ's clip search) read
    clip_tokens = "all"
    #: whether it fits on the model's answers: the pipeline then gives each block's context the
    #: float model's next-token log-probabilities and a function computing them from the block's output
    output_loss = False
    #: input rows sampled per layer (what the per-layer error, and fits that read rows, see)
    sample_rows = 4096
    #: whether equal-length calibration sequences may be replayed together (a group is kept only
    #: when the first block gives the same output both ways)
    coalesce = False
    #: whether the pipeline also carries the float model's own activations, so that each block's
    #: context holds the float model's outputs of the block (``ctx.targets``): a fit towards them
    #: also corrects the error the blocks before it left
    float_targets = False
    #: whether each subset's inputs are collected after the subsets before it were quantized
    #: (``False``: every subset's from the float block; see :func:`llmc.quant.collect._subset_order`)
    true_sequential = True

    def __init__(self, wcfg: WeightQuantConfig, options: MethodOptions | dict | None = None):
        self.wcfg = wcfg
        if not isinstance(options, MethodOptions):
            options = self.Options.model_validate(dict(options or {}))
        #: the validated options; every default comes from :attr:`Options`
        self.opts = options
        #: ``layer -> (scale, zero)`` (CPU, float32, (out, n_groups)) of every quantized layer,
        #: ``None`` where the stored weight has no such layout: what exports pack the codes with.
        self.qparams: dict = {}

    def record(self, layer: nn.Module, scale, zero) -> None:
        """Remember the quantization parameters ``layer``'s fake-quantized weight was made with."""
        self.qparams[layer] = None if scale is None else (scale.detach().float().cpu(), zero.detach().float().cpu())

    def transform_block(self, ctx: BlockContext) -> None:
        """Float equivalence transforms of the block (default: none)."""

    def stream(self, layers: dict[str, nn.Linear]):
        """Optional ``on_batch`` accumulator for :func:`collect_inputs` and its state."""
        return None, None

    def quantize_subset(self, ctx: BlockContext, subset: Subset, stats: dict[str, LayerStats], state) -> None:
        raise NotImplementedError

    # what the run reports (the runner knows no method): one log line when the method starts,
    # the extra fields of a layer's ``layer_error`` event, and the block's own events
    def describe(self) -> str | None:
        """A line for the run log about the choices made for this run (None: nothing to say)."""
        return None

    def layer_fields(self, block: int, layer: str) -> dict:
        """Extra fields of the ``layer_error`` event of ``layer`` in ``block``."""
        return {}

    def block_events(self, block: int) -> list[tuple[str, dict]]:
        """``(event name, fields)`` the method reports once ``block`` is done."""
        return []


Rotation = Literal["never", "optional", "always"]


@dataclass(frozen=True)
class MethodSpec:
    """A method as the rest of the tool sees it."""

    name: str  #: canonical spelling (``quant.method``); matched case-insensitively
    impl: type[Method]
    summary: str  #: one line for help texts and the wizard's form
    needs_data: bool  #: calibrates on data (``calib`` is required); False: rounds without a forward pass
    rotation: Rotation = "never"  #: whether it rotates the residual stream (QuaRot) first
    #: the option through which the method searches each group's range itself (e.g. AWQ's clip
    #: search); None: ``quant.weight.calib_algo`` (min-max or the MSE search) sets the ranges
    own_ranges: str | None = None
    #: it builds each layer's Hessian (and offers the choice of the inputs it reads: ``true_sequential``)
    hessians: bool = False
    #: ``quant.weight.symmetric`` a generated config uses by default
    symmetric: bool = False
    #: ``quant.special`` a generated config spells out (the rest stays at the options' defaults)
    preset: dict = field(default_factory=dict)
    #: position in lists shown to users
    order: int = 100
    #: the method a new model's answers start with (one method says so)
    suggested: bool = False
    #: exports it cannot feed, with the reason and fix: ``options, format -> message or None``
    export_problem: Callable[[MethodOptions, Any, str], str | None] | None = None

    @property
    def options(self) -> type[MethodOptions]:
        return self.impl.Options

    @property
    def range_search(self) -> bool:
        """``quant.weight.calib_algo: mse`` applies."""
        return self.own_ranges is None

    def generated_special(self, **answers) -> dict:
        """``quant.special`` of a generated config: the preset, then each answer the options take
        (``rotate``, ``true_sequential``, ...) where it differs from the options' default."""
        out = dict(self.preset)
        fields = self.options.model_fields
        for key, value in answers.items():
            if key in fields and value is not None and value != fields[key].default:
                out[key] = value
        return out
