"""Data never becomes code: every field that reaches a template, filled with hostile text.

For each hostile string, every templated field of both model kinds gets it (or a variant of it);
the generated declaration must parse, hold only literals (``check_declaration``), import in a
fresh interpreter without running anything but definitions, and give back every value exactly;
the generated config must load as YAML to exactly the values put in, with no key added.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from wizard.services import render
from wizard.services.answers import Answers, load_answers, save_answers
from wizard.services.errors import WizardError

PAYLOAD = "__import__('pathlib').Path('PWNED').touch()"
HOSTILE = [
    f'X"""\n    {PAYLOAD}\n    """',
    f"X'''\n{PAYLOAD}\n'''",
    f"'); {PAYLOAD} #",
    f'"); {PAYLOAD} #',
    f"\\'); {PAYLOAD} #\\",
    f"x\\\n{PAYLOAD}",
    f"x\r{PAYLOAD}",
    f"x\u2028{PAYLOAD}\u2029y\x85z",
    f"x\x00{PAYLOAD}",
    f"x\x0c\x0b\x1c\x1d\x1e{PAYLOAD}",
    "{{ 7*7 }}{% raw %}{# c #}",
    "a: b\n- c\n&anchor *alias !!python/object/apply:os.system ['touch PWNED']",
    "# comment\nmodel: {type: Evil}",
    "\u202eevil\u200b\ufeff",
    "ViLA-ü∂-模型-😀",
    "\t \t",
    "x" * 10_000,
    "\\" * 7,
    "\ud800 lone surrogate",
]


def _fill(a: Answers, h: str, kind: str, code_dir: Path | None) -> None:
    a.source.weights_dir = "/w/" + h
    a.inspect.model_kind = kind
    a.inspect.architecture = h
    a.inspect.projector_last_layers = [h, "x." + h]
    a.inspect.language_model_path, a.inspect.vision_tower_path, a.inspect.projector_path = h, "v." + h, "p." + h
    a.generate.prompt_template = h + "{question}"
    a.generate.name = h
    a.generate.class_name = h
    a.generate.calib_path = "/c/" + h
    a.generate.eval_path = "/e/" + h
    a.generate.out_dir = "/o/" + h
    if code_dir is not None:
        a.source.code_dir = str(code_dir)


def _code_dir(tmp: Path, h: str) -> tuple[Path, str]:
    """A code checkout whose package folder is named after the hostile text (as far as a file
    system allows: no '/', no NUL, at most 100 characters)."""
    name = "".join(c for c in h if c not in "/\x00" and not 0xD800 <= ord(c) <= 0xDFFF)[:100].strip() or "pkg"
    if name in (".", ".."):
        name = "pkg"
    (tmp / "code" / name / "model").mkdir(parents=True)
    (tmp / "code" / name / "model" / "builder.py").write_text("")
    return tmp / "code", name


def _plans(tmp_path):
    plans = []
    for i, h in enumerate(HOSTILE):
        for kind in ("transformers", "custom-code"):
            base = tmp_path / f"{i}-{kind}"
            code_dir, pkg = _code_dir(base, h) if kind == "custom-code" else (None, None)
            a = Answers()
            _fill(a, h, kind, code_dir)
            p = render.plan(a, base / "adapters", base / "configs")
            plans.append((h, kind, pkg, a, p))
    return plans


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    return _plans(tmp_path_factory.mktemp("hostile"))


def test_declarations_are_literals_that_round_trip(plans):
    for h, kind, pkg, _, p in plans:
        decl = render.check_declaration(render.split_header(p.adapter_text)[1])
        assert decl["display_name"] == h
        assert decl["projector_last_layers"] == (h, "x." + h)
        if kind == "custom-code":
            assert decl["CODE_PACKAGE"] == pkg
        else:
            assert decl["model_cls_name"] == h
            assert (decl["language_model_path"], decl["vision_tower_path"], decl["projector_path"]) == \
                (h, "v." + h, "p." + h)
            assert decl["prompt_format"] == h + "{question}"
        assert decl["class"].isidentifier() and decl["class"].isascii() and decl["type"] == decl["class"]
        assert p.module.isidentifier() and len(p.module) <= render.MAX_MODULE_LEN
        assert p.adapter_text.isascii()  # no raw line separators or control characters at all
        # no hostile text outside the literals: not in the docstring, comments or header
        assert "PWNED" not in "".join(line for line in p.adapter_text.splitlines()
                                      if not line.lstrip().startswith(("display_name =", "model_cls_name =",
                                                                      "projector_last_layers =", "CODE_PACKAGE =",
                                                                      "language_model_path =", "projector_path =",
                                                                      "vision_tower_path =", "prompt_format =")))


def test_importing_a_hostile_declaration_runs_nothing_and_gives_the_values_back(plans, tmp_path):
    files = []
    for h, kind, pkg, _, p in plans:
        p.adapter_path.parent.mkdir(parents=True, exist_ok=True)
        p.adapter_path.write_text(p.adapter_text, encoding="utf-8")
        files.append(str(p.adapter_path))
    script = (
        "import json, sys\n"
        "from llmc.models.registry import import_adapter_file, MODEL_REGISTRY\n"
        "out = []\n"
        "for f in json.loads(sys.argv[1]):\n"
        "    mod = import_adapter_file(f)\n"
        "    (cls,) = [c for c in MODEL_REGISTRY.values() if c.__module__ == mod.__name__]\n"
        "    out.append({'name': cls.name, 'display_name': cls.display_name,\n"
        "                'layers': list(cls.projector_last_layers),\n"
        "                'extra': getattr(cls, 'model_cls_name', None) if 'LlavaLineage' not in [b.__name__ for b in cls.__mro__]\n"
        "                         else cls.CODE_PACKAGE})\n"
        "    del MODEL_REGISTRY[cls.name]  # the next folder declares the same type\n"
        "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", script, json.dumps(files)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "PWNED").exists()
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for (h, kind, pkg, _, p), g in zip(plans, got):
        assert g["name"] == p.model_type
        assert g["display_name"] == h
        assert g["layers"] == [h, "x." + h]
        assert g["extra"] == (pkg if kind == "custom-code" else h)


def test_configs_load_to_exactly_the_values_given(plans):
    benign = yaml.safe_load(_plans_for_keys())
    for h, kind, _, a, p in plans:
        cfg = yaml.safe_load(p.config_text)
        assert cfg["model"]["path"] == "/w/" + h
        assert cfg["model"]["type"] == p.model_type
        assert cfg["model"]["adapters"] == str(p.adapter_path.parent)
        assert cfg["calib"]["path"] == "/c/" + h
        assert cfg["eval"]["path"] == "/e/" + h
        assert cfg["save"]["save_path"] == str(Path("/o/" + h) / f"{p.module}-awq")
        # nothing injected: the same sections and keys as a benign config
        assert {s: sorted(v) for s, v in cfg.items()} == {s: sorted(v) for s, v in benign.items()}
        comments = [line for line in p.config_text.splitlines() if line.lstrip().startswith("#")]
        assert all("PWNED" not in c and "Evil" not in c for c in comments)


def _plans_for_keys() -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a = Answers()
        _fill(a, "benign", "transformers", None)
        return render.plan(a, Path(d) / "adapters", Path(d) / "configs").config_text


def test_answers_round_trip_hostile_values(plans, tmp_path):
    for i, (h, kind, _, a, _) in enumerate(plans[::2]):
        path = tmp_path / f"a{i}.yml"
        save_answers(a, path)
        back = load_answers(path)
        assert back.generate.name == h and back.inspect.projector_last_layers == [h, "x." + h]
        assert back.source.weights_dir == "/w/" + h


def test_templates_refuse_an_unescaped_value(tmp_path, monkeypatch):
    """The class is closed by the renderer, not by care: a template that interpolates a raw string
    (or builds one by concatenation) fails to render."""
    (tmp_path / "bad.py.j2").write_text("X = {{ name }}\n")
    (tmp_path / "concat.py.j2").write_text("X = {{ ('a' ~ name) }}\n")
    (tmp_path / "bad.yml.j2").write_text("x: {{ name }}\n")
    monkeypatch.setattr(render, "templates_dir", lambda: tmp_path)
    for t in ("bad.py.j2", "concat.py.j2", "bad.yml.j2"):
        with pytest.raises(jinja2.TemplateError, match="unescaped value"):
            render.render_text(t, {"name": "os.system('x')"})
    (tmp_path / "ident.py.j2").write_text("class {{ name | ident }}: pass\n")
    with pytest.raises(jinja2.TemplateError, match="not an identifier"):
        render.render_text("ident.py.j2", {"name": "A(object): pass\nimport os\nclass B"})


def test_check_declaration_rejects_code(tmp_path):
    ok = render.render_text("adapter_hf.py.j2", dict(display_name="d", model_type="T", class_name="T",
                                                     architecture="A", code_package=None, last_layers=["x"],
                                                     language_model_path="", vision_tower_path="",
                                                     projector_path="", prompt_format="chat"))
    body = render.split_header(ok)[1]
    assert render.check_declaration(body)["model_cls_name"] == "A"
    for evil in ["import os\n", "print(1)\n", "x = open('f')\n", "from os import system\n"]:
        with pytest.raises(ValueError):
            render.check_declaration(body + evil)
    with pytest.raises(ValueError, match="only `name = <literal>`"):
        render.check_declaration(body + "    def build_model(self):\n        pass\n")
    with pytest.raises(ValueError):
        render.check_declaration(body.replace("model_cls_name = 'A'", "model_cls_name = __import__('os').name"))


def test_generate_refuses_to_write_without_fetched_weights(tmp_path):
    a = Answers()
    _fill(a, "m", "transformers", None)
    a.source.weights_dir = None
    a.source.weights_url = "https://user:hf_secrettokenvalue123@huggingface.co/org/model"
    with pytest.raises(WizardError, match="weights have not been fetched"):
        render.plan(a, tmp_path / "adapters", tmp_path / "configs")
