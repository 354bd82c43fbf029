"""Rendering adapters and configs: escaping, safe writes, registration, smoke test."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from wizard.services import render
from wizard.services.errors import WizardError
from wizard.services.register import import_adapter, register_adapter

ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
HOSTILE = [
    "my-vlm",
    "'; import os; os.system('echo pwned') #",
    '"""\nimport os\n"""',
    "class",
    "__init__",
    "1st model",
    "Llava",
    "ViLA-ü∂-模型",
    "",
    "a" * 200,
    "\\x00\\n{{ 7*7 }}{% raw %}",
]


def _answers(name, kind="transformers", last=("model.multi_modal_projector.linear_2",), weights=None):
    from wizard.services.answers import Answers

    a = Answers()
    a.source.weights_url = weights or str(ASSETS / "tiny-llava")
    a.source.weights_dir = weights or str(ASSETS / "tiny-llava")
    a.inspect.model_kind = kind
    a.inspect.architecture = "LlavaForConditionalGeneration" if kind == "transformers" else "LlavaLlamaModel"
    a.inspect.projector_last_layers = list(last)
    a.generate.name = name
    a.generate.calib_path = "/data/calib"
    a.generate.eval_path = "/data/mme"
    return a


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("kind", ["transformers", "custom-code"])
def test_generated_python_always_parses(name, kind, tmp_path):
    a = _answers(name or "x", kind, last=[f"mm.{name}'\"\n"], weights=f"/w/{name}\n'\"")
    a.generate.name = name or "x"
    p = render.plan(a, tmp_path / "models", tmp_path / "configs")
    tree = ast.parse(p.adapter_text)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == [p.class_name]
    assert p.class_name.isidentifier() and p.module.isidentifier()
    decl = render.check_declaration(p.adapter_text)
    assert decl["projector_last_layers"] == (f"mm.{name}'\"\n",)  # hostile text survives as data
    import yaml

    cfg = yaml.safe_load(p.config_text)
    assert cfg["model"]["path"] == f"/w/{name}\n'\""
    assert cfg["model"]["type"] == p.model_type


def test_names_are_sanitised():
    assert render.module_name("My VLM-1.5b") == "my_vlm_1_5b"
    assert render.module_name("class") == "class_model"
    assert render.class_name("my vlm") == "MyVlm"
    # a class never takes a name the engine defines (registered types, names in llmc.models)
    assert render.class_name("llava") == "LlavaAdapter"
    assert render.class_name("placement") == "PlacementAdapter"
    assert render.class_name("hf vlm") == "HfVlm"


def test_plan_requires_a_projector_pick(tmp_path):
    a = _answers("m", last=())
    with pytest.raises(WizardError, match="no projector last layer chosen"):
        render.plan(a, tmp_path, tmp_path)


def test_safe_write_keeps_hand_edits(tmp_path):
    p = tmp_path / "m.py"
    v1 = render.render_text("adapter_hf.py.j2", _ctx("one"))
    assert render.safe_write(p, v1).action == "created"
    assert render.safe_write(p, v1).action == "unchanged"
    v2 = render.render_text("adapter_hf.py.j2", _ctx("two"))
    r = render.safe_write(p, v2)
    assert r.action == "updated" and r.backup is None and "-@register('one')" in r.diff
    edited = p.read_text() + "\n# my own fix\n"
    p.write_text(edited)
    assert render.is_hand_edited(edited)
    r = render.safe_write(p, v1)
    assert r.action == "replaced-edited"
    assert r.backup.read_text() == edited
    assert "-# my own fix" in r.diff
    assert p.read_text() == v1


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    p = tmp_path / "x.py"
    p.write_text("original")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(render.os, "replace", boom)
    with pytest.raises(OSError):
        render.atomic_write(p, "new")
    assert p.read_text() == "original"
    assert [f.name for f in tmp_path.iterdir()] == ["x.py"]


def _ctx(model_type):
    return dict(display_name="d", model_type=model_type, class_name="M", architecture="A",
                code_package=None, last_layers=["x"], language_model_path="", vision_tower_path="",
                projector_path="", prompt_format="chat")


def test_register_checks_discovery_and_writes_nothing(tmp_path):
    pkg = tmp_path / "models"
    pkg.mkdir()
    (pkg / "my_vlm.py").write_text(render.render_text("adapter_hf.py.j2", _ctx("RegCheckVlm")))
    (pkg / "empty.py").write_text("X = 1\n")
    before = {p.name: p.read_text() for p in pkg.iterdir()}
    assert register_adapter("my_vlm", pkg) == "RegCheckVlm"
    assert register_adapter("my_vlm", pkg, "RegCheckVlm") == "RegCheckVlm"
    assert {p.name: p.read_text() for p in pkg.iterdir()} == before  # nothing edited
    with pytest.raises(WizardError, match="registers RegCheckVlm, not Other"):
        register_adapter("my_vlm", pkg, "Other")
    with pytest.raises(WizardError, match="registers no model type"):
        register_adapter("empty", pkg)
    with pytest.raises(WizardError, match="does not exist"):
        register_adapter("missing", pkg)
    with pytest.raises(WizardError, match="not a valid adapter module name"):
        register_adapter("../evil", pkg)


def test_generated_adapter_registers_builds_and_answers(tmp_path, zoo):
    from llmc.models import MODEL_REGISTRY
    from wizard.services.smoke import smoke_test

    a = _answers("Smoke LLaVA")
    a.generate.calib_path = str(zoo.calib_set)
    a.generate.eval_path = str(zoo.eval_set / "data")
    p = render.plan(a, tmp_path / "adapters", tmp_path / "configs")
    results = render.write(p, a)
    assert [r.action for r in results] == ["created", "created"]
    assert p.answers_path.exists() and f"template_version: '{render.TEMPLATE_VERSION}'" in p.answers_path.read_text()
    mod = import_adapter(p.module, tmp_path / "adapters")
    assert MODEL_REGISTRY[p.model_type] is getattr(mod, p.class_name)
    rep = smoke_test(p.module, p.model_type, ASSETS / "tiny-llava", zoo.calib_set, zoo.eval_set / "data",
                     models_dir=tmp_path / "adapters")
    assert rep.ok and rep.answer in ("Yes", "No")
    assert [s[0] for s in rep.steps] == ["import adapter", "registered", "build model", "calibration sample",
                                         "eval sample", "eval batch"]
    assert rep.steps[-1][1] == "batch of 2 answers as one at a time; logits finite"
    adapter = MODEL_REGISTRY[p.model_type](ASSETS / "tiny-llava", "float32", "cpu")
    (last,) = adapter.get_extra_rot_module_besides_embed_layers()
    assert last is adapter.mm_model.model.multi_modal_projector.linear_2


def test_smoke_test_names_the_failing_step(tmp_path, zoo):
    from wizard.services.smoke import smoke_test

    a = _answers("Broken Pick", last=["model.multi_modal_projector.no_such_layer"])
    p = render.plan(a, tmp_path / "adapters", tmp_path / "configs")
    render.write(p, a)
    # a projector layer that does not exist fails the smoke test, naming it and what is there
    with pytest.raises(WizardError, match=r"build model.*'model.multi_modal_projector.no_such_layer' is not in "
                                          r"the model; modules under model.multi_modal_projector: linear_1, act, "
                                          r"linear_2"):
        smoke_test(p.module, p.model_type, ASSETS / "tiny-llava", None, None, models_dir=tmp_path / "adapters")
    with pytest.raises(WizardError, match="smoke test failed at 'build model'"):
        smoke_test(p.module, p.model_type, tmp_path / "nowhere", None, None, models_dir=tmp_path / "adapters")


def test_runner_streams_events_and_cancel_stops_the_process_tree(tmp_path, zoo):
    import time

    from llmc import events
    from wizard.services import runner

    cfg = {
        "model": {"type": "Llava", "path": str(ASSETS / "tiny-llava"), "torch_dtype": "float32"},
        "calib": {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 128},
        "eval": {"eval_pos": ["pretrain", "fake_quant"], "type": "vqa", "name": "mme",
                 "path": str(zoo.eval_set / "data"), "bs": 8, "cache": False},
        "quant": {"method": "GPTQ", "weight": {"bit": 4, "group_size": 32}},
    }
    import yaml

    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    h = runner.launch(tmp_path / "c.yml", tmp_path / "run", device="cpu")
    seen = []
    t0 = time.time()
    while time.time() - t0 < 120:
        seen += h.events.poll()
        if any(isinstance(e, events.EvalProgress) for e in seen):
            break
        time.sleep(0.2)
    assert any(isinstance(e, events.Start) and e.pid == h.pid for e in seen), \
        (tmp_path / "run" / "process.log").read_text()
    assert h.poll() is None
    past = runner.list_runs(tmp_path)
    assert [r.state for r in past] == ["running"]
    again = runner.reattach(tmp_path / "run")
    assert again.pid == h.pid and again.poll() is None
    h.cancel()
    assert h.poll() is not None
    assert not runner.pid_alive(h.pid)
    assert [r.state for r in runner.list_runs(tmp_path)] == ["cancelled"]
    with pytest.raises(WizardError, match="already holds a run"):
        runner.launch(tmp_path / "c.yml", tmp_path / "run")


def test_launch_needs_a_config(tmp_path):
    from wizard.services import runner

    with pytest.raises(WizardError, match="does not exist"):
        runner.launch(tmp_path / "nope.yml", tmp_path / "r")


def test_event_tail_reads_only_complete_lines(tmp_path):
    from wizard.services.runner import EventTail

    f = tmp_path / "events.jsonl"
    f.write_text(json.dumps({"event": "a"}) + "\n" + '{"event": "b"')
    t = EventTail(f)
    assert [e.event for e in t.poll()] == ["a"]  # kinds without a class of their own: events.Other
    with open(f, "a") as fh:
        fh.write("}\n")
    assert [e.event for e in t.poll()] == ["b"]
    assert t.poll() == []




@pytest.mark.parametrize("method", ["RTN", "GPTQ"])
def test_rotation_choice_reaches_the_config(method, tmp_path):
    import yaml

    from llmc.config import load_config

    a = _answers("rot")
    a.generate.method = method
    a.generate.rotate = "hadamard"
    p = render.plan(a, tmp_path / "m", tmp_path / "c")
    cfg = yaml.safe_load(p.config_text)
    assert cfg["quant"]["special"]["rotate"] == "hadamard"
    assert load_config(cfg).quant.special.rotate == "hadamard"  # the engine accepts what we render
    a.generate.method = "Awq"
    with pytest.raises(WizardError, match="Awq does not rotate the residual stream — choose RTN, GPTQ, Quarot"):
        render.plan(a, tmp_path / "m", tmp_path / "c")


@pytest.mark.parametrize("method,act,export,expect", [
    ("SmoothQuant", 8, None, {"method": "SmoothQuant", "act": 8, "symmetric": True}),
    ("Quarot", 4, None, {"method": "Quarot", "act": 4, "symmetric": False, "rotate": "hadamard"}),
    ("Awq", None, "autoawq", {"method": "Awq", "act": None, "symmetric": False, "save_autoawq": True}),
    ("GPTQ", None, "vllm", {"method": "GPTQ", "act": None, "symmetric": True, "save_vllm": True}),
])
def test_method_activation_and_export_choices_reach_the_config(method, act, export, expect, tmp_path):
    import yaml

    from llmc.config import load_config

    a = _answers("choices")
    a.generate.method, a.generate.act_bit, a.generate.export = method, act, export
    a.generate.bit = 8 if method == "SmoothQuant" else 4
    cfg = load_config(yaml.safe_load(render.plan(a, tmp_path / "m", tmp_path / "c").config_text))
    assert cfg.quant.method == expect["method"]
    assert (cfg.quant.act.bit if cfg.quant.act else None) == expect["act"]
    assert cfg.quant.weight.symmetric is expect["symmetric"]
    assert cfg.save.save_vllm is expect.get("save_vllm", False)
    assert cfg.save.save_autoawq is expect.get("save_autoawq", False)
    if "rotate" in expect:
        assert cfg.quant.special.rotate == expect["rotate"]


@pytest.mark.parametrize("placement,mode", [("single", "single"), ("offload", "offload"), ("auto", "auto")])
def test_placement_choice_reaches_the_config(placement, mode, tmp_path):
    import yaml

    from llmc.config import load_config

    a = _answers("place")
    a.generate.placement = placement
    text = render.plan(a, tmp_path / "m", tmp_path / "c").config_text
    assert load_config(yaml.safe_load(text)).model.placement == mode
    assert ("offload:" in text) is (placement == "offload") and ("device_map:" in text) is (placement == "auto")


@pytest.mark.parametrize("method", ["RTN", "GPTQ", "SmoothQuant", "Quarot"])
def test_range_search_and_hessian_choices_reach_the_config(method, tmp_path):
    from llmc.config import load_config

    a = _answers("ranges")
    a.generate.method, a.generate.bit = method, 8 if method == "SmoothQuant" else 4
    a.generate.act_bit = 8 if method == "SmoothQuant" else None
    text = render.plan(a, tmp_path / "m", tmp_path / "c").config_text
    cfg = load_config(yaml.safe_load(text))
    assert cfg.quant.weight.calib_algo == "minmax" and "calib_algo" not in text and "true_sequential" not in text
    a.generate.calib_algo, a.generate.true_sequential = "mse", False
    cfg = load_config(yaml.safe_load(render.plan(a, tmp_path / "m", tmp_path / "c").config_text))
    assert cfg.quant.weight.calib_algo == "mse"
    if method == "GPTQ":  # the only method with Hessians
        assert cfg.quant.special.true_sequential is False


def test_range_search_with_awq_is_refused_in_one_line(tmp_path):
    from wizard.services.answers import Answers

    a = _answers("awq-mse")
    a.generate.method, a.generate.calib_algo = "Awq", "mse"
    with pytest.raises(WizardError) as err:
        render.plan(a, tmp_path / "m", tmp_path / "c")
    assert "quant.weight.calib_algo" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="calib_algo"):  # a value the engine has no name for
        Answers.model_validate({"generate": {"calib_algo": "percentile"}})


def test_choices_the_engine_rejects_are_reported_in_one_line(tmp_path):
    a = _answers("bad")
    a.generate.method, a.generate.export, a.generate.symmetric = "Awq", "autoawq", True
    with pytest.raises(WizardError) as err:
        render.plan(a, tmp_path / "m", tmp_path / "c")
    assert "the engine rejects these choices: save.save_autoawq: AutoAWQ export needs asymmetric weights" \
        in str(err.value)
    a.generate.symmetric, a.generate.group_size = None, 0  # per-channel: AutoAWQ needs groups
    with pytest.raises(WizardError, match="AutoAWQ export needs per-group weights"):
        render.plan(a, tmp_path / "m", tmp_path / "c")
    a.generate.method, a.generate.act_bit, a.generate.export = "SmoothQuant", 8, "vllm"
    with pytest.raises(WizardError, match=r"W8A8 export needs 8-bit weights, got 4; set quant.weight.bit: 8"):
        render.plan(a, tmp_path / "m", tmp_path / "c")
    a.generate.bit = 8  # per-channel (group 0) W8A8: the vLLM export writes it as int-quantized
    cfg = yaml.safe_load(render.plan(a, tmp_path / "m", tmp_path / "c").config_text)
    assert cfg["save"]["save_vllm"] is True and cfg["quant"]["act"]["bit"] == 8
    assert cfg["quant"]["weight"]["granularity"] == "per_channel"
    a.generate.act_bit = 4
    with pytest.raises(WizardError, match=r"set quant.act to bit: 8, symmetric: true, granularity: per_token"):
        render.plan(a, tmp_path / "m", tmp_path / "c")
    a.generate.export, a.generate.bit = None, 9
    with pytest.raises(WizardError, match=r"quant.weight.bit: 9 is out of range; use 2..8"):
        render.plan(a, tmp_path / "m", tmp_path / "c")


def test_smoke_catches_images_not_matched_to_their_samples(zoo):
    """The batch check fails in seconds on a batching bug (here: each sample gets another sample's
    image when batched, as a flat image list does in some processors), naming the sample."""
    from llmc.eval.mme import load_dataset
    from llmc.models import get_model_class
    from wizard.services.smoke import check_batch, eval_batch

    class Swapped(get_model_class("Llava")):
        def _inputs(self, texts, images):
            return super()._inputs(texts, list(reversed(images)) if len(images) > 1 else images)

    ds = load_dataset(zoo.eval_set / "data")
    rows = eval_batch([ds[i] for i in range(64)], 8)
    assert len({r["question_id"] for r in rows}) == 8  # eight different images
    good = get_model_class("Llava")(ASSETS / "tiny-llava", "float32", "cpu")
    assert check_batch(good, rows).startswith("batch of 8 answers as one at a time")
    bad = Swapped(ASSETS / "tiny-llava", "float32", "cpu")
    with pytest.raises(ValueError, match=r"sample \d+ of a batch of 8 answers .* alone: batching changes"):
        check_batch(bad, rows)
