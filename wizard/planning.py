"""What Generate would write, checked before anything is written: the layers the declaration
names exist in the model, a rotation is one the engine can do, the engine accepts the config."""

from __future__ import annotations

from pathlib import Path

from .services.errors import WizardError
from .session import Session


def plan(s: Session):
    """What Generate would write (the declaration and the config), nothing written."""
    from .services import render

    g = s.answers.generate
    if not g.name:
        g.name = Path(s.answers.source.weights_dir or s.answers.source.weights_url or "model").name
    _check_layers(s)
    p = render.plan(s.answers, s.models_dir_resolved(), s.configs_dir())
    from llmc.quant.methods import spec

    rotation = spec(g.method).rotation
    if rotation == "always" or (g.rotate and rotation == "optional"):
        _check_rotation(s)
    return p


def _check_layers(s: Session) -> None:
    """A declaration never names a projector layer the model does not have (another model's pick),
    and its group size divides every quantized layer's width (checked from config.json alone)."""
    from .services.inspect import layer_problems
    from .services.render import _code_package

    src, ins = s.answers.source, s.answers.inspect
    if not src.weights_dir or not Path(src.weights_dir).exists():
        return
    s.activate_install_target()
    code = _code_package(src.code_dir) if ins.model_kind == "custom-code" and src.code_dir else None
    group = s.answers.generate.group_size
    missing, bad = layer_problems(src.weights_dir, code, ins.projector_last_layers, group)
    if missing:
        raise WizardError(f"inspect.projector_last_layers names {missing[0]}, which the model in {src.weights_dir} "
                          "does not have", "run the Inspect step again and pick from its proposals")
    if bad:  # checked where the group size is chosen, not when the engine meets the layer
        raise WizardError(f"group size {group} does not divide the input width of {len(bad)} layer(s), e.g. {bad[0]}",
                          "choose a group size that divides every layer's input width, or none (an empty field: per channel)")


def _check_rotation(s: Session) -> None:
    """Refuse a rotation the engine could not do, now rather than in the middle of the run."""
    from .services.inspect import rotation_refusal
    from .services.render import _code_package

    src, ins = s.answers.source, s.answers.inspect
    if not src.weights_dir or not Path(src.weights_dir).exists():
        return  # nothing to check against yet; the engine checks again before it rotates
    s.activate_install_target()
    code = _code_package(src.code_dir) if ins.model_kind == "custom-code" and src.code_dir else None
    why = rotation_refusal(src.weights_dir, code, ins.language_model_path, ins.projector_last_layers, ins.hidden_size)
    if why:
        raise WizardError(f"this model cannot be rotated: {why}",
                          "choose no rotation (generate.rotate: null) and a method other than Quarot")
