"""The llmc engine on the demo models: adapters, subsets, blockwise methods, full runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from llmc.models import BaseModel, get_model_class
from llmc.models.structure import derive_subsets

pytestmark = pytest.mark.slow
ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"


@pytest.fixture(scope="module")
def llava():
    return get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu")


@pytest.fixture(scope="module")
def vila(tiny_vila_installed):
    return get_model_class("Vila")(ASSETS / "tiny-vila", "float32", "cpu")


def _requests(n=4):
    from wizard.demo.shapes import eval_requests

    return eval_requests(n)


def test_missing_hook_fails_when_the_class_is_defined():
    with pytest.raises(TypeError, match="does not implement hook.*answer.*batch_process"):
        class Broken(BaseModel):  # noqa: F841
            def build_model(self):
                pass

            def get_extra_rot_module_besides_embed_layers(self):
                return []

            def save_pretrained(self, path):
                pass


def test_unknown_model_type_suggests_the_registered_one():
    with pytest.raises(ValueError, match=r"model.type: unknown model type 'Lava'; did you mean 'Llava'\?"):
        get_model_class("Lava")
    assert get_model_class("llava").name == "Llava"


@pytest.mark.parametrize("which", ["llava", "vila"])
def test_structure_discovery(which, request):
    m = request.getfixturevalue(which)
    blocks = m.get_blocks()
    assert len(blocks) == m.model_config.num_hidden_layers == 2
    hidden = m.model_config.hidden_size
    assert m.get_embed_layers()[0].embedding_dim == hidden
    assert m.get_head_layers()[0].in_features == hidden
    assert m.get_pre_head_layernorm_layers()[0].weight.shape == (hidden,)
    (last,) = m.get_extra_rot_module_besides_embed_layers()
    assert isinstance(last, nn.Linear) and last.out_features == hidden
    if which == "vila":
        assert last is m.mm_projector.layers[-1]  # the seed's manual pick, found by structure
    else:
        assert last is m.mm_projector.linear_2


@pytest.mark.parametrize("which", ["llava", "vila"])
def test_subsets_cover_every_linear_once_with_their_producers(which, request):
    m = request.getfixturevalue(which)
    block = m.get_blocks()[0]
    subsets = derive_subsets(block)
    names = [n for s in subsets for n in s.layers]
    linears = [n for n, x in block.named_modules() if isinstance(x, nn.Linear)]
    assert sorted(names) == sorted(linears) and len(names) == len(set(names))
    by = {s.name: s for s in subsets}
    assert sorted(by["attn_in"].layers) == ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"]
    assert by["attn_in"].prev_op is block.input_layernorm
    assert by["mlp_in"].prev_op is block.post_attention_layernorm
    assert by["mlp_out"].prev_op is block.mlp.up_proj
    v, o = block.self_attn.v_proj, block.self_attn.o_proj
    # GQA (tiny-vila: 2 KV heads of 4) makes v narrower than o's input: no v->o folding there
    assert (by["attn_out"].prev_op is v) == (v.out_features == o.in_features)


def test_unknown_block_layout_names_the_layer():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.Module()
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(self.self_attn, n, nn.Linear(8, 8))
            self.mlp = nn.Module()
            self.mlp.mystery = nn.Linear(8, 8)

    with pytest.raises(ValueError, match="mlp.mystery match no role"):
        derive_subsets(Odd())


def _calib(adapter, zoo, n=8):
    from llmc.data.calib import load_custom_mm

    return [adapter.batch_process([s]) for s in load_custom_mm(zoo.calib_set, n)]


def test_blockwise_rtn_equals_layer_rtn(zoo):
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.methods import RTN
    from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig

    m = get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu")
    cfg = WeightQuantConfig(bit=4, group_size=32)
    before = {n: p.detach().clone() for n, p in m.get_blocks().named_parameters()}
    reports = quantize_blockwise(m, RTN(cfg), _calib(m, zoo, 4))
    assert len(reports) == 2 and all(r.block_error > 0 and r.last_error > 0 for r in reports)
    q = IntQuantizer(cfg)
    for n, p in m.get_blocks().named_parameters():
        if n.endswith("proj.weight"):
            assert torch.equal(p, q.fake(before[n])), n
        else:
            assert torch.equal(p, before[n]), n  # norms untouched


@pytest.mark.parametrize("which", ["Llava", "Vila"])
def test_block_replays_hold_no_kv_cache(which, zoo, tiny_vila_installed):
    """Captured block inputs carry no KV cache: a replay after the weights change sees only the
    new weights (a cache kept with the inputs would serve keys/values of the first replay)."""
    from llmc.quant import awq
    from llmc.quant.blockwise import _is_cache, capture_block_inputs, run_block

    m = get_model_class(which)(ASSETS / ("tiny-llava" if which == "Llava" else "tiny-vila"), "float32", "cpu")
    inputs = capture_block_inputs(m, _calib(m, zoo, 2))
    assert not any(_is_cache(v) for bi in inputs for v in bi.kwargs.values())
    block = m.get_blocks()[0]
    attn = block.self_attn
    ref = run_block(block, inputs, "cpu")
    # scale k's output rows: changes every attention score, so stale keys would show
    with torch.no_grad():
        attn.k_proj.weight.mul_(3.0)
    changed = run_block(block, inputs, "cpu")
    assert max(float((c - r).abs().max()) for c, r in zip(changed, ref)) > 1e-2
    with torch.no_grad():
        attn.k_proj.weight.div_(3.0)
    s = torch.rand(attn.o_proj.in_features, generator=torch.Generator().manual_seed(0)) + 0.5
    if attn.v_proj.out_features == s.numel():  # equivalence fold v -> o (no GQA)
        awq.apply_scales_(attn.v_proj, [attn.o_proj], s)
    for o, r in zip(run_block(block, inputs, "cpu"), ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_capture_lets_an_error_before_the_first_block_through(llava, zoo):
    """A model that fails before its decoder (a token id outside the vocabulary) shows its own
    error, not "the first decoder block was not reached"."""
    from llmc.quant.blockwise import capture_block_inputs

    good = _calib(llava, zoo, 1)
    bad = {**good[0], "input_ids": torch.full_like(good[0]["input_ids"], 10**6)}
    with pytest.raises(IndexError):
        capture_block_inputs(llava, [bad])
    notes: list[str] = []
    inputs = capture_block_inputs(llava, good, notes.append)
    assert notes == [] and inputs[0].calls is not None and len(inputs[0].calls) == len(llava.get_blocks())


@pytest.mark.parametrize("search", ["block", "layer"])
@pytest.mark.parametrize("which", ["Llava", "Vila"])
def test_awq_transform_keeps_the_float_model_equivalent(which, search, zoo, tiny_vila_installed):
    from llmc.quant.blockwise import BlockContext, capture_block_inputs, run_block
    from llmc.quant.methods import Awq
    from llmc.quant.quantizer import WeightQuantConfig

    m = get_model_class(which)(ASSETS / ("tiny-llava" if which == "Llava" else "tiny-vila"), "float32", "cpu")
    reqs = _requests(2)
    ref = m.answer_logits(reqs)
    batches = _calib(m, zoo, 4)
    inputs = capture_block_inputs(m, batches)
    method = Awq(WeightQuantConfig(bit=3, group_size=32), {"n_grid": 10, "search": search})
    before = {n: p.detach().clone() for n, p in m.get_blocks().named_parameters()}
    from llmc.quant.blockwise import BlockInput

    for i, block in enumerate(m.get_blocks()):
        ctx = BlockContext(i, m.block_name(i), block, inputs, m.get_subsets_in_block(block), torch.device("cpu"))
        method.transform_block(ctx)
        inputs = [BlockInput(o, b.args, b.kwargs) for o, b in zip(run_block(block, inputs, "cpu"), inputs)]
    changed = [n for n, p in m.get_blocks().named_parameters() if not torch.equal(p, before[n])]
    if search == "layer":
        assert any("layernorm" in n for n in changed), changed  # scales were folded into the norms
    torch.testing.assert_close(m.answer_logits(reqs), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("loss_tokens", ["all", "last"])
@pytest.mark.parametrize("which", ["Llava", "Vila"])
def test_awq_block_search_never_worse_than_rtn_on_its_loss(which, loss_tokens, zoo, tiny_vila_installed):
    """The joint search has ``s = 1`` among its candidates and simulates the block exactly as it
    will be quantized: after the transform, RTN of the block is no worse than RTN of the
    original block on the search's loss (and strictly better where a scale was chosen)."""
    from llmc.quant.blockwise import BlockContext, capture_block_inputs, run_block
    from llmc.quant.methods import RTN, Awq
    from llmc.quant.methods.awq import _token_relative_mse
    from llmc.quant.quantizer import WeightQuantConfig

    path = ASSETS / ("tiny-llava" if which == "Llava" else "tiny-vila")
    cfg = WeightQuantConfig(bit=2, group_size=32)

    awq_method = Awq(cfg, {"n_grid": 10, "loss_tokens": loss_tokens})

    def block_loss(transform: bool) -> float:
        m = get_model_class(which)(path, "float32", "cpu")
        inputs = capture_block_inputs(m, _calib(m, zoo, 8))
        block = m.get_blocks()[0]
        ref = run_block(block, inputs, "cpu")
        ctx = BlockContext(0, m.block_name(0), block, inputs, m.get_subsets_in_block(block), torch.device("cpu"))
        if transform:
            awq_method.transform_block(ctx)
        for sub in ctx.subsets:
            RTN(cfg).quantize_subset(ctx, sub, {}, None)
        out = run_block(block, inputs, "cpu")
        sel = (lambda t: t[..., -1:, :]) if loss_tokens == "last" else (lambda t: t)
        return sum(_token_relative_mse(sel(o), sel(r)) for o, r in zip(out, ref))

    rtn, awq = block_loss(False), block_loss(True)
    assert awq < rtn, (awq, rtn)
    # the simulation is the real thing: folded scales + RTN give exactly the loss the search saw
    # (on the positions loss_tokens names; row scales of v_proj/up_proj included)
    assert awq == pytest.approx(awq_method.search_loss[0], rel=1e-4)


