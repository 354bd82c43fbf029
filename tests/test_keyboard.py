"""Keyboard-first: the steps by keys alone, help, back to Welcome with one answers file per model,
the answers panel out of the way at 80×24, and a question before quitting a run."""

from __future__ import annotations

import pytest
from test_tui import _text, _until  # noqa: E402 - the TUI tests' Pilot helpers

from wizard.app import ConfirmQuit, WizardApp
from wizard.screens.base import HelpScreen
from wizard.services.answers import load_answers


def _app(zoo, tmp_path):
    return WizardApp(zoo_root=zoo.root, answers_path=tmp_path / "answers.yml", workdir=tmp_path, device="cpu")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_steps_by_keyboard_alone(zoo, tmp_path, size):
    app = _app(zoo, tmp_path)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")  # the key overlay
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("enter")  # onboard the selected demo model (tiny-llava)
        await pilot.pause()
        s = app.screen
        assert s.TITLE_TEXT == "Source" and app.focused is s.query_one("#weights")
        shown = s.query_one("#side").display
        assert shown == (size[0] >= 100)  # out of the way by itself at 80 columns
        await pilot.press("ctrl+t")
        assert s.query_one("#side").display != shown
        await pilot.press("enter")  # in the URL field: clone
        await _until(pilot, lambda: "weights:" in _text(s, "#status"))
        assert app.focused is s.query_one("#weights")  # focus back on the main input
        await pilot.press("ctrl+n", "ctrl+n")  # Install (nothing to install), Inspect: runs on entry
        s = app.screen
        assert s.TITLE_TEXT == "Inspect"
        await _until(pilot, lambda: "layers to quantize" in _text(s, "#status"))
        await pilot.press("ctrl+n")
        s = app.screen
        assert s.TITLE_TEXT == "Generate" and app.focused is s.query_one("#name")
        await pilot.press("enter")  # preview: the declaration and the config, both
        await _until(pilot, lambda: "preview of" in _text(s, "#status"))
        parts = s.query_one("#preview-code").content.renderables  # title, declaration, title, config
        shown = "\n".join(p if isinstance(p, str) else p.code for p in parts)
        assert "adapters/tiny_llava.py" in shown and "projector_last_layers = " in shown
        assert "configs/tiny_llava_awq.yml" in shown and "quant:" in shown
        write = s.query_one("#write")
        for _ in range(30):  # tab through the choices to Write (the count depends on what scrolls)
            if app.focused is write:
                break
            await pilot.press("tab")
        assert app.focused is write
        await pilot.press("enter")
        await _until(pilot, lambda: "wrote" in _text(s, "#status") or s.query_one("#status").has_class("error"))
        assert "wrote" in _text(s, "#status"), _text(s, "#status")
        app.answers.generate.method, app.answers.generate.eval_samples = "RTN", 8  # a short run
        app.answers.generate.n_calib = 4
        await pilot.press("ctrl+n")
        s = app.screen
        assert s.TITLE_TEXT == "Run" and app.focused is s.query_one("#run")
        await pilot.press("enter")
        await _until(pilot, lambda: "done in" in _text(s, "#status") or "failed" in _text(s, "#status"), 300)
        assert "done in" in _text(s, "#status"), _text(s, "#status")
        await pilot.press("ctrl+n")
        s = app.screen
        assert s.TITLE_TEXT == "Try" and app.focused is s.query_one("#question")
        await pilot.press("enter")  # the evaluation sample's own question
        await _until(pilot, lambda: "asked:" in _text(s, "#status") or s.query_one("#status").has_class("error"),
                     300)
        assert "asked:" in _text(s, "#status"), _text(s, "#status")
        await pilot.press("ctrl+o")  # back to Welcome, to switch models
        await pilot.pause()
        assert app.screen.__class__.__name__ == "WelcomeScreen"
        await pilot.press("down", "enter")  # tiny-vila: its own answers file
        await pilot.pause()
        s = app.screen
        assert "tiny-vila" in s.query_one("#weights").value
    llava = load_answers(tmp_path / "answers" / "tiny_llava.yml")
    assert llava.inspect.projector_last_layers == ["model.multi_modal_projector.linear_2"]
    assert app.session.answers_path == tmp_path / "answers" / "tiny_vila.yml"


async def test_quitting_during_a_run_asks_first(zoo, tmp_path):
    from wizard.services.runner import pid_alive

    app = _app(zoo, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        s = app.screen
        await pilot.press("enter")
        await _until(pilot, lambda: "weights:" in _text(s, "#status"))
        app.answers.inspect.model_kind = "transformers"
        app.answers.inspect.architecture = "LlavaForConditionalGeneration"
        app.answers.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
        app.answers.generate.method = "RTN"
        app.answers.generate.n_calib = 4
        app.goto("Run")
        await pilot.pause()
        s = app.screen
        assert app.focused is s.query_one("#run")
        await pilot.press("enter")  # the Run button: start
        await _until(pilot, lambda: s.handle is not None)
        pid = s.handle.pid
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuit) and str(pid) in str(app.screen.query_one("#confirm-quit").render())
        await pilot.press("n")  # stay
        await pilot.pause()
        assert app.screen is s and app.is_running
        await pilot.press("ctrl+x")  # cancel the run
        await _until(pilot, lambda: "cancelled" in _text(s, "#status") or "done in" in _text(s, "#status"))
        assert not pid_alive(pid)
        await pilot.press("ctrl+q")  # nothing runs: quits at once
        await pilot.pause()
    assert not app.is_running


def test_the_run_screen_shows_the_time_left_at_the_phases_pace():
    """Time left in the phase at its pace so far, not elapsed time; none before the first report."""
    import time

    from llmc.events import Block, Phase
    from wizard.screens.run import RunScreen
    from wizard.services.eta import Eta

    s = RunScreen()
    now = time.time()
    s.t0, s.eta = now - 50, Eta()
    s.eta.feed(Phase(t=now - 10, name="quantize", state="start", n_blocks=4))
    assert "left" not in s._elapsed_text()
    s.eta.feed(Block(t=now, i=0, n=4, seconds=10, block_error=0.1, last_error=0.1))  # a quarter in 10 s
    text = s._elapsed_text()
    assert text.startswith("elapsed 50s") and "quantize 30s left" in text
