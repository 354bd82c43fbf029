"""Step 5 — Run: launch the engine, follow its events, cancel, show original vs quantized."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Input, Label, Log, ProgressBar, Static

from ..services.errors import WizardError
from ..widgets.charts import ReportScreen, bar_lines, score_bars, score_rows
from ..services.eta import Eta
from ..widgets.shown import ShownLog
from .base import StepScreen



class RunScreen(StepScreen):
    TITLE_TEXT = "Run"
    FOCUS = "#run"

    def action_primary(self) -> None:
        self.action_run()

    def run_in_progress(self) -> int | None:
        """The pid of the engine this screen follows while it runs."""
        return self.handle.pid if getattr(self, "handle", None) is not None and self.handle.poll() is None else None
    # priority: a focused text field (where ctrl+x is "cut") never takes the cancel key
    BINDINGS = [*StepScreen.BINDINGS, Binding("ctrl+r", "run", "Run"),
                Binding("ctrl+x", "stop", "Cancel run", priority=True)]

    def on_input_submitted(self, event) -> None:
        """Enter in a field never starts a run: it asks for the Run button (enter there, or ctrl+r)."""
        event.stop()
        event.prevent_default()  # not the step's primary action of the base class
        if self.run_in_progress() is None:
            self.query_one("#run", Button).focus()
            self.set_status("Settings taken. Press enter on Run (or ctrl+r) to start the run.")

    def action_cancel(self) -> None:
        """escape: cancel the run too, whatever has the focus."""
        super().action_cancel()
        self.action_stop()

    def compose_body(self) -> ComposeResult:
        yield Static("", id="settings")
        with Horizontal(classes="row"):
            yield Label("Calibration set ")
            yield Input(id="calib", placeholder="custom_mm folder (samples.json + images)")
            yield Button("Preview", id="calib-preview")
        with Horizontal(classes="row"):
            yield Label("Evaluation set  ")
            yield Input(id="eval", placeholder="MME-format dataset folder")
            yield Input(id="eval-n", type="integer", classes="narrow", placeholder="images")
        with Horizontal(classes="row"):
            yield Label("GPUs for evaluation ")
            yield Input(id="gpus", type="integer", classes="narrow", value="1")
            yield Button("Evaluate data-parallel", id="dp-run")
        yield Static("", id="dp-command")
        with Horizontal(classes="row buttons"):
            yield Button("Run (ctrl+r)", id="run", variant="primary")
            yield Button("Cancel (ctrl+x)", id="stop", variant="error", disabled=True)
            yield Button("Reattach", id="reattach")
        yield Static("", id="phase")
        yield ProgressBar(id="phase-progress", show_eta=False, classes="idle")
        yield Static("", id="elapsed")
        yield Label("Per-block output error (every token):")
        yield Static("", id="errors")
        yield Static("", id="status")
        yield ShownLog(id="log", max_lines=2000)
        yield Label("Scores: original vs quantized")
        yield DataTable(id="scores", zebra_stripes=True)
        yield Static("", id="score-bars")
        yield Static("", id="outdir")
        with Horizontal(classes="row buttons"):
            yield Button("Open report", id="open-report", disabled=True)
        yield Label("Past runs:")
        yield DataTable(id="past", cursor_type="row")

    def on_mount(self) -> None:
        super().on_mount()
        self.handle = None
        self.t0 = None
        self.eta = Eta()
        self.block_errors: list[float] = []
        g = self.answers.generate
        self.query_one("#calib", Input).value = g.calib_path or ""
        self.query_one("#eval", Input).value = g.eval_path or ""
        self.query_one("#eval-n", Input).value = str(g.eval_samples or "")
        self.query_one("#scores", DataTable).add_columns("score", "original", "quantized", "delta")
        self.query_one("#past", DataTable).add_columns("run", "state", "command")
        self.following = False  #: a worker follows a run (started here or reattached)
        self.clock = self.set_interval(0.5, self.tick, pause=True)
        self.on_enter()

    def on_enter(self) -> None:
        g = self.answers.generate
        self.query_one("#settings", Static).update(
            f"method [b]{g.method}[/b], W{g.bit}A{g.act_bit or 16}, "
            f"group size {g.group_size or 'none (per channel)'}, device {self.app.device or 'auto'}")
        past = self.refresh_past()
        # follow this model's run in progress (started here or by another wizard) without a key press
        if not self.following and past and past[0].state == "running":
            self.reattach(past[0].run_dir)

    def _module(self) -> str | None:
        from ..services.render import module_name

        name = self.answers.generate.name
        return module_name(name) if name else None

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("gpus", "eval", "eval-n"):
            self.show_dp_command()

    def _take_eval_inputs(self) -> None:
        """The evaluation set and size typed here, into the answers (the steps read them there)."""
        g = self.answers.generate
        g.eval_path = self.query_one("#eval", Input).value.strip() or None
        n = self.query_one("#eval-n", Input).value.strip()
        g.eval_samples = int(n) if n.isdigit() and int(n) > 0 else None  # empty or 0: the whole set

    def show_dp_command(self) -> None:
        """With several GPUs, the data-parallel evaluation command (accelerate launch)."""
        from llmc.eval.dp import format_command, launch_command

        from ..runs import dp_args, quantized_model

        n = self._gpus() or 1
        target = self.query_one("#dp-command", Static)
        if n <= 1:
            target.update("")
            return
        self._take_eval_inputs()
        model = quantized_model(self.session)
        which = "the quantized model" if model else "the original model (no finished run yet)"
        cmd = launch_command(n, dp_args(self.session, model))
        target.update(f"data-parallel evaluation of {which} over {n} GPUs:\n" + format_command(cmd))

    def _gpus(self) -> int | None:
        """The GPU count typed in (empty: 1), or None when it is not a whole number."""
        try:
            return int(self.query_one("#gpus", Input).value or 1)
        except ValueError:
            return None

    def start_dp_eval(self) -> None:
        """Launch the data-parallel evaluation of the quantized model (:func:`wizard.runs.evaluate`)."""
        n = self._gpus()
        if n is None or n < 1:
            self.set_status("GPUs must be a whole number ≥ 1", error=True)
            return
        self._take_eval_inputs()
        self.cancel_event.clear()
        self.query_one("#dp-run", Button).disabled = True
        self.query_one("#stop", Button).disabled = False
        self.set_status(f"data-parallel evaluation over {n} process(es)…")
        self.dp_worker(n)

    @work(thread=True, exclusive=True, group="dp", exit_on_error=False)
    def dp_worker(self, n: int) -> None:
        from .. import steps

        log = self.query_one("#log", Log)
        r = steps.Reporter(log=lambda m: self.app.call_from_thread(log.write_line, m), cancelled=self._stopping,
                           child_started=self._child_started)
        try:
            res = steps.evaluate(self.session, r, n)
            text = (f"data-parallel evaluation over {res['world_size']} process(es): total {res['total']:.2f} "
                    f"in {res['seconds']:.1f}s (dp_eval_{n}.json)")
            self.app.call_from_thread(self._dp_done, text, False)
        except (WizardError, OSError, ValueError, KeyError) as e:
            self.app.call_from_thread(self._dp_done, str(e), True)

    def start_calib_preview(self) -> None:
        """What the model will see of the calibration set (:func:`wizard.runs.calib_preview`) in the log."""
        if self.following:  # its cancel key would be the run's
            self.set_status("a run is in progress: preview the calibration set when it has ended", error=True)
            return
        self.answers.generate.calib_path = self.query_one("#calib", Input).value.strip() or None
        self._take_eval_inputs()
        self.cancel_event.clear()
        self.query_one("#calib-preview", Button).disabled = True
        self.query_one("#stop", Button).disabled = False
        self.query_one("#log", Log).clear()
        self.set_status("previewing the calibration set (the model loads; ctrl+x cancels)…")
        self.calib_preview_worker()

    @work(thread=True, exclusive=True, group="calib-preview", exit_on_error=False)
    def calib_preview_worker(self) -> None:
        from .. import runs
        from ..reporter import Reporter

        log = self.query_one("#log", Log)
        lines: list[str] = []

        def line(m: str) -> None:
            lines.append(m)
            self.app.call_from_thread(log.write_line, m)

        try:
            runs.calib_preview(self.session, Reporter(log=line, cancelled=self._stopping,
                                                      child_started=self._child_started))
            head = next((m for m in lines if m.startswith("calibration set ")), "calibration preview done")
            warned = next((m for m in lines if m.startswith("WARNING: ")), None)
            self.app.call_from_thread(self._dp_done, warned or head, warned is not None, "#calib-preview")
        except Exception as e:  # noqa: BLE001 - one line in the status, whatever it was
            from ..services.errors import one_line_error

            text = str(e) if isinstance(e, WizardError) else one_line_error(e)
            self.app.call_from_thread(self._dp_done, text, True, "#calib-preview")

    def _dp_done(self, text: str, error: bool, button: str = "#dp-run") -> None:
        """A side task of the step ended (data-parallel evaluation, calibration preview)."""
        self.query_one(button, Button).disabled = False
        if not self.following:  # a run being started or followed keeps its cancel
            self.query_one("#stop", Button).disabled = True
        self.set_status(text, error=error)

    def refresh_past(self) -> list:
        """This model's runs, newest first (the cursor starts on the newest)."""
        from ..services.runner import list_runs

        table = self.query_one("#past", DataTable)
        table.clear()
        module = self._module()
        past = list_runs(self.session.runs_dir(), module) if module else []
        for r in past:
            table.add_row(r.run_dir.name, r.state, r.label[-80:], key=str(r.run_dir))
        return past

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"run": self.action_run, "stop": self.action_stop, "reattach": lambda: self.reattach(),
         "dp-run": self.start_dp_eval, "open-report": self.open_report,
         "calib-preview": self.start_calib_preview}[event.button.id]()

    def open_report(self) -> None:
        """The run's report (report.md, kept in the run directory) in a viewer."""
        if getattr(self, "report", None) is not None:
            self.app.push_screen(ReportScreen(self.report))

    def action_run(self) -> None:
        if self.run_in_progress() is not None or self.following:
            self.set_status("a run is already in progress", error=True)
            return
        self.answers.generate.calib_path = self.query_one("#calib", Input).value.strip() or None
        self._take_eval_inputs()
        self._follow(None)

    def reattach(self, run_dir: Path | None = None) -> None:
        """Follow the selected past run of this model (the newest unless another row is picked)."""
        from ..services import runner

        if self.following:
            self.set_status("a run is already being followed here", error=True)
            return
        table = self.query_one("#past", DataTable)
        if run_dir is not None:
            key = str(run_dir)
        elif table.row_count == 0:
            self.set_status("no past runs of this model", error=True)
            return
        else:
            key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        try:
            handle = runner.reattach(Path(key))
        except WizardError as e:
            self.set_status(str(e), error=True)
            return
        self.answers.run.run_dir = key
        self._follow(handle)

    def _follow(self, handle) -> None:
        """Start (``handle`` None) or follow a run in a worker thread, on the headless path
        (:func:`wizard.runs.start_run`, :func:`wizard.runs.follow_run`)."""
        self.following = True
        self.cancel_event.clear()
        self.query_one("#run", Button).disabled = True
        self.query_one("#stop", Button).disabled = False
        self.set_status("starting the run…" if handle is None else f"following {handle.run_dir}")
        self.follow_worker(handle)

    @work(thread=True, exclusive=True, group="run", exit_on_error=False)
    def follow_worker(self, handle) -> None:
        from textual.worker import get_current_worker

        from .. import runs
        from ..reporter import Reporter

        worker = get_current_worker()

        def call(fn, *args) -> None:
            if not worker.is_cancelled:  # the screen or the app is gone: the run goes on alone
                self.app.call_from_thread(fn, *args)

        log = self.query_one("#log", Log)
        r = Reporter(log=lambda m: call(log.write_line, m), cancelled=self.cancel_event.is_set,
                     event=lambda e: call(self.handle_engine_event, e))
        try:
            if handle is None:
                notes: list[str] = []
                handle = runs.start_run(self.session, Reporter(log=notes.append))
                call(self._following, handle, notes)
            else:
                call(self._following, handle, [])
            self.eta.history = runs.history(self.session, exclude=Path(handle.run_dir))
            results = runs.follow_run(handle, r, eta=self.eta, engine_log=True, log_table=False,
                                      detached=lambda: worker.is_cancelled)
            call(self.finish, 0, results)
        except Exception as e:  # noqa: BLE001 - whatever went wrong ends the following in one line
            from ..services.errors import one_line_error

            err = e if isinstance(e, WizardError) else WizardError(one_line_error(e))
            if handle is None:  # nothing was started
                call(self._not_started, str(err))
            else:
                call(self.finish, handle.poll(), None, err)

    def _not_started(self, error: str) -> None:
        self.following = False
        self.query_one("#run", Button).disabled = False
        self.query_one("#stop", Button).disabled = True
        self.set_status(error, error=True)

    def _following(self, handle, notes: list[str]) -> None:
        """What the screen shows when it starts following ``handle``: nothing of the previous run."""
        from ..services.eta import Eta

        self.handle = handle
        self.t0 = float(handle.started or time.time())  # a reattached run keeps its elapsed time
        self.eta = Eta()
        self.block_errors = []
        self.report = None
        self.query_one("#scores", DataTable).clear()  # nothing of the previous run stays on screen
        for wid in ("#score-bars", "#outdir", "#errors"):
            self.query_one(wid, Static).update("")
        self.query_one("#open-report", Button).disabled = True
        self.query_one("#phase", Static).update("phase: starting")
        log = self.query_one("#log", Log)
        log.clear()
        log.write_lines(notes)
        command = handle.run_dir / "command.txt"  # what the launcher ran
        if command.exists():
            log.write_line(command.read_text().strip())
        self.set_status(f"running in {handle.run_dir}")
        self.query_one("#phase-progress", ProgressBar).remove_class("idle")
        self.clock.resume()

    def action_stop(self) -> None:
        """Cancel: the following worker stops the run's process tree (and a data-parallel
        evaluation, if one runs)."""
        self.cancel_event.set()
        if self.following:
            self.set_status("cancelling the run…")

    def tick(self) -> None:
        """The elapsed time and time left, between the run's events."""
        if self.t0:
            self.query_one("#elapsed", Static).update(self._elapsed_text())

    def _elapsed_text(self) -> str:
        """Elapsed time, and the time left (:class:`wizard.services.eta.Eta`: the phase at its pace
        once it reports i of N, the phases to come from this model's past runs)."""
        return f"elapsed {time.time() - self.t0:.0f}s{self.eta.text()}"

    def handle_engine_event(self, e) -> None:
        """One typed engine event (:mod:`llmc.events`)."""
        from llmc import events as ev

        bar = self.query_one("#phase-progress", ProgressBar)
        if isinstance(e, ev.Phase) and e.state == "start":
            self.query_one("#phase", Static).update(f"phase: [b]{e.name}[/b]")
            bar.update(total=float(e.n_blocks) if e.n_blocks else None, progress=0)
        elif isinstance(e, ev.Block):
            if e.block_error is None:  # RTN without calibration data: nothing measured
                self.query_one("#errors", Static).update(f"rounded without data: {e.i + 1} of {e.n} blocks "
                                                         "(no errors measured; add calibration data to see them)")
            else:
                self.block_errors.append(float(e.block_error))
                self.query_one("#errors", Static).update(bar_lines(
                    [(f"block {i + 1}", v) for i, v in enumerate(self.block_errors)], "{:.4f}"))
            bar.update(total=float(e.n), progress=float(e.i + 1))
        elif isinstance(e, ev.EvalProgress):
            bar.update(total=float(e.total), progress=float(e.done))
        elif isinstance(e, ev.Error):
            self.set_status(f"engine error: {e.message}", error=True)
        elif isinstance(e, ev.Warned):
            self.query_one("#log", Log).write_line(f"WARNING: {e.message}")

    def finish(self, rc: int | None, data: dict | None, error: WizardError | None = None) -> None:
        """The run ended (``data``: its complete results) or following it stopped (``error``)."""
        self.following = False
        self.clock.pause()
        self.query_one("#run", Button).disabled = False
        self.query_one("#stop", Button).disabled = True
        run_dir = self.handle.run_dir
        by_cancel = error is None or error.message == "run cancelled"
        if data is None and rc is None and not by_cancel:  # following broke; the engine goes on
            self.query_one("#phase-progress", ProgressBar).add_class("idle")
            self.query_one("#phase", Static).update("phase: not followed")
            self.set_status(f"stopped following the run in {run_dir}: {error} — it goes on; Reattach follows it",
                            error=True)
            self.refresh_past()
            return
        cancelled = data is None and (rc is None or rc == 130 or rc < 0)
        self.query_one("#phase-progress", ProgressBar).add_class("idle")  # nothing is in progress any more
        self.query_one("#phase", Static).update(
            "phase: finished" if data is not None else ("phase: cancelled" if cancelled else "phase: failed"))
        if self.t0:
            self.query_one("#elapsed", Static).update(f"elapsed {time.time() - self.t0:.0f}s (finished)")
        if data is not None:
            table = self.query_one("#scores", DataTable)
            table.clear()
            for row in score_rows(data):
                table.add_row(*row)
            self.query_one("#score-bars", Static).update(score_bars(data))
            out = data.get("saved_fake") or str(run_dir)
            self.query_one("#outdir", Static).update(f"output: {out}")
            self.report = run_dir / "report.md" if (run_dir / "report.md").exists() else None
            self.query_one("#open-report", Button).disabled = self.report is None
            self.set_status(f"done in {data['timings']['total']:.1f}s — {data['label']}")
        elif cancelled:
            self.set_status("run cancelled" + (f" ({run_dir} stays as it is)" if rc is None else ""), error=True)
        else:
            if error is not None:
                self.query_one("#log", Log).write_line(error.message)
            self.set_status(f"run failed (exit {rc}); see {run_dir / 'process.log'}", error=True)
        self.refresh_past()
        self.app.save_answers()
