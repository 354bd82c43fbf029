"""The engine on every family of the family zoo: blockwise replay, GPTQ vs RTN, rotation.

The adapter is the engine's transformers-native one, driven only by the values a generated
declaration carries (:class:`llmc.models.hf_vlm.HFVisionLanguageModel` with the paths of
:func:`wizard.demo.families.family_info`).
"""

from __future__ import annotations

import pytest
import torch

from wizard.demo.families import FAMILIES, build_family, family_info

pytestmark = pytest.mark.slow


def declared(name: str, path):
    """The class the wizard's declaration for ``name`` defines: the values inspect finds."""
    from llmc.models.hf_vlm import HFVisionLanguageModel
    from wizard.services.inspect import inspect_model

    rep = inspect_model(path)
    info = family_info(name)
    assert (rep.language_model_path, rep.vision_tower_path, rep.projector_path) == \
        (info.language_model, info.vision_tower, info.projector)
    assert set(info.projector_last) <= set(rep.proposed_last_layers)
    # found by following the image rows (Mllama's image goes to cross-attention: by structure)
    assert rep.proposal_source == "data flow" or name == "mllama", rep.proposal_source
    return type(f"Declared_{name}", (HFVisionLanguageModel,), dict(
        model_cls_name=rep.architecture, language_model_path=rep.language_model_path,
        vision_tower_path=rep.vision_tower_path, projector_path=rep.projector_path,
        projector_last_layers=tuple(rep.proposed_last_layers), prompt_format=rep.prompt_format))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    name = request.param
    path = build_family(name, tmp_path_factory.mktemp(name) / name)
    return name, path


def _adapter(family):
    name, path = family
    return declared(name, path)(path, "float32", "cpu")


def _batches(adapter, zoo, n=3):
    from llmc.data.calib import load_custom_mm

    return [adapter.batch_process([s]) for s in load_custom_mm(zoo.calib_set, n)]


def _final_logits(adapter, batches):
    with torch.no_grad():
        return [adapter.mm_model(**b).logits[:, -1].float() for b in batches]


def _replayed_logits(adapter, inputs):
    """The blocks replayed one after another on captured inputs, then the norm and the head:
    what blockwise quantization computes with every block's own inputs."""
    from llmc.quant.blockwise import answer_tail

    return [torch.exp(t)[:, -1] for t in answer_tail(adapter, 0, "cpu")([bi.hidden for bi in inputs], inputs)]


def test_blockwise_replay_reproduces_the_model(family, zoo):
    """An identity quantizer's view: replaying the captured inputs block by block gives the
    model's own final distribution for every family (sliding vs global attention, cross-attention)."""
    from llmc.quant.blockwise import capture_block_inputs

    adapter = _adapter(family)
    batches = _batches(adapter, zoo)
    want = [torch.softmax(t, -1) for t in _final_logits(adapter, batches)]
    inputs = capture_block_inputs(adapter, batches)
    assert all(bi.calls is not None and len(bi.calls) == len(adapter.get_blocks()) for bi in inputs)
    got = _replayed_logits(adapter, inputs)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5), (g - w).abs().max()


def test_gemma3_global_layer_needs_its_own_inputs(zoo, tmp_path):
    """Replaying the first (sliding-window) block's inputs into the global layer changes the
    result: the per-block capture is what makes the replay above exact."""
    from llmc.quant.blockwise import BlockInput, capture_block_inputs

    adapter = _adapter(("gemma3", build_family("gemma3", tmp_path / "gemma3")))
    batches = _batches(adapter, zoo)
    want = [torch.softmax(t, -1) for t in _final_logits(adapter, batches)]
    first_only = [BlockInput(bi.hidden, bi.args, bi.kwargs) for bi in capture_block_inputs(adapter, batches)]
    got = _replayed_logits(adapter, first_only)
    assert max(float((g - w).abs().max()) for g, w in zip(got, want)) > 1e-4


def _kl_after(adapter, method, batches, held_out, want):
    from llmc.quant.blockwise import quantize_blockwise

    quantize_blockwise(adapter, method, batches)
    got = _final_logits(adapter, held_out)
    return sum(float(torch.nn.functional.kl_div(torch.log_softmax(g, -1), torch.log_softmax(w, -1), log_target=True,
                                                 reduction="batchmean")) for g, w in zip(got, want))


def test_gptq_beats_rtn_at_w3(family, zoo):
    """W3 g32: GPTQ's final-distribution error against float is at most RTN's (its calibration
    reaches every block with that block's own inputs)."""
    from llmc.data.calib import load_custom_mm
    from llmc.quant.methods import RTN, Gptq
    from llmc.quant.quantizer import WeightQuantConfig

    torch.manual_seed(0)
    samples = load_custom_mm(zoo.calib_set, 12)
    wcfg = WeightQuantConfig(bit=3, group_size=32)
    errors = {}
    for label, method in (("rtn", RTN(wcfg)), ("gptq", Gptq(wcfg, {}))):
        adapter = _adapter(family)
        batches = [adapter.batch_process([s]) for s in samples[:8]]
        held_out = [adapter.batch_process([s]) for s in samples[8:]]
        want = _final_logits(adapter, held_out)
        errors[label] = _kl_after(adapter, method, batches, held_out, want)
    assert errors["gptq"] <= errors["rtn"], errors


