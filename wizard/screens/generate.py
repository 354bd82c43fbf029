"""Step 4 — Generate: render adapter + config, preview, write safely, register, smoke test."""

from __future__ import annotations

from rich.console import Group
from rich.syntax import Syntax
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Log, Select, Static

from llmc.quant.methods import names as method_names
from llmc.quant.methods import suggested as suggested_method

from ..services.answers import group_size_from_text
from ..services.errors import WizardError
from ..widgets.shown import ShownLog
from .base import StepScreen


#: where the decoder blocks live while quantizing and evaluating
PLACEMENT_CHOICES = [("blocks: one device", "single"), ("blocks: offload to CPU", "offload"),
                     ("blocks: spread over GPUs", "auto")]
#: activation bits offered (0: 16-bit, no activation quantization)
ACT_CHOICES = [("activations: 16-bit", 0), ("activations: 8-bit", 8), ("activations: 4-bit", 4)]
#: how each weight group's range is chosen (AWQ searches its own clip and takes min-max)
RANGE_CHOICES = [("ranges: min-max", "minmax"), ("ranges: MSE search", "mse")]
#: GPTQ: where each layer's Hessian comes from
HESSIAN_CHOICES = [("GPTQ: true-sequential", "sequential"), ("GPTQ: Hessians from the float block", "float")]


