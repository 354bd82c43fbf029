"""Shared layout of the step screens: step bar, body, the current answers, footer."""

from __future__ import annotations

import threading

import yaml
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Log, ProgressBar, Static
from textual.worker import Worker, WorkerState

from ..steptable import SCREENS as STEP_TITLES

#: columns from which the answers panel is shown until ctrl+t says otherwise: below, the panel's 30
#: columns would push a step's buttons past the body's right edge
WIDE_ENOUGH = 100


def step_bar(current: str) -> str:
    parts = []
    for i, t in enumerate(STEP_TITLES, 1):
        parts.append(f"[reverse b] ● {i} {t} [/]" if t == current else f" {i} {t} ")
    return " ▸ ".join(parts)


KEYS_HELP = """[b]Keys[/b]

  enter      run this step (in a field: the step's main action; on Run
             it only takes the settings: enter on the Run button starts)
  ctrl+n     next step            ctrl+b   previous step
  ctrl+o     back to the welcome screen (switch models; new weights on
             Source start a new model with answers of its own)
  ctrl+s     save the answers     ctrl+t   show / hide the answers panel
  escape     cancel the work in progress (on Run: the run; ctrl+x too)
  tab        next field           shift+tab  previous field
  f1 or ?    this help (? outside text fields)
  ctrl+q     quit (asks first while a run is in progress)

[dim]escape, f1 or ? closes this help[/dim]"""


class HelpScreen(ModalScreen):
    """The key overlay (``?``)."""

    BINDINGS = [Binding("escape,question_mark,f1,q", "app.pop_screen", "Close")]

    def __init__(self, step_help: str = ""):
        super().__init__()
        self.step_help = step_help

    def compose(self) -> ComposeResult:
        yield Static(KEYS_HELP + (f"\n\n{self.step_help}" if self.step_help else ""), id="help-text")


