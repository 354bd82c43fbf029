"""Every wait has a bound and every process tree dies with its parent: a git server that accepts
the connection and never answers, and SIGTERM to the wizard while its children run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
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


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_to_the_wizard_takes_its_children_with_it(silent_server, tmp_path):
    answers = tmp_path / "a.yml"
    answers.write_text(f"source: {{weights_url: '{silent_server}'}}\n")
    p = subprocess.Popen([sys.executable, "-m", "wizard", "fetch", "--answers", str(answers), "--workdir",
                          str(tmp_path / "w")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    kids: list[psutil.Process] = []
    while time.monotonic() < deadline and not any("git" in " ".join(k.cmdline()) for k in kids if k.is_running()):
        time.sleep(0.2)
        kids = _descendants(p.pid)
    assert kids, "git never started"
    p.send_signal(signal.SIGTERM)
    t = time.monotonic()
    _, err = p.communicate(timeout=30)
    gone, alive = psutil.wait_procs(kids, timeout=max(0.1, 5 - (time.monotonic() - t)))
    assert not alive, f"still running 5 s after SIGTERM: {[k.cmdline() for k in alive]}"
    assert p.returncode == 130 and "cancelled" in err and "Traceback" not in err, err[-1000:]
    assert os.path.exists(answers)


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
def test_sigterm_stops_every_child_of_a_step(zoo, tmp_path, step):
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
    p = subprocess.Popen([sys.executable, "-m", "wizard", step, "--answers", str(s.answers_path), "--workdir",
                          str(s.workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    kids: list[psutil.Process] = []
    while time.monotonic() < deadline:
        kids = _descendants(p.pid)
        if any("smoke" in " ".join(k.cmdline()) or "llmc" in " ".join(k.cmdline()) for k in kids if k.is_running()):
            break
        time.sleep(0.2)
    time.sleep(2)  # the child is at work
    kids = _descendants(p.pid)
    assert kids, f"{step} started no child"
    p.send_signal(signal.SIGTERM)
    t = time.monotonic()
    _, err = p.communicate(timeout=60)
    _, alive = psutil.wait_procs(kids, timeout=max(0.1, 5 - (time.monotonic() - t)))
    assert not alive, f"still running 5 s after SIGTERM: {[k.cmdline() for k in alive]}"
    assert p.returncode != 0 and "Traceback" not in err, err[-1500:]
    assert not list((s.workdir).rglob("COMPLETE"))
