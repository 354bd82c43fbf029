"""QuaRot-style residual-stream rotation (``llmc.quant.rotation``) on both demo VLMs.

The float model must compute the same function after rotation; leaving out the projector's
injection layer (or just its bias) must break that, which is why VLMs need the extra hook.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from llmc.models import get_model_class
from llmc.quant.rotation import (
    hadamard_matrix,
    random_hadamard,
    random_orthogonal,
    rotate_model_,
    rotation_matrix,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
MODELS = {"llava": ("Llava", "tiny-llava"), "vila": ("Vila", "tiny-vila")}
TOL = {"rtol": 1e-4, "atol": 1e-4}




@pytest.fixture
def load(monkeypatch):
    """Fresh demo model (rotation works in place); tiny-vila's code package put on sys.path."""
    monkeypatch.syspath_prepend(str(ASSETS / "tiny-vila-code"))

    def _load(which: str):
        cls, weights = MODELS[which]
        return get_model_class(cls)(ASSETS / weights, "float32", "cpu")

    return _load


def _requests(n=4, start=0):
    from wizard.demo.shapes import eval_requests

    return eval_requests(n, start)


@pytest.fixture(scope="module")
def reqs():
    return _requests(4)


# --- the rotation matrices ----------------------------------------------------------------------


def test_sylvester_hadamard_is_correct_for_128():
    h = hadamard_matrix(128)
    assert h.shape == (128, 128) and set(h.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, 128 * torch.eye(128, dtype=torch.float64), rtol=0, atol=0)
    # Sylvester's closed form: H[i, j] = (-1) ** popcount(i & j)
    i = torch.arange(128)
    popcount = torch.zeros(128, 128, dtype=torch.int64)
    x = i[:, None] & i[None, :]
    for _ in range(7):
        popcount += x & 1
        x = x >> 1
    assert torch.equal(h, (1 - 2 * (popcount % 2)).to(torch.float64))
    with pytest.raises(ValueError, match="power-of-two size, got 96"):
        hadamard_matrix(96)


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotation_is_orthogonal_and_seeded(kind):
    q, used, notes = rotation_matrix(128, kind, seed=3)
    assert used == kind and not notes and q.dtype == torch.float64
    eye = torch.eye(128, dtype=torch.float64)
    torch.testing.assert_close(q.T @ q, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(q @ q.T, eye, rtol=0, atol=1e-12)
    assert torch.equal(q, rotation_matrix(128, kind, seed=3)[0])
    assert not torch.allclose(q, rotation_matrix(128, kind, seed=4)[0])
    if kind == "hadamard":  # H·diag(±1)/sqrt(d): every column is ± a Hadamard column
        h = hadamard_matrix(128) / 128 ** 0.5
        signs = (q / h)
        assert torch.equal(signs.abs(), torch.ones_like(signs))
        assert torch.equal(signs, signs[:1].expand_as(signs))  # one sign per column
        assert (signs[0] > 0).any() and (signs[0] < 0).any()
        assert torch.equal(q, random_hadamard(128, 3))


def test_hadamard_falls_back_for_non_power_of_two():
    q, used, notes = rotation_matrix(96, "hadamard", seed=0)
    assert used == "random" and "not a power of two" in notes[0]
    torch.testing.assert_close(q.T @ q, torch.eye(96, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(q, random_orthogonal(96, 0))
    with pytest.raises(ValueError, match="rotation kind must be one of hadamard, random"):
        rotation_matrix(128, "givens")


# --- equivalence on the demo models ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hadamard", "random"])
@pytest.mark.parametrize("which", ["llava", "vila"])
def test_rotation_keeps_the_float_model_equivalent(which, kind, load, reqs):
    m = load(which)
    ref = m.answer_logits(reqs)
    before = {n: p.detach().clone() for n, p in m.mm_model.named_parameters()}
    report = rotate_model_(m, kind, seed=0)
    out = m.answer_logits(reqs)
    torch.testing.assert_close(out, ref, **TOL)
    assert (out - ref).abs().max().item() < 1e-4

    hidden = m.model_config.hidden_size
    assert report.kind == kind and report.hidden_size == hidden == 128 and not report.untied
    torch.testing.assert_close(report.Q.T @ report.Q, torch.eye(hidden, dtype=torch.float64), rtol=0, atol=1e-12)
    # embed + 2 blocks x (q, k, v, o, gate, up, down) + lm_head + the projector's last layer
    assert len(report.rotated) == 1 + 2 * 7 + 1 + 1
    proj_last = "model.multi_modal_projector.linear_2" if which == "llava" else "mm_projector.layers.4"
    assert report.rotated[-1] == proj_last
    assert len(report.folded_norms) == 5
    for n in report.folded_norms:
        assert torch.equal(m.mm_model.get_submodule(n).weight, torch.ones(hidden))
    changed = {n for n, p in m.mm_model.named_parameters() if not torch.equal(p, before[n])}
    assert f"{proj_last}.weight" in changed and f"{proj_last}.bias" in changed
    # the vision tower and the projector's other layers are untouched
    assert not [n for n in changed if ("vision" in n or "projector" in n) and not n.startswith(proj_last)]


@pytest.mark.parametrize("flag", ["skip_extra", "skip_extra_bias"])
@pytest.mark.parametrize("which", ["llava", "vila"])
def test_the_projector_injection_layer_must_be_rotated(which, flag, load, reqs):
    m = load(which)
    ref = m.answer_logits(reqs)
    report = rotate_model_(m, "hadamard", **{flag: True})
    diff = (m.answer_logits(reqs) - ref).abs().max().item()
    # equivalence holds to ~2e-5; without the projector (or just its bias) it is far off
    assert diff > 0.05, diff
    assert any(flag in n for n in report.notes)
    if flag == "skip_extra":
        assert diff > 1.0, diff
        assert report.rotated[-1].endswith("down_proj") or "lm_head" in report.rotated[-1]


def test_a_wrong_extra_target_is_refused_before_anything_changes(load, monkeypatch):
    m = load("vila")
    before = {n: p.detach().clone() for n, p in m.mm_model.named_parameters()}
    monkeypatch.setattr(m, "get_extra_rot_module_besides_embed_layers", lambda: [m.mm_projector.layers[1]])
    with pytest.raises(ValueError, match=r"mm_projector\.layers\.1 writes width 256, not the language model "
                                         r"hidden size 128"):
        rotate_model_(m)
    assert all(torch.equal(p, before[n]) for n, p in m.mm_model.named_parameters())  # checked first


def test_a_synthetic_linear_of_the_wrong_width_is_refused(load, monkeypatch):
    m = load("llava")
    m.mm_projector.wrong = nn.Linear(128, 64)
    monkeypatch.setattr(m, "get_extra_rot_module_besides_embed_layers", lambda: [m.mm_projector.wrong])
    with pytest.raises(ValueError, match=r"multi_modal_projector\.wrong writes width 64, not the language model "
                                         r"hidden size 128"):
        rotate_model_(m)


class RawProjection(nn.Module):
    """A synthetic projector layer keeping its weight as a raw Parameter, in either layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str):
        super().__init__()
        self.layout = layout  # "in_hidden": (in, hidden) used as x @ P; "hidden_in": (hidden, in), F.linear
        self.proj = nn.Parameter(weight.T.contiguous() if layout == "in_hidden" else weight.clone())
        self.shift = nn.Parameter(bias.clone()) if bias is not None else None

    def forward(self, x):
        y = x @ self.proj if self.layout == "in_hidden" else F.linear(x, self.proj)
        return y + self.shift if self.shift is not None else y


@pytest.mark.parametrize("give", ["module", "parameter"])
@pytest.mark.parametrize("layout", ["in_hidden", "hidden_in"])
def test_a_raw_projection_parameter_is_rotated_in_its_orientation(layout, give, load, reqs, monkeypatch):
    """tiny-llava's last projector Linear (128 -> 128, square) becomes a non-square raw layer:
    ``Linear(128 -> 96)`` then a raw ``96 -> 128`` Parameter (with its bias when handed over as a
    module, bias-free when the bare Parameter is the target). The modified model is the reference."""
    m = load("llava")
    proj = m.mm_projector
    w, b = proj.linear_2.weight.detach(), proj.linear_2.bias.detach()
    a = torch.linalg.qr(torch.randn(128, 96, generator=torch.Generator().manual_seed(0)))[0]  # AᵀA = I
    bridge = nn.Linear(128, 96, bias=False)
    with torch.no_grad():
        bridge.weight.copy_(a.T)
    raw = RawProjection(w @ a, b if give == "module" else None, layout)
    proj.linear_2 = nn.Sequential(bridge, raw)
    assert tuple(raw.proj.shape) == ((96, 128) if layout == "in_hidden" else (128, 96))
    target = raw if give == "module" else raw.proj
    monkeypatch.setattr(m, "get_extra_rot_module_besides_embed_layers", lambda: [target])
    ref = m.answer_logits(reqs)
    report = rotate_model_(m, "random", seed=1)
    torch.testing.assert_close(m.answer_logits(reqs), ref, **TOL)
    assert report.rotated[-1] == "model.multi_modal_projector.linear_2.1.proj"
    assert torch.equal(bridge.weight, a.T.float())  # the layer before the injection is untouched


def test_a_square_raw_parameter_is_ambiguous(load, monkeypatch):
    m = load("llava")
    p = nn.Parameter(torch.zeros(128, 128))
    m.mm_projector.register_parameter("square", p)
    monkeypatch.setattr(m, "get_extra_rot_module_besides_embed_layers", lambda: [p])
    with pytest.raises(ValueError, match=r"multi_modal_projector\.square: a square 128x128 raw Parameter is ambiguous"):
        rotate_model_(m)


def test_layernorm_language_models_are_refused(load):
    m = load("llava")
    m.get_blocks()[1].input_layernorm = nn.LayerNorm(128)
    with pytest.raises(ValueError, match=r"RMSNorm language models only.*layers\.1\.input_layernorm is a LayerNorm"):
        rotate_model_(m)


def test_tied_word_embeddings_are_untied_before_rotating(load, reqs):
    m = load("llava")
    head, embed = m.get_head_layers()[0], m.get_embed_layers()[0]
    head.weight = embed.weight  # tie them (changes the model; the tied model is the reference)
    ref = m.answer_logits(reqs)
    report = rotate_model_(m, "hadamard")
    assert report.untied and head.weight is not embed.weight
    assert m.mm_model.config.text_config.tie_word_embeddings is False
    torch.testing.assert_close(m.answer_logits(reqs), ref, **TOL)


# --- quantization after rotation ------------------------------------------------------------------


def _mme_total(adapter, n_images=16) -> tuple[float, list[str]]:
    from llmc.eval.mme import normalize_answer, score_answers
    from llmc.eval.vqa import VQARequest
    from wizard.demo import shapes

    rows, requests = [], []
    for i in range(n_images):
        sc = shapes.scene_at(shapes.EVAL_SEED, 100 + i)
        for q, a in sc.questions:
            requests.append(VQARequest(q, [sc.render()], {"max_new_tokens": 3}))
            rows.append((f"img{i}", sc.category, a.lower()))
    answers = adapter.answer(requests)
    preds = [normalize_answer(a) for a in answers]
    scores = score_answers([(qid, cat, p == gold) for (qid, cat, gold), p in zip(rows, preds)])
    return scores.total, preds


@pytest.mark.parametrize("which", ["llava", "vila"])
def test_rtn_w4_after_rotation_scores_close_to_float(which, load):
    from llmc.quant.quantizer import WeightQuantConfig
    from llmc.quant.rtn import rtn_

    m = load(which)
    ref_total, ref_preds = _mme_total(m)
    rotate_model_(m, "hadamard", seed=0)
    cfg = WeightQuantConfig(bit=4, group_size=32)
    for i, block in enumerate(m.get_blocks()):
        for n, lin in m.named_linears(block).items():
            rtn_(lin, cfg, f"{m.block_name(i)}.{n}")
    total, preds = _mme_total(m)
    agree = sum(a == b for a, b in zip(preds, ref_preds)) / len(preds)
    print(f"{which}: float {ref_total:.1f}, rotated+RTN W4 {total:.1f}, answer agreement {agree:.2f}")
    assert agree >= 0.8, (agree, preds, ref_preds)
    assert abs(total - ref_total) <= 60, (total, ref_total)


@pytest.mark.parametrize("quant", [
    {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}, "special": {"rotate": "hadamard"}},
    {"method": "Quarot", "weight": {"bit": 4, "group_size": 32}},
])
def test_engine_rotates_before_quantizing_when_asked(quant, tmp_path, llava_run_config):
    """quant.special.rotate runs the rotation inside a full engine run; scores stay at float level (no more than one answer lost)."""
    from llmc.config import load_config
    from llmc.progress import read_events
    from llmc.runner import run

    cfg = load_config(llava_run_config(quant, save_trans=True))
    res = run(cfg, tmp_path / "out", device="cpu")
    phases = [e["name"] for e in read_events(tmp_path / "out" / "events.jsonl")
              if e["event"] == "phase" and e["state"] == "start"]
    assert phases.index("rotate") < phases.index("quantize")
    mme = res["evals"]["mme"]
    # 16 images, 4 a category: one changed answer moves the total by 12.5 to 37.5; the quantized
    # model may gain (noise on a half-learned category) but loses at most that much
    assert mme["fake_quant"]["total"] >= mme["pretrain"]["total"] - 37.5, mme
    # the transformed (rotated, float) checkpoint reloads through the model's own loader
    from llmc.models import get_model_class

    m = get_model_class("Llava")(tmp_path / "out" / "trans", "float32", "cpu")
    (last,) = m.get_extra_rot_module_besides_embed_layers()
    assert last.bias is not None


@pytest.mark.parametrize("which", ["llava", "vila"])
def test_online_hadamard_keeps_the_model_and_spreads_down_proj_inputs(which, load, reqs):
    from llmc.quant.rotation import attach_online_hadamard_

    m = load(which)
    ref = m.answer_logits(reqs)
    rotate_model_(m, "hadamard", seed=0)
    down = m.get_blocks()[1].mlp.down_proj if which == "llava" else m.get_blocks()[1].mlp.down_proj
    seen = []

    def peak_to_rms(mod, args):
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        seen.append(float((x.abs().amax(-1) / x.pow(2).mean(-1).sqrt().clamp_min(1e-12)).mean()))

    h = down.register_forward_pre_hook(peak_to_rms)  # registered first: sees the raw input
    m.answer_logits(reqs)
    online = attach_online_hadamard_(m, seed=0)
    h.remove()
    h = down.register_forward_pre_hook(peak_to_rms)  # registered after: sees x·H
    out = m.answer_logits(reqs)
    h.remove()
    torch.testing.assert_close(out, ref, **TOL)  # W·H with x·H: the same function
    assert len(online.layers) == 2 and online.layers[1].endswith("1.mlp.down_proj")
    assert seen[-1] < 0.7 * seen[0], seen  # outliers spread: peak/rms per token drops
    online.remove()
    assert (m.answer_logits(reqs) - ref).abs().max() > 1e-2  # without the online half it differs


@pytest.mark.parametrize("special,save,message", [
    ({"online_rotate": True}, {}, "quant.special.online_rotate: needs the residual-stream rotation"),
    ({"rotate": "hadamard", "online_rotate": True}, {"save_fake": True},
     "save.save_fake: a checkpoint cannot hold the online Hadamard before down_proj"),
])
def test_online_rotation_settings_are_checked(special, save, message):
    from llmc.config import ConfigError, load_config

    raw = {"model": {"type": "Llava", "path": str(ASSETS / "tiny-llava")},
           "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}, "special": special},
           "save": {"save_path": "/tmp/x", **save}}
    with pytest.raises(ConfigError, match=message):
        load_config(raw)
