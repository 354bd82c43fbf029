"""The wizard's steps: one implementation for the TUI and the headless twin.

Each step is a function of ``(session, reporter)`` that returns a typed result, updates the
session's answers and saves them. The TUI runs a step in a worker and renders what it reports and
returns; ``llmc-wizard onboard`` and the single-step subcommands call the very same functions.
No step knows about Textual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .reporter import Reporter
from .installs import InstallPlan, consent, install, install_plan
from .runs import describe_event, evaluate, follow_run, fresh_run_dir, read_results, run, start_run
from .services.errors import WizardError
from .planning import plan
from .session import Session

from .steptable import ONBOARD as STEPS

__all__ = ["STEPS", "STEP_FUNCS", "InstallPlan", "Reporter", "ask", "consent", "describe_event", "evaluate", "fetch", "follow_run",
           "fresh_run_dir", "generate", "inspect", "install", "install_plan", "onboard", "plan", "read_results",
           "register", "run", "smoke", "start_run"]


# ---------------------------------------------------------------------------------------------
# fetch


@dataclass
class FetchOutcome:
    weights_dir: Path
    weights_commit: str
    lfs_files: list[str] = field(default_factory=list)
    code_dir: Path | None = None
    code_commit: str | None = None
    resumed: bool = False

    def summary(self) -> str:
        lines = [f"weights: {self.weights_dir} @ {self.weights_commit[:12]}" + (" (fetched)" if self.resumed else "")
                 + (f", {len(self.lfs_files)} LFS file(s)" if self.lfs_files else "")]
        if self.code_dir:
            lines.append(f"code: {self.code_dir} pinned at {self.code_commit}")
        return "\n".join(lines)


def fetch(s: Session, r: Reporter = Reporter()) -> FetchOutcome:
    """Clone (or fetch) the weights and, for custom-code models, the code pinned at its commit.
    A changed URL gets its own folder; it never reuses another repository's clone."""
    from .services.answers import redact
    from .services.fetch import destination, fetch_repo

    src = s.answers.source
    if not src.weights_url:
        raise WizardError("source.weights_url is empty", "set it to the weights repository URL or path")

    def prog(p):
        message = redact(str(getattr(p, "message", "") or getattr(p, "op", "") or ""))
        r.progress(getattr(p, "cur", None), getattr(p, "max", None), message)

    dest = destination(src.weights_url, s.workdir / "weights", src.weights_dir)
    lfs = "auto" if src.lfs is None else src.lfs
    res = fetch_repo(src.weights_url, dest, progress=prog, cancelled=r.cancelled, lfs=lfs)
    src.weights_dir = str(res.path)
    out = FetchOutcome(res.path, res.commit, list(res.lfs_files), resumed=res.resumed)
    if src.code_url:
        dest = destination(src.code_url, s.workdir / "code", src.code_dir)
        res = fetch_repo(src.code_url, dest, commit=src.code_commit, progress=prog, cancelled=r.cancelled)
        src.code_dir, src.code_commit = str(res.path), res.commit
        out.code_dir, out.code_commit = res.path, res.commit
    s.save()
    r.log(out.summary())
    return out


# ---------------------------------------------------------------------------------------------
# install: wizard/installs.py

# ---------------------------------------------------------------------------------------------
# inspect


def inspect(s: Session, r: Reporter = Reporter()):
    """Build the model's skeleton from its config (no weights read) and report its structure;
    the proposed projector layer becomes the pick unless one was made. Returns the ModelReport."""
    from .services.inspect import inspect_model
    from .services.render import _code_package

    s.activate_install_target()
    src, ins, g = s.answers.source, s.answers.inspect, s.answers.generate
    if not src.weights_dir or not Path(src.weights_dir).exists():
        raise WizardError("no weights to inspect", "fetch them first (the Source step)")
    code_pkg = _code_package(src.code_dir) if ins.model_kind == "custom-code" and src.code_dir else None
    rep = inspect_model(Path(src.weights_dir), code_package=code_pkg, group_size=g.group_size)
    ins.architecture, ins.model_kind = rep.architecture, rep.model_kind
    ins.hidden_size, ins.num_blocks = rep.hidden_size, rep.num_blocks
    ins.language_model_path, ins.vision_tower_path = rep.language_model_path, rep.vision_tower_path
    ins.projector_path, ins.prompt_format = rep.projector_path, rep.prompt_format
    if not ins.projector_last_layers:
        ins.projector_last_layers = list(rep.proposed_last_layers)
    missing: list[str] = []
    if code_pkg:
        from .services.inspect import code_conventions

        ins.code_conventions, mode, missing = code_conventions(code_pkg)
        ins.conv_mode = ins.conv_mode or mode
    s.save()
    r.log(f"inspect: {rep.architecture}, {rep.num_blocks} blocks, hidden {rep.hidden_size}, "
          f"projector last layer(s): {', '.join(ins.projector_last_layers) or '-'}"
          + (f", code conventions: {ins.code_conventions}" if code_pkg else ""))
    if missing:
        r.log(f"  flag: {code_pkg} lacks {', '.join(missing)} of the LLaVA lineage's conventions: override "
              "the hooks it needs (load, build_inputs, answer, save_pretrained; see llmc/models/llava_lineage.py)")
    for f in rep.flags:
        r.log(f"  flag: {f}")
    return rep


def check_group_size(rep, group_size: int) -> None:
    if rep.group_size_problems:
        raise WizardError(f"group size {group_size} does not divide the width of "
                          f"{len(rep.group_size_problems)} layer(s), e.g. {rep.group_size_problems[0]}",
                          "choose a group size that divides every layer's input width")


