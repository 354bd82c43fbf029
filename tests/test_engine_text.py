"""Text-only adapters (Llama, Qwen2): custom_txt / wikitext2-style calibration, perplexity eval."""

from __future__ import annotations

import json

import pytest
import torch

from llmc.config import load_config
from llmc.runner import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from wizard.demo import shapes

    d = tmp_path_factory.mktemp("text")
    lines = [shapes.scene_at(5, i).caption() for i in range(400)]
    (d / "train.txt").write_text("\n".join(lines[:300]))
    (d / "test.txt").write_text("\n".join(lines[300:]))
    (d / "samples.json").write_text(json.dumps(lines[:32]))
    return d


def _tiny_lm(kind, out):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from wizard.demo.train import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(LlamaConfig(**common)) if kind == "Llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind,method,calib", [("Llama", "GPTQ", "wikitext2"), ("Qwen2", "Awq", "custom_txt")])
def test_text_model_run_with_perplexity(kind, method, calib, corpus, tmp_path):
    path = _tiny_lm(kind, tmp_path / kind)
    cfg = {
        "model": {"type": kind, "path": str(path), "torch_dtype": "float32"},
        "calib": {"name": calib, "path": str(corpus / ("train.txt" if calib == "wikitext2" else "samples.json")),
                  "n_samples": 8, "seq_len": 64},
        "eval": {"eval_pos": ["pretrain", "fake_quant"], "type": "ppl", "name": "wikitext2",
                 "path": str(corpus / "test.txt"), "seq_len": 64, "bs": 4},
        "quant": {"method": method, "weight": {"bit": 8, "group_size": 32, "granularity": "per_group"}},
        "save": {"save_path": str(tmp_path / "out"), "save_fake": True},
    }
    res = run(load_config(cfg), tmp_path / "out", device="cpu")
    ppl = res["evals"]["wikitext2"]
    base, quant = ppl["pretrain"]["ppl"], ppl["fake_quant"]["ppl"]
    assert 1 < base < 1e4
    assert abs(quant - base) / base < 0.02  # 8-bit barely moves a random model
    assert "| perplexity |" in res["table"]
    assert (tmp_path / "out" / "fake" / "config.json").exists()


def test_ppl_needs_enough_tokens(corpus, tmp_path):
    from llmc.eval.ppl import perplexity
    from llmc.models import get_model_class

    m = get_model_class("Llama")(_tiny_lm("Llama", tmp_path / "m"), "float32", "cpu")
    (tmp_path / "short.txt").write_text("two words")
    with pytest.raises(ValueError, match="fewer than eval.seq_len=64"):
        perplexity(m, tmp_path / "short.txt", seq_len=64)


def test_token_id_calibration_equals_the_same_text_tokenized(corpus, tmp_path):
    """calib.name: token_ids reads (n, length) ids from a safetensors file: the same windows as a
    text set tokenized by the model's tokenizer give the same GPTQ weights; ids outside the
    vocabulary are refused in one line naming the id."""
    from safetensors.torch import load_file, save_file

    from llmc.data.calib import load_calib
    from llmc.models import get_model_class

    path = _tiny_lm("Llama", tmp_path / "m")
    m = get_model_class("Llama")(path, "float32", "cpu")
    text_cfg = load_config({"model": {"type": "Llama", "path": str(path)}, "calib": {
        "name": "wikitext2", "path": str(corpus / "train.txt"), "n_samples": 8, "seq_len": 64},
        "quant": {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}}})
    windows = torch.cat([b["input_ids"] for b in load_calib(text_cfg.calib, m)])
    save_file({"input_ids": windows.contiguous()}, str(tmp_path / "ids.safetensors"))
    runs = {}
    for name, cpath in (("wikitext2", corpus / "train.txt"), ("token_ids", tmp_path / "ids.safetensors")):
        cfg = {"model": {"type": "Llama", "path": str(path), "torch_dtype": "float32"},
               "calib": {"name": name, "path": str(cpath), "n_samples": 8, "seq_len": 64},
               "quant": {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}},
               "save": {"save_path": str(tmp_path / name), "save_fake": True}}
        run(load_config(cfg), tmp_path / name, device="cpu")
        runs[name] = load_file(str(next((tmp_path / name / "fake").glob("*.safetensors"))))
    a, b = runs["wikitext2"], runs["token_ids"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    save_file({"input_ids": torch.full((2, 8), 10**6)}, str(tmp_path / "bad.safetensors"))
    bad = load_config({"model": {"type": "Llama", "path": str(path)}, "calib": {
        "name": "token_ids", "path": str(tmp_path / "bad.safetensors")},
        "quant": {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}}})
    with pytest.raises(ValueError, match=r"holds token id 1000000, outside the model's vocabulary"):
        load_calib(bad.calib, m)


