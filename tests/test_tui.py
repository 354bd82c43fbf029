"""The wizard's screens driven by Pilot: every step, its cancel and an error path; snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from textual.widgets import Button, DataTable, Input, Select, SelectionList, Static

from wizard.app import WizardApp, demo_answers
from wizard.services.answers import Answers, load_answers
from wizard.services.child import wait_gone

pytestmark = pytest.mark.slow
SIZE = (130, 48)


def _text(screen, wid) -> str:
    return str(screen.query_one(wid, Static).render())


async def _until(pilot, cond, timeout=120.0):
    t = 0.0
    while not cond():
        await pilot.pause(0.1)
        t += 0.1
        if t > timeout:
            raise AssertionError("condition not reached in time")


async def _press(pilot, selector):
    """Press a button as a click would (immune to layout shifts while the screen updates)."""
    pilot.app.screen.query_one(selector, Button).press()
    await pilot.pause()


async def _write(pilot, s):
    """Press Write and wait for the step to finish."""
    s.set_status("")
    await _press(pilot, "#write")
    await _until(pilot, lambda: "wrote" in _text(s, "#status") or s.query_one("#status").has_class("error"))


async def _written_config(pilot, s, path, **choices):
    """Set the Generate form's selects (``id=value``), preview, write; the written config."""
    for wid, value in choices.items():
        s.query_one(f"#{wid}", Select).value = value
    await pilot.pause()
    await _press(pilot, "#preview")
    await _write(pilot, s)
    return yaml.safe_load(path.read_text())


def _app(tmp_path, zoo=None, answers=None):
    app = WizardApp(zoo_root=zoo.root if zoo else None, answers_path=tmp_path / "answers.yml", workdir=tmp_path,
                    models_dir=tmp_path / "adapters", device="cpu", install_target=tmp_path / "site")
    if answers is not None:
        app.answers = answers
    return app


async def test_welcome_enter_prefills_the_demo_and_opens_source(zoo, tmp_path):
    app = _app(tmp_path, zoo)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.screen.TITLE_TEXT == "Source"
        assert app.screen.query_one("#weights", Input).value == zoo.models["tiny-vila"]["weights_repo"]
        assert app.screen.query_one("#commit", Input).value == zoo.models["tiny-vila"]["code_commit"]
        assert "weights_url" in _text(app.screen, "#answers-view")
        await pilot.press("ctrl+n")
        assert app.screen.TITLE_TEXT == "Install"
        await pilot.press("ctrl+b")
        assert app.screen.TITLE_TEXT == "Source"


async def test_source_clones_pins_cancels_and_rejects_empty_input(zoo, tmp_path):
    app = _app(tmp_path, zoo, demo_answers(zoo, "tiny-vila"))
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Source")
        await pilot.pause()
        s = app.screen
        # error path: nothing to clone
        s.query_one("#weights", Input).value = ""
        await pilot.pause()
        await _press(pilot, "#clone")
        assert "Weights repository is empty" in _text(s, "#status")
        assert s.query_one("#status").has_class("error")
        # cancel: the first progress event sees the cancel flag; the partial clone is removed
        s.query_one("#weights", Input).value = zoo.models["tiny-vila"]["weights_repo"]
        await pilot.pause()
        await _press(pilot, "#clone")
        s.cancel_event.set()
        await _until(pilot, lambda: not s.query_one("#clone", Button).disabled)
        assert "cancelled" in _text(s, "#status")
        assert not (tmp_path / "weights" / "tiny-vila").exists()
        # success: weights + code pinned at the release commit
        await _press(pilot, "#clone")
        await _until(pilot, lambda: not s.query_one("#clone", Button).disabled)
        status = _text(s, "#status")
        assert f"pinned at {zoo.models['tiny-vila']['code_commit']}" in status, status
        assert app.answers.source.weights_dir == str(tmp_path / "weights" / "tiny-vila")
        assert (tmp_path / "answers.yml").exists()


def _cloned(zoo, tmp_path, name):
    """Answers with the demo model's weights (and code) cloned, as after the Source step."""
    from wizard.services.fetch import fetch_repo

    a = demo_answers(zoo, name)
    a.source.weights_dir = str(fetch_repo(a.source.weights_url, tmp_path / "weights" / name).path)
    if a.source.code_url:
        res = fetch_repo(a.source.code_url, tmp_path / "code" / "tiny-vila-code", commit=a.source.code_commit)
        a.source.code_dir = str(res.path)
    return a


