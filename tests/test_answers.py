"""The answers file: round trip, friendly errors, atomic saves, no credentials on disk."""

from __future__ import annotations

import os

import pytest
import yaml

from wizard.services.answers import Answers, load_answers, redact, save_answers
from wizard.services.errors import WizardError


def _filled() -> Answers:
    a = Answers()
    a.source.weights_url = "https://huggingface.co/org/tiny"
    a.source.weights_dir = "/work/weights/tiny"
    a.source.code_url = "https://github.com/org/tiny-code"
    a.source.code_commit = "e6104b0e772219fb1d251f4a4d68ce08277a8421"
    a.source.lfs = True
    a.install.needed = True
    a.install.extra_packages = ["einops", "timm==0.9"]
    a.inspect.model_kind = "custom-code"
    a.inspect.projector_last_layers = ["mm_projector.layers.3"]
    a.inspect.hidden_size = 128
    a.generate.name = "tiny ü model"
    a.generate.method = "GPTQ"
    a.generate.bit = 3
    a.generate.eval_samples = 16
    a.run.device = "cuda:0"
    a.template_version = "1.0"
    return a


def test_round_trip(tmp_path):
    a = _filled()
    path = save_answers(a, tmp_path / "sub" / "answers.yml")
    assert path == tmp_path / "sub" / "answers.yml"
    b = load_answers(path)
    assert b == a and b.model_dump() == a.model_dump()
    assert yaml.safe_load(path.read_text())["generate"]["method"] == "GPTQ"
    assert load_answers(save_answers(b, path)) == a  # stable


def test_defaults_and_empty_file(tmp_path):
    p = tmp_path / "a.yml"
    p.write_text("")
    a = load_answers(p)
    assert a == Answers() and a.generate.method == "Awq" and a.generate.bit == 4 and a.install.editable
    p.write_text("generate:\n  method: gptq\n")
    assert load_answers(p).generate.method == "GPTQ"  # case is forgiven


@pytest.mark.parametrize("text,key,suggestion", [
    ("generate:\n  methd: GPTQ\n", "generate.methd", "method"),
    ("sorce:\n  weights_url: x\n", "sorce", "source"),
    ("install:\n  no_dep: true\n", "install.no_dep", "no_deps"),
])
def test_unknown_key_did_you_mean(tmp_path, text, key, suggestion):
    p = tmp_path / "a.yml"
    p.write_text(text)
    with pytest.raises(WizardError) as ei:
        load_answers(p)
    assert f"unknown key '{key}'" in ei.value.message and str(p) in ei.value.message
    assert ei.value.fix == f"did you mean '{suggestion}'?"


def test_unknown_key_without_a_close_match_lists_valid_keys(tmp_path):
    p = tmp_path / "a.yml"
    p.write_text("run:\n  zzzzzz: 1\n")
    with pytest.raises(WizardError) as ei:
        load_answers(p)
    assert "device" in ei.value.fix and "run_dir" in ei.value.fix


def test_bad_values_name_the_key(tmp_path):
    p = tmp_path / "a.yml"
    p.write_text("generate:\n  bit: four\n")
    with pytest.raises(WizardError, match=r"generate\.bit = 'four'"):
        load_answers(p)
    p.write_text("generate:\n  method: GPTQQ\n")
    with pytest.raises(WizardError) as ei:
        load_answers(p)
    assert "generate.method" in ei.value.message and ei.value.fix == "did you mean 'GPTQ'?"
    p.write_text("source: just-a-string\n")
    with pytest.raises(WizardError, match="'source' must be a mapping"):
        load_answers(p)
    p.write_text("version: 99\n")
    with pytest.raises(WizardError, match="newer than this wizard supports"):
        load_answers(p)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(WizardError) as ei:
        load_answers(tmp_path / "nope.yml")
    assert str(tmp_path / "nope.yml") in ei.value.message and "does not exist" in ei.value.message
    p = tmp_path / "bad.yml"
    p.write_text("source:\n  weights_url: 'unclosed\n  lfs: true\n")
    with pytest.raises(WizardError) as ei:
        load_answers(p)
    assert "invalid YAML at line" in ei.value.message and "\n" not in str(ei.value)


def test_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "answers.yml"
    save_answers(_filled(), p)
    before = p.read_text()
    os.chmod(p, 0o640)

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    changed = _filled()
    changed.generate.bit = 2
    with pytest.raises(WizardError) as ei:
        save_answers(changed, p)
    assert "No space left on device" in ei.value.message and str(p) in ei.value.message
    assert p.read_text() == before  # the old file is intact
    assert sorted(x.name for x in tmp_path.iterdir()) == ["answers.yml"]  # no temp file left behind
    monkeypatch.undo()
    save_answers(changed, p)
    assert load_answers(p).generate.bit == 2
    assert p.stat().st_mode & 0o777 == 0o640  # permissions kept across the replace
    assert sorted(x.name for x in tmp_path.iterdir()) == ["answers.yml"]


def test_credentials_are_never_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_envsecret9876")
    a = _filled()
    a.source.weights_url = "https://user:hf_SECRETTOKEN123456@huggingface.co/org/tiny"
    a.source.code_url = "https://ghp_envsecret9876@github.com/org/tiny-code"
    a.install.extra_packages = ["--index-url", "https://bob:pw1234@pypi.example/simple"]
    p = save_answers(a, tmp_path / "answers.yml")
    text = p.read_text()
    for secret in ("SECRETTOKEN", "user:", "ghp_envsecret9876", "pw1234", "bob"):
        assert secret not in text
    b = load_answers(p)
    assert b.source.weights_url == "https://huggingface.co/org/tiny"
    assert b.source.code_url == "https://github.com/org/tiny-code"
    assert b.install.extra_packages[1] == "https://pypi.example/simple"
    # in memory the token is still there (fetch needs it); redacted() is a scrubbed copy
    assert "SECRETTOKEN" in a.source.weights_url
    assert "SECRETTOKEN" not in a.redacted().model_dump_json()


def test_redact(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "my-env-token-value")
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    assert redact("https://user:TOKEN@host/x") == "https://***@host/x"
    assert redact("fatal: unable to access 'https://hf_abcdefghijkl@huggingface.co/a/': 401") == \
        "fatal: unable to access 'https://***@huggingface.co/a/': 401"
    assert redact("token hf_abcdefghijKLMNOP used") == "token hf_*** used"
    assert redact("Authorization: Bearer my-env-token-value") == "Authorization: Bearer ***"
    assert redact("hf_short ok, /path/to/user@example") == "hf_short ok, /path/to/user@example"
    assert redact(None) == "" and redact(42) == "42"