class GenerateScreen(StepScreen):
    TITLE_TEXT = "Generate"
    FOCUS = "#name"
    STEP_HELP = ("[b]Generate[/b]: Preview → Write → Smoke test\n"
                 "  enter      Preview (from any field); then enter on Write, then on Smoke test\n"
                 "  ctrl+g     Write the previewed declaration and config\n"
                 "  ctrl+l     Smoke test the written declaration")
    # keys no text field uses (its ctrl+w / ctrl+e edit the text)
    BINDINGS = [*StepScreen.BINDINGS, Binding("ctrl+g", "press('#write')", "Write"),
                Binding("ctrl+l", "press('#smoke')", "Smoke test")]

    def action_press(self, selector: str) -> None:
        b = self.query_one(selector, Button)
        if not b.disabled:
            b.press()

    def action_primary(self) -> None:
        self.query_one("#preview", Button).press()

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Name ")
            yield Input(placeholder="my-vlm", id="name")
        with Horizontal(classes="row"):
            yield Select([(m, m) for m in method_names()], id="method", allow_blank=False,
                         value=suggested_method())
            yield Label(" bits ")
            yield Input(id="bit", type="integer", classes="narrow", placeholder="bits")
            yield Label(" group ")
            yield Input(id="group", type="integer", classes="narrow", placeholder="0: per channel")
            yield Select([("no rotation", "none"), ("rotate: Hadamard", "hadamard"), ("rotate: random", "random")],
                         id="rotate", allow_blank=False, value="none")
        with Horizontal(classes="row"):
            yield Select(ACT_CHOICES, id="act", allow_blank=False, value=0)
            yield Select([("no export", "none"), ("export: vLLM (compressed-tensors)", "vllm"),
                          ("export: AutoAWQ", "autoawq")], id="export", allow_blank=False, value="none")
            yield Select(PLACEMENT_CHOICES, id="placement", allow_blank=False, value="single")
        with Horizontal(classes="row"):
            yield Select(RANGE_CHOICES, id="ranges", allow_blank=False, value="minmax")
            yield Select(HESSIAN_CHOICES, id="hessians", allow_blank=False, value="sequential")
        with Horizontal(classes="row buttons"):
            yield Button("Preview", id="preview", variant="primary")
            yield Button("Write", id="write", variant="success", disabled=True)
            yield Button("Smoke test", id="smoke", disabled=True)
            yield Button("Cancel", id="cancel", variant="error", disabled=True)
        yield Static("", id="status")
        yield Static("", id="preview-code")
        yield ShownLog(id="log", max_lines=500)

    def on_mount(self) -> None:
        super().on_mount()
        g = self.answers.generate
        self.query_one("#name", Input).value = g.name or ""
        self.query_one("#method", Select).value = g.method
        self.query_one("#bit", Input).value = str(g.bit)
        self.query_one("#group", Input).value = str(g.group_size or "")
        self.query_one("#rotate", Select).value = g.rotate or "none"
        act = self.query_one("#act", Select)
        if g.act_bit and g.act_bit not in {bits for _, bits in ACT_CHOICES}:  # from an answers file
            act.set_options([*ACT_CHOICES, (f"activations: {g.act_bit}-bit", g.act_bit)])
        act.value = g.act_bit or 0
        self.query_one("#export", Select).value = g.export or "none"
        self.query_one("#placement", Select).value = g.placement
        self.query_one("#ranges", Select).value = g.calib_algo
        self.query_one("#hessians", Select).value = "sequential" if g.true_sequential else "float"
        self._show_method_options()
        if not self.query_one("#ranges", Select).display and g.calib_algo != "minmax":  # from an answers file
            self.set_status(f"{g.method} searches its own ranges: the answers' calib_algo: mse does not apply; "
                            "min-max ranges are used (choose another method for the MSE search)")
        self.plan = None

    def _show_method_options(self) -> None:
        """Offer only what the chosen method uses (its capabilities in llmc's registry): a range
        search where the method does not search its own, the Hessians' inputs where it has Hessians."""
        from llmc.quant.methods import spec

        method = spec(self.query_one("#method", Select).value)
        self.query_one("#ranges", Select).display = method.range_search
        self.query_one("#hessians", Select).display = method.hessians

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "method":
            self._show_method_options()
        self._sync_form()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._sync_form()

    def _sync_form(self) -> None:
        """Keep the answers equal to the form (what the steps read), as far as it is valid."""
        if not self.is_mounted:
            return
        try:
            self._read_form()
        except (ValueError, WizardError):
            return  # a half-typed number: the Preview reports it
        self.refresh_answers()

    def _read_form(self) -> None:
        g = self.answers.generate
        g.name = self.query_one("#name", Input).value.strip() or None
        g.method = self.query_one("#method", Select).value
        g.bit = int(self.query_one("#bit", Input).value or 4)
        g.group_size = group_size_from_text(self.query_one("#group", Input).value)  # empty: per channel
        rot = self.query_one("#rotate", Select).value
        g.rotate = None if rot == "none" else rot
        g.act_bit = self.query_one("#act", Select).value or None
        export = self.query_one("#export", Select).value
        g.export = None if export == "none" else export
        g.placement = self.query_one("#placement", Select).value
        # a hidden choice does not apply (_show_method_options decides): min-max ranges, true-sequential
        ranges, hessians = self.query_one("#ranges", Select), self.query_one("#hessians", Select)
        g.calib_algo = ranges.value if ranges.display else "minmax"
        g.true_sequential = not hessians.display or hessians.value == "sequential"

    def on_button_pressed(self, event: Button.Pressed) -> None:
        from .. import steps

        if event.button.id == "preview":
            try:
                self._read_form()
                self.plan = steps.plan(self.session)
            except (WizardError, ValueError) as e:
                self.set_status(str(e), error=True)
                self.query_one("#write", Button).disabled = True
                return
            self.query_one("#preview-code", Static).update(Group(
                f"[b]{self.plan.adapter_path}[/b]",
                Syntax(self.plan.adapter_text, "python", line_numbers=True, word_wrap=False),
                f"[b]{self.plan.config_path}[/b]",
                Syntax(self.plan.config_text, "yaml", line_numbers=True, word_wrap=False)))
            self.set_status(f"preview of {self.plan.adapter_path.name} and {self.plan.config_path.name} — "
                            "enter writes them")
            self.query_one("#write", Button).disabled = False
            self.query_one("#write", Button).focus()  # the next thing to do, one key away
            self.refresh_answers()
        elif event.button.id == "write" and self.plan is not None:
            session = self.session

            def write(r):
                plan = steps.generate(session, r)
                steps.register(session, r)
                return plan

            self.start_step("generate", write, "#write", "writing…")
        elif event.button.id == "smoke" and self.plan is not None:
            for b in ("#preview", "#write"):  # the child imports the written declaration: leave it alone
                self.query_one(b, Button).disabled = True
            session = self.session
            self.start_step("smoke", lambda r: steps.smoke(session, r), "#smoke",
                            "smoke test: import, build, one calibration sample, one eval sample…")
        elif event.button.id == "cancel":
            self.cancel_event.set()
            self.set_status("cancelling…")

    def step_done(self, name: str, result) -> str:
        if name == "generate":
            self.plan = result
            self.query_one("#smoke", Button).disabled = False
            return f"wrote {result.adapter_path.name} and {result.config_path.name}"
        return f"smoke test passed: answered {result.answer!r} (expected {result.expected!r})"

    def work_finished(self, start_id: str, text: str, error: bool) -> None:
        super().work_finished(start_id, text, error)
        self.query_one("#preview", Button).disabled = False
        self.query_one("#write", Button).disabled = self.plan is None
        if start_id == "#write" and not error:  # written: the smoke test is next, one key away
            self.query_one("#smoke", Button).focus()