async def test_install_detects_confirms_streams_and_cancels(zoo, tmp_path):
    app = _app(tmp_path, zoo, Answers())
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Install")
        await pilot.pause()
        s = app.screen
        # error path: nothing cloned yet
        assert "clone them in the Source step" in _text(s, "#detect")
        assert s.query_one("#install", Button).disabled
        app.answers = _cloned(zoo, tmp_path, "tiny-vila")
        s.on_enter()
        assert "Custom code" in _text(s, "#detect")
        assert "pip install" in _text(s, "#command") and "--target" in _text(s, "#command")
        # cancel a (slow, failing) install: extra package from an unreachable index
        s.query_one("#no-deps").value = True
        await pilot.pause()
        s.query_one("#extra", Input).value = "--index-url http://127.0.0.1:9/simple nonexistent-pkg-xyz"
        await pilot.pause()
        await pilot.pause()
        await _press(pilot, "#install")
        await pilot.pause(0.5)
        await _press(pilot, "#cancel")
        await _until(pilot, lambda: not s.query_one("#install", Button).disabled)
        assert "cancelled" in _text(s, "#status") or "failed" in _text(s, "#status")
        # the real install into the private target
        s.query_one("#extra", Input).value = ""
        await pilot.pause()
        await pilot.pause()
        await _press(pilot, "#install")
        await _until(pilot, lambda: not s.query_one("#install", Button).disabled)
        assert "installed in" in _text(s, "#status"), _text(s, "#status")
        assert (tmp_path / "site" / "tiny_vila" / "__init__.py").exists()
        assert app.answers.install.consented(app.answers.source)


async def test_inspect_shows_tree_picker_and_group_size_problems(zoo, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "wizard/demo/assets/tiny-vila-code"))
    app = _app(tmp_path, zoo, Answers())
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Inspect")
        await pilot.pause()
        s = app.screen
        await _press(pilot, "#inspect")
        assert "clone them in the Source step" in _text(s, "#status")  # error path
        app.answers = _cloned(zoo, tmp_path, "tiny-vila")
        app.answers.inspect.model_kind = "custom-code"
        s.query_one("#group-size", Input).value = "48"
        await pilot.pause()
        await _press(pilot, "#inspect")
        await _until(pilot, lambda: "layers to quantize" in _text(s, "#status"))
        assert "does not divide 14 of them" in _text(s, "#status")
        assert "2 blocks, hidden size 128" in _text(s, "#summary")
        picks = s.query_one("#picks", SelectionList)
        assert picks.selected == ["mm_projector.layers.4"]
        tree = s.query_one("#projector")
        labels, stack = [], list(tree.root.children)
        while stack:
            n = stack.pop()
            labels.append(str(n.label))
            stack.extend(n.children)
        assert "4: Linear 128→128 +bias (16,512 params)" in labels
        assert "0: DownSampleBlock" in labels
        s.query_one("#group-size", Input).value = "32"
        await pilot.pause()
        await _press(pilot, "#inspect")
        await _until(pilot, lambda: "does not divide" not in _text(s, "#status") and "14 layers" in _text(s, "#status"))
        table = s.query_one("#quant-layers", DataTable)
        assert table.row_count == 14
        picks.deselect_all()
        await pilot.pause()
        assert app.answers.inspect.projector_last_layers == []