#: families whose language model the rotation cannot take, and why
NOT_ROTATABLE = {"gemma3": "post-norm", "glm4v": "post-norm", "idefics2": "is a norm", "mllama": "cross-attention"}


def test_rotation_keeps_the_logits_or_is_refused_before_the_run(family, zoo):
    """Every family either rotates with its final logits unchanged (1e-4), or is refused from its
    skeleton (what the Generate step checks) with one line, and the engine refuses it too."""
    from llmc.quant.rotation import rotate_model_
    from wizard.services.inspect import inspect_model, rotation_refusal

    name, path = family
    rep = inspect_model(path)
    why = rotation_refusal(path, None, rep.language_model_path, rep.proposed_last_layers, rep.hidden_size)
    adapter = _adapter(family)
    if name in NOT_ROTATABLE:
        assert why and NOT_ROTATABLE[name] in why and "\n" not in why
        with pytest.raises(ValueError, match=NOT_ROTATABLE[name]):
            rotate_model_(adapter, "hadamard", seed=0)
        return
    assert why is None
    # trained norms are not all ones (a random checkpoint's are): give them a seeded spread, so a
    # norm folded into the wrong readers shows
    from llmc.models.structure import is_norm

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapter.language_model().modules():
            if is_norm(m) and isinstance(getattr(m, "weight", None), torch.Tensor):
                m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=gen))
    batches = _batches(adapter, zoo, 2)
    before = _final_logits(adapter, batches)
    rotate_model_(adapter, "hadamard", seed=0)
    after = _final_logits(adapter, batches)
    for a, b in zip(after, before):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_generate_refuses_a_rotation_the_model_cannot_take(tmp_path, zoo):
    from wizard.services.answers import Answers
    from wizard.services.errors import WizardError
    from wizard.session import Session
    from wizard.steps import inspect, plan

    a = Answers()
    a.source.weights_dir = str(build_family("gemma3", tmp_path / "gemma3"))
    a.generate.name, a.generate.method, a.generate.rotate = "g3", "RTN", "hadamard"
    a.generate.calib_path, a.generate.eval_path = str(zoo.calib_set), str(zoo.eval_set / "data")
    s = Session(a, tmp_path / "answers.yml", tmp_path / "work")
    inspect(s)
    with pytest.raises(WizardError, match="cannot be rotated: rotation: .*post-norm") as e:
        plan(s)
    assert "\n" not in str(e.value)
    a.generate.rotate = None
    assert plan(s).config_text  # without rotation the same model generates


def test_a_processor_missing_a_package_names_it(tmp_path):
    """SmolVLM's processor needs num2words: without it (blocked in a fresh interpreter) the
    adapter says which package to install, in one line."""
    import subprocess
    import sys

    path = build_family("smolvlm", tmp_path / "smolvlm")
    code = ("import sys; sys.modules['num2words'] = None\n"
            "from llmc.models.hf_vlm import load_processor\n"
            "try:\n    load_processor(sys.argv[1])\nexcept ValueError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip().endswith("it needs num2words (pip install num2words)"), r.stdout + r.stderr[-2000:]
    assert len(r.stdout.strip().splitlines()) == 1


def test_a_wrong_language_model_path_names_what_was_looked_for(tmp_path):
    path = build_family("qwen2_vl", tmp_path / "qwen2_vl")
    cls = declared("qwen2_vl", path)
    cls.language_model_path = "model.text_model"
    with pytest.raises(ValueError, match=r"language_model_path 'model.text_model' is not in Qwen2VLForConditional"):
        cls(path, "float32", "cpu")


def test_what_a_decoder_loop_adds_between_blocks_is_kept_as_its_rows_and_joins_along_the_batch():
    """Deepstack-style additions touch a few rows: kept sparse, applied and concatenated they equal
    the dense addition."""
    from llmc.quant.capture import Added

    g = torch.Generator().manual_seed(0)
    deltas = []
    for _ in range(2):
        d = torch.zeros(1, 6, 8)
        d[0, 1:3] = torch.randn(2, 8, generator=g)
        deltas.append(d)
    parts = [Added.of(d) for d in deltas]
    assert all(p.rows.shape == (2, 8) for p in parts)
    out = torch.randn(2, 6, 8, generator=g)
    assert torch.equal(Added.cat(parts).apply(out), out + torch.cat(deltas))
    assert Added.of(torch.zeros(1, 6, 8)) is None


def test_the_answer_tail_from_a_later_block_reproduces_the_model(family, zoo):
    """What AWQ's output search scores: block 0's output through the tail from block 1 gives the
    model's own answer (Qwen3-VL's deepstack features enter before block 1: they were dropped)."""
    from llmc.quant.blockwise import answer_tail, capture_block_inputs, run_block

    adapter = _adapter(family)
    batches = _batches(adapter, zoo, 2)
    want = [torch.softmax(t, -1) for t in _final_logits(adapter, batches)]
    inputs = capture_block_inputs(adapter, batches)
    if inputs[0].calls is None:
        pytest.skip("per-block inputs not captured for this family")
    outs = [run_block(adapter.get_blocks()[0], [bi], "cpu")[0] for bi in inputs]
    got = [torch.exp(t)[:, -1] for t in answer_tail(adapter, 1, "cpu")(outs, inputs)]
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5), (g - w).abs().max()