def _first_inputs(m, batches, joined=False):
    """Block 0's inputs; ``joined``: equal-length ones replayed together, as the pipeline does."""
    from llmc.quant.blockwise import capture_block_inputs
    from llmc.quant.coalesce import coalesce

    inputs = capture_block_inputs(m, batches)
    if joined:
        inputs = coalesce(inputs, m.get_blocks()[0], "cpu")
    return [b.hidden for b in inputs], inputs


@pytest.mark.parametrize("which", ["Llava", "Vila"])
def test_awq_output_search_fits_the_models_answers(which, zoo, tiny_vila_installed):
    """``search: output`` scores each candidate by the KL divergence of the model's answers (the
    rest of the model run on the block's output) from the float model's: folding the chosen
    scales and RTN reproduces the loss it saw, and that loss is below RTN's."""
    from llmc.quant.blockwise import BlockContext, answer_tail, capture_block_inputs, run_block
    from llmc.quant.methods import RTN, Awq
    from llmc.quant.methods.awq import _answer_kl
    from llmc.quant.quantizer import WeightQuantConfig

    path = ASSETS / ("tiny-llava" if which == "Llava" else "tiny-vila")
    cfg = WeightQuantConfig(bit=2, group_size=32)
    method = Awq(cfg, {"n_grid": 10, "loss_tokens": "last", "search": "output"})
    assert method.output_loss

    def answer_loss(transform: bool) -> float:
        m = get_model_class(which)(path, "float32", "cpu")
        batches = _calib(m, zoo, 8)
        inputs = capture_block_inputs(m, batches)
        block = m.get_blocks()[0]
        float_answers = answer_tail(m, 0, "cpu")([b.hidden for b in inputs], inputs)
        # from the first block's inputs, the tail gives the float model's own next-token distribution
        with torch.no_grad():
            whole = [torch.log_softmax(m.mm_model(**b).logits[:, -1].float(), -1) for b in batches]
        torch.testing.assert_close(torch.cat([a.reshape(1, -1) for a in float_answers]), torch.cat(whole),
                                   rtol=1e-4, atol=1e-4)
        ctx = BlockContext(0, m.block_name(0), block, inputs, m.get_subsets_in_block(block), torch.device("cpu"),
                           answer_tail(m, 1, "cpu"), float_answers)
        assert _answer_kl(ctx.tail(run_block(block, inputs, "cpu"), inputs), float_answers) == pytest.approx(0, abs=1e-6)
        if transform:
            method.transform_block(ctx)
        for sub in ctx.subsets:
            RTN(cfg).quantize_subset(ctx, sub, {}, None)
        return _answer_kl(ctx.tail(run_block(block, inputs, "cpu"), inputs), float_answers)

    rtn, awq = answer_loss(False), answer_loss(True)
    assert awq < rtn, (awq, rtn)
    # (a KL near 1e-4 nats: float32 rounding of folded vs simulated weights shows at 1e-3)
    assert awq == pytest.approx(method.search_loss[0], rel=1e-2)


