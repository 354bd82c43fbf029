"""A newcomer cannot break the wizard by keys: switching models never writes over the previous
model, and a run never starts from enter in a text field and can always be cancelled by key."""

from __future__ import annotations

import hashlib
import shutil
import time

import pytest
from textual.widgets import Button, Input

from wizard.app import WizardApp, demo_answers
from wizard.services.answers import load_answers, save_answers

pytestmark = pytest.mark.slow


async def _until(pilot, cond, timeout=120.0):
    import time

    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            raise AssertionError("timed out")
        await pilot.pause(0.1)


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _generated_gptq(zoo, tmp_path):
    """A session for a copy of tiny-llava with GPTQ, inspected and generated (ready to run)."""
    from wizard.session import Session
    from wizard.steps import Reporter, onboard

    assets = __import__("pathlib").Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
    weights = tmp_path / "tiny-llava"
    shutil.copytree(assets / "tiny-llava", weights)
    a = demo_answers(zoo, "tiny-llava")
    a.source.weights_url, a.source.weights_dir = str(weights), str(weights)
    a.generate.method = "GPTQ"
    sess = Session(a, tmp_path / "answers.yml", tmp_path, tmp_path / "adapters", tmp_path / "site", "cpu",
                   assume_yes=True)
    onboard(sess, ["inspect", "generate"], Reporter())
    return sess


def _app_ready_to_run(zoo, tmp_path) -> WizardApp:
    """The wizard on a copy of tiny-llava with GPTQ, generated: ready for the Run step."""
    _generated_gptq(zoo, tmp_path)
    return WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path, models_dir=tmp_path / "adapters",
                     device="cpu", install_target=tmp_path / "site")


async def _on_step(pilot, step: str):
    pilot.app.goto(step)
    await pilot.pause()
    return pilot.app.screen


def _app_on_generate_ready(zoo, tmp_path) -> WizardApp:
    """The wizard on tiny-llava, cloned and inspected: ready for the Generate step."""
    from wizard.services.fetch import fetch_repo

    a = demo_answers(zoo, "tiny-llava")
    a.source.weights_dir = str(fetch_repo(a.source.weights_url, tmp_path / "weights" / "tiny-llava").path)
    a.inspect.model_kind, a.inspect.architecture = "transformers", "LlavaForConditionalGeneration"
    a.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
    app = WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path, models_dir=tmp_path / "adapters",
                    device="cpu", install_target=tmp_path / "site")
    app.answers = a
    return app


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_a_new_weights_path_on_source_starts_a_new_model_and_leaves_the_old_one_alone(zoo, tmp_path, size):
    """Model A (tiny-vila: code, consent, inspect result, name, declaration) is loaded; on Source
    the user types model B's weights path and presses enter. B gets answers of its own (no code,
    consent, inspect result or name of A's); A's answers file and declaration are unchanged."""
    a = demo_answers(zoo, "tiny-vila")
    a.inspect.projector_last_layers = ["mm_projector.layers.4"]
    a.inspect.architecture = "LlavaLlamaModel"
    a.install.consent = a.install.consent_for(a.source)
    a_path = tmp_path / "answers" / "tiny_vila.yml"
    save_answers(a, a_path)
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "tiny_vila.py").write_text("# A's declaration\n")
    before = _digests(tmp_path)
    app = WizardApp(zoo_root=zoo.root, answers_path=a_path, workdir=tmp_path, models_dir=adapters, device="cpu",
                    install_target=tmp_path / "site")
    b_url = zoo.models["tiny-llava"]["weights_repo"]
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.press("c")  # continue with the loaded answers (or a new model)
        await _until(pilot, lambda: app.screen.TITLE_TEXT == "Source")
        s = app.screen
        weights = s.query_one("#weights", Input)
        weights.focus()
        weights.value = ""
        await pilot.press(*b_url)
        code = s.query_one("#code", Input)
        code.value, s.query_one("#commit", Input).value = "", ""
        weights.focus()
        await pilot.press("enter")
        await _until(pilot, lambda: app.answers.source.weights_dir is not None
                     or s.query_one("#status").has_class("error"))
        assert not s.query_one("#status").has_class("error"), str(s.query_one("#status").render())
        await pilot.pause()
        assert s.query_one("#progress").has_class("idle")  # the fetch is over: no bar animates
    b_path = app.session.answers_path
    assert b_path != a_path and b_path.parent == a_path.parent
    b = load_answers(b_path)
    assert b.source.weights_url == b_url and b.source.code_url is None and b.install.consent is None
    assert b.inspect.projector_last_layers == [] and b.inspect.architecture is None
    assert b.generate.name and b.generate.name != "tiny-vila"
    assert b.generate.calib_path == a.generate.calib_path  # the data carries over
    after = _digests(tmp_path)
    for f in ("answers/tiny_vila.yml", "adapters/tiny_vila.py"):
        assert after[f] == before[f], f


