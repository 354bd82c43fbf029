"""Step 4 — Generate: render adapter + config, preview, write safely, register, smoke test."""

from __future__ import annotations

from pathlib import Path

from rich.syntax import Syntax
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Log, Select, Static

from ..services.errors import WizardError
from .base import StepScreen


#: where the decoder blocks live while quantizing and evaluating
PLACEMENT_CHOICES = [("blocks: one device", "single"), ("blocks: offload to CPU", "offload"),
                     ("blocks: spread over GPUs", "auto")]
#: activation bits offered (0: 16-bit, no activation quantization)
ACT_CHOICES = [("activations: 16-bit", 0), ("activations: 8-bit", 8), ("activations: 4-bit", 4)]


class GenerateScreen(StepScreen):
    TITLE_TEXT = "Generate"

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Name ")
            yield Input(placeholder="my-vlm", id="name")
        with Horizontal(classes="row"):
            yield Select([(m, m) for m in ("RTN", "Awq", "GPTQ", "SmoothQuant", "Quarot")], id="method",
                         allow_blank=False, value="Awq")
            yield Input(id="bit", type="integer", classes="narrow", placeholder="bits")
            yield Input(id="group", type="integer", classes="narrow", placeholder="group")
            yield Select([("no rotation", "none"), ("rotate: Hadamard", "hadamard"), ("rotate: random", "random")],
                         id="rotate", allow_blank=False, value="none")
        with Horizontal(classes="row"):
            yield Select(ACT_CHOICES, id="act", allow_blank=False, value=0)
            yield Select([("no export", "none"), ("export: vLLM (compressed-tensors)", "vllm"),
                          ("export: AutoAWQ", "autoawq")], id="export", allow_blank=False, value="none")
            yield Select(PLACEMENT_CHOICES, id="placement", allow_blank=False, value="single")
        with Horizontal(classes="row buttons"):
            yield Button("Preview", id="preview", variant="primary")
            yield Button("Write + register", id="write", variant="success", disabled=True)
            yield Button("Smoke test", id="smoke", disabled=True)
            yield Button("Cancel", id="cancel", variant="error", disabled=True)
        yield Static("", id="status")
        yield Static("", id="preview-code")
        yield Log(id="log", max_lines=500)

    def on_mount(self) -> None:
        super().on_mount()
        g = self.answers.generate
        self.query_one("#name", Input).value = g.name or ""
        self.query_one("#method", Select).value = g.method
        self.query_one("#bit", Input).value = str(g.bit)
        self.query_one("#group", Input).value = str(g.group_size)
        self.query_one("#rotate", Select).value = g.rotate or "none"
        act = self.query_one("#act", Select)
        if g.act_bit and g.act_bit not in {bits for _, bits in ACT_CHOICES}:  # from an answers file
            act.set_options([*ACT_CHOICES, (f"activations: {g.act_bit}-bit", g.act_bit)])
        act.value = g.act_bit or 0
        self.query_one("#export", Select).value = g.export or "none"
        self.query_one("#placement", Select).value = g.placement
        self.plan = None

    def _read_form(self) -> None:
        g = self.answers.generate
        g.name = self.query_one("#name", Input).value.strip() or None
        g.method = self.query_one("#method", Select).value
        g.bit = int(self.query_one("#bit", Input).value or 4)
        g.group_size = int(self.query_one("#group", Input).value or 32)
        rot = self.query_one("#rotate", Select).value
        g.rotate = None if rot == "none" else rot
        g.act_bit = self.query_one("#act", Select).value or None
        export = self.query_one("#export", Select).value
        g.export = None if export == "none" else export
        g.placement = self.query_one("#placement", Select).value

    def on_button_pressed(self, event: Button.Pressed) -> None:
        from ..services import render

        if event.button.id == "preview":
            try:
                self._read_form()
                self.plan = render.plan(self.answers, self.app.models_dir_resolved(), self.app.workdir / "configs")
            except (WizardError, ValueError) as e:
                self.set_status(str(e), error=True)
                self.query_one("#write", Button).disabled = True
                return
            self.query_one("#preview-code", Static).update(
                Syntax(self.plan.adapter_text, "python", line_numbers=True, word_wrap=False))
            self.set_status(f"preview of {self.plan.adapter_path} and {self.plan.config_path.name}")
            self.query_one("#write", Button).disabled = False
            self.refresh_answers()
        elif event.button.id == "write" and self.plan is not None:
            from ..services.register import register_adapter

            log = self.query_one("#log", Log)
            for r in render.write(self.plan, self.answers):
                log.write_line(f"{r.path}: {r.action}" + (f" (backup {r.backup})" if r.backup else ""))
                if r.diff and r.action == "replaced-edited":
                    log.write_lines(r.diff.splitlines())
            model_type = register_adapter(self.plan.module, self.app.models_dir_resolved(), self.plan.model_type)
            log.write_line(f"the engine finds {model_type} in {self.app.models_dir_resolved()}")
            self.set_status(f"wrote {self.plan.adapter_path.name} and {self.plan.config_path.name}")
            self.query_one("#smoke", Button).disabled = False
            self.app.save_answers()
        elif event.button.id == "smoke" and self.plan is not None:
            self.work_started("#smoke", "smoke test: import, build, one calibration sample, one eval sample…")
            for b in ("#preview", "#write"):  # the child imports the written adapter: leave it alone
                self.query_one(b, Button).disabled = True
            self.smoke_worker()
        elif event.button.id == "cancel":
            self.cancel_event.set()
            self.set_status("cancelling…")

    @work(thread=True, exclusive=True, exit_on_error=False)
    def smoke_worker(self) -> None:
        from ..services.smoke import smoke_test_in_child

        g = self.answers.generate
        log = self.query_one("#log", Log)
        try:
            # a child process, so that Cancel stops a model load or a forward pass mid-way
            rep = smoke_test_in_child(
                self.plan.module, self.plan.model_type, Path(self.answers.source.weights_dir),
                Path(g.calib_path) if g.calib_path else None, Path(g.eval_path) if g.eval_path else None,
                models_dir=self.app.models_dir_resolved(), log=lambda m: self.app.call_from_thread(log.write_line, m),
                cancelled=self._stopping, on_start=self._child_started)
            self.app.call_from_thread(self.work_finished, "#smoke", f"smoke test passed: answered {rep.answer!r} "
                                      f"(expected {rep.expected!r})", False)
        except WizardError as e:
            self.app.call_from_thread(self.work_finished, "#smoke", str(e), True)
        except Exception as e:  # noqa: BLE001 - shown to the user
            self.app.call_from_thread(self.work_finished, "#smoke", f"smoke test failed: {type(e).__name__}: {e}", True)

    def work_finished(self, start_id: str, text: str, error: bool) -> None:
        super().work_finished(start_id, text, error)
        self.query_one("#preview", Button).disabled = False
        self.query_one("#write", Button).disabled = self.plan is None