class StepScreen(Screen):
    """A wizard step. Subclasses implement ``compose_body``, name their main input
    (:attr:`FOCUS`, focused on entry and after every action) and their main action
    (:meth:`action_primary`, run by enter), and may override ``on_enter``."""

    #: this step's own keys and order of work, shown under the common keys (f1)
    STEP_HELP = ""

    TITLE_TEXT = ""
    #: the widget focused when the step opens and after each action
    FOCUS = ""
    BINDINGS = [
        Binding("ctrl+n", "next", "Next"),
        Binding("ctrl+b", "back", "Back"),
        Binding("ctrl+q", "app.quit", "Quit"),
        Binding("f1,question_mark", "help", "Keys"),
        Binding("ctrl+o", "welcome", "Welcome"),
        Binding("ctrl+t", "toggle_answers", "Answers"),
        Binding("ctrl+s", "save", "Save answers", show=False),
        Binding("escape", "cancel", "Cancel work", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.cancel_event = threading.Event()
        #: the child process doing this step's work (smoke test, answers, evaluation), once started
        self.child_pid: int | None = None
        self._start_ids: dict[str, str] = {}

    @property
    def session(self):
        return self.app.session

    @property
    def answers(self):
        return self.app.answers

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(step_bar(self.TITLE_TEXT), id="stepbar")
        with Horizontal(id="main"):
            with VerticalScroll(id="body"):
                yield from self.compose_body()
            with Vertical(id="side"):
                yield Static("[b]answers[/b]", id="side-title")
                yield Static("", id="answers-view")
        yield Footer()

    def compose_body(self) -> ComposeResult:  # pragma: no cover - abstract
        yield from ()

    def on_mount(self) -> None:
        self._show_side()
        self.refresh_answers()
        self.focus_main()

    def on_resize(self) -> None:
        self._show_side()

    def _show_side(self) -> None:
        """The answers panel as ctrl+t last left it on any step, else by the terminal's width."""
        chosen = getattr(self.app, "show_answers", None)
        self.query_one("#side").display = self.app.size.width >= WIDE_ENOUGH if chosen is None else chosen

    def on_screen_resume(self) -> None:
        self._show_side()
        self.refresh_answers()
        self.on_enter()
        self.focus_main()

    def focus_main(self) -> None:
        """Focus the step's main input (or its first enabled button)."""
        if not self.FOCUS:
            return
        try:
            w = self.query_one(self.FOCUS)
        except NoMatches:
            return
        if not w.disabled:
            w.focus()

    def action_primary(self) -> None:
        """The step's main action (enter)."""

    def on_input_submitted(self, event) -> None:
        event.stop()
        self.action_primary()

    def on_enter(self) -> None:
        """Called each time the screen becomes current."""

    def refresh_answers(self) -> None:
        data = self.answers.redacted().model_dump(mode="json", exclude_none=True)
        self.query_one("#answers-view", Static).update(yaml.safe_dump(data, sort_keys=False, width=40))

    def set_status(self, text: str, error: bool = False, widget_id: str = "#status") -> None:
        w = self.query_one(widget_id, Static)
        w.update(text)
        w.set_class(error, "error")

    def _set_disabled(self, selector: str, value: bool) -> None:
        try:
            self.query_one(selector).disabled = value
        except NoMatches:
            pass

    def work_started(self, start_id: str, status: str) -> None:
        """Disable the start button, enable Cancel, clear the cancel flag."""
        self.cancel_event.clear()
        self._set_disabled(start_id, True)
        self._set_disabled("#cancel", False)
        self.set_status(status)

    def work_finished(self, start_id: str, text: str, error: bool) -> None:
        """Re-enable the start button, disable Cancel, report, save the answers."""
        self._set_disabled(start_id, False)
        self._set_disabled("#cancel", True)
        for bar in self.query(ProgressBar):  # finished work does not animate
            bar.add_class("idle")
        self.set_status(text, error=error)
        self.refresh_answers()
        self.app.save_answers()
        self.focus_main()

    # running a step of wizard.steps ----------------------------------------------------------
    def reporter(self, worker_box: list | None = None):
        """A :class:`wizard.steps.Reporter` for a worker thread: log lines to ``#log``, progress to
        :meth:`step_progress`, cancel from the Cancel button or the worker's cancellation (the app
        shutting down) — asked from any thread, the step's helpers' too."""
        from ..steps import Reporter

        box = worker_box if worker_box is not None else []

        def cancelled() -> bool:
            return self.cancel_event.is_set() or any(w.is_cancelled for w in box)

        def log(message: str) -> None:
            try:
                self.app.call_from_thread(self.query_one("#log", Log).write_lines, str(message).splitlines())
            except NoMatches:
                pass

        return Reporter(log=log, progress=lambda d, t, m: self.app.call_from_thread(self.step_progress, d, t, m),
                        cancelled=cancelled, child_started=self._child_started)

    def start_step(self, name: str, fn, start_id: str, status: str) -> None:
        """Run ``fn(reporter)`` (a step of :mod:`wizard.steps`) in a worker thread. Its result
        reaches :meth:`step_done` and is reported; any exception it raises is shown in one line."""
        self.work_started(start_id, status)
        self._start_ids[name] = start_id
        box: list = []
        reporter = self.reporter(box)
        box.append(self.run_worker(lambda: fn(reporter), name=name, group="step", thread=True, exclusive=True,
                                   exit_on_error=False))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        w = event.worker
        if w.group != "step" or w.name not in self._start_ids:
            return
        start_id = self._start_ids[w.name]
        if w.state == WorkerState.SUCCESS:
            self.work_finished(start_id, self.step_done(w.name, w.result) or f"{w.name}: done", False)
        elif w.state == WorkerState.ERROR:
            from ..services.errors import one_line_error

            self.work_finished(start_id, one_line_error(w.error), True)
            self.step_failed(w.name, w.error)
        elif w.state == WorkerState.CANCELLED:
            self.work_finished(start_id, f"{w.name}: cancelled", True)

    def step_done(self, name: str, result) -> str | None:
        """Show a step's result (main thread); returns the status line."""
        return None

    def step_failed(self, name: str, error: BaseException) -> None:
        """Hook after a step's error was shown."""

    def step_progress(self, done, total, message: str) -> None:
        """A step's progress report (main thread)."""

    # navigation -----------------------------------------------------------------------------
    def action_next(self) -> None:
        self.app.goto_step(self.TITLE_TEXT, +1)

    def action_back(self) -> None:
        self.app.goto_step(self.TITLE_TEXT, -1)

    def action_save(self) -> None:
        path = self.app.save_answers()
        self.notify(f"answers saved to {path}" if path else "no answers file: start with --answers FILE")

    def action_cancel(self) -> None:
        self.cancel_event.set()

    def action_welcome(self) -> None:
        self.app.goto_welcome()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.STEP_HELP))

    def action_toggle_answers(self) -> None:
        side = self.query_one("#side")
        side.display = not side.display
        self.app.show_answers = bool(side.display)  # every step shows it the same way until toggled again

    def _child_started(self, pid: int) -> None:
        self.child_pid = pid

    def _stopping(self) -> bool:
        """For a worker thread: Cancel was pressed, or the app is shutting its workers down."""
        from textual.worker import get_current_worker

        return self.cancel_event.is_set() or get_current_worker().is_cancelled