async def test_switching_back_to_a_models_weights_continues_its_answers(zoo, tmp_path):
    a = demo_answers(zoo, "tiny-llava")
    a.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
    a_path = tmp_path / "answers" / "tiny_llava.yml"
    save_answers(a, a_path)
    app = WizardApp(answers_path=tmp_path / "answers" / "other.yml", workdir=tmp_path, device="cpu")
    app.answers.source.weights_url = "/elsewhere/other-model"
    async with app.run_test(size=(120, 40)):
        assert app.adopt_weights(a.source.weights_url + "/")
        assert app.session.answers_path == a_path
        assert app.answers.inspect.projector_last_layers == ["model.multi_modal_projector.linear_2"]
        assert not app.adopt_weights(a.source.weights_url)  # the same model: nothing moves


@pytest.mark.parametrize("key", ["ctrl+x", "escape"])
async def test_enter_in_a_run_field_does_not_start_a_run_and_a_run_stops_by_key_from_any_field(zoo, tmp_path, key):
    """On Run, enter in the calibration field asks for the Run button instead of starting a run;
    a started run is cancelled by ctrl+x or escape while a text field has the focus."""
    app = _app_ready_to_run(zoo, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        s = await _on_step(pilot, "Run")
        calib = s.query_one("#calib", Input)
        calib.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert s.handle is None, "enter in a text field started a run"
        assert "Run" in str(s.query_one("#status").render()) and app.focused is s.query_one("#run", Button)
        await pilot.press("enter")  # on the Run button: the confirmation
        await _until(pilot, lambda: s.handle is not None)
        calib.focus()
        await pilot.pause(1.0)
        await pilot.press(key)
        await _until(pilot, lambda: s.handle.poll() is not None, timeout=60)
        await _until(pilot, lambda: not s.query_one("#run", Button).disabled, timeout=30)
        assert s.query_one("#phase-progress").has_class("idle")
        assert str(s.query_one("#phase").render()) == "phase: cancelled"
    assert not list(tmp_path.rglob("COMPLETE"))


def test_a_declaration_naming_a_layer_the_model_lacks_is_refused_at_write(zoo, tmp_path):
    """Another model's pick (tiny-vila's ``mm_projector.layers.4``) on tiny-llava: Generate says so
    in one line and writes nothing."""
    from wizard.services.errors import WizardError
    from wizard.session import Session
    from wizard.steps import generate

    assets = __import__("pathlib").Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
    a = demo_answers(zoo, "tiny-llava")
    a.source.weights_dir = str(assets / "tiny-llava")
    a.inspect.projector_last_layers = ["mm_projector.layers.4"]
    s = Session(a, tmp_path / "answers.yml", tmp_path, tmp_path / "adapters", device="cpu")
    with pytest.raises(WizardError) as e:
        generate(s)
    assert "mm_projector.layers.4" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "adapters").exists() or not list((tmp_path / "adapters").glob("*.py"))


def test_the_wizard_on_an_answers_file_offers_the_zoo_built_before(zoo, monkeypatch, tmp_path):
    """``llmc-wizard --answers NEW.yml`` with ``$LLMC_WIZARD_CACHE`` at a built zoo: the welcome
    screen has the zoo (it said "Demo zoo not built")."""
    from wizard import cli
    from wizard.app import WizardApp

    monkeypatch.setenv("LLMC_WIZARD_CACHE", str(zoo.root.parent))
    seen = {}
    monkeypatch.setattr(cli, "_run_app", lambda app: seen.setdefault("app", app) and 0)
    assert cli.main(["--answers", str(tmp_path / "new.yml")]) == 0
    app = seen["app"]
    assert isinstance(app, WizardApp) and app.zoo_root == zoo.root
    monkeypatch.setenv("LLMC_WIZARD_CACHE", str(tmp_path / "empty"))  # no zoo there
    seen.clear()
    cli.main(["--answers", str(tmp_path / "new.yml")])
    assert seen["app"].zoo_root is None


