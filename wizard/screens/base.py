"""Shared layout of the step screens: step bar, body, the current answers, footer."""

from __future__ import annotations

import threading

import yaml
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

STEP_TITLES = ("Source", "Install", "Inspect", "Generate", "Run", "Try")


def step_bar(current: str) -> str:
    parts = []
    for i, t in enumerate(STEP_TITLES, 1):
        parts.append(f"[reverse b] ● {i} {t} [/]" if t == current else f" {i} {t} ")
    return " ▸ ".join(parts)


class StepScreen(Screen):
    """A wizard step. Subclasses implement ``compose_body`` and may override ``on_enter``."""

    TITLE_TEXT = ""
    BINDINGS = [
        Binding("ctrl+n", "next", "Next"),
        Binding("ctrl+b", "back", "Back"),
        Binding("ctrl+s", "save", "Save answers"),
        Binding("escape", "cancel", "Cancel work", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.cancel_event = threading.Event()
        #: the child process doing this step's work (smoke test, answers, evaluation), once started
        self.child_pid: int | None = None

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
        self.refresh_answers()

    def on_screen_resume(self) -> None:
        self.refresh_answers()
        self.on_enter()

    def on_enter(self) -> None:
        """Called each time the screen becomes current."""

    def refresh_answers(self) -> None:
        data = self.answers.redacted().model_dump(mode="json", exclude_none=True)
        self.query_one("#answers-view", Static).update(yaml.safe_dump(data, sort_keys=False, width=40))

    def set_status(self, text: str, error: bool = False, widget_id: str = "#status") -> None:
        w = self.query_one(widget_id, Static)
        w.update(text)
        w.set_class(error, "error")

    def work_started(self, start_id: str, status: str) -> None:
        """Disable the start button, enable Cancel, clear the cancel flag."""
        self.cancel_event.clear()
        self.query_one(start_id).disabled = True
        self.query_one("#cancel").disabled = False
        self.set_status(status)

    def work_finished(self, start_id: str, text: str, error: bool) -> None:
        """Re-enable the start button, disable Cancel, report, save the answers."""
        self.query_one(start_id).disabled = False
        self.query_one("#cancel").disabled = True
        self.set_status(text, error=error)
        self.refresh_answers()
        self.app.save_answers()

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

    def _child_started(self, pid: int) -> None:
        self.child_pid = pid

    def _stopping(self) -> bool:
        """For a worker thread: Cancel was pressed, or the app is shutting its workers down."""
        from textual.worker import get_current_worker

        return self.cancel_event.is_set() or get_current_worker().is_cancelled
