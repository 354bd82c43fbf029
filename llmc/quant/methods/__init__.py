"""The method registry: every module of this package that defines ``SPEC`` is a method.

Adding a method is adding its module (options, capabilities, blockwise code: see :mod:`.base`);
the config schema, ``llmc check``, the runner, the wizard's form and its config template read
:func:`registry` and know no method by name.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from .base import Method, MethodOptions, MethodSpec, RunFacts


@functools.cache
def registry() -> dict[str, MethodSpec]:
    """``{canonical name: spec}`` of every method, in the order users see them."""
    specs = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, MethodSpec):
            _check_spec(spec, module.__name__)
            specs.append(spec)
    if sum(s.suggested for s in specs) != 1:
        raise TypeError(f"exactly one method must be suggested, not {[s.name for s in specs if s.suggested]}")
    return {s.name: s for s in sorted(specs, key=lambda s: (s.order, s.name))}


def _check_spec(spec: MethodSpec, where: str) -> None:
    """A spec's capabilities agree with its options (a method module's own contract)."""
    fields = spec.options.model_fields
    if (spec.rotation == "never") != ("rotate" not in fields):
        raise TypeError(f"{where}: rotation {spec.rotation!r} but the options "
                        f"{'lack' if 'rotate' not in fields else 'have'} a rotate key")
    if spec.hessians != ("true_sequential" in fields):
        raise TypeError(f"{where}: hessians {spec.hessians} disagrees with its options' true_sequential")
    if spec.options._method != spec.name or spec.impl.name != spec.name:
        raise TypeError(f"{where}: options and method must carry the name {spec.name!r}")


def names() -> tuple[str, ...]:
    return tuple(registry())


def suggested() -> str:
    """The method a new model's answers start with."""
    return next(s.name for s in registry().values() if s.suggested)


def canonical(name: str) -> str | None:
    """The registered spelling of ``name`` (case-insensitive), or None."""
    if not isinstance(name, str):
        return None
    return {n.lower(): n for n in registry()}.get(name.strip().lower())


def spec(name: str) -> MethodSpec:
    """The spec of method ``name`` (any case); ``KeyError`` naming the choices otherwise."""
    canon = canonical(name)
    if canon is None:
        raise KeyError(f"unknown method {name!r}; choose from {', '.join(registry())}")
    return registry()[canon]


def weight_config(qcfg):
    from llmc.quant.quantizer import WeightQuantConfig

    w = qcfg.weight
    return WeightQuantConfig(bit=w.bit, symmetric=w.symmetric, granularity=w.granularity, group_size=w.group_size,
                             calib_algo=getattr(w, "calib_algo", "minmax"))


def make_method(qcfg, calib=None, n_blocks: int | None = None, placement: str = "single") -> Method:
    """The configured method, its ``auto`` options decided for this run (``calib``: the config's
    calib section; ``n_blocks``: the model's depth; ``placement``: the model's placement)."""
    s = spec(qcfg.method)
    opts = qcfg.special if isinstance(qcfg.special, s.options) else s.options.model_validate(qcfg.special or {})
    return s.impl(weight_config(qcfg), opts.resolve(RunFacts(calib, n_blocks, placement)))


def default_loss_tokens(calib) -> str:
    """``"last"`` for VQA prompts without answers (``custom_mm``, ``add_answer: false``): each
    sequence's last position is where the model answers; ``"all"`` for text and answered samples."""
    if calib is not None and getattr(calib, "name", None) == "custom_mm" and not getattr(calib, "add_answer", False):
        return "last"
    return "all"


def __getattr__(name: str):
    # the method classes by their registered names (RTN, Awq, Gptq, ...) and METHODS, for callers
    # that name one explicitly (tests, benches)
    if name == "METHODS":
        return {n: s.impl for n, s in registry().items()}
    for s in registry().values():
        if s.impl.__name__ == name:
            return s.impl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Method", "MethodOptions", "MethodSpec", "RunFacts", "canonical", "default_loss_tokens", "make_method",
           "names", "registry", "suggested", "spec", "weight_config"]