def test_the_in_process_api_returns_the_quantized_model(tmp_path):
    """llmc.api.quantize runs a config like `llmc run` and hands back the quantized model: its
    weights are those the run saved."""
    from safetensors.torch import load_file

    from llmc.api import quantize

    path = _tiny_lm("Llama", tmp_path / "m")
    q = quantize({"model": {"type": "Llama", "path": str(path), "torch_dtype": "float32"},
                  "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}},
                  "save": {"save_path": str(tmp_path / "out"), "save_fake": True}}, tmp_path / "out", device="cpu")
    saved = load_file(str(next((tmp_path / "out" / "fake").glob("*.safetensors"))))
    live = q.model.state_dict()
    assert saved.keys() <= live.keys() and all(torch.equal(saved[k], live[k]) for k in saved)
    assert q.results["label"].startswith("W4A16") and (q.run_dir / "COMPLETE").exists()


@pytest.mark.parametrize("method", ["GPTQ", "Awq"])
def test_equal_length_sequences_replay_together_with_the_same_result(corpus, tmp_path, monkeypatch, method):
    """GPTQ and AWQ on 8 equal-length text windows: replayed as one batch of 8 per block instead of
    8 forwards, the quantized weights are those of the one-by-one replay (to float rounding); VQA
    prompts of different lengths are never joined."""
    from safetensors.torch import load_file

    from llmc.quant import coalesce as co
    from llmc.quant.blockwise import BlockInput

    path = _tiny_lm("Llama", tmp_path / "m")
    weights, replays = {}, []
    real = co.coalesce

    def counted(inputs, *a, **kw):
        out = real(inputs, *a, **kw)
        replays.append((len(inputs), len(out)))
        return out

    monkeypatch.setattr(co, "coalesce", counted)
    for most in (1, 16):
        monkeypatch.setattr(co, "MOST", most)
        cfg = {"model": {"type": "Llama", "path": str(path), "torch_dtype": "float32"},
               "calib": {"name": "wikitext2", "path": str(corpus / "train.txt"), "n_samples": 8, "seq_len": 64},
               "quant": {"method": method, "weight": {"bit": 4, "group_size": 32}},
               "save": {"save_path": str(tmp_path / f"m{most}"), "save_fake": True}}
        run(load_config(cfg), tmp_path / f"m{most}", device="cpu")
        weights[most] = load_file(str(next((tmp_path / f"m{most}" / "fake").glob("*.safetensors"))))
    assert replays == [(8, 8), (8, 1)]  # one forward per block instead of eight
    a, b = weights[1], weights[16]
    close = sum(int(torch.isclose(a[k], b[k], atol=1e-5).sum()) for k in a) / sum(a[k].numel() for k in a)
    assert close > 0.999
    # different lengths (or arguments) stay apart
    x = [BlockInput(torch.randn(1, n, 8), (), {"m": torch.zeros(n)}) for n in (5, 5, 7)]
    joined = real(x, _Passthrough(), "cpu", most=16)
    assert [bi.hidden.shape[0] for bi in joined] == [2, 1]
    # equal lengths join wherever they stand, up to `most` per batch, in their order
    x = [BlockInput(torch.full((1, n, 8), float(k)), (), {"m": torch.zeros(n)}) for k, n in enumerate((5, 7, 5, 7, 5))]
    joined = real(x, _Passthrough(), "cpu", most=2)
    assert [bi.hidden[:, 0, 0].tolist() for bi in joined] == [[0.0, 2.0], [1.0, 3.0], [4.0]]


def test_awq_searches_on_about_64_sequences_whether_or_not_they_were_joined():
    """The block search takes evenly spaced inputs holding about 64 sequences: every second of 128
    single sequences, every second of 8 batches of 16."""
    from llmc.quant.blockwise import BlockContext, BlockInput
    from llmc.quant.methods import Awq
    from llmc.quant.quantizer import WeightQuantConfig

    awq = Awq(WeightQuantConfig(bit=4, group_size=32))
    for batch, n, want in ((1, 128, list(range(0, 128, 2))), (16, 8, [0, 2, 4, 6]), (16, 2, [0, 1])):
        inputs = [BlockInput(torch.full((batch, 4, 8), float(k)), (), {}) for k in range(n)]
        picked, _ = awq._search_set(BlockContext(0, "b0", _Passthrough(), inputs, [], "cpu"))
        assert [int(bi.hidden[0, 0, 0]) for bi in picked] == want