def test_a_new_model_without_data_is_told_where_to_choose_it(tmp_path):
    """Generate's preview and Run name the Run step's Calibration set field (not an answers key
    alone, not Python's None) when a new model has no calibration set yet."""
    from wizard.runs import start_run
    from wizard.services.answers import Answers
    from wizard.services.errors import WizardError
    from wizard.session import Session
    from wizard.steps import plan

    assets = __import__("pathlib").Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
    a = Answers()
    a.source.weights_dir, a.generate.name = str(assets / "tiny-llava"), "new-model"
    a.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
    a.inspect.architecture, a.inspect.language_model_path = "LlavaForConditionalGeneration", "model.language_model"
    s = Session(a, tmp_path / "a.yml", tmp_path)
    for step in (plan, start_run):
        with pytest.raises(WizardError) as e:
            step(s)
        assert "Calibration set field of the Run step" in str(e.value) and "None" not in str(e.value)


async def test_reattaching_keeps_the_elapsed_time_and_a_new_run_clears_the_last_ones_results(zoo, tmp_path):
    """A run started 4 s before the wizard opens: Run reattaches with elapsed >= 4 s (it restarted
    at 0). A new run after a cancel shows nothing of the previous one (scores, bars, output path)."""
    import re
    import time

    from textual.widgets import Static

    from wizard.runs import start_run
    sess = _generated_gptq(zoo, tmp_path)
    handle = start_run(sess)
    sess.save()
    t = time.monotonic()
    while not (handle.run_dir / "events.jsonl").exists() and time.monotonic() - t < 60:
        time.sleep(0.2)
    time.sleep(4)
    app = WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path, models_dir=tmp_path / "adapters",
                    device="cpu", install_target=tmp_path / "site")
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            app.goto("Run")
            await pilot.pause()
            s = app.screen
            assert s.TITLE_TEXT == "Run"
            await _until(pilot, lambda: getattr(s, "handle", None) is not None, timeout=30)
            await pilot.pause(1.2)
            elapsed = int(re.search(r"elapsed (\d+)s", str(s.query_one("#elapsed", Static).render())).group(1))
            assert elapsed >= 4, elapsed
            await pilot.press("ctrl+x")
            await _until(pilot, lambda: s.handle.poll() is not None, timeout=60)
            await _until(pilot, lambda: not s.query_one("#run", Button).disabled, timeout=30)
            s.query_one("#outdir", Static).update("output: the previous run")
            s.query_one("#score-bars", Static).update("previous bars")
            await pilot.press("ctrl+r")
            await _until(pilot, lambda: s.handle.run_dir != handle.run_dir)
            assert str(s.query_one("#outdir", Static).render()) == ""
            assert str(s.query_one("#score-bars", Static).render()) == ""
            await pilot.press("ctrl+x")
            await _until(pilot, lambda: s.handle.poll() is not None, timeout=60)
    finally:
        handle.cancel()


async def test_the_run_header_says_the_activation_bits_chosen(tmp_path):
    """W4A8 chosen on Generate reads W4A8 on Run (it always said A16)."""
    from textual.widgets import Static

    app = WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path, device="cpu")
    app.answers.generate.method, app.answers.generate.bit, app.answers.generate.act_bit = "RTN", 4, 8
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("Run")
        await pilot.pause()
        text = str(app.screen.query_one("#settings", Static).render())
    assert "W4A8" in text and "A16" not in text


async def test_hiding_the_answers_panel_holds_across_steps(tmp_path):
    """ctrl+t hides (or shows) the answers panel on every step until pressed again (it came back
    on the next step). At 120×40 it starts shown."""
    app = WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path, device="cpu")
    async with app.run_test(size=(120, 40)) as pilot:
        app.goto("Source")
        await pilot.pause()
        assert app.screen.query_one("#side").display
        await pilot.press("ctrl+t")
        assert not app.screen.query_one("#side").display
        await pilot.press("ctrl+n")  # Install
        await pilot.pause()
        assert app.screen.TITLE_TEXT == "Install" and not app.screen.query_one("#side").display
        await pilot.press("ctrl+t")
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert app.screen.TITLE_TEXT == "Source" and app.screen.query_one("#side").display
        await pilot.resize_terminal(80, 24)  # a choice made by key holds whatever the size
        await pilot.pause()
        assert app.screen.query_one("#side").display