def test_awq_output_search_keeps_a_clip_only_where_it_lowers_the_answer_loss(zoo):
    """The clip search lowers each group's output error, but its ratios are kept for a subset
    only where they also bring the model's answers closer to the float model's: a rejected clip
    leaves exactly the weights of a run without any clip search."""
    from llmc.quant.blockwise import answer_tail, quantize_blockwise, run_block
    from llmc.quant.methods import Awq
    from llmc.quant.methods.awq import _answer_kl
    from llmc.quant.quantizer import WeightQuantConfig

    wcfg = WeightQuantConfig(bit=3, group_size=32)

    after_block0 = {}

    def quantized(special):
        m = get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu")
        method = Awq(wcfg, {"n_grid": 10, "loss_tokens": "last", "search": "output", **special})
        batches = _calib(m, zoo, 8)
        float_answers = answer_tail(m, 0, "cpu")(*_first_inputs(m, batches, joined=True))

        def on_block(rep, n):  # block 0 quantized, block 1 still float: the answers' KL now
            if rep.index == 0 and not special:
                hidden, inputs = _first_inputs(m, batches, joined=True)
                out = run_block(m.get_blocks()[0], inputs, "cpu")
                after_block0["kl"] = _answer_kl(answer_tail(m, 1, "cpu")(out, inputs), float_answers)

        quantize_blockwise(m, method, batches, on_block=on_block)
        return m, method

    gated, method = quantized({})
    plain, _ = quantized({"weight_clip": False})
    # every subset with a clip search got a verdict (q/k are never clipped)
    assert set(method.clip_verdicts) == {(i, n) for i in range(2)
                                          for n in ("self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj,mlp.up_proj", "mlp.down_proj")}
    kept = [key for key, (k, *_) in method.clip_verdicts.items() if k]
    rejected = [key for key, (k, *_) in method.clip_verdicts.items() if not k]
    assert kept and rejected, method.clip_verdicts
    # here block 0 rejects every clip: it is the clip-free run's block 0, bit for bit
    assert all(i == 0 for i, _ in rejected[:4]) and kept[0][0] == 1
    g0, p0 = gated.named_linears(gated.get_blocks()[0]), plain.named_linears(plain.get_blocks()[0])
    assert all(torch.equal(g0[n].weight, p0[n].weight) for n in g0)
    # a kept clip changes the weights it covers
    layers = kept[0][1]
    g1, p1 = gated.named_linears(gated.get_blocks()[1]), plain.named_linears(plain.get_blocks()[1])
    assert all(not torch.equal(g1[n].weight, p1[n].weight) for n in layers.split(","))
    # the verdicts were measured on the real thing: after block 0's last subset (down_proj), the
    # model answers with the lower of that verdict's two losses
    _, without, with_clip = method.clip_verdicts[0, "mlp.down_proj"]
    assert after_block0["kl"] == pytest.approx(min(without, with_clip), rel=1e-3)
    with pytest.raises(ValueError, match="search: output fits the answer at each calibration prompt's last position"):
        Awq(wcfg, {"loss_tokens": "all", "search": "output"})
    with pytest.raises(ValueError, match="'auto', 'block', 'layer' or 'output'"):
        Awq(wcfg, {"search": "model"})


