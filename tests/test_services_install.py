"""install service: detection from config.json, real pip subprocesses into a private --target, cancel."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wizard.services.errors import WizardError
from wizard.services.fetch import fetch_repo
from wizard.services.install import describe_install, detect_install_needed, pip_install, run_streaming

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vila_code(zoo, tmp_path_factory):
    """tiny-vila's code, fetched with the wizard's own fetch service at its pinned commit."""
    entry = zoo.models["tiny-vila"]
    res = fetch_repo(entry["code_repo"], tmp_path_factory.mktemp("code") / "tiny-vila-code",
                     commit=entry["code_commit"])
    return res.path


def test_detect_install_needed(zoo):
    needed, reason = detect_install_needed(zoo.models["tiny-vila"]["weights_repo"])
    assert needed is True and "llava_llama" in reason and "LlavaLlamaModel" in reason
    needed, reason = detect_install_needed(Path(zoo.models["tiny-llava"]["weights_repo"]))
    assert needed is False and "llava" in reason and "LlavaForConditionalGeneration" in reason


def test_detect_install_needed_bad_inputs(tmp_path):
    with pytest.raises(WizardError, match="does not exist"):
        detect_install_needed(tmp_path / "nope")
    with pytest.raises(WizardError, match="has no config.json"):
        detect_install_needed(tmp_path)
    (tmp_path / "config.json").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(WizardError, match="cannot read"):
        detect_install_needed(tmp_path)
    # a known model_type whose class transformers does not export still needs code
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaWithMyHeads"]}')
    needed, reason = detect_install_needed(tmp_path)
    assert needed and "LlamaWithMyHeads" in reason


def test_describe_install_is_the_exact_command(tmp_path):
    cmd = describe_install(tmp_path, python="/py")
    assert cmd[:4] == ["/py", "-m", "pip", "install"]
    assert "--no-build-isolation" in cmd and cmd[-2:] == ["-e", str(tmp_path)] and "--no-deps" not in cmd
    cmd = describe_install(tmp_path, editable=False, no_deps=True, extra=["extra-pkg"], python="/py")
    assert "-e" not in cmd and "--no-deps" in cmd and cmd[-2:] == [str(tmp_path), "extra-pkg"]
    cmd = describe_install(tmp_path, target=tmp_path / "t", python="/py")  # -e cannot go with --target
    assert "-e" not in cmd and cmd[cmd.index("--target") + 1] == str(tmp_path / "t")


def test_pip_install_into_a_target_streams_lines_and_imports(vila_code, tmp_path):
    target = tmp_path / "site"
    lines: list[str] = []
    res = pip_install(vila_code, no_deps=True, target=target, on_line=lines.append)
    assert res.returncode == 0 and res.seconds > 0
    assert res.command == describe_install(vila_code.resolve(), no_deps=True, target=target.resolve())
    assert lines and any("tiny" in line.lower() for line in lines)
    assert any(line.startswith("Successfully installed") for line in lines)
    out = subprocess.run([sys.executable, "-c", "import tiny_vila; print(tiny_vila.__version__, tiny_vila.__file__)"],
                         env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    version, path = out.stdout.split()
    assert version == "0.2.0" and Path(path).resolve().is_relative_to(target.resolve())


def test_install_of_a_folder_without_a_project_fails_clearly(tmp_path):
    (tmp_path / "README.md").write_text("not a package\n")
    with pytest.raises(WizardError) as ei:
        pip_install(tmp_path, target=tmp_path / "t")
    assert str(tmp_path) in ei.value.message and "not a Python project" in ei.value.message
    assert "pyproject.toml" in ei.value.fix
    with pytest.raises(WizardError, match="does not exist"):
        pip_install(tmp_path / "missing", target=tmp_path / "t")


def test_failing_pip_gives_the_last_lines(tmp_path):
    proj = tmp_path / "broken"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "no_such_backend_xyz"\n\n'
        '[project]\nname = "broken"\nversion = "0.0.1"\n')
    lines: list[str] = []
    with pytest.raises(WizardError) as ei:
        pip_install(proj, no_deps=True, target=tmp_path / "t", on_line=lines.append)
    e = ei.value
    assert f"pip install of {proj} failed (exit" in e.message
    assert "no_such_backend_xyz" in e.details and e.fix
    assert lines and "\n" not in str(e)


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_cancel_a_running_install(vila_code, tmp_path):
    target = tmp_path / "cancel-site"
    cancel = threading.Event()
    lines: list[str] = []

    def on_line(line):
        lines.append(line)
        cancel.set()  # cancel after the first line

    t0 = time.monotonic()
    with pytest.raises(WizardError) as ei:
        pip_install(vila_code, no_deps=True, target=target, on_line=on_line, cancelled=cancel,
                    extra=["--index-url", "http://127.0.0.1:9/simple", "nonexistent-pkg"])
    assert ei.value.message == "install cancelled"
    assert time.monotonic() - t0 < 30 and len(lines) >= 1
    assert _pids_mentioning(str(target)) == []  # pip and its children are gone


def test_run_streaming_cancel_kills_a_silent_process_group():
    cancel = threading.Event()
    lines: list[str] = []
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    t0 = time.monotonic()
    # the shell prints its child's pid, then goes silent: only the watchdog can stop it
    res = run_streaming(["sh", "-c", "sleep 60 & echo $!; wait"], on_line=lines.append, cancelled=cancel)
    assert res.cancelled and time.monotonic() - t0 < 10
    child = int(lines[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except OSError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {child} survived the cancel")


def test_run_streaming_reports_exit_code_and_lines():
    res = run_streaming(["sh", "-c", "echo one; printf 'two\\rthree\\n'; echo err >&2; exit 3"])
    assert res.returncode == 3 and not res.cancelled
    assert res.tail == ["one", "two", "three", "err"]


def test_the_codes_conflicting_pins_are_shown_and_never_installed_over_the_engine(tmp_path):
    """Research code pins old libraries: the plan lists the pins this environment does not
    satisfy, and an install with dependencies that would replace them is refused in one line."""
    import importlib.metadata as md
    import json

    from wizard.services.answers import Answers
    from wizard.services.errors import WizardError
    from wizard.session import Session
    from wizard.steps import install, install_plan

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text(json.dumps({"model_type": "llava_llama"}))
    code = tmp_path / "code"
    code.mkdir()
    (code / "pyproject.toml").write_text(
        '[project]\nname = "old-code"\nversion = "1"\n'
        'dependencies = ["transformers==4.37.2", "torch==2.1.2", "pillow", "numpy<0.1; python_version < \'3.0\'", '
        '"no-such-package-here==1.0"]\n')
    a = Answers()
    a.source.weights_dir, a.source.code_dir = str(tmp_path / "w"), str(code)
    a.source.code_url, a.source.code_commit = str(code), "0" * 40
    s = Session(a, tmp_path / "answers.yml", tmp_path, assume_yes=True)
    plan = install_plan(s)
    assert plan.conflicts == [f"transformers==4.37.2 (this environment has transformers {md.version('transformers')})",
                              f"torch==2.1.2 (this environment has torch {md.version('torch')})"]
    # by default such code gets an environment of its own (tests/test_isolate.py builds them)
    assert plan.isolated and plan.env_dir == tmp_path / "envs" / "code"
    assert "<the code's pins except: torch, torchvision" in " ".join(plan.command)
    a.install.environment = "shared"
    assert not install_plan(s).isolated
    with pytest.raises(WizardError, match=r"would replace 2 package\(s\) the engine runs on: transformers==4.37.2") as e:
        install(s)
    assert "install.environment: isolated" in e.value.fix and "install.no_deps: true" in e.value.fix
    assert "\n" not in e.value.message
    a.install.environment, a.install.no_deps = "auto", True  # no_deps keeps the engine's versions here
    assert not install_plan(s).isolated