async def test_generate_is_preview_write_smoke_by_enter_alone(zoo, tmp_path):
    """From the Name field at 80×24: enter previews, enter writes (focus moved to Write), enter
    starts the smoke test (focus moved to Smoke test); f1 lists that order and its keys."""
    from textual.widgets import Static

    app = _app_on_generate_ready(zoo, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("Generate")
        await pilot.pause()
        s = app.screen
        assert app.focused is s.query_one("#name", Input)
        await pilot.press("f1")
        await pilot.pause()
        help_text = str(app.screen.query_one("#help-text", Static).render())
        assert "Preview → Write → Smoke test" in help_text and "ctrl+g" in help_text
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("enter")
        await _until(pilot, lambda: app.focused is s.query_one("#write", Button))
        await pilot.press("enter")
        await _until(pilot, lambda: (tmp_path / "adapters" / "tiny_llava.py").exists()
                     and app.focused is s.query_one("#smoke", Button))
        await pilot.press("enter")
        await _until(pilot, lambda: "smoke test passed" in str(s.query_one("#status").render())
                     or s.query_one("#status").has_class("error"), timeout=240)
        assert "smoke test passed" in str(s.query_one("#status").render()), str(s.query_one("#status").render())


async def test_install_offers_nothing_when_nothing_needs_installing(zoo, tmp_path):
    """A transformers model: Install says no install is needed and shows no install button,
    options or command (it offered "Confirm and install")."""
    from wizard.services.fetch import fetch_repo

    a = demo_answers(zoo, "tiny-llava")
    a.source.weights_dir = str(fetch_repo(a.source.weights_url, tmp_path / "weights" / "tiny-llava").path)
    app = WizardApp(answers_path=tmp_path / "answers.yml", workdir=tmp_path, device="cpu")
    app.answers = a
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("Install")
        await pilot.pause()
        s = app.screen
        assert "No install needed" in str(s.query_one("#detect").render())
        assert not any(s.query_one(w).display for w in ("#install", "#install-options", "#command"))


@pytest.mark.parametrize("url, name", [("/data/weights/repo", "weights-repo"), ("/data/llava-1.5/", "llava-1.5"),
                                       ("git@github.com:org/model.git", "org-model"),
                                       ("https://huggingface.co/Efficient-Large-Model/VILA1.5-3b", "VILA1.5-3b")])
def test_a_clone_is_named_after_its_model_not_a_generic_folder(tmp_path, url, name):
    """``weights/repo`` was cloned into ``repo``: the name says which model it holds."""
    from wizard.services.fetch import destination

    if url.startswith("/"):
        url = str(tmp_path) + url
        __import__("git").Repo.init(url, mkdir=True)  # a real local repository at that path
    assert destination(url, tmp_path / "clones") == tmp_path / "clones" / name


async def test_a_group_size_changed_on_generate_is_checked_at_preview_and_empty_means_per_channel(zoo, tmp_path):
    """Group 48 typed on Generate: Preview names a layer it does not divide (it was found when the
    engine met the layer). An empty field means per channel (None), as on Inspect (it meant 32)."""
    app = _app_on_generate_ready(zoo, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        app.goto("Generate")
        await pilot.pause()
        s = app.screen
        s.query_one("#group", Input).value = "48"
        await pilot.click("#preview")
        await pilot.pause()
        status = str(s.query_one("#status").render())
        assert "group size 48 does not divide" in status and s.query_one("#write", Button).disabled, status
        s.query_one("#group", Input).value = ""
        await pilot.click("#preview")
        await pilot.pause()
        assert app.answers.generate.group_size is None and "preview of" in str(s.query_one("#status").render())


def test_a_group_size_has_one_form(tmp_path):
    """None is per channel wherever a group size is held: an answers file's 0 or -1 (older files,
    the engine's old marker) reads as None, a field's text goes through one parser that names bad
    input, and the config written for None is per channel."""
    from wizard.services.answers import Answers, group_size_from_text
    from wizard.services.errors import WizardError

    p = tmp_path / "answers.yml"
    for old in (0, -1):
        p.write_text(f"generate:\n  group_size: {old}\n")
        assert load_answers(p).generate.group_size is None
    p.write_text("generate:\n  group_size: -5\n")
    with pytest.raises(WizardError, match="group_size"):
        load_answers(p)
    assert [group_size_from_text(t) for t in ("", " 0 ", "128")] == [None, None, 128]
    for bad in ("-8", "abc", "3.5"):
        with pytest.raises(WizardError, match=f"group size '{bad}'"):
            group_size_from_text(bad)
    a = Answers()
    a.generate.group_size = None
    save_answers(a, p)
    assert "group_size: null" in p.read_text() and load_answers(p).generate.group_size is None


async def test_the_run_screen_starts_and_follows_a_run_on_the_headless_path_off_the_ui_thread(zoo, tmp_path,
                                                                                            monkeypatch):
    """Run's start and follow are :func:`wizard.runs.start_run` and :func:`wizard.runs.follow_run`,
    the functions ``llmc-wizard run`` uses, called from a worker thread (the screen had a timer of
    its own and started the run on the UI thread); the engine's events reach the screen through
    the reporter."""
    import threading

    from textual.widgets import Static

    from wizard import runs

    calls: list[tuple[str, bool]] = []

    def spy(name, real):
        def call(*args, **kwargs):
            calls.append((name, threading.current_thread() is threading.main_thread()))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(runs, "start_run", spy("start_run", runs.start_run))
    monkeypatch.setattr(runs, "follow_run", spy("follow_run", runs.follow_run))
    app = _app_ready_to_run(zoo, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        s = await _on_step(pilot, "Run")
        await pilot.press("ctrl+r")
        await _until(pilot, lambda: len(calls) == 2)
        assert calls == [("start_run", False), ("follow_run", False)]
        await _until(pilot, lambda: "phase: " in str(s.query_one("#phase", Static).render())
                     and "starting" not in str(s.query_one("#phase", Static).render()), timeout=60)
        await pilot.press("ctrl+x")
        await _until(pilot, lambda: not s.query_one("#run", Button).disabled, timeout=60)
        assert str(s.query_one("#phase").render()) == "phase: cancelled"
        assert s.handle.poll() is not None


async def test_onboarding_a_second_model_in_the_same_session_leaves_the_first_byte_identical(zoo, tmp_path):
    """Model A (tiny-llava) onboarded to a score table; in the same wizard session the user types
    model B's weights on Source and onboards B by keys (clone, inspect, preview, write, run). B has
    answers, a declaration and runs of its own; A's answers, declaration, configs and runs are
    byte-identical to before."""
    import git
    from textual.widgets import Select, Static

    from wizard.session import Session
    from wizard.steps import Reporter, onboard

    a = demo_answers(zoo, "tiny-llava")
    a.generate.method, a.generate.n_calib, a.generate.eval_samples = "RTN", 4, 8
    a_path = tmp_path / "answers" / "tiny_llava.yml"
    sess = Session(a, a_path, tmp_path, tmp_path / "adapters", tmp_path / "site", "cpu", assume_yes=True)
    onboard(sess, ["fetch", "inspect", "generate", "run"], Reporter())
    sess.save()
    a_runs = sorted((tmp_path / "runs").iterdir())
    assert len(a_runs) == 1 and (a_runs[0] / "COMPLETE").exists()
    before = _digests(tmp_path)
    b_url = str(tmp_path / "elsewhere" / "tiny-llava-b")
    git.Repo.clone_from(zoo.models["tiny-llava"]["weights_repo"], b_url)

    app = WizardApp(zoo_root=zoo.root, answers_path=a_path, workdir=tmp_path, models_dir=tmp_path / "adapters",
                    device="cpu", install_target=tmp_path / "site")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("c")
        await _until(pilot, lambda: app.screen.TITLE_TEXT == "Source")
        s = app.screen
        s.query_one("#weights", Input).value = b_url
        s.query_one("#weights", Input).focus()
        await pilot.press("enter")  # clone B
        await _until(pilot, lambda: "weights:" in str(s.query_one("#status").render())
                     or s.query_one("#status").has_class("error"))
        assert app.session.answers_path != a_path
        await pilot.press("ctrl+n", "ctrl+n")  # Install (nothing to do), Inspect (runs on entry)
        s = app.screen
        await _until(pilot, lambda: "layers to quantize" in str(s.query_one("#status").render()), timeout=120)
        await pilot.press("ctrl+n")
        s = app.screen
        s.query_one("#method", Select).value = "RTN"
        await pilot.pause()
        s.query_one("#name", Input).focus()
        await pilot.press("enter")  # preview
        await _until(pilot, lambda: "preview of" in str(s.query_one("#status").render()))
        await pilot.press("enter")  # the focus moved to Write
        await _until(pilot, lambda: "wrote" in str(s.query_one("#status").render()))
        await pilot.press("ctrl+n")
        s = app.screen
        s.query_one("#eval-n", Input).value = "8"
        s.query_one("#run", Button).focus()
        await pilot.press("enter")
        await _until(pilot, lambda: "done in" in str(s.query_one("#status", Static).render())
                     or "failed" in str(s.query_one("#status", Static).render()), timeout=600)
        assert "done in" in str(s.query_one("#status", Static).render())
    b_name = app.answers.generate.name
    assert b_name and b_name != "tiny-llava" and (tmp_path / "adapters" / "tiny_llava_b.py").exists()
    after = _digests(tmp_path)
    assert {f: d for f, d in after.items() if f in before} == before  # nothing of A's changed
    assert len(sorted((tmp_path / "runs").iterdir())) == 2


async def test_quitting_while_the_run_screen_follows_a_run_leaves_the_run_going(zoo, tmp_path):
    """ctrl+q then y while Run follows a run in its worker: the wizard exits, the engine goes on
    (the Run step reattaches later), and nothing marks the run cancelled."""
    from wizard.services.runner import pid_alive, reattach

    app = _app_ready_to_run(zoo, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        s = await _on_step(pilot, "Run")
        await pilot.press("ctrl+r")
        await _until(pilot, lambda: getattr(s, "handle", None) is not None and s.following)
        pid, run_dir = s.handle.pid, s.handle.run_dir
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
    assert not app.is_running
    try:
        t = time.monotonic()
        while not (run_dir / "events.jsonl").exists() and time.monotonic() - t < 60:
            time.sleep(0.2)
        time.sleep(1.0)
        assert pid_alive(pid), "quitting the wizard stopped the run"
        assert '"cancelled"' not in (run_dir / "events.jsonl").read_text()
    finally:
        reattach(run_dir).cancel()


async def test_a_run_that_cannot_start_says_why_in_one_line_and_run_stays_available(zoo, tmp_path):
    """The runs folder is a file: the start fails with an OSError in the worker; the status names
    it in one line, and the Run button is free again (a worker error used to leave it disabled)."""
    app = _app_ready_to_run(zoo, tmp_path)
    runs = app.session.runs_dir()
    runs.parent.mkdir(parents=True, exist_ok=True)
    runs.write_text("not a folder")
    async with app.run_test(size=(80, 24)) as pilot:
        s = await _on_step(pilot, "Run")
        await pilot.press("ctrl+r")
        await _until(pilot, lambda: s.query_one("#status").has_class("error"), timeout=60)
        status = str(s.query_one("#status").render())
        assert str(runs) in status and "\n" not in status.strip(), status
        await _until(pilot, lambda: not s.query_one("#run", Button).disabled, timeout=10)
        assert not s.following


def test_a_run_whose_answers_cannot_be_saved_is_still_handed_over(zoo, tmp_path, monkeypatch):
    """The engine is launched before the answers are saved: a failing save (a full disk, a
    read-only file) leaves a warning and the handle of the run that goes on, not an error that
    says nothing started while the engine runs."""
    from wizard.reporter import Reporter
    from wizard.runs import start_run
    from wizard.services.errors import WizardError

    sess = _generated_gptq(zoo, tmp_path)

    def failing_save():
        raise WizardError(f"cannot write answers file {tmp_path / 'answers.yml'}: No space left on device", "free some")

    monkeypatch.setattr(sess, "save", failing_save)
    said: list[str] = []
    handle = start_run(sess, Reporter(log=said.append))
    try:
        assert handle.poll() is None  # the engine runs
        assert any(line.startswith("warning: the run started, but its directory is not in the answers")
                   and "No space left on device" in line for line in said)
        assert sess.answers.run.run_dir == str(handle.run_dir)
    finally:
        handle.cancel()
