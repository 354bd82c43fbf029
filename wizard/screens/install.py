"""Step 2 — Install: pip-install the model's code (custom-code models), after confirmation."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Checkbox, Input, Label, Log, Static

from ..services.errors import WizardError
from .base import StepScreen


class InstallScreen(StepScreen):
    TITLE_TEXT = "Install"

    def compose_body(self) -> ComposeResult:
        yield Static("", id="detect")
        with Horizontal(classes="row"):
            yield Checkbox("--no-deps", id="no-deps")
            yield Input(placeholder="extra packages, space separated", id="extra")
        yield Label("Command (runs code from the cloned repository — review it first):")
        yield Static("", id="command")
        with Horizontal(classes="row buttons"):
            yield Button("Confirm and install", id="install", variant="warning")
            yield Button("Cancel", id="cancel", variant="error", disabled=True)
        yield Static("", id="status")
        yield Log(id="log", max_lines=1000)

    def on_mount(self) -> None:
        super().on_mount()
        ins = self.answers.install
        self.query_one("#no-deps", Checkbox).value = ins.no_deps
        self.query_one("#extra", Input).value = " ".join(ins.extra_packages)
        self.on_enter()

    def on_enter(self) -> None:
        from ..services.install import describe_install, detect_install_needed

        src, ins = self.answers.source, self.answers.install
        button = self.query_one("#install", Button)
        if not src.weights_dir or not Path(src.weights_dir).exists():
            self.query_one("#detect", Static).update("No weights yet — clone them in the Source step.")
            button.disabled = True
            return
        needed, reason = detect_install_needed(Path(src.weights_dir))
        if ins.needed is not None:
            needed = ins.needed
        self.answers.inspect.model_kind = "custom-code" if needed else "transformers"
        if not needed:
            self.query_one("#detect", Static).update(f"[green]No install needed[/]: {reason}")
            self.query_one("#command", Static).update("(skipped)")
            button.disabled = True
            return
        self.query_one("#detect", Static).update(f"[yellow]Custom code[/]: {reason}")
        if not src.code_dir:
            self.query_one("#command", Static).update("No code repository cloned — add it in the Source step.")
            button.disabled = True
            return
        from ..services.answers import redact

        cmd = describe_install(Path(src.code_dir), editable=ins.editable, no_deps=self._no_deps(),
                               extra=self._extra(), target=self.app.install_target)
        self.query_one("#command", Static).update(redact(" ".join(cmd)))
        button.disabled = False

    def _no_deps(self) -> bool:
        return self.query_one("#no-deps", Checkbox).value

    def _extra(self) -> list[str]:
        return self.query_one("#extra", Input).value.split()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.answers.install.no_deps = event.value
        self.on_enter()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "extra":
            self.answers.install.extra_packages = self._extra()
            self.on_enter()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "install":
            self.answers.install.consent = self.answers.install.consent_for(self.answers.source)
            self.work_started("#install", "installing…")
            self.install_worker()
        elif event.button.id == "cancel":
            self.cancel_event.set()
            self.set_status("cancelling…")

    @work(thread=True, exclusive=True, exit_on_error=False)
    def install_worker(self) -> None:
        from ..services.install import activate_installed, pip_install

        src, ins = self.answers.source, self.answers.install
        log = self.query_one("#log", Log)
        try:
            res = pip_install(Path(src.code_dir), editable=ins.editable, no_deps=ins.no_deps,
                              extra=ins.extra_packages, target=self.app.install_target,
                              on_line=lambda line: self.app.call_from_thread(log.write_line, line),
                              cancelled=self.cancel_event.is_set)
            activate_installed(self.app.install_target)
            self.app.call_from_thread(self.work_finished, "#install", f"installed in {res.seconds:.1f}s", False)
        except WizardError as e:
            self.app.call_from_thread(self.work_finished, "#install", str(e), True)