@pytest.mark.parametrize("which", ["Llava", "Vila"])
def test_awq_block_simulation_matches_the_folded_quantized_block(which, zoo, tiny_vila_installed):
    """With one non-trivial candidate per subset (so every subset is scaled, v_proj and up_proj
    absorbing the next subset's 1/s), the search's simulated loss equals the real block's:
    scales folded by apply_scales_, then RTN."""
    from llmc.quant.blockwise import BlockContext, capture_block_inputs, run_block
    from llmc.quant.methods import RTN, Awq
    from llmc.quant.methods.awq import _token_relative_mse
    from llmc.quant.quantizer import WeightQuantConfig

    class OneCandidate(Awq):
        def _candidates(self, x_mean, w_mean, n_grid):
            s = x_mean.pow(0.5).clamp(min=1e-4)
            yield s / (s.max() * s.min()).sqrt()

    cfg = WeightQuantConfig(bit=3, group_size=32)
    m = get_model_class(which)(ASSETS / ("tiny-llava" if which == "Llava" else "tiny-vila"), "float32", "cpu")
    inputs = capture_block_inputs(m, _calib(m, zoo, 4))
    block = m.get_blocks()[0]
    ref = run_block(block, inputs, "cpu")
    ctx = BlockContext(0, m.block_name(0), block, inputs, m.get_subsets_in_block(block), torch.device("cpu"))
    method = OneCandidate(cfg, {})
    method.transform_block(ctx)
    for sub in ctx.subsets:
        RTN(cfg).quantize_subset(ctx, sub, {}, None)
    real = sum(_token_relative_mse(o, r) for o, r in zip(run_block(block, inputs, "cpu"), ref))
    assert real == pytest.approx(method.search_loss[0], rel=1e-4)


def test_awq_loss_tokens_last_fits_the_answer_position(zoo, tmp_path):
    from llmc.config import CalibConfig, load_config
    from llmc.quant.blockwise import capture_block_inputs, collect_inputs
    from llmc.quant.methods import Awq, make_method
    from llmc.quant.quantizer import WeightQuantConfig

    m = get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu")
    inputs = capture_block_inputs(m, _calib(m, zoo, 4))
    block = m.get_blocks()[0]
    layers = {"q": block.self_attn.q_proj}
    every = collect_inputs(block, inputs, layers, "cpu")["q"].x
    last = collect_inputs(block, inputs, layers, "cpu", last_only=True)["q"].x
    assert last.shape == (4, 128) and every.shape[0] == sum(b.hidden.shape[1] for b in inputs)
    # the last position's rows are among all rows
    assert all(any(torch.equal(r, e) for e in every) for r in last)

    cfg = load_config(_config(tmp_path, zoo, "Llava", ASSETS / "tiny-llava"))
    assert make_method(cfg.quant, cfg.calib).loss_tokens == "last"  # VQA prompts: answer position
    txt = CalibConfig(name="custom_txt", path=str(zoo.calib_set))
    assert make_method(cfg.quant, txt).loss_tokens == "all"
    answered = CalibConfig(name="custom_mm", path=str(zoo.calib_set), add_answer=True)
    assert make_method(cfg.quant, answered).loss_tokens == "all"
    with pytest.raises(ValueError, match="'auto', 'all' or 'last'"):
        Awq(WeightQuantConfig(bit=4, group_size=32), {"loss_tokens": "first"})
    from llmc.data.calib import load_custom_mm
    from llmc.quant.blockwise import quantize_blockwise

    two = m.batch_process(load_custom_mm(zoo.calib_set, 2))  # a padded two-sample batch
    with pytest.raises(ValueError, match="needs one unpadded calibration sample per forward pass"):
        quantize_blockwise(m, Awq(WeightQuantConfig(bit=4, group_size=32), {"loss_tokens": "last"}), [two])