class _Passthrough(torch.nn.Module):
    def forward(self, hidden, *args, **kwargs):
        return hidden


@pytest.mark.parametrize("true_sequential,one_pass", [(False, False), (False, True), (True, False)])
def test_gptq_true_sequential_decides_where_each_hessian_comes_from(tmp_path, monkeypatch, true_sequential,
                                                                     one_pass):
    """true_sequential: false takes every layer's Hessian from the float block (last-called subset
    first, or in one pass where the subsets do not run one after another), so each of block 0's
    layers equals GPTQ on its float inputs alone; true (the default) collects o/gate/up/down's
    inputs after the layers before them were quantized, and they differ."""
    from llmc.quant import blockwise

    if one_pass:  # as for a block whose subsets interleave
        monkeypatch.setattr(blockwise, "_subset_order", lambda *a: None)
    from llmc.models.llama import Llama
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.gptq import GptqSolver
    from llmc.quant.methods import Gptq
    from llmc.quant.quantizer import WeightQuantConfig

    path = _tiny_lm("Llama", tmp_path / "m")
    wcfg = WeightQuantConfig(bit=3, group_size=32)
    ref = Llama(path, "float32", "cpu")
    vocab = ref.mm_model.config.vocab_size
    ids = torch.randint(0, vocab, (4, 48), generator=torch.Generator().manual_seed(0))
    block = ref.get_blocks()[0]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    seen = {n: [] for n in linears}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen[n].append(a[0].detach().clone()))
             for n, m in linears.items()]
    with torch.no_grad():
        for i in range(4):
            ref.mm_model(input_ids=ids[i:i + 1])
    for h in hooks:
        h.remove()
    expected = {}
    for n, m in linears.items():
        g = GptqSolver(m, n)
        for x in seen[n]:
            g.add_batch(x)
        g.quantize_(wcfg)
        expected[n] = m.weight.detach().clone()

    q = Llama(path, "float32", "cpu")
    quantize_blockwise(q, Gptq(wcfg, {"true_sequential": true_sequential}), [{"input_ids": ids[i:i + 1]} for i in range(4)])
    got = {n: m.weight.detach() for n, m in q.get_blocks()[0].named_modules() if isinstance(m, torch.nn.Linear)}
    same = {n: float(torch.isclose(got[n], expected[n], atol=1e-6).float().mean()) for n in linears}
    for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert same[n] > 0.999, (n, same)
    for n in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert (same[n] > 0.999) is not true_sequential, (n, same)


@pytest.mark.parametrize("true_sequential", [False, True])
def test_gptq_holds_only_the_hessians_it_still_needs(tmp_path, monkeypatch, true_sequential):
    """A layer that reads another's input (k/v after q, up after gate) never gets a Hessian of
    its own, each Hessian is gone once its layers are solved, and one is accumulated at a time:
    with every Hessian from the float block (true_sequential: false) as in true-sequential mode."""
    from llmc.models.llama import Llama
    from llmc.quant.blockwise import quantize_blockwise
    from llmc.quant.gptq import GptqSolver
    from llmc.quant.methods import Gptq
    from llmc.quant.quantizer import WeightQuantConfig

    live, alive_at_solve, alive_at_batch = [], {}, []
    init, solve, add = GptqSolver.__init__, GptqSolver.quantize_layers_, GptqSolver.add_batch

    def tracked_add(self, x):
        add(self, x)
        alive_at_batch.append(sum(g.H is not None for g in live))

    def tracked_init(self, layer, name="<linear>"):
        init(self, layer, name)
        live.append(self)  # kept alive: checked after the run

    def tracked_solve(self, layers, *a, **k):
        held = [g for g in live if g.H is not None]
        alive_at_solve[",".join(sorted(layers))] = len(held)
        return solve(self, layers, *a, **k)

    monkeypatch.setattr(GptqSolver, "__init__", tracked_init)
    monkeypatch.setattr(GptqSolver, "quantize_layers_", tracked_solve)
    monkeypatch.setattr(GptqSolver, "add_batch", tracked_add)
    path = _tiny_lm("Llama", tmp_path / "m")
    q = Llama(path, "float32", "cpu")
    ids = torch.randint(0, q.mm_model.config.vocab_size, (4, 48), generator=torch.Generator().manual_seed(0))
    quantize_blockwise(q, Gptq(WeightQuantConfig(bit=4, group_size=32), {"true_sequential": true_sequential}),
                       [{"input_ids": ids[i:i + 1]} for i in range(4)])
    names = {m: n for n, m in q.mm_model.named_modules()}
    shared = [g for g in live if names[g.layer].endswith(("k_proj", "v_proj", "up_proj"))]
    assert len(shared) == 3 * len(q.get_blocks()) and all(g.H is None and g.nsamples == 0 for g in shared)
    assert alive_at_solve["mlp.down_proj"] == 1, alive_at_solve
    assert alive_at_batch and max(alive_at_batch) == 1  # one Hessian at a time, in either order