# ---------------------------------------------------------------------------------------------
# generate, register, smoke


def generate(s: Session, r: Reporter = Reporter()):
    """Write the declaration and the config (backup + diff of hand edits); returns the plan."""
    from .services import render

    p = plan(s)
    for w in render.write(p, s.answers):
        r.log(f"generate: {w.path} ({w.action})" + (f", backup {w.backup}" if w.backup else ""))
        if w.action == "replaced-edited":
            r.log(w.diff)
    if not s.answers.generate.out_dir:
        s.answers.generate.out_dir = str(s.runs_dir())
    s.save()
    return p


def register(s: Session, r: Reporter = Reporter()) -> str:
    """Check that the engine discovers the declaration (nothing is edited); returns the model type."""
    from .services.register import register_adapter

    p = plan(s)
    model_type = register_adapter(p.module, s.models_dir_resolved(), p.model_type)
    r.log(f"register: the engine finds {model_type} in {s.models_dir_resolved()} (nothing to edit)")
    return model_type


def _eval_batch_size(config_text: str) -> int:
    """The evaluation batch size the generated config runs at (``eval.bs``)."""
    import yaml

    ev = yaml.safe_load(config_text).get("eval") or {}
    ev = ev[0] if isinstance(ev, list) and ev else ev
    return int(ev.get("bs", 1)) if isinstance(ev, dict) else 1


def smoke(s: Session, r: Reporter = Reporter()):
    """Import, build, a calibration sample and an evaluation batch at the run's batch size
    (answers as one at a time, finite logits), in a child process that cancel kills."""
    from .services.smoke import smoke_test_in_child

    p, g = plan(s), s.answers.generate
    rep = smoke_test_in_child(p.module, p.model_type, Path(s.answers.source.weights_dir),
                              Path(g.calib_path) if g.calib_path else None,
                              Path(g.eval_path) if g.eval_path else None, device=s.device or "cpu",
                              models_dir=s.models_dir_resolved(), log=lambda m: r.log(f"  smoke: {m}"),
                              cancelled=r.cancelled, on_start=r.child_started, env=s.engine_env(),
                              eval_bs=_eval_batch_size(p.config_text))
    r.log(f"smoke: ok (answer {rep.answer!r}, expected {rep.expected!r})")
    return rep


# ---------------------------------------------------------------------------------------------
# try


@dataclass
class TryOutcome:
    question: str
    expected: str | None
    float_answer: str
    quantized_answer: str


def ask(s: Session, r: Reporter = Reporter(), question: str | None = None, image_path: str | None = None,
        sample: int = 0) -> TryOutcome:
    """The float and the quantized model of the latest complete run answer one question about an
    image (a file, or evaluation sample ``sample`` with its own question), in a child process."""
    from llmc.rundir import complete_results

    from .services.ask import compare_answers_in_child
    from .services.render import class_name

    s.activate_install_target()
    g = s.answers.generate
    res = complete_results(s.answers.run.run_dir) if s.answers.run.run_dir else None
    if res is None:
        raise WizardError("no finished run", "run the quantization first (the Run step)")
    if not res.get("saved_fake"):
        raise WizardError("the run saved no quantized model", "set save_fake: true (the default) and run again")
    expected = None
    if image_path:
        from PIL import Image

        if not Path(image_path).exists():
            raise WizardError(f"image {image_path} not found", "give an existing image file")
        image = Image.open(image_path).convert("RGB")
    else:
        from llmc.eval.mme import load_dataset

        if not g.eval_path:
            raise WizardError("no evaluation set", "give an image file, or set generate.eval_path")
        ds = load_dataset(Path(g.eval_path))
        if not 0 <= sample < len(ds):
            raise WizardError(f"sample {sample} out of range", f"choose 0..{len(ds) - 1}")
        row = ds[sample]
        # the sample's answer is expected only of the sample's own question, not of a typed one
        image, expected = row["image"], (row["answer"] if not question or question == row["question"] else None)
        question = question or row["question"]
    if not question:
        raise WizardError("no question", "type a question")
    a, b = compare_answers_in_child(class_name(g.class_name or g.name or "model"), Path(s.answers.source.weights_dir),
                                    Path(res["saved_fake"]), image, question, s.device or "cpu",
                                    s.models_dir_resolved(), log=r.log, cancelled=r.cancelled,
                                    on_start=r.child_started)
    out = TryOutcome(question, expected, a, b)
    r.log(f"try: {question!r}" + (f" (expected {expected!r})" if expected else "")
          + f": float {a!r}, quantized {b!r}")
    return out


# ---------------------------------------------------------------------------------------------
# all of them


def _inspect_checked(s: Session, r: Reporter):
    rep = inspect(s, r)
    check_group_size(rep, s.answers.generate.group_size)
    return rep


_FUNCS = {"fetch": fetch, "install": install, "inspect": _inspect_checked, "generate": generate,
          "register": register, "smoke": smoke, "run": run}
#: the onboard steps' functions, in :data:`wizard.steptable.ONBOARD` order
STEP_FUNCS: dict[str, Callable[[Session, Reporter], Any]] = {name: _FUNCS[name] for name in STEPS}


def onboard(s: Session, steps=STEPS, r: Reporter = Reporter()) -> Any:
    """Run ``steps`` in order; returns the last step's result."""
    from .installs import handover
    from .steptable import by_name

    out = None
    steps = list(steps)
    for i, name in enumerate(steps):
        if by_name(name).model_env and not s.in_model_env():
            return handover(s, steps[i:], r)  # the model's own environment runs the rest
        r.log(f"== {name}")
        out = STEP_FUNCS[name](s, r)
    return out
