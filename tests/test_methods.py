"""The method registry: one module per method, and nothing else naming a method."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.config import ConfigError, load_config
from llmc.quant.methods import RunFacts, make_method, registry, spec

ROOT = Path(__file__).resolve().parents[1]
METHODS_DIR = ROOT / "llmc" / "quant" / "methods"


def _config(method: str, **quant) -> dict:
    return {"model": {"type": "Llama", "path": "/m"},
            "quant": {"method": method, "weight": {"bit": 4, "group_size": 32}, **quant}}


def _error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert "\n" not in message and "pydantic" not in message
    return message


def _string_constants(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_the_registry_is_the_only_place_that_names_a_method():
    """No string in the engine, the wizard or the templates is a method's name, except
    in the methods' own modules: the schema, the runner, the form and the template read the registry."""
    names = set(registry())
    assert {"RTN", "Awq", "GPTQ"} <= names
    found = []
    for path in [*ROOT.joinpath("llmc").rglob("*.py"), *ROOT.joinpath("wizard").rglob("*.py")]:
        if METHODS_DIR in path.parents or "demo" in path.relative_to(ROOT).parts:
            continue
        for line, text in _string_constants(path):
            if text.strip() in names:
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    for path in ROOT.joinpath("templates").glob("*.j2"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{i}: {n}" for n in registry() if f'"{n}"' in line or f"'{n}'" in line]
    assert not found, "method names outside llmc/quant/methods: " + "; ".join(found)


def test_every_method_module_is_registered_and_consistent():
    modules = {p.stem for p in METHODS_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem != "base"}
    assert {s.impl.__module__.rsplit(".", 1)[-1] for s in registry().values()} == modules
    for s in registry().values():
        assert spec(s.name.lower()) is s and spec(s.name.upper()) is s
        assert s.options._method == s.name == s.impl.name


def test_the_config_loads_without_torch():
    code = ("import sys; from llmc.config import load_config; from llmc.quant.methods import registry; registry(); "
            "load_config({'model': {'type': 'Llama', 'path': '/m'}, 'quant': {'method': 'rtn', 'weight': {'bit': 4, "
            "'group_size': 32}}}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(registry()))
def test_a_method_that_needs_data_refuses_a_config_without_calib(name):
    s = registry()[name]
    if s.needs_data:
        assert _error(_config(name)).startswith(f"calib: required for {name}, which calibrates on data")
    else:
        assert load_config(_config(name)).calib is None


@pytest.mark.parametrize("name", list(registry()))
def test_a_method_that_does_not_rotate_refuses_rotation_at_config_load(name):
    s = registry()[name]
    cfg = _config(name, special={"rotate": "hadamard"})
    cfg["calib"] = {"name": "custom_txt", "path": "/c"}
    if s.rotation == "never":
        message = _error(cfg)
        assert message.startswith(f"quant.special.rotate: {name} does not rotate; use ")
        rotating = [r.name for r in registry().values() if r.rotation != "never"]
        assert all(r in message for r in rotating)
    else:
        assert load_config(cfg).quant.special.rotate == "hadamard"


@pytest.mark.parametrize("name", list(registry()))
def test_options_are_validated_once_with_one_set_of_defaults(name):
    """The method reads the options the config validated: a method built from an empty mapping,
    from the config and from the options' own defaults holds the same values, and no method
    module looks an option up with a default of its own."""
    s = registry()[name]
    cfg = _config(name)
    cfg["calib"] = {"name": "custom_txt", "path": "/c"}
    loaded = load_config(cfg)
    from llmc.quant.quantizer import WeightQuantConfig

    wcfg = WeightQuantConfig(bit=4, group_size=32)
    a, b = s.impl(wcfg, {}), s.impl(wcfg, s.options())
    assert a.opts == b.opts == s.options()
    assert make_method(loaded.quant, loaded.calib).opts == loaded.quant.special.resolve(RunFacts(loaded.calib))
    unset = set(s.options.model_fields) - loaded.quant.special.model_fields_set
    assert {k: getattr(loaded.quant.special, k) for k in unset} == {k: getattr(s.options(), k) for k in unset}
    text = (METHODS_DIR / f"{s.impl.__module__.rsplit('.', 1)[-1]}.py").read_text()
    assert ".special.get(" not in text and "special[" not in text


def test_a_bad_option_value_names_the_option_in_one_line():
    message = _error({**_config("GPTQ", special={"percdamp": 2.0}), "calib": {"name": "custom_txt", "path": "/c"}})
    assert message.startswith("quant.special.percdamp: 2.0 is out of range")


def _tiny_llama(path: Path, layers: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from wizard.demo.train import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=layers, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_data_free_method_runs_without_calibration(tmp_path):
    """A method whose spec needs no data rounds every block without a forward pass."""
    from llmc.runner import run

    _tiny_llama(tmp_path / "m", 2)
    for s in registry().values():
        if s.needs_data:
            continue
        cfg = load_config({"model": {"type": "Llama", "path": str(tmp_path / "m"), "torch_dtype": "float32"},
                           "quant": {"method": s.name, "weight": {"bit": 4, "group_size": 32}}})
        res = run(cfg, tmp_path / f"run-{s.name}", device="cpu")
        assert [b["block_error"] for b in res["blocks"]] == [None, None]  # nothing measured: no data read


def test_the_in_process_api_hands_back_the_quantized_model(tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    from llmc.api import quantize

    _tiny_llama(tmp_path / "m", 1)
    float_w = LlamaForCausalLM.from_pretrained(tmp_path / "m").model.layers[0].mlp.down_proj.weight.clone()
    q = quantize({"model": {"type": "Llama", "path": str(tmp_path / "m"), "torch_dtype": "float32"},
                  "quant": {"method": "RTN", "weight": {"bit": 2, "group_size": 32}}}, tmp_path / "run")
    w = q.model.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(w, float_w)
    assert all(g.unique().numel() <= 4 for g in w.detach().reshape(-1, 32))  # 2 bits: at most 4 levels a group
    assert (tmp_path / "run" / "COMPLETE").exists()


def test_every_method_has_its_line_in_the_config_reference():
    doc = (ROOT / "docs" / "config.md").read_text()
    table = doc[doc.index("## Methods"):].split("\n## ")[0]
    assert [line.split("`")[1] for line in table.splitlines()
            if line.startswith("| `") and "quant.method" not in line] == list(registry())
