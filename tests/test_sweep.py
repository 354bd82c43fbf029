"""Every image-text-to-text model type the installed transformers registers (read from its own auto
mapping, so a new release's new types are swept too): inspect's proposal, checked by intervention.

For each type, a small random copy of its default configuration is built and inspected. The check
is independent of how inspect found its answer: it adds a random perturbation to the output of
every proposed layer (and to every proposed learned vector) and runs ``get_image_features`` again.
The proposal is right when every image row the model hands the language model changes (nothing
is missed) and every change is exactly one of the perturbation's rows (nothing upstream was
proposed: a layer before the writer would change the rows through the layers after it). Types
whose small copy cannot be built or run here are listed with the reason.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from llmc.models.dataflow import MAIN, NEWLINE, DataFlowUnavailable, image_features, small_copy, trace_model

pytestmark = pytest.mark.slow


def _types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    return t.detach().float().reshape(-1, width)


def intervention_problem(model, processor, proposed: list[str], roles: dict[str, str],
                         trailing_norms: list[str] = ()) -> str | None:
    """Why ``proposed`` are not the places whose outputs become the image rows, or None. Norms
    reported after the main layers (their output is what enters the stream) stand for them."""
    if trailing_norms:
        proposed = [p for p in proposed if roles.get(p) != MAIN] + list(trailing_norms)
    before = image_features(model, processor)
    g = torch.Generator().manual_seed(1)
    deltas: list[torch.Tensor] = []
    handles, restore = [], []
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for path in proposed:
        if path in modules and not (roles.get(path) == NEWLINE):
            target = modules[path]
        elif path in params and params[path].dim() == 1:  # a learned vector among the rows
            p = params[path]
            d = torch.randn(p.shape, generator=g)
            deltas.append(d.reshape(1, -1))
            restore.append((p, p.detach().clone()))
            with torch.no_grad():
                p.add_(d)
            continue
        elif path in params:  # a weight matrix: the module computing with it writes the rows
            target = modules[path.rsplit(".", 1)[0] if "." in path else ""]
        else:
            return f"{path} is neither a module nor a parameter of the model"

        def add(mod, args, out, store=deltas):
            t = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)
            d = torch.randn(t.shape, generator=g)
            store.append(d.reshape(-1, t.shape[-1]))
            t = t + d
            return (t, *out[1:]) if isinstance(out, (tuple, list)) else t

        handles.append(target.register_forward_hook(add))
    try:
        after = image_features(model, processor)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for p, v in restore:
                p.copy_(v)
    for role, feats in before.items():
        for i, (f0, f1) in enumerate(zip(feats, after.get(role, []))):
            width = f0.shape[-1]
            diff = _rows(f1, width) - _rows(f0, width)
            changed = diff.abs().amax(-1) > 0
            if not bool(changed.all()):
                return (f"{int((~changed).sum())} of {len(changed)} rows of {role} features {i} do not come from "
                        "the proposed layers")
            ds = [d for d in deltas if d.shape[-1] == width]
            if not ds:
                return f"no proposed layer writes the {width}-wide {role} features"
            dist = torch.cdist(diff, torch.cat(ds)).amin(-1)
            scale = 1e-3 * (1 + float(_rows(f0, width).abs().max())) * width ** 0.5
            if bool((dist > scale).any()):
                return (f"{role} features {i} change through computation after a proposed layer: a layer before "
                        "the one writing them was proposed")
    return None


def test_every_image_text_type_gets_the_layers_its_data_flow_feeds(capsys):
    from transformers import AutoConfig

    from wizard.services.inspect import inspect_module

    types = _types()
    right, wrong, unavailable = [], {}, {}
    torch.set_num_threads(2)
    for t in types:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                config = AutoConfig.for_model(t)
                model, processor = small_copy(config)
                trace = trace_model(model, processor)
            except DataFlowUnavailable as e:
                unavailable[t] = str(e)
                continue
            except Exception as e:  # noqa: BLE001 - a type whose default configuration does not load
                unavailable[t] = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
                continue
            rep = None
            try:
                rep = inspect_module(model, trace=trace)
                problem = intervention_problem(model, processor, rep.proposed_last_layers, rep.injection_roles,
                                                   rep.trailing_norms)
            except Exception as e:  # noqa: BLE001
                problem = f"inspect failed: {type(e).__name__}: {' '.join(str(e).split())[:160]}"
            if problem:
                wrong[t] = f"{rep.proposed_last_layers if rep else '?'}: {problem}"
            else:
                right.append(t)
            del model, processor
            gc.collect()
    checked = len(right) + len(wrong)
    with capsys.disabled():
        print(f"\n{len(right)}/{checked} right of the types whose small copy runs; {len(unavailable)} of "
              f"{len(types)} cannot be run here:")
        for t, why in sorted(wrong.items()):
            print(f"  WRONG {t}: {why}")
        for t, why in sorted(unavailable.items()):
            print(f"  not run {t}: {why}")
    assert checked >= 40, unavailable
    assert len(right) >= 0.95 * checked, wrong
    for must in ("glm4v", "qwen3_vl", "idefics2", "llava_next", "qwen2_5_vl"):
        assert must in right, (must, wrong.get(must), unavailable.get(must))


@pytest.mark.parametrize("model_type, main, others", [
    # the merger writes through a down_proj: nothing was proposed by names and order
    ("glm4v", ["model.visual.merger.down_proj"], {}),
    # the main merger and three deepstack mergers (only the latter were proposed)
    ("qwen3_vl", ["model.visual.merger.linear_fc2"],
     {f"model.visual.deepstack_merger_list.{i}.linear_fc2": "deepstack injection" for i in range(3)}),
    # the perceiver resampler after the modality projection writes the rows, through its norm
    ("idefics2", ["model.connector.perceiver_resampler.norm"], {}),
])
def test_inspect_of_a_config_only_folder_follows_the_image_rows(tmp_path, model_type, main, others):
    """``inspect`` of a folder holding only ``config.json`` (no processor files): the proposal and
    the roles come from data flow, with the family's default image processor."""
    from transformers import AutoConfig

    from wizard.services.inspect import format_report, inspect_model, rotation_refusal

    AutoConfig.for_model(model_type).save_pretrained(tmp_path)
    rep = inspect_model(tmp_path)
    assert rep.proposal_source == "data flow"
    assert rep.proposed_last_layers == main + list(others), rep.proposed_last_layers
    assert {p: r for p, r in rep.injection_roles.items() if p not in main} == others
    assert all(rep.injection_roles[p] in ("main projector", "resampler output") for p in main)
    assert f"{main[0]} ({rep.injection_roles[main[0]]})" in format_report(rep)
    if model_type == "idefics2":  # rotation cannot go through the resampler's norm: refused in one line
        why = rotation_refusal(tmp_path, None, rep.language_model_path, rep.proposed_last_layers, rep.hidden_size)
        assert why and "norm" in why and "\n" not in why


def test_a_norm_after_the_writing_layer_is_flagged_by_data_flow_as_by_structure(tmp_path):
    """ERNIE-4.5-VL's resampler ends in a Linear and a norm: data flow proposes the Linear, lists
    the norm as trailing, and says what rotation must do with it (only the structural search said so)."""
    from transformers import AutoConfig

    from llmc.models.projector import FLAG_NORM_AFTER
    from wizard.services.inspect import inspect_model

    AutoConfig.for_model("ernie4_5_vl_moe").save_pretrained(tmp_path)
    rep = inspect_model(tmp_path)
    assert rep.proposal_source == "data flow"
    assert rep.proposed_last_layers == ["model.resampler_model.mlp"]
    assert rep.trailing_norms == ["model.resampler_model.after_norm"]
    assert f"{FLAG_NORM_AFTER} (model.resampler_model.after_norm)" in rep.flags