async def test_generate_previews_writes_registers_and_smoke_tests(zoo, tmp_path):
    a = _cloned(zoo, tmp_path, "tiny-llava")
    a.inspect.model_kind = "transformers"
    a.inspect.architecture = "LlavaForConditionalGeneration"
    app = _app(tmp_path, zoo, a)
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Generate")
        await pilot.pause()
        s = app.screen
        await _press(pilot, "#preview")  # error path: no projector pick yet
        assert "no projector last layer chosen" in _text(s, "#status")
        a.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
        s.query_one("#name", Input).value = "My Llava"
        await pilot.pause()
        await _press(pilot, "#preview")
        assert "preview of" in _text(s, "#status")
        assert not s.query_one("#write", Button).disabled
        await _press(pilot, "#write")
        await _until(pilot, lambda: "wrote" in _text(s, "#status"))
        assert (tmp_path / "adapters" / "my_llava.py").exists()
        assert (tmp_path / "configs" / "my_llava_awq.yml").exists()
        # method, activation bits and export reach the config; a choice the engine refuses is reported
        config = tmp_path / "configs" / "my_llava_gptq.yml"
        gptq = await _written_config(pilot, s, config, method="GPTQ", export="vllm")
        assert gptq["save"]["save_vllm"] is True and gptq["quant"]["weight"]["symmetric"] is True
        assert "offload" not in gptq["model"] and "device_map" not in gptq["model"]
        gptq = await _written_config(pilot, s, config, placement="offload")  # blocks kept in CPU memory
        assert gptq["model"]["offload"] is True and a.generate.placement == "offload"
        # the range search and GPTQ's float-block Hessians; AWQ offers neither, RTN no Hessians
        assert s.query_one("#ranges", Select).display and s.query_one("#hessians", Select).display
        gptq = await _written_config(pilot, s, config, ranges="mse", hessians="float")
        assert gptq["quant"]["weight"]["calib_algo"] == "mse" and gptq["quant"]["special"]["true_sequential"] is False
        s.query_one("#method", Select).value = "Awq"
        await pilot.pause()
        assert not s.query_one("#ranges", Select).display and not s.query_one("#hessians", Select).display
        assert a.generate.calib_algo == "minmax"  # AWQ searches its own clip

        s.query_one("#method", Select).value = "RTN"
        await pilot.pause()
        assert s.query_one("#ranges", Select).display and not s.query_one("#hessians", Select).display
        assert a.generate.calib_algo == "mse" and a.generate.true_sequential is True
        s.query_one("#method", Select).value = "GPTQ"
        s.query_one("#ranges", Select).value = "minmax"
        await pilot.pause()
        s.query_one("#act", Select).value = 8
        await pilot.pause()
        await _press(pilot, "#preview")
        assert "W8A8 export needs 8-bit weights, got 4" in _text(s, "#status")  # GPTQ W4 + A8
        assert s.query_one("#write", Button).disabled
        s.query_one("#export", Select).value = "none"
        await pilot.pause()
        await _press(pilot, "#smoke")
        await _until(pilot, lambda: "smoke test" in _text(s, "#status") and "…" not in _text(s, "#status"))
        assert "smoke test passed" in _text(s, "#status"), _text(s, "#status")
        assert "eval sample:" in "\n".join(s.query_one("#log").lines)  # the child's log lines
        # run again and cancel: the child process loading the model is killed
        first = s.child_pid
        await _press(pilot, "#smoke")
        await _until(pilot, lambda: s.child_pid not in (None, first))
        assert s.query_one("#smoke", Button).disabled
        await _press(pilot, "#cancel")
        await _until(pilot, lambda: "cancelled" in _text(s, "#status"))
        assert wait_gone(s.child_pid)
        assert not s.query_one("#smoke", Button).disabled and s.query_one("#cancel", Button).disabled


async def test_generate_says_when_an_answers_files_range_search_does_not_apply(zoo, tmp_path):
    """An answers file asking AWQ for the MSE range search: the step says it does not apply (AWQ
    searches its own clip) and what it writes takes min-max ranges (the headless twin refuses it:
    tests/test_generate.py)."""
    a = _cloned(zoo, tmp_path, "tiny-llava")
    a.inspect.model_kind, a.inspect.architecture = "transformers", "LlavaForConditionalGeneration"
    a.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
    a.generate.name, a.generate.method, a.generate.calib_algo = "awq-mse", "Awq", "mse"
    app = _app(tmp_path, zoo, a)
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Generate")
        await pilot.pause()
        s = app.screen
        assert "calib_algo: mse does not apply" in _text(s, "#status")
        awq = await _written_config(pilot, s, tmp_path / "configs" / "awq_mse_awq.yml")
        assert "calib_algo" not in awq["quant"]["weight"] and a.generate.calib_algo == "minmax"


