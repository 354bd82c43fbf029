"""Step 1 — Source: clone (or fetch) the weights and the code, pin the code's commit."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Log, ProgressBar, Static

from ..services.errors import WizardError
from .base import StepScreen


class SourceScreen(StepScreen):
    TITLE_TEXT = "Source"

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
        yield Log(id="log", max_lines=500)

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
        weights = self.query_one("#weights", Input).value.strip()
        if not weights:
            self.set_status("Weights repository is empty — enter a URL or a local path.", error=True)
            return
        src = self.answers.source
        src.weights_url = weights
        src.code_url = self.query_one("#code", Input).value.strip() or None
        src.code_commit = self.query_one("#commit", Input).value.strip() or None
        self.work_started("#clone", "cloning…")
        self.clone_worker()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def clone_worker(self) -> None:
        from ..services.answers import redact
        from ..services.fetch import fetch_repo

        src = self.answers.source
        workdir = self.app.workdir

        def progress(p):
            cur, mx = getattr(p, "cur", None), getattr(p, "max", None)
            msg = redact(str(getattr(p, "message", "") or getattr(p, "op", "") or ""))
            self.app.call_from_thread(self._progress, cur, mx, msg)

        try:
            dest = Path(src.weights_dir) if src.weights_dir else workdir / "weights" / _repo_name(src.weights_url)
            res = fetch_repo(src.weights_url, dest, progress=progress, cancelled=self.cancel_event.is_set)
            src.weights_dir = str(res.path)
            lines = [f"weights: {res.path} @ {res.commit[:12]}" + (" (fetched)" if res.resumed else "")
                     + (f", {len(res.lfs_files)} LFS file(s)" if res.lfs_files else "")]
            if src.code_url:
                dest = Path(src.code_dir) if src.code_dir else workdir / "code" / _repo_name(src.code_url)
                res = fetch_repo(src.code_url, dest, commit=src.code_commit, progress=progress,
                                 cancelled=self.cancel_event.is_set)
                src.code_dir, src.code_commit = str(res.path), res.commit
                lines.append(f"code: {res.path} pinned at {res.commit}")
            self.app.call_from_thread(self.work_finished, "#clone", "\n".join(lines), False)
        except WizardError as e:
            self.app.call_from_thread(self.work_finished, "#clone", str(e), True)

    def _progress(self, cur, mx, msg) -> None:
        bar = self.query_one("#progress", ProgressBar)
        bar.remove_class("idle")
        if mx:
            bar.update(total=float(mx), progress=float(cur or 0))
        if msg:
            self.query_one("#log", Log).write_line(msg)


def _repo_name(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name[:-4] if name.endswith(".git") else name or "repo"
