"""Every wait has a bound and every process tree dies with its parent: a git server that accepts
the connection and never answers, and SIGTERM to the wizard while its children run."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from wizard.services.errors import WizardError
from wizard.services.fetch import fetch_repo


@pytest.fixture
def silent_server():
    """``http://127.0.0.1:PORT/``: accepts connections, reads what comes, never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()
    held = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/model.git"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_a_server_that_never_answers_fails_fetch_in_one_line_within_its_bound(silent_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMC_WIZARD_NET_STALL_S", "2")
    t = time.monotonic()
    with pytest.raises(WizardError) as e:
        fetch_repo(silent_server, tmp_path / "m")
    assert time.monotonic() - t < 30
    assert "\n" not in str(e.value) and "git clone" in str(e.value) and not (tmp_path / "m").exists()


def test_sigterm_to_the_wizard_takes_its_children_with_it(silent_server, tmp_path, sigterm_tree):
    answers = tmp_path / "a.yml"
    answers.write_text(f"source: {{weights_url: '{silent_server}'}}\n")
    rc, err, alive = sigterm_tree([sys.executable, "-m", "wizard", "fetch", "--answers", str(answers), "--workdir",
                                   str(tmp_path / "w")], "git", wait_s=60)
    assert not alive, f"still running 5 s after SIGTERM: {alive}"
    assert rc == 130 and "cancelled" in err and "Traceback" not in err, err[-1000:]
    assert os.path.exists(answers)


@pytest.mark.slow
def test_sigterm_during_install_stops_the_build_of_the_code(tmp_path, sigterm_tree):
    """``llmc-wizard install``: SIGTERM while the model's environment builds the code (a build that
    would take ten minutes) leaves no process of the tree, and no consent or environment recorded."""
    code = tmp_path / "code"
    (code / "slowcode").mkdir(parents=True)
    (code / "slowcode" / "__init__.py").write_text("")
    (code / "setup.py").write_text("import time\ntime.sleep(600)\nfrom setuptools import setup\nsetup()\n")
    (code / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "slowcode"\nversion = "1"\ndependencies = []\n')
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text('{"model_type": "slow"}')
    answers = tmp_path / "a.yml"
    answers.write_text(f"source: {{weights_url: '{weights}', weights_dir: '{weights}', code_url: '{code}', "
                       f"code_dir: '{code}', code_commit: 'abc'}}\ninstall: {{needed: true, environment: isolated}}\n")
    rc, err, alive = sigterm_tree([sys.executable, "-m", "wizard", "install", "--answers", str(answers), "--workdir",
                                   str(tmp_path / "w"), "--yes"], "pip install", settle=5)
    assert not alive, f"still running 5 s after SIGTERM: {alive}"
    assert rc != 0 and "Building slowcode" in err and "Traceback" not in err, err[-1500:]
    text = answers.read_text()
    assert "consent" not in text and "env_dir" not in text, text


def test_a_chat_template_that_never_ends_stops_the_smoke_test_at_its_bound(zoo, tmp_path, monkeypatch):
    """A processor whose chat template loops 10^10 times (each loop under the sandbox's range
    limit): the smoke test is stopped at its time bound with one line, its process group gone."""
    import shutil

    from wizard.app import demo_answers
    from wizard.session import Session
    from wizard.steps import Reporter, onboard

    assets = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
    weights = tmp_path / "tiny-llava"
    shutil.copytree(assets / "tiny-llava", weights)
    (weights / "chat_template.jinja").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x")
    a = demo_answers(zoo, "tiny-llava")
    a.source.weights_url, a.source.weights_dir = None, str(weights)
    a.generate.method = "RTN"
    s = Session(a, tmp_path / "answers.yml", tmp_path / "work", assume_yes=True, device="cpu")
    monkeypatch.setenv("LLMC_WIZARD_SMOKE_TIMEOUT_S", "15")
    pids: list[int] = []
    r = Reporter()
    r.child_started = pids.append
    t = time.monotonic()
    with pytest.raises(WizardError) as e:
        onboard(s, ["inspect", "generate", "smoke"], r)
    assert "smoke test did not finish within 15 s" in str(e.value) and "\n" not in str(e.value)
    assert time.monotonic() - t < 120
    assert pids and not psutil.pid_exists(pids[0])


@pytest.mark.parametrize("step", ["smoke", "run"])
def test_sigterm_stops_every_child_of_a_step(zoo, tmp_path, step, sigterm_tree):
    """``llmc-wizard smoke|run --answers``: SIGTERM while its child (the smoke test, the engine) works
    leaves no process of the tree alive 5 s later, and the run is not marked complete."""
    import shutil

    from wizard.app import demo_answers
    from wizard.session import Session
    from wizard.steps import Reporter, onboard

    assets = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
    weights = tmp_path / "tiny-llava"
    shutil.copytree(assets / "tiny-llava", weights)
    if step == "smoke":  # a template that keeps the smoke test busy for good
        (weights / "chat_template.jinja").write_text(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x")
    a = demo_answers(zoo, "tiny-llava")
    a.source.weights_url, a.source.weights_dir = str(weights), str(weights)
    a.generate.method = "GPTQ"
    s = Session(a, tmp_path / "answers.yml", tmp_path / "work", assume_yes=True, device="cpu")
    onboard(s, ["inspect", "generate"], Reporter())
    rc, err, alive = sigterm_tree([sys.executable, "-m", "wizard", step, "--answers", str(s.answers_path),
                                   "--workdir", str(s.workdir)], "smoke" if step == "smoke" else "llmc", settle=2,
                                  wait_s=120)
    assert not alive, f"still running 5 s after SIGTERM: {alive}"
    assert rc != 0 and "Traceback" not in err, err[-1500:]
    assert not list((s.workdir).rglob("COMPLETE"))


@pytest.mark.slow
def test_a_package_index_that_never_answers_fails_the_environment_within_its_bound(silent_server, tmp_path,
                                                                                  monkeypatch):
    """Resolving the model's environment against an index that accepts the connection and never
    answers: uv gives up after the wizard's stall bound, one line naming the requirement."""
    from wizard.services.isolate import plan_env

    index = silent_server.rsplit("/", 1)[0] + "/simple"
    monkeypatch.setenv("LLMC_WIZARD_NET_STALL_S", "2")
    monkeypatch.setenv("UV_INDEX_URL", index)
    monkeypatch.setenv("UV_DEFAULT_INDEX", index)
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    for key in ("UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_INDEX", "PIP_FIND_LINKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("UV_NO_CACHE", "1")
    t = time.monotonic()
    with pytest.raises(WizardError) as e:
        plan_env(None, tmp_path / "env", requirements=["surely-not-here-pkg==1.0"])
    assert time.monotonic() - t < 60
    assert "the package index did not answer (http://127.0.0.1:" in str(e.value) and "after 2 s" in str(e.value)
