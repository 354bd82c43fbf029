"""One path for the TUI and the headless twin: the same steps, the same files; and the Run step's
state right in every race."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from textual.widgets import Button, Input, Select

from wizard import steps
from wizard.app import WizardApp, demo_answers
from wizard.services import render, runner
from wizard.services.answers import load_answers, save_answers
from wizard.session import Session

from test_tui import SIZE, _press, _text, _until  # noqa: E402 - the TUI tests' Pilot helpers

REPO = Path(__file__).resolve().parents[1]


def _headless(answers_path: Path, workdir: Path, *step_names: str) -> subprocess.CompletedProcess:
    r = None
    for name in step_names:
        r = subprocess.run([sys.executable, "-m", "wizard.cli", name, "--answers", str(answers_path), "--workdir",
                            str(workdir), "--device", "cpu"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
async def test_tui_and_headless_write_the_same_answers_and_config(zoo, tmp_path):
    """The same choices through the screens and through `llmc-wizard fetch/inspect/generate`."""
    choices = dict(name="twin-llava", method="GPTQ", bit=3, group_size=64)
    # headless
    hl = tmp_path / "headless"
    a = demo_answers(zoo, "tiny-llava")
    a.generate.name, a.generate.method = choices["name"], choices["method"]
    a.generate.bit, a.generate.group_size = choices["bit"], choices["group_size"]
    hl.mkdir()
    save_answers(a, hl / "answers.yml")
    _headless(hl / "answers.yml", hl, "fetch", "install", "inspect", "generate")
    # the TUI, by its screens
    tui = tmp_path / "tui"
    app = WizardApp(zoo_root=zoo.root, answers_path=tui / "answers.yml", workdir=tui, device="cpu")
    app.answers = demo_answers(zoo, "tiny-llava")
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Source")
        await pilot.pause()
        s = app.screen
        await _press(pilot, "#clone")
        await _until(pilot, lambda: "weights:" in _text(s, "#status"))
        app.goto_step("Source", +2)  # Install has nothing to do for a transformers model
        await pilot.pause()
        s = app.screen
        s.query_one("#group-size", Input).value = str(choices["group_size"])
        await _press(pilot, "#inspect")
        await _until(pilot, lambda: "layers to quantize" in _text(s, "#status"))
        app.goto_step("Inspect", +1)
        await pilot.pause()
        s = app.screen
        s.query_one("#name", Input).value = choices["name"]
        s.query_one("#method", Select).value = choices["method"]
        s.query_one("#bit", Input).value = str(choices["bit"])
        s.query_one("#group", Input).value = str(choices["group_size"])
        await pilot.pause()
        await _press(pilot, "#preview")
        await _press(pilot, "#write")
        await _until(pilot, lambda: "wrote" in _text(s, "#status"))
    # the same files, up to the work folder's own path
    for rel in ("configs/twin_llava_gptq.yml", "adapters/twin_llava.py", "configs/twin_llava.answers.yml"):
        h, t = ((d / rel).read_text().replace(str(d), "<work>") for d in (hl, tui))
        if not rel.endswith("answers.yml"):  # the header's body hash covers the real paths
            h, t = render.split_header(h)[1], render.split_header(t)[1]
        assert h == t, rel
    ha, ta = load_answers(hl / "answers.yml"), load_answers(tui / "answers.yml")
    for a in (ha, ta):
        a.source.weights_dir = a.source.weights_dir.replace(str(hl), "<work>").replace(str(tui), "<work>")
        a.generate.out_dir = (a.generate.out_dir or "").replace(str(hl), "<work>").replace(str(tui), "<work>")
    assert ha.model_dump() == ta.model_dump()


def test_a_changed_weights_url_gets_its_own_clone(zoo, tmp_path):
    a = demo_answers(zoo, "tiny-llava")
    save_answers(a, tmp_path / "answers.yml")
    s = Session.load(tmp_path / "answers.yml", tmp_path)
    first = steps.fetch(s).weights_dir
    # the user changes the URL; the answers still name the first clone
    s.answers.source.weights_url = zoo.models["tiny-vila"]["weights_repo"]
    second = steps.fetch(s).weights_dir
    assert second != first and Path(s.answers.source.weights_dir) == second
    assert (second / "llm").is_dir() and not (first / "llm").exists()  # tiny-vila's layout, tiny-llava untouched
    # a second repository with the same folder name does not take the first one's folder either
    assert steps.fetch(s).weights_dir == second  # same URL again: the same clone, fetched


def test_past_runs_are_this_models_newest_first(tmp_path):
    import json

    runs = tmp_path / "runs"
    for name, t in (("alpha-1", 100.0), ("beta-1", 200.0), ("alpha-2", 300.0)):
        (runs / name).mkdir(parents=True)
        (runs / name / "events.jsonl").write_text(json.dumps({"t": t, "event": "start", "pid": 999999}) + "\n")
    assert [r.run_dir.name for r in runner.list_runs(runs, "alpha")] == ["alpha-2", "alpha-1"]
    assert [r.run_dir.name for r in runner.list_runs(runs)] == ["alpha-2", "beta-1", "alpha-1"]


def test_a_cancel_after_the_run_finished_records_nothing(tmp_path, zoo):
    cfg = {
        "model": {"type": "Llava", "path": str(REPO / "wizard" / "demo" / "assets" / "tiny-llava"),
                  "torch_dtype": "float32"},
        "calib": {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 4},
        "eval": {"eval_pos": ["fake_quant"], "type": "vqa", "name": "mme", "path": str(zoo.eval_set / "data"),
                 "num_samples": 4, "bs": 8, "cache": False},
        "quant": {"method": "RTN", "weight": {"bit": 4, "group_size": 32}},
    }
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    h = runner.launch(tmp_path / "c.yml", tmp_path / "run", device="cpu")
    assert h.wait(timeout=300) == 0
    assert h.cancel() is False  # too late: nothing to stop, nothing recorded
    from llmc.progress import read_events

    events = [e["event"] for e in read_events(tmp_path / "run" / "events.jsonl")]
    assert "cancelled" not in events
    assert [r.state for r in runner.list_runs(tmp_path)] == ["done"]
    # the engine printed its score table once (stdout), not also through the log echo (stderr)
    assert (tmp_path / "run" / "process.log").read_text().count("| total |") == 1


def test_the_wizard_offers_the_engines_bit_range(tmp_path):
    from llmc.config import WEIGHT_BITS
    from wizard.services.errors import WizardError

    for bad in (WEIGHT_BITS[0] - 1, WEIGHT_BITS[1] + 1):
        (tmp_path / "a.yml").write_text(f"generate: {{bit: {bad}}}\n")
        with pytest.raises(WizardError, match="generate.bit"):
            load_answers(tmp_path / "a.yml")


async def test_a_step_that_raises_anything_reports_it_and_frees_the_screen(zoo, tmp_path):
    """Not only WizardError: any exception of a step ends the work with its one-line message."""
    (tmp_path / "a-file").write_text("")
    # the work folder lies under a regular file: the clone's mkdir raises NotADirectoryError
    app = WizardApp(zoo_root=zoo.root, answers_path=tmp_path / "answers.yml", workdir=tmp_path / "a-file" / "work",
                    device="cpu")
    app.answers = demo_answers(zoo, "tiny-llava")
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Source")
        await pilot.pause()
        s = app.screen
        await _press(pilot, "#clone")
        await _until(pilot, lambda: not s.query_one("#clone", Button).disabled)
        assert s.query_one("#status").has_class("error")
        assert "Not a directory" in _text(s, "#status") and "\n" not in _text(s, "#status")
        assert s.query_one("#cancel", Button).disabled


def test_headless_smoke_runs_in_a_child_that_cancel_kills(zoo, tmp_path):
    """The headless smoke step is the TUI's: a child process, stopped by the reporter's cancel."""
    from wizard.services.errors import WizardError

    a = demo_answers(zoo, "tiny-llava")
    save_answers(a, tmp_path / "answers.yml")
    s = Session.load(tmp_path / "answers.yml", tmp_path)
    steps.fetch(s)
    steps.inspect(s)
    steps.generate(s)
    pids: list[int] = []
    t0 = time.time()
    r = steps.Reporter(child_started=pids.append, cancelled=lambda: bool(pids) and time.time() - t0 > 1.0)
    with pytest.raises(WizardError, match="cancelled"):
        steps.smoke(s, r)
    assert pids
    from wizard.services.child import wait_gone

    assert wait_gone(pids[0])


@pytest.mark.slow
def test_the_wizards_default_awq_is_the_presets(zoo, tmp_path, tiny_vila_installed):
    """tiny-vila, W4 AWQ with the wizard's defaults against configs/tiny-vila_w4a16_awq.yml, on the
    same 48 evaluation images: the same resolved search, the same scores."""
    from llmc.config import load_config
    from llmc.runner import run

    a = demo_answers(zoo, "tiny-vila")
    a.inspect.model_kind = "custom-code"
    a.inspect.projector_last_layers = ["mm_projector.layers.4"]
    a.generate.eval_samples = 48
    save_answers(a, tmp_path / "answers.yml")
    s = Session.load(tmp_path / "answers.yml", tmp_path)
    steps.fetch(s)  # the code is installed by the fixture
    assert s.answers.generate.method == "Awq"  # the wizard's default method, untouched
    wizard_cfg = yaml.safe_load(steps.generate(s).config_path.read_text())
    preset = yaml.safe_load((REPO / "configs" / "tiny-vila_w4a16_awq.yml").read_text())
    preset["model"]["path"] = wizard_cfg["model"]["path"]
    preset["calib"]["path"], preset["eval"]["path"] = wizard_cfg["calib"]["path"], wizard_cfg["eval"]["path"]
    totals, searches = [], []
    for name, raw in (("wizard", wizard_cfg), ("preset", preset)):
        raw["eval"].update(num_samples=48, cache=False)
        raw["save"] = {"save_path": str(tmp_path / name), "save_fake": False}
        res = run(load_config(raw), tmp_path / f"run-{name}", device="cpu")
        totals.append(res["evals"]["mme"]["fake_quant"]["total"])
        searches.append([line for line in (tmp_path / f"run-{name}" / "run.log").read_text().splitlines()
                         if "AWQ search:" in line][0].split("] ", 1)[1])
    assert searches[0] == searches[1] == "AWQ search: output, loss tokens last, clip tokens all"
    assert abs(totals[0] - totals[1]) <= 1e-6, totals


def test_events_are_typed_once_checked_when_written_and_parsed_once(tmp_path):
    from llmc import events
    from llmc.progress import Progress

    p = Progress(tmp_path, echo=None)
    p.event("block", i=0, n=2, seconds=0.5, block_error=0.1, last_error=0.2, peak_gpu_mem_mib={0: 1.0})
    p.event("placement", mode="single", summary="cpu")
    with pytest.raises(TypeError):
        p.event("block", i=1, n=2)  # a writer cannot drop what readers need
    with p.phase("quantize", n_blocks=2):
        pass
    p.close()
    got = events.load_events(tmp_path / "events.jsonl")
    assert [type(e).__name__ for e in got] == ["Block", "Other", "Phase", "Phase"]
    block = got[0]
    assert (block.i, block.n, block.block_error, block.last_error) == (0, 2, 0.1, 0.2)
    assert block.extra == {"peak_gpu_mem_mib": {"0": 1.0}}
    assert got[1].event == "placement" and got[1].extra["summary"] == "cpu"
    assert got[2].n_blocks == 2 and got[3].state == "end" and got[3].seconds is not None
    # the wizard's follower reads the same classes, a line at a time as it grows
    tail = runner.EventTail(tmp_path / "events.jsonl")
    assert [type(e) for e in tail.poll()] == [type(e) for e in got] and tail.poll() == []
    assert steps.describe_event(block) == "block 1/2 error 0.1000 (last token 0.2000)"