async def test_run_launches_follows_cancels_and_shows_scores(zoo, tmp_path):
    a = _cloned(zoo, tmp_path, "tiny-llava")
    a.inspect.model_kind = "transformers"
    a.inspect.architecture = "LlavaForConditionalGeneration"
    a.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
    a.generate.method = "RTN"
    a.generate.n_calib = 8
    app = _app(tmp_path, zoo, a)
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Run")
        await pilot.pause()
        s = app.screen
        s.query_one("#calib", Input).value = str(tmp_path / "missing")
        await pilot.pause()
        await pilot.press("ctrl+r")
        assert "not found" in _text(s, "#status")  # error path
        await _press(pilot, "#dp-run")
        await _until(pilot, lambda: "no quantized model yet" in _text(s, "#status"), 60)  # its worker imports first
        # a full-size run, cancelled while it evaluates
        s.query_one("#calib", Input).value = str(zoo.calib_set)
        await pilot.pause()
        s.query_one("#eval-n", Input).value = ""
        await pilot.pause()
        await pilot.press("ctrl+r")
        await _until(pilot, lambda: s.handle is not None and (s.handle.run_dir / "events.jsonl").exists())
        await _until(pilot, lambda: "phase: " in _text(s, "#phase"))
        pid = s.handle.pid
        await pilot.press("ctrl+x")
        await _until(pilot, lambda: "cancelled" in _text(s, "#status"))
        from wizard.services.runner import pid_alive

        assert not pid_alive(pid)
        # a small run to completion: score table original vs quantized
        s.query_one("#eval-n", Input).value = "16"
        await pilot.pause()
        await pilot.press("ctrl+r")
        await _until(pilot, lambda: "done in" in _text(s, "#status") or "failed" in _text(s, "#status"), 300)
        assert "done in" in _text(s, "#status"), _text(s, "#status")
        results = json.loads((s.handle.run_dir / "results.json").read_text())
        table = s.query_one("#scores", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        total = next(r for r in rows if r[0] == "mme: total")
        assert total[1] == f"{results['evals']['mme']['pretrain']['total']:.2f}"
        assert total[2] == f"{results['evals']['mme']['fake_quant']['total']:.2f}"
        bars = str(s.query_one("#errors").render()).splitlines()  # one bar per block, with its value
        assert [b.split()[:2] for b in bars] == [["block", "1"], ["block", "2"]]
        assert bars[0].endswith(f"{results['blocks'][0]['block_error']:.4f}")
        assert "quantized" in str(s.query_one("#score-bars").render())
        await _press(pilot, "#open-report")  # the run's report.md in a viewer
        assert app.screen.__class__.__name__ == "ReportScreen"
        await pilot.press("escape")
        past = s.query_one("#past", DataTable)
        states = sorted(past.get_row_at(i)[1] for i in range(past.row_count))
        assert states == ["cancelled", "done"]
        # data-parallel evaluation of the saved quantized model: 2 CPU processes (gloo) score it
        # exactly as the engine scored it in memory
        s.query_one("#gpus", Input).value = "2"
        await pilot.pause()
        assert "of the quantized model over 2 GPUs" in _text(s, "#dp-command")
        await _press(pilot, "#dp-run")
        await _until(pilot, lambda: "…" not in _text(s, "#status"), 300)
        assert "over 2 process(es): total" in _text(s, "#status"), _text(s, "#status")
        dp = json.loads((s.handle.run_dir / "dp_eval_2.json").read_text())
        assert dp["world_size"] == 2 and dp["total"] == results["evals"]["mme"]["fake_quant"]["total"]
        assert not s.query_one("#dp-run", Button).disabled
        # Try: float vs quantized answers side by side
        app.switch_screen("Try")
        await pilot.pause()
        t = app.screen
        await _press(pilot, "#ask")
        await _until(pilot, lambda: t.query_one("#answers", DataTable).row_count == 2, 120)
        answers = [t.query_one("#answers", DataTable).get_row_at(i)[1] for i in range(2)]
        assert all(x in ("Yes", "No") for x in answers)
        # ask again and cancel while the child process loads the models
        first = t.child_pid
        await _press(pilot, "#ask")
        await _until(pilot, lambda: t.child_pid not in (None, first))
        await _press(pilot, "#cancel")
        await _until(pilot, lambda: "cancelled" in _text(t, "#status"))
        assert wait_gone(t.child_pid) and not t.query_one("#ask", Button).disabled


async def test_try_without_a_run_says_what_to_do(tmp_path):
    app = _app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Try")
        await pilot.pause()
        await _press(pilot, "#ask")
        assert "no finished run" in _text(app.screen, "#status")


def _snapshot_app():
    a = Answers()
    a.source.weights_url = "https://huggingface.co/org/vlm"
    a.generate.name = "my-vlm"
    a.generate.calib_path = "/data/calib"
    a.generate.eval_path = "/data/mme"
    return WizardApp(zoo_root=Path("/home/user/.cache/llmc-wizard/demo"), workdir=Path("/nonexistent/work"),
                     models_dir=Path("/nonexistent/adapters"), device="cpu"), a


@pytest.mark.parametrize("step", ["Welcome", "Source", "Install", "Inspect", "Generate", "Run", "Try"])
def test_screen_snapshot(step, snap_compare):
    app, a = _snapshot_app()

    async def before(pilot):
        app.answers = a
        if step != "Welcome":
            app.goto(step)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 40), run_before=before)




