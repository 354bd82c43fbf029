"""Step 1 — Source: clone (or fetch) the weights and the code, pin the code's commit."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Log, ProgressBar, Static

from .base import StepScreen
from ..widgets.shown import ShownLog


class SourceScreen(StepScreen):
    TITLE_TEXT = "Source"
    FOCUS = "#weights"

    def action_primary(self) -> None:
        if not self.query_one("#clone", Button).disabled:
            self.start_clone()

    def compose_body(self) -> ComposeResult:
        yield Label("Weights repository (URL or local path)")
        yield Input(placeholder="https://huggingface.co/org/model or /path/to/repo", id="weights")
        yield Label("Code repository (optional: custom-code models) and commit to pin")
        with Horizontal(classes="row"):
            yield Input(placeholder="https://github.com/org/code or /path", id="code")
            yield Input(placeholder="commit / tag (optional)", id="commit", classes="narrow")
        with Horizontal(classes="row buttons"):
            yield Button("Clone / fetch", id="clone", variant="primary")
            yield Button("Cancel", id="cancel", variant="error", disabled=True)
        yield ProgressBar(id="progress", show_eta=False, classes="idle")
        yield Static("", id="status")
        yield ShownLog(id="log", max_lines=500)

    def on_mount(self) -> None:
        super().on_mount()
        src = self.answers.source
        self.query_one("#weights", Input).value = src.weights_url or ""
        self.query_one("#code", Input).value = src.code_url or ""
        self.query_one("#commit", Input).value = src.code_commit or ""

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "clone":
            self.start_clone()
        elif event.button.id == "cancel":
            self.cancel_event.set()
            self.set_status("cancelling…")

    def start_clone(self) -> None:
        from .. import steps

        weights = self.query_one("#weights", Input).value.strip()
        if not weights:
            self.set_status("Weights repository is empty — enter a URL or a local path.", error=True)
            return
        if self.app.adopt_weights(weights):  # another model's answers were loaded: never write over them
            self.notify(f"new model: its answers go to {self.app.session.answers_path}")
        src = self.answers.source
        src.weights_url = weights
        src.code_url = self.query_one("#code", Input).value.strip() or None
        src.code_commit = self.query_one("#commit", Input).value.strip() or None
        session = self.session
        self.start_step("fetch", lambda r: steps.fetch(session, r), "#clone", "cloning…")

    def step_done(self, name: str, result) -> str:
        return result.summary()

    def step_progress(self, done, total, message) -> None:
        bar = self.query_one("#progress", ProgressBar)
        bar.remove_class("idle")
        if total:
            bar.update(total=float(total), progress=float(done or 0))
        if message:
            self.query_one("#log", Log).write_line(message)