def test_awq_clip_tokens_choose_the_clip_search_rows(zoo):
    """clip_tokens: same follows loss_tokens; all / last set the clip search's rows on their own."""
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.methods import Awq
    from llmc.quant.quantizer import WeightQuantConfig

    wcfg = WeightQuantConfig(bit=3, group_size=32)
    assert Awq(wcfg, {"loss_tokens": "last"}).clip_tokens == "last"
    assert Awq(wcfg, {"loss_tokens": "last", "clip_tokens": "all"}).clip_tokens == "all"
    assert Awq(wcfg, {"loss_tokens": "all", "clip_tokens": "last"}).clip_tokens == "last"
    with pytest.raises(ValueError, match="'auto', 'same', 'all' or 'last'"):
        Awq(wcfg, {"clip_tokens": "first"})

    def quantized(special):
        m = get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu")
        method = Awq(wcfg, {"trans": False, "n_grid": 10, **special})  # the clip search alone
        quantize_blockwise(m, method, _calib(m, zoo, 4))
        return {n: p.detach().clone() for n, p in m.get_blocks()[0].named_parameters()}, method

    same, _ = quantized({"loss_tokens": "last"})
    last, _ = quantized({"loss_tokens": "all", "clip_tokens": "last"})
    every, method = quantized({"loss_tokens": "last", "clip_tokens": "all"})
    assert all(torch.equal(same[n], last[n]) for n in same)  # the scale search is off: rows alone decide
    assert any(not torch.equal(same[n], every[n]) for n in same)
    assert method.loss_tokens == "last" and method.clip_tokens == "all"