@pytest.mark.parametrize("method,special", [("GPTQ", {"true_sequential": False}), ("GPTQ", {}), ("Awq", {}),
                                            ("Awq", {"search": "output", "loss_tokens": "last"}), ("SmoothQuant", {}), ("Quarot", {}),
                                            ("RTN", {})])
def test_no_forward_of_a_run_records_an_autograd_graph(corpus, tmp_path, method, special):
    """Every module call of a run (capture, the float-block order's probe, collection, searches,
    evaluation) runs without autograd: a graph would keep each forward's activations alive (a
    block's whole MLP on the GPU) until the pass ends."""
    path = _tiny_lm("Llama", tmp_path / "m")
    calls = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda mod, args: calls.append((type(mod).__name__, torch.is_grad_enabled())))
    try:
        run(load_config({
            "model": {"type": "Llama", "path": str(path), "torch_dtype": "float32"},
            "calib": {"name": "wikitext2", "path": str(corpus / "train.txt"), "n_samples": 4, "seq_len": 32},
            "eval": {"eval_pos": ["fake_quant"], "type": "ppl", "name": "wikitext2",
                     "path": str(corpus / "test.txt"), "seq_len": 32, "bs": 2},
            "quant": {"method": method, "weight": {"bit": 4, "group_size": 32},
                      **({"act": {"bit": 8}} if method == "SmoothQuant" else {}), "special": special}}),
            tmp_path / "out", device="cpu")
    finally:
        hook.remove()
    assert len(calls) > 50
    assert not [c for c in calls if c[1]], sorted({c[0] for c in calls if c[1]})


def test_a_run_past_the_models_context_says_so_before_it_scores(corpus, tmp_path):
    """A 256-position model evaluated on 512-token windows and calibrated on 300-token sequences:
    the run warns (events, log, report) naming both lengths and the context, instead of a silent
    meaningless perplexity."""
    from llmc.events import Warned, load_events

    path = _tiny_lm("Llama", tmp_path / "lm")
    long_lines = [" ".join([line] * 40) for line in json.loads((corpus / "samples.json").read_text())[:4]]
    (tmp_path / "long.json").write_text(json.dumps(long_lines))
    cfg = {
        "model": {"type": "Llama", "path": str(path), "torch_dtype": "float32"},
        "calib": {"name": "custom_txt", "path": str(tmp_path / "long.json"), "n_samples": 4, "seq_len": 300},
        "eval": {"eval_pos": ["fake_quant"], "type": "ppl", "name": "wikitext2",
                 "path": str(corpus / "test.txt"), "seq_len": 512, "num_samples": 1},
        "quant": {"method": "RTN", "weight": {"bit": 8, "group_size": 32, "granularity": "per_group"}},
    }
    run(load_config(cfg), tmp_path / "out", device="cpu")
    warned = [e.message for e in load_events(tmp_path / "out" / "events.jsonl") if isinstance(e, Warned)]
    assert any("seq_len 512" in m and "context of 256" in m for m in warned), warned
    assert any("4 of 4 calibration sequences" in m and "longest 300" in m for m in warned), warned
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Warnings of this run:" in report and "seq_len 512" in report


def test_a_run_within_the_context_warns_of_nothing(corpus, tmp_path):
    from llmc.context import batch_warning, config_warnings, context_length
    from transformers import AutoConfig

    path = _tiny_lm("Qwen2", tmp_path / "lm")
    limit = context_length(AutoConfig.from_pretrained(path))
    assert limit == 256
    cfg = load_config({"model": {"type": "Qwen2", "path": str(path)},
                       "eval": {"eval_pos": ["pretrain"], "type": "ppl", "name": "wikitext2",
                                "path": str(corpus / "test.txt"), "seq_len": 256},
                       "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}}})
    assert config_warnings(cfg, limit) == []
    assert batch_warning([{"input_ids": torch.zeros(1, 256, dtype=torch.long)}], limit) is None
