"""The llmc-wizard Textual app: a thin shell over ``wizard.services``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Static

from .demo.facts import ModelFacts, all_facts
from .services.answers import Answers, load_answers
from .widgets.shown import TerminalSafe
from .session import Session

INTRO = (
    "[b]llmc-wizard[/b] takes a new (vision-)language model from a repository to a quantized, "
    "evaluated, exported model: fetch weights and code, install, inspect the model, generate its "
    "adapter and config, then quantize and evaluate (original vs quantized)."
)
CATEGORIES = ("existence", "count", "color", "position")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def facts_rows(facts: list[ModelFacts]) -> list[tuple[str, ...]]:
    rows = []
    for f in facts:
        cats = f.scores.get("categories", {})
        rows.append((
            f.name,
            "transformers" if f.kind == "transformers" else "custom code",
            _fmt_params(f.parameters),
            f"{f.llm_layers} × {f.llm_hidden} (MLP {f.llm_intermediate})",
            str(f.image_tokens),
            *(f"{cats[c]:.1f}" if c in cats else "-" for c in CATEGORIES),
            f"{f.total:.1f}" if f.total is not None else "-",
        ))
    return rows


def demo_answers(zoo, name: str) -> Answers:
    """Answers pre-filled for a demo model of the zoo (its local git repositories and data)."""
    entry = zoo.models[name]
    a = Answers()
    a.source.weights_url = entry["weights_repo"]
    if entry.get("code_repo"):
        a.source.code_url = entry["code_repo"]
        a.source.code_commit = entry["code_commit"]
    a.generate.name = name
    a.generate.calib_path = str(zoo.calib_set)
    a.generate.eval_path = str(zoo.eval_set / "data")
    return a


def _same_source(a: str, b: str) -> bool:
    """Two spellings of one repository (a trailing slash or ``.git`` apart)."""
    def norm(u: str) -> str:
        u = u.strip().rstrip("/")
        return u[:-4] if u.endswith(".git") else u

    return norm(a) == norm(b)


class WelcomeScreen(Screen):
    BINDINGS = [Binding("q,ctrl+q", "app.quit", "Quit"), Binding("enter", "start", "Onboard the selected demo model"),
                Binding("c", "new", "Continue / new model"), Binding("f1,question_mark", "help", "Keys")]

    def __init__(self, zoo_root: Path | None = None):
        super().__init__()
        self.zoo_root = zoo_root

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(INTRO, id="intro")
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        status = (f"Demo zoo: {self.zoo_root} (local git repositories of weights and code, "
                  "MME-format evaluation set, calibration set)" if self.zoo_root else
                  "Demo zoo not built: run `llmc-wizard demo build`.")
        yield Static(status, id="zoo-status")
        yield Static("enter: onboard the selected demo model · c: continue with the loaded answers (or a new model)",
                     id="welcome-help")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#models", DataTable)
        table.add_columns("model", "code", "params", "language model", "image tokens",
                          *CATEGORIES, "total")
        for row in facts_rows(all_facts()):
            table.add_row(*row, key=row[0])
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_start()

    def action_start(self) -> None:
        table = self.query_one("#models", DataTable)
        if self.zoo_root is None:
            self.notify("build the demo zoo first: llmc-wizard demo build", severity="error")
            return
        from .demo.zoo import Zoo

        name = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        self.app.use_model_answers(name, demo_answers(Zoo.load(self.zoo_root), name))
        self.app.goto("Source")

    def action_new(self) -> None:
        self.app.goto("Source")

    def action_help(self) -> None:
        from .screens.base import HelpScreen

        self.app.push_screen(HelpScreen())


class ConfirmQuit(ModalScreen[bool]):
    """Quitting while a run is in progress: the run goes on (reattach later), but ask first."""

    BINDINGS = [Binding("y", "answer(True)", "Quit"), Binding("n,escape", "answer(False)", "Stay")]

    def __init__(self, pid: int):
        super().__init__()
        self.pid = pid

    def compose(self) -> ComposeResult:
        yield Static(f"A run is in progress (engine pid {self.pid}). Quit anyway?\n"
                     "The run goes on in the background; the Run step reattaches to it.\n\n"
                     "[b]y[/b] quit   [b]n[/b] stay", id="confirm-quit")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


@dataclass
class Restart:
    """The app's result when the wizard must go on with another Python (the model's environment)."""

    python: Path
    argv: list[str]


class WizardApp(App):
    TITLE = "llmc-wizard"
    SUB_TITLE = "onboard, quantize and evaluate a VLM"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, zoo_root: Path | None = None, answers_path: Path | None = None, workdir: Path | None = None,
                 models_dir: Path | None = None, device: str | None = None, install_target: Path | None = None,
                 start: str | None = None):
        super().__init__()
        self.zoo_root = zoo_root
        self._terminal_safe = TerminalSafe()
        #: the answers panel (ctrl+t), the same on every step; None until toggled: shown where the
        #: terminal is wide enough for it next to a step's widest row (:data:`WIDE_ENOUGH`)
        self.show_answers: bool | None = None
        self.start = start  #: the step to open on (after a restart in the model's environment)
        answers_path = Path(answers_path) if answers_path else None
        answers = load_answers(answers_path) if answers_path and answers_path.exists() else Answers()
        base = answers_path.resolve().parent if answers_path else Path.cwd() / "llmc-wizard-work"
        #: the state every screen reads and every step (:mod:`wizard.steps`) updates
        self.session = Session(answers, answers_path, Path(workdir) if workdir else base,
                               Path(models_dir) if models_dir else None,
                               Path(install_target) if install_target else None, device)

    def get_line_filters(self):
        """Textual's filters, then :class:`TerminalSafe`: no rendered text acts on the terminal."""
        return [*super().get_line_filters(), self._terminal_safe]

    # the session's fields, for the screens
    answers = property(lambda self: self.session.answers,
                       lambda self, value: setattr(self.session, "answers", value))
    answers_path = property(lambda self: self.session.answers_path)
    workdir = property(lambda self: self.session.workdir)
    models_dir = property(lambda self: self.session.models_dir)
    device = property(lambda self: self.session.device)
    install_target = property(lambda self: self.session.install_target)

    def on_mount(self) -> None:
        self._install_steps()
        self.push_screen(WelcomeScreen(self.zoo_root))
        if self.start:
            self.goto(self.start)

    def restart_in_model_env(self, step: str) -> None:
        """Quit and come back on ``step`` with the Python of the model's own environment."""
        self.save_answers()
        argv = ["--answers", self.session.answers_path, "--workdir", self.session.workdir, "--step", step]
        argv += ["--models-dir", self.session.models_dir] if self.session.models_dir else []
        argv += ["--device", self.session.device] if self.session.device else []
        self.exit(Restart(self.session.model_python(), [str(a) for a in argv]))

    def goto(self, step: str) -> None:
        from .steptable import screen_in_model_env

        if screen_in_model_env(step) and not self.session.in_model_env():
            self.restart_in_model_env(step)  # the model's code lives in its own environment
            return
        if isinstance(self.screen, WelcomeScreen):
            self.push_screen(step)
        else:
            self.switch_screen(step)

    def goto_welcome(self) -> None:
        """Back to the welcome screen, to switch models (the answers are saved first)."""
        self.save_answers()
        while not isinstance(self.screen, WelcomeScreen) and len(self.screen_stack) > 1:
            self.pop_screen()

    def use_model_answers(self, name: str, fresh: Answers) -> None:
        """One answers file per model: ``<workdir>/answers/<model>.yml``, continued when it exists."""
        from .services.render import module_name

        path = self.workdir / "answers" / f"{module_name(name)}.yml"
        if path == self.session.answers_path:
            return  # the same model again: keep the screens as they are
        self.session.answers = load_answers(path) if path.exists() else fresh
        self.session.answers_path = path
        self._install_steps()  # fresh screens: nothing of the previous model's forms stays

    def adopt_weights(self, weights_url: str) -> bool:
        """The Source step is about to fetch ``weights_url``. When the current answers are another
        model's (they name other weights), the wizard moves to that model's own answers file
        (``<workdir>/answers/<name>.yml``, continued when one names these weights, else new) and
        fresh step screens; the current model's answers, declaration and runs stay as they are.
        The calibration and evaluation sets carry over: they describe data, not the model.
        Returns whether it moved."""
        cur = self.session.answers.source.weights_url
        if not cur or _same_source(cur, weights_url):
            return False
        from .services.answers import Answers, load_answers
        from .services.render import module_name

        if self.session.answers_path is not None:
            self.save_answers()
        folder = self.workdir / "answers"
        path, answers = None, None
        for f in sorted(folder.glob("*.yml")) if folder.is_dir() else []:
            try:
                other = load_answers(f)
            except Exception:  # noqa: BLE001 - not an answers file of ours: leave it alone
                continue
            if other.source.weights_url and _same_source(other.source.weights_url, weights_url):
                path, answers = f, other
                break
        if answers is None:
            from .services.fetch import repo_name

            base = repo_name(weights_url)
            name, n = base, 1
            while ((folder / f"{module_name(name)}.yml").exists()
                   or (self.session.models_dir_resolved() / f"{module_name(name)}.py").exists()):
                n += 1
                name = f"{base}-{n}"
            answers = Answers()
            answers.source.weights_url = weights_url
            answers.generate.name = name
            old = self.session.answers.generate
            answers.generate.calib_path, answers.generate.eval_path = old.calib_path, old.eval_path
            path = folder / f"{module_name(name)}.yml"
        self.session.answers, self.session.answers_path = answers, path
        self._install_steps(keep=self.screen)
        return True

    def _install_steps(self, keep=None) -> None:
        from .screens import STEP_SCREENS

        # a run in progress goes on in its own process; the Run step reattaches to it on entry
        for name, cls in STEP_SCREENS.items():
            if keep is not None and self.is_screen_installed(name) and self.get_screen(name) is keep:
                continue  # the screen on display stays; it reads the new answers
            if self.is_screen_installed(name):
                self.uninstall_screen(name)
            self.install_screen(cls(), name=name)

    def running_pid(self) -> int | None:
        """The engine run the Run step follows, while it runs."""
        try:
            run = self.get_screen("Run")
        except KeyError:
            return None
        return run.run_in_progress() if run.is_mounted else None

    async def action_quit(self) -> None:
        pid = self.running_pid()
        if pid is None:
            self.exit()
            return

        def answer(quit_: bool | None) -> None:
            if quit_:
                self.exit()

        self.push_screen(ConfirmQuit(pid), answer)

    def goto_step(self, current: str, delta: int) -> None:
        from .screens import STEP_SCREENS

        names = list(STEP_SCREENS)
        i = names.index(current) + delta
        if 0 <= i < len(names):
            self.goto(names[i])  # the same way in as any other: a step that imports the code runs in its environment

    def save_answers(self) -> Path | None:
        return self.session.save()

    def models_dir_resolved(self) -> Path:
        return self.session.models_dir_resolved()

    def engine_env(self) -> dict | None:
        return self.session.engine_env()