def _config(tmp_path, zoo, model, path, method="Awq", bit=4, extra=None, n_eval=24, special=None):
    cfg = {
        "base": {"seed": 0},
        "model": {"type": model, "path": str(path), "torch_dtype": "float32"},
        "calib": {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 8, "bs": 1},
        "eval": {"eval_pos": ["pretrain", "fake_quant"], "type": "vqa", "name": "mme",
                 "path": str(zoo.eval_set / "data"), "bs": 32, "num_samples": n_eval},
        "quant": {"method": method, "weight": {"bit": bit, "symmetric": False, "granularity": "per_group",
                                               "group_size": 32}},
        "save": {"save_path": str(tmp_path / "out"), "save_trans": True, "save_fake": True},
    }
    if method == "Awq":
        cfg["quant"]["special"] = {"trans": True, "weight_clip": True, "n_grid": 10, **(special or {})}
    for k, v in (extra or {}).items():
        cfg[k].update(v)
    p = tmp_path / "cfg.yml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _llmc(*args, env_cache=None):
    import os

    env = {**os.environ, "LLMC_CACHE": str(env_cache)} if env_cache else None
    return subprocess.run([sys.executable, "-m", "llmc", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _events(run_dir):
    from llmc.progress import read_events

    return read_events(run_dir / "events.jsonl")


@pytest.mark.parametrize("model,weights,method,search", [("Llava", "tiny-llava", "Awq", "output"),
                                                          ("Llava", "tiny-llava", "Awq", "block"),
                                                          ("Vila", "tiny-vila", "GPTQ", None)])
def test_full_run_then_reload_answers_identically(model, weights, method, search, zoo, tmp_path, tiny_vila_installed):
    import os

    from llmc.config import load_config
    from llmc.runner import run

    os.environ["LLMC_CACHE"] = str(tmp_path / "cache")
    # AWQ as the demo presets run it (the scale search on the model's answers) and the default block search
    cfg = load_config(_config(tmp_path, zoo, model, ASSETS / weights, method=method,
                              special={"search": search, **({"clip_tokens": "all"} if search == "output" else {})}))
    res = run(cfg, tmp_path / "out")
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    mme = saved["evals"]["mme"]
    assert set(mme) == {"pretrain", "fake_quant"}
    assert mme["pretrain"]["total"] > 200 and mme["fake_quant"]["total"] > 200
    assert sum(mme["pretrain"]["n_images"].values()) == 24
    assert "| mme | original | W4A16" in res["table"] and "| total |" in res["table"]
    kinds = [e["event"] for e in _events(out)]
    for k in ("start", "phase", "block", "layer_error", "scores", "saved", "done"):
        assert k in kinds, k
    blocks = [e for e in _events(out) if e["event"] == "block"]
    assert [b["i"] for b in blocks] == [0, 1] and all(("peak_gpu_mem_mib" in b) == torch.cuda.is_available()
                                                      for b in blocks)
    assert all(0 < b["last_error"] < 1 and 0 < b["block_error"] < 1 for b in blocks)
    errs = [e["error"] for e in _events(out) if e["event"] == "layer_error"]
    assert len(errs) == 2 * 7 and all(0 < x < 0.5 for x in errs)
    losses = [e.get("gptq_loss") for e in _events(out) if e["event"] == "layer_error"]
    assert all(x is not None and x > 0 for x in losses) if method == "GPTQ" else all(x is None for x in losses)
    verdicts = [e for e in _events(out) if e["event"] == "clip_verdict"]
    if search == "output":  # one per clipped subset (v, o, gate+up, down) and block, with both answer losses
        assert [(v["block"], v["layers"]) for v in verdicts][:4] == [
            (0, "self_attn.v_proj"), (0, "self_attn.o_proj"), (0, "mlp.gate_proj,mlp.up_proj"), (0, "mlp.down_proj")]
        assert len(verdicts) == 8 and all(v["answer_kl"] > 0 and v["answer_kl_clipped"] > 0 for v in verdicts)
    else:
        assert verdicts == []
    # the saved fake-quant model, reloaded through the model's own loader, answers like the in-memory one
    cls = get_model_class(model)
    live = get_model_class(model)(ASSETS / weights, "float32", "cpu")
    reloaded = cls(out / "fake", "float32", "cpu")
    reqs = _requests(3)
    trans = cls(out / "trans", "float32", "cpu")
    torch.testing.assert_close(trans.answer_logits(reqs), live.answer_logits(reqs), rtol=1e-4, atol=1e-4)
    assert reloaded.answer(reqs) == _inmemory_answers(cfg, model, weights, zoo, reqs)


def _inmemory_answers(cfg, model, weights, zoo, reqs):
    """Quantize again in memory (deterministic) and answer."""
    from llmc.data import load_calib
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.methods import make_method

    m = get_model_class(model)(ASSETS / weights, "float32", "cpu")
    torch.manual_seed(cfg.base.seed)
    quantize_blockwise(m, make_method(cfg.quant, cfg.calib), load_calib(cfg.calib, m))
    return m.answer(reqs)


def test_original_scores_are_cached(zoo, tmp_path):
    p = _config(tmp_path, zoo, "Llava", ASSETS / "tiny-llava", method="RTN", n_eval=8,
                extra={"save": {"save_trans": False, "save_fake": False}})
    cache = tmp_path / "cache"
    for run_no in (1, 2):
        r = _llmc("run", str(p), "--run-dir", str(tmp_path / f"r{run_no}"), env_cache=cache)
        assert r.returncode == 0, r.stderr
    hits = [e for e in _events(tmp_path / "r2") if e["event"] == "cache_hit"]
    assert len(hits) == 1 and not [e for e in _events(tmp_path / "r1") if e["event"] == "cache_hit"]
    a = json.loads((tmp_path / "r1" / "results.json").read_text())["evals"]["mme"]["pretrain"]
    b = json.loads((tmp_path / "r2" / "results.json").read_text())["evals"]["mme"]["pretrain"]
    assert a == b


def test_a_corrupt_cache_entry_is_ignored_rebuilt_and_named(zoo, tmp_path):
    """A 0-byte entry (the disk was full while it was written): the run evaluates again with a
    warning naming the file, and writes a whole entry."""
    p = _config(tmp_path, zoo, "Llava", ASSETS / "tiny-llava", method="RTN", n_eval=8,
                extra={"save": {"save_trans": False, "save_fake": False}})
    cache = tmp_path / "cache"
    assert _llmc("run", str(p), "--run-dir", str(tmp_path / "r1"), env_cache=cache).returncode == 0
    (entry,) = cache.glob("*.json")
    good = json.loads(entry.read_text())
    entry.write_text("")
    r = _llmc("run", str(p), "--run-dir", str(tmp_path / "r2"), env_cache=cache)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "r2" / "run.log").read_text()
    assert f"the cached original scores {entry} are unreadable" in log
    assert not [e for e in _events(tmp_path / "r2") if e["event"] == "cache_hit"]
    assert json.loads(entry.read_text()) == good


@pytest.mark.parametrize("damage", ["", "{\"tot", "[1, 2]", "\udcff"])
def test_an_unreadable_cache_entry_reads_as_none_and_is_removed(tmp_path, damage):
    from llmc.runner import read_cached_scores

    lines = []
    entry = tmp_path / "k.json"
    entry.write_text(damage, errors="surrogateescape")
    progress = type("P", (), {"log": staticmethod(lines.append)})
    assert read_cached_scores(entry, progress) is None and not entry.exists()
    assert len(lines) == 1 and str(entry) in lines[0]
    entry.write_text('{"total": 1.0, "kind": "mme"}')
    assert read_cached_scores(entry, progress) == {"total": 1.0, "kind": "mme"} and len(lines) == 1
    assert read_cached_scores(tmp_path / "none.json", progress) is None and len(lines) == 1


def test_calibrating_on_evaluation_images_warns_loudly(zoo, tmp_path):
    from llmc.eval.mme import load_dataset

    calib = tmp_path / "leaky"
    (calib / "images").mkdir(parents=True)
    rows = []
    for i, r in enumerate(load_dataset(zoo.eval_set / "data").select(range(4))):
        r["image"].save(calib / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "question": r["question"], "answer": r["answer"]})
    (calib / "samples.json").write_text(json.dumps(rows))
    p = _config(tmp_path, zoo, "Llava", ASSETS / "tiny-llava", method="RTN", n_eval=4,
                extra={"calib": {"path": str(calib)}, "save": {"save_trans": False, "save_fake": False}})
    r = _llmc("run", str(p), "--run-dir", str(tmp_path / "r"), env_cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "calibration image(s) also appear in the evaluation set" in r.stderr
    warn = [e for e in _events(tmp_path / "r") if e["event"] == "warning"]
    assert warn and warn[0]["overlap"] == 2  # 4 rows = 2 images


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["quant"]["weight"].update(bits=4), "quant.weight.bits: unknown key; did you mean 'bit'?"),
    (lambda c: c["model"].update(path="/nonexistent/model"), "model.path: /nonexistent/model does not exist"),
    (lambda c: c["quant"]["weight"].update(group_size=48), "quant.weight.group_size: 48 does not divide the input width 512 of language_model.model.layers.0.mlp.down_proj.weight (14 layer(s) in all); choose a common divisor of 128, 512 such as 32, 64, 128"),
    (lambda c: c["quant"]["weight"].update(bit=9), "quant.weight.bit: 9 is out of range; use 2..8"),
    (lambda c: c["model"].update(type="Lava"), "did you mean 'Llava'?"),
    (lambda c: c["quant"].update(method="Aqw"), "quant.method: unknown method 'Aqw'; did you mean 'Awq'?"),
    (lambda c: c["calib"].update(add_answer=True) or c["quant"].setdefault("special", {}).update(search="output"),
     "quant.special.search: output fits the answer at each calibration prompt's last position; set quant.special.loss_tokens: last"),
    (lambda c: c["model"].update(offload=True) or c["quant"].setdefault("special", {}).update(search="output"),
     "quant.special.search: output runs the rest of the model for every scale candidate, which model.offload"),
])
def test_bad_configs_fail_check_with_one_clear_line(edit, message, zoo, tmp_path):
    p = _config(tmp_path, zoo, "Llava", ASSETS / "tiny-llava")
    cfg = yaml.safe_load(p.read_text())
    edit(cfg)
    p.write_text(yaml.safe_dump(cfg))
    for args in (["check", str(p)], ["--config_path", str(p)]):
        r = _llmc(*args)
        assert r.returncode == 1
        errors = [line for line in r.stderr.splitlines() if line.startswith("llmc: error:")]
        assert errors and message in errors[0], r.stderr
        assert "Traceback" not in r.stderr


