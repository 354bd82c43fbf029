"""Text from a repository is shown, never executed by the terminal (ESC, BEL, OSC 52, bidi)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.textsafe import identity_problem, shown

TINY_LLAVA = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets" / "tiny-llava"
OSC52 = "\x1b]52;c;SGVsbG8=\x07"  # writes the clipboard
CLEAR = "\x1b[2J"


def _evil(tmp_path: Path, **fields) -> Path:
    d = tmp_path / "evil"
    shutil.copytree(TINY_LLAVA, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(fields)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_shown_makes_every_terminal_control_visible():
    assert shown(f"a{OSC52}b{CLEAR}\u202ec\td\ne\r") == "a\\x1b]52;c;SGVsbG8=\\x07b\\x1b[2J\\u202ec\td\ne\r"
    assert shown("plain é ü 中") == "plain é ü 中"


@pytest.mark.parametrize("fields", [{"architectures": [f"Evil{OSC52}"]}, {"model_type": f"llava{CLEAR}"},
                                    {"architectures": "LlavaForConditionalGeneration"}])
def test_a_config_whose_names_are_not_names_is_refused(fields):
    problem = identity_problem(fields)
    assert problem and "\x1b" not in problem and "\x07" not in problem


@pytest.mark.parametrize("cmd", [["-m", "wizard", "inspect"], ["-m", "llmc", "check"]])
@pytest.mark.parametrize("field", ["architectures", "model_type"])
def test_the_command_line_never_writes_a_control_sequence_from_config_json(tmp_path, cmd, field):
    value = [f"Evil{OSC52}{CLEAR}"] if field == "architectures" else f"llava{OSC52}{CLEAR}"
    model = _evil(tmp_path, **{field: value})
    target = model
    if cmd[1] == "llmc":
        target = tmp_path / "c.yml"
        target.write_text(f"model: {{type: Llava, path: {model}}}\nquant: {{method: RTN, weight: {{bit: 4, "
                          "symmetric: true, granularity: per_group, group_size: 32}}\n")
    p = subprocess.run([sys.executable, *cmd, str(target)], capture_output=True)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and b"\x1b" not in out and b"\x07" not in out, out[-2000:]
    assert b"\\x1b" in out  # shown, escaped


def test_the_wizards_steps_say_it_in_one_line_without_control_characters(tmp_path):
    from wizard.services.answers import Answers
    from wizard.services.errors import WizardError
    from wizard.session import Session
    from wizard.steps import Reporter, install

    a = Answers()
    a.source.weights_dir = str(_evil(tmp_path, architectures=[f"X{OSC52}"], model_type="weird_type"))
    s = Session(a, tmp_path / "answers.yml", tmp_path / "work")
    with pytest.raises(WizardError) as e:
        install(s, Reporter())
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value) and "\\x1b" in str(e.value)


def _remote_code_weights(tmp_path: Path) -> tuple[Path, Path]:
    """A weights-only folder whose config.json's auto_map points at its own code, which leaves a
    marker when it runs."""
    d = tmp_path / "remote"
    shutil.copytree(TINY_LLAVA, d)
    marker = tmp_path / "RAN"
    (d / "configuration_x.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                          "from transformers import PretrainedConfig\n"
                                          "class XConfig(PretrainedConfig):\n    model_type = 'x_custom'\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="x_custom", auto_map={"AutoConfig": "configuration_x.XConfig"})
    (d / "config.json").write_text(json.dumps(cfg))
    return d, marker


def test_remote_code_in_the_weights_never_runs_and_no_library_prompt_gets_stdin(tmp_path):
    d, marker = _remote_code_weights(tmp_path)
    answers = tmp_path / "a.yml"
    answers.write_text(f"source: {{weights_dir: {d}}}\n")
    for args in (["inspect", str(d)], ["inspect", "--answers", str(answers)]):
        p = subprocess.run([sys.executable, "-m", "wizard", *args], input="y\ny\n", capture_output=True, text=True,
                           timeout=300)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("llmc-wizard")]
        assert p.returncode == 1 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-800:]
        assert "auto_map names code shipped with the weights (configuration_x)" in p.stderr
    assert not marker.exists()


def test_an_environment_the_wizard_did_not_build_is_never_run(tmp_path):
    from wizard.services.answers import Answers
    from wizard.services.isolate import uv
    from wizard.session import Session

    env = tmp_path / "someone-elses-env"
    subprocess.run([*uv(), "venv", "-q", str(env), "--python", sys.executable], check=True)
    a = Answers()
    a.install.env_dir = str(env)
    s = Session(a, tmp_path / "answers.yml", tmp_path / "work")
    assert s.model_python() is None and s.in_model_env()
    (env / ".llmc-wizard-env.json").write_text("{}")
    assert s.model_python() == env / "bin" / "python"


async def test_the_tui_never_hands_the_terminal_a_control_sequence(tmp_path):
    """A hostile path typed into Source, a log line from a child (git's ``remote:`` lines, the
    engine) and a model's answer: the log shows the escapes, and no rendered line of any widget
    carries a control character to the terminal."""
    import asyncio

    from textual.widgets import Input, Log, Static

    from wizard.app import WizardApp

    hostile = "evil\x1b]52;c;SGVsbG8=\x07\x1b[2J\u202eend"
    app = WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path / "work", models_dir=tmp_path / "m")
    async with app.run_test(size=(120, 40)) as pilot:
        app.goto("Source")
        await pilot.pause()
        s = app.screen
        s.query_one("#weights", Input).value = str(tmp_path / hostile)
        await pilot.click("#clone")
        for _ in range(200):
            await pilot.pause(0.05)
            if "\\x1b]52" in str(s.query_one("#status", Static).render()) or s.query_one("#status").has_class("error"):
                break
        await asyncio.to_thread(s.reporter().log, f"remote: {hostile}")
        await pilot.pause()
        s.mount(Static(hostile, id="model-answer"))  # any widget, any text
        await pilot.pause()
        lines = s.query_one("#log", Log).lines
        assert any("remote: evil\\x1b]52;c;SGVsbG8=\\x07\\x1b[2J\\u202eend" in x for x in lines), lines
        svg = app.export_screenshot()
    assert "remote: evil" in svg.replace("&#160;", " ")
    for c in "\x1b\x07\u202e":
        assert c not in svg
