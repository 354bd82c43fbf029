"""Step 6 — Try: ask the float and the quantized model the same question about an image."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Input, Label, Log, Static

from ..services.errors import WizardError
from .base import StepScreen


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
        yield Log(id="log", max_lines=200)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#answers", DataTable).add_columns("model", "answer")

    def _saved_model(self) -> Path:
        from llmc.rundir import complete_results

        run_dir = self.answers.run.run_dir
        res = complete_results(run_dir) if run_dir else None  # only a complete run (its marker) counts
        if res is None:
            raise WizardError("no finished run", "run the quantization in the Run step first")
        if not res.get("saved_fake"):
            raise WizardError("the run saved no quantized model", "set save_fake: true (the default) and run again")
        return Path(res["saved_fake"])

    def on_button_pressed(self, event: Button.Pressed) -> None:
        from PIL import Image

        if event.button.id == "cancel":
            self.cancel_event.set()
            self.set_status("cancelling…")
            return
        try:
            quant_dir = self._saved_model()
            image_path = self.query_one("#image", Input).value.strip()
            question = self.query_one("#question", Input).value.strip()
            expected = None
            if image_path:
                if not Path(image_path).exists():
                    raise WizardError(f"image {image_path} not found", "enter an existing image file")
                image = Image.open(image_path).convert("RGB")
            else:
                from llmc.eval.mme import load_dataset

                g = self.answers.generate
                if not g.eval_path:
                    raise WizardError("no evaluation set", "enter an image file or an evaluation set in the Run step")
                ds = load_dataset(Path(g.eval_path))
                i = int(self.query_one("#sample", Input).value or 0)
                if not 0 <= i < len(ds):
                    raise WizardError(f"sample {i} out of range", f"choose 0..{len(ds) - 1}")
                row = ds[i]
                image, question, expected = row["image"], question or row["question"], row["answer"]
            if not question:
                raise WizardError("no question", "type a question")
        except WizardError as e:
            self.set_status(str(e), error=True)
            return
        self._asked = f"{question}" + (f" (expected: {expected})" if expected else "")
        self.work_started("#ask", f"asking: {self._asked}")
        self.ask_worker(quant_dir, image, question)

    @work(thread=True, exclusive=True, exit_on_error=False)
    def ask_worker(self, quant_dir: Path, image, question: str) -> None:
        from ..services.ask import compare_answers_in_child

        plan_type = self._model_type()
        log = self.query_one("#log", Log)
        try:
            # a child process, so that Cancel stops the two model loads mid-way
            a, b = compare_answers_in_child(
                plan_type, Path(self.answers.source.weights_dir), quant_dir, image, question,
                self.app.device or "cpu", self.app.models_dir_resolved(),
                log=lambda m: self.app.call_from_thread(log.write_line, m),
                cancelled=self._stopping, on_start=self._child_started)
        except WizardError as e:
            self.app.call_from_thread(self.work_finished, "#ask", str(e), True)
            return
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.app.call_from_thread(self.work_finished, "#ask", f"failed: {type(e).__name__}: {e}", True)
            return
        self.app.call_from_thread(self._show, a, b)

    def _model_type(self) -> str:
        from ..services.render import class_name

        g = self.answers.generate
        return class_name(g.class_name or g.name or "model")

    def _show(self, a: str, b: str) -> None:
        t = self.query_one("#answers", DataTable)
        t.clear()
        t.add_row("float (original)", a)
        t.add_row(f"quantized ({self.answers.generate.method} W{self.answers.generate.bit})", b)
        self.work_finished("#ask", f"asked: {self._asked}", False)
