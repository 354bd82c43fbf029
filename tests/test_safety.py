"""What the wizard writes, executes and keeps: engine files untouched, names kept apart, consent
bound to the code, credentials never written, one-line errors, and templates that ship."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmc.models
from wizard import steps
from wizard.session import Session
from wizard.services import render
from wizard.services.answers import Answers, load_answers, save_answers
from wizard.services.errors import WizardError

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "wizard" / "demo" / "assets"
ENGINE_MODELS = Path(llmc.models.__file__).resolve().parent


def _engine_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(ENGINE_MODELS.glob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _answers_file(tmp_path: Path, name: str, **source) -> Path:
    a = Answers()
    a.source.weights_url = str(ASSETS / "tiny-llava")
    a.source.weights_dir = str(ASSETS / "tiny-llava")
    for k, v in source.items():
        setattr(a.source, k, v)
    a.inspect.model_kind = "transformers"
    a.inspect.architecture = "LlavaForConditionalGeneration"
    a.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
    a.generate.name = name
    a.generate.calib_path = "/data/calib"
    a.generate.eval_path = "/data/mme"
    path = tmp_path / f"{render.module_name(name)}-answers.yml"
    save_answers(a, path)
    return path


def _cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "wizard.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, **(env or {})})


def test_a_model_named_like_an_engine_module_never_touches_the_engine(tmp_path):
    before = _engine_digest()
    for name in ("placement", "registry", "__init__", "base", "llava"):
        s = Session.load(_answers_file(tmp_path, name), tmp_path)  # no models dir given
        plan = steps.generate(s)
        steps.register(s)
        assert plan.adapter_path.parent == tmp_path / "adapters"
        assert plan.model_type.lower() not in {"placement", "registry", "base", "llava"}
    assert _engine_digest() == before
    assert not list(ENGINE_MODELS.glob("*.bak-*"))


def test_the_models_folder_cannot_be_the_engine_package(tmp_path):
    ctx = Session.load(_answers_file(tmp_path, "m"), tmp_path, models_dir=ENGINE_MODELS)
    with pytest.raises(WizardError, match="inside the engine's package"):
        steps.generate(ctx)


def test_two_names_for_one_module_are_refused(tmp_path):
    steps.generate(Session.load(_answers_file(tmp_path, "my-llava"), tmp_path))
    adapter = tmp_path / "adapters" / "my_llava.py"
    first = adapter.read_text()
    with pytest.raises(WizardError, match="'My Llava' maps to my_llava.py, which belongs to the model 'my-llava'"):
        steps.generate(Session.load(_answers_file(tmp_path, "My Llava"), tmp_path))
    assert adapter.read_text() == first
    assert load_answers(tmp_path / "configs" / "my_llava.answers.yml").generate.name == "my-llava"
    # the same name again is an update, not a clash
    steps.generate(Session.load(_answers_file(tmp_path, "my-llava"), tmp_path))


def test_a_file_the_wizard_did_not_write_is_never_replaced(tmp_path):
    (tmp_path / "adapters").mkdir()
    mine = tmp_path / "adapters" / "custom.py"
    mine.write_text("# my own adapter\nX = 1\n")
    with pytest.raises(WizardError, match="was not written by llmc-wizard"):
        steps.generate(Session.load(_answers_file(tmp_path, "custom"), tmp_path))
    assert mine.read_text() == "# my own adapter\nX = 1\n"
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["custom.py"]


def test_concurrent_generates_into_one_folder_lose_nothing(tmp_path):
    """Eight wizards generate and register into one models folder at once: every model is
    discovered (registering edits no shared file)."""
    import shlex

    names = [f"model-{i}" for i in range(8)]
    cli = f"{shlex.quote(sys.executable)} -m wizard.cli"

    def script(name: str) -> str:
        args = f"--answers {shlex.quote(str(_answers_file(tmp_path, name)))} --workdir {shlex.quote(str(tmp_path))}"
        return f"{cli} generate {args} && {cli} register {args}"

    procs = [subprocess.Popen(["sh", "-c", script(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in names]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    from llmc.models.registry import get_model_class

    for n in names:
        cls = get_model_class(render.class_name(n), [tmp_path / "adapters"])
        assert cls.display_name == n


def test_consent_is_bound_to_the_code_and_commit(tmp_path, zoo):
    entry = zoo.models["tiny-vila"]
    a = Answers()
    a.source.weights_dir = str(ASSETS / "tiny-vila")
    a.source.code_url = entry["code_repo"]
    a.source.code_commit = entry["code_commit"]
    a.source.code_dir = str(tmp_path / "code")
    a.install.no_deps = True
    (tmp_path / "code").mkdir()
    # consent recorded for this code...
    a.install.consent = a.install.consent_for(a.source)
    # ...is not consent for other code, another commit, or other pip options
    for change in ({"code_url": "https://evil.example/other.git"}, {"code_commit": "0" * 40}):
        b = a.model_copy(deep=True)
        for k, v in change.items():
            setattr(b.source, k, v)
        path = tmp_path / "answers.yml"
        save_answers(b, path)
        ctx = Session.load(path, tmp_path)
        with pytest.raises(WizardError, match="which you have not agreed to"):
            steps.install(ctx)
    b = a.model_copy(deep=True)
    b.install.extra_packages = ["evil-package"]
    assert not b.install.consented(b.source)
    assert a.install.consented(a.source)


def test_a_legacy_unbound_confirmation_is_not_consent(tmp_path):
    path = tmp_path / "answers.yml"
    path.write_text("install: {confirmed: true}\nsource: {code_url: /x, code_commit: abc}\n")
    a = load_answers(path)
    assert a.install.consent is None and not a.install.consented(a.source)


def test_credentials_never_reach_what_generate_writes(tmp_path):
    secret = "hf_SuperSecretToken1234567890"
    path = _answers_file(tmp_path, "tokened",
                         weights_url=f"https://user:{secret}@huggingface.co/org/tokened",
                         code_url=f"https://oauth2:{secret}@github.com/org/code.git")
    assert secret not in path.read_text()
    steps.generate(Session.load(path, tmp_path))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 3
    for p in written:
        assert secret not in p.read_text(errors="replace"), p


def test_cli_errors_are_one_line(tmp_path):
    path = _answers_file(tmp_path, "m")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["generate", "--answers", path, "--workdir", blocker / "sub"],
                 ["generate", "--answers", tmp_path / "missing.yml"],
                 ["generate", "--answers", path, "--workdir", tmp_path / ("w" * 5000)],
                 ["inspect", tmp_path / "nowhere"],
                 ["inspect"]):
        r = _cli(*args)
        assert r.returncode != 0
        lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("== ")]  # step headers
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in r.stderr, (args, r.stderr[-2000:])


def test_inspect_takes_an_answers_file_and_has_help(tmp_path):
    r = _cli("inspect", "--help")
    assert r.returncode == 0 and "--answers" in r.stdout and "MODEL_DIR" in r.stdout or "model_dir" in r.stdout
    path = _answers_file(tmp_path, "inspected")
    r = _cli("inspect", "--answers", path)
    assert r.returncode == 0, r.stderr
    assert "inspect: LlavaForConditionalGeneration" in r.stderr
    assert load_answers(path).inspect.hidden_size == 128


@pytest.mark.slow
def test_the_wheel_ships_the_templates_and_generates(tmp_path):
    """Build the wheel, install it (without the checkout) into a clean environment and run the
    Generate step from it."""
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(dist), str(REPO)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = dist.glob("llmc_wizard-*.whl")
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # third-party libraries come from this environment's site-packages, appended by a .pth line
    # (a .pth inside a .pth-added folder is not processed, so this checkout's editable hook stays off)
    import jinja2

    (site / "deps.pth").write_text(str(Path(jinja2.__file__).resolve().parents[1]) + "\n")
    path = _answers_file(tmp_path, "from-wheel")
    probe = subprocess.run([str(py), "-c", "import wizard, llmc; print(wizard.__file__); print(llmc.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert all(str(site) in line for line in probe.stdout.split()), probe.stdout
    r = subprocess.run([str(py), "-m", "wizard.cli", "generate", "--answers", str(path), "--workdir", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "adapters" / "from_wheel.py").exists()
    assert (tmp_path / "configs" / "from_wheel_awq.yml").exists()
