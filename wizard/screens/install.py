"""Step 2 — Install: pip-install the model's code (custom-code models), after confirmation."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Checkbox, Input, Label, Log, Static

from ..services.errors import WizardError
from ..widgets.marks import Tickbox
from ..widgets.shown import ShownLog
from .base import StepScreen


class InstallScreen(StepScreen):
    TITLE_TEXT = "Install"
    FOCUS = "#install"

    def action_primary(self) -> None:
        button = self.query_one("#install", Button)
        if not button.disabled:
            button.press()

    def compose_body(self) -> ComposeResult:
        yield Static("", id="detect")
        with Horizontal(classes="row", id="install-options"):
            yield Tickbox("--no-deps", id="no-deps")
            yield Input(placeholder="extra packages, space separated", id="extra")
        yield Label("Command (runs code from the cloned repository — review it first):", id="command-label")
        yield Static("", id="command")
        with Horizontal(classes="row buttons"):
            yield Button("Confirm and install", id="install", variant="warning")
            yield Button("Cancel", id="cancel", variant="error", disabled=True)
        yield Static("", id="status")
        yield ShownLog(id="log", max_lines=1000)

    def on_mount(self) -> None:
        super().on_mount()
        ins = self.answers.install
        self.query_one("#no-deps", Checkbox).value = ins.no_deps
        self.query_one("#extra", Input).value = " ".join(ins.extra_packages)
        self.on_enter()

    def on_enter(self) -> None:
        from .. import steps

        button = self.query_one("#install", Button)
        src = self.answers.source
        if not src.weights_dir or not Path(src.weights_dir).exists():
            self.query_one("#detect", Static).update("No weights yet — clone them in the Source step.")
            button.disabled = True
            return
        try:
            plan = steps.install_plan(self.session)
        except WizardError as e:
            self.query_one("#detect", Static).update("[yellow]Custom code[/]")
            self.query_one("#command", Static).update(str(e))
            button.disabled = True
            return
        self.answers.inspect.model_kind = "custom-code" if plan.needed else "transformers"
        for wid in ("#install", "#install-options", "#command-label", "#command"):  # nothing to offer then
            self.query_one(wid).display = plan.needed
        if not plan.needed:
            self.query_one("#detect", Static).update(f"[green]No install needed[/]: {plan.reason} — "
                                                     "ctrl+n goes on to Inspect")
            button.disabled = True
            return
        self.query_one("#detect", Static).update(f"[yellow]Custom code[/]: {plan.reason}")
        agreed = " (you agreed to install this code at this commit)" if plan.consented else ""
        pins = ""
        if plan.conflicts:
            how = ("installed without dependencies, these stay as they are:" if self.answers.install.no_deps
                   else f"so it gets an environment of its own ({plan.env_dir}), over this one, with them "
                   "(relaxed: " + ", ".join(self.answers.install.effective_relax()) + "):" if plan.isolated
                   else "with its dependencies they would be replaced (tick no-deps):")
            pins = "\n[yellow]The code pins versions this environment does not have[/] — " + escape(how) \
                + "".join(f"\n  {escape(c)}" for c in plan.conflicts)
        self.query_one("#command", Static).update(escape(" ".join(plan.command) + agreed) + pins)
        button.disabled = False

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.answers.install.no_deps = event.value
        self.on_enter()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "extra":
            self.answers.install.extra_packages = event.input.value.split()
            self.on_enter()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        from .. import steps

        if event.button.id == "install":
            steps.consent(self.session)  # pressing the button is the consent, for exactly this command
            session = self.session
            self.start_step("install", lambda r: steps.install(session, r), "#install", "installing…")
        elif event.button.id == "cancel":
            self.cancel_event.set()
            self.set_status("cancelling…")

    def step_done(self, name: str, result) -> str:
        if result.needed and result.isolated and not self.session.in_model_env():
            self.app.goto_step(self.TITLE_TEXT, +1)  # the next step imports the code: it restarts in there
        return f"installed in {result.seconds:.1f}s" if result.needed else "no install needed"