def test_check_accepts_a_good_config_and_prints_it(zoo, tmp_path):
    r = _llmc("check", str(_config(tmp_path, zoo, "Llava", ASSETS / "tiny-llava")), "--print-config")
    assert r.returncode == 0, r.stderr
    assert "method: Awq" in r.stdout and "config OK" in r.stderr


@pytest.mark.parametrize("quant", [
    {"method": "SmoothQuant", "weight": {"bit": 8, "symmetric": True, "granularity": "per_channel"},
     "act": {"bit": 8}, "special": {"alpha": 0.5, "smooth_linear": True}},
    {"method": "RTN", "weight": {"bit": 4, "group_size": 32}, "act": {"bit": 8},
     "special": {"rotate": "hadamard"}},
    {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}, "act": {"bit": 8},
     "special": {"rotate": "hadamard", "online_rotate": True}},
])
def test_weight_activation_runs(quant, llava_run_config, tmp_path):
    """W8A8 SmoothQuant and rotated W4A8 through the engine: activation hooks only for fake_quant."""
    from llmc.config import load_config
    from llmc.runner import run

    cfg = load_config(llava_run_config(quant, save_fake=False))
    res = run(cfg, tmp_path / "out", device="cpu")
    if quant["special"].get("online_rotate"):
        assert "online Hadamard on the inputs of 2 layers" in (tmp_path / "out" / "run.log").read_text()
    assert res["label"].startswith(f"W{quant['weight']['bit']}A8 {quant['method']}")
    mme = res["evals"]["mme"]
    # 16 images, 4 a category: one changed answer moves the total by 12.5 to 37.5; the quantized
    # model may gain (noise on a half-learned category) but loses at most that much
    assert mme["fake_quant"]["total"] >= mme["pretrain"]["total"] - 37.5, mme
    log = (tmp_path / "out" / "run.log").read_text()
    assert "activation fake quantization (A8, per_token) on 14 layers" in log