async def test_run_shows_the_data_parallel_command_for_several_gpus(tmp_path):
    a = Answers()
    a.generate.name = "my vlm"
    a.source.weights_dir = "/models/my-vlm"
    a.generate.eval_path = "/data/mme"
    app = _app(tmp_path, answers=a)
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Run")
        await pilot.pause()
        s = app.screen
        assert _text(s, "#dp-command") == ""
        s.query_one("#gpus", Input).value = "2"
        await pilot.pause()
        text = _text(s, "#dp-command")
        assert "accelerate launch --num_processes 2" in text and "-m llmc.eval.dp" in text
        assert "--model-type MyVlm" in text and "--data /data/mme" in text


async def test_a_side_task_ending_while_a_run_starts_leaves_the_runs_cancel(tmp_path):
    """A data-parallel evaluation or calibration preview that ends while a run is being started
    (no handle yet) leaves Stop enabled: the run starting needs it. Without a run it is disabled."""
    app = _app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Run")
        await pilot.pause()
        s = app.screen
        stop = s.query_one("#stop", Button)
        s.following, s.handle = True, None  # what _follow sets while start_run has not returned yet
        stop.disabled = False
        s._dp_done("data-parallel evaluation over 1 process(es): total 600.00", False)
        assert not stop.disabled
        s.following = False
        s._dp_done("calibration preview done", False, "#calib-preview")
        assert stop.disabled


async def test_install_into_the_models_own_environment_goes_on_in_it_by_keys(zoo, tmp_path):
    """enter on Install builds the model's environment for real; the app then comes back on the next
    step with that environment's Python. A later ctrl+n from Install (already built) does the same."""
    from wizard.app import Restart
    from wizard.screens import STEP_SCREENS

    a = _cloned(zoo, tmp_path, "tiny-vila")
    a.install.environment = "isolated"
    nxt = list(STEP_SCREENS)[list(STEP_SCREENS).index("Install") + 1]
    app = _app(tmp_path, zoo, a)
    async with app.run_test(size=SIZE) as pilot:
        app.goto("Install")
        await pilot.pause()
        assert app.focused is app.screen.query_one("#install", Button)
        await pilot.press("enter")
        await _until(pilot, lambda: app.return_value is not None, timeout=300)
    env = tmp_path / "envs" / "tiny-vila-code"
    assert isinstance(app.return_value, Restart) and app.return_value.python == env / "bin" / "python"
    argv = app.return_value.argv
    assert argv[argv.index("--step") + 1] == nxt
    import subprocess

    probe = subprocess.run([str(env / "bin" / "python"), "-c", "import tiny_vila, llmc.runner; print('ok')"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "ok", probe.stderr[-1000:]

    again = _app(tmp_path, zoo, load_answers(tmp_path / "answers.yml"))
    async with again.run_test(size=SIZE) as pilot:
        again.goto("Install")
        await pilot.pause()
        await pilot.press("ctrl+n")
        await pilot.pause()
    assert isinstance(again.return_value, Restart), "ctrl+n opened the next step in the wrong Python"
    assert again.return_value.argv[again.return_value.argv.index("--step") + 1] == nxt
