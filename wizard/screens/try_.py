"""Step 6 — Try: ask the float and the quantized model the same question about an image."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Input, Label, Log, Static

from .base import StepScreen
from llmc.textsafe import shown

from ..widgets.shown import ShownLog


class TryScreen(StepScreen):
    TITLE_TEXT = "Try"
    FOCUS = "#question"

    def action_primary(self) -> None:
        self.query_one("#ask", Button).press()

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Eval sample # ")
            yield Input(id="sample", type="integer", classes="narrow", value="0")
            yield Label(" or image file ")
            yield Input(id="image", placeholder="/path/to/image.png")
        with Horizontal(classes="row"):
            yield Label("Question ")
            yield Input(id="question", placeholder="(the sample's question)")
        with Horizontal(classes="row buttons"):
            yield Button("Ask both models", id="ask", variant="primary")
            yield Button("Cancel", id="cancel", variant="error", disabled=True)
        yield Static("", id="status")
        yield DataTable(id="answers")
        yield ShownLog(id="log", max_lines=200)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#answers", DataTable).add_columns("model", "answer")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        from .. import steps

        if event.button.id == "cancel":
            self.cancel_event.set()
            self.set_status("cancelling…")
            return
        image = self.query_one("#image", Input).value.strip() or None
        question = self.query_one("#question", Input).value.strip() or None
        try:
            sample = int(self.query_one("#sample", Input).value or 0)
        except ValueError:
            self.set_status("the sample number must be a whole number", error=True)
            return
        session = self.session
        self.start_step("try", lambda r: steps.ask(session, r, question, image, sample), "#ask",
                        f"asking: {question or f'the question of sample {sample}'}")

    def step_done(self, name: str, result) -> str:
        t = self.query_one("#answers", DataTable)
        t.clear()
        t.add_row("float (original)", shown(result.float_answer))
        t.add_row(f"quantized ({self.answers.generate.method} W{self.answers.generate.bit})", shown(result.quantized_answer))
        return f"asked: {result.question}" + (f" (expected: {result.expected})" if result.expected else "")