def test_rtn_without_a_calib_section_runs_without_data(zoo, tmp_path):
    """RTN needs no data: without a calib section the run loads no calibration set and runs no
    calibration pass, and its weights are exactly RTN's from a run with data; methods that
    calibrate still need one (refused at config load, one line)."""
    import os

    from llmc.config import ConfigError, load_config
    from llmc.runner import run
    from safetensors.torch import load_file

    os.environ["LLMC_CACHE"] = str(tmp_path / "cache")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with_data = load_config(_config(tmp_path / "a", zoo, "Llava", ASSETS / "tiny-llava", method="RTN", n_eval=8))
    raw = yaml.safe_load(_config(tmp_path / "b", zoo, "Llava", ASSETS / "tiny-llava", method="RTN", n_eval=8)
                         .read_text())
    raw.pop("calib")
    raw["save"]["save_path"] = str(tmp_path / "b" / "out")
    free = load_config(raw)
    run(with_data, tmp_path / "a" / "out")
    res = run(free, tmp_path / "b" / "out")
    events = _events(tmp_path / "b" / "out")
    phases = [e["name"] for e in events if e["event"] == "phase" and e["state"] == "start"]
    assert "calibration_data" not in phases and "quantize" in phases
    blocks = [e for e in events if e["event"] == "block"]
    assert [b["i"] for b in blocks] == [0, 1] and all(b["block_error"] is None for b in blocks)
    assert not any(e["event"] == "layer_error" for e in events)
    a = load_file(str(next((tmp_path / "a" / "out" / "fake").glob("*.safetensors"))))
    b = load_file(str(next((tmp_path / "b" / "out" / "fake").glob("*.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res["evals"]["mme"]["fake_quant"]["total"] == json.loads(
        (tmp_path / "a" / "out" / "results.json").read_text())["evals"]["mme"]["fake_quant"]["total"]
    report = (tmp_path / "b" / "out" / "report.md").read_text()
    assert "Rounded without calibration data" in report
    raw["quant"]["method"] = "SmoothQuant"
    with pytest.raises(ConfigError, match="calib: required for SmoothQuant"):
        load_config(raw)


@pytest.mark.parametrize("which,search", [("Llava", "block"), ("Vila", "block"), ("Llava", "output"),
                                          ("Vila", "output")])
def test_vqa_prompts_of_a_few_lengths_replay_together_in_awqs_last_token_searches(which, search, zoo, monkeypatch,
                                                                                  request):
    """AWQ's block and answer-level searches on VQA prompts (loss_tokens: last): the prompts, of a
    few lengths in any order, replay as a few batches per block instead of one by one, each row
    keeping its own last position (and its own answer), and the weights equal the one-by-one
    replay's (to float rounding)."""
    from llmc.quant import coalesce as co
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.methods import Awq
    from llmc.quant.quantizer import WeightQuantConfig

    if which == "Vila":
        request.getfixturevalue("tiny_vila_installed")
    replays, weights, verdicts = [], {}, {}
    real = co.coalesce

    def counted(inputs, *a, **kw):
        out = real(inputs, *a, **kw)
        replays.append(([bi.hidden.shape[1] for bi in inputs], [bi.hidden.shape[0] for bi in out]))
        return out

    monkeypatch.setattr(co, "coalesce", counted)
    for most in (1, 16):
        monkeypatch.setattr(co, "MOST", most)
        m = get_model_class(which)(ASSETS / ("tiny-llava" if which == "Llava" else "tiny-vila"), "float32", "cpu")
        method = Awq(WeightQuantConfig(bit=3, group_size=32), {"search": search, "loss_tokens": "last", "n_grid": 4})
        quantize_blockwise(m, method, _calib(m, zoo, 16))
        weights[most] = {k: v.clone() for k, v in m.get_blocks()[0].state_dict().items()}
        verdicts[most] = method.clip_verdicts
    lengths, joined = replays[-1]
    assert len(set(lengths)) > 1 and len(joined) <= len(set(lengths)) * 2 < len(lengths)  # a few batches
    assert sum(joined) == len(lengths)
    a, b = weights[1], weights[16]
    close = sum(int(torch.isclose(a[k], b[k], atol=1e-5).sum()) for k in a) / sum(a[k].numel() for k in a)
    assert close > 0.999, close
    if search == "output":  # the answer losses the clip verdicts compare: summed over sequences alike
        assert verdicts[1].keys() == verdicts[16].keys() and verdicts[1]
        for k, (kept, without, with_clip) in verdicts[1].items():
            assert verdicts[16][k][0] == kept
            assert verdicts[16][k][1:] == pytest.approx((without, with_clip), rel=1e-3, abs=1e-6)
