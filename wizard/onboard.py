"""Headless onboarding: every wizard step, driven by an answers file.

    llmc-wizard onboard --answers FILE [--workdir DIR] [--models-dir DIR] [--yes]
    llmc-wizard <step> --answers FILE ...      (fetch, install, inspect, generate, register, smoke, run)

Each step reads and updates the answers file, so the TUI and the headless twin share state.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .services.answers import Answers, load_answers, save_answers
from .services.errors import WizardError

STEPS = ("fetch", "install", "inspect", "generate", "register", "smoke", "run")


@dataclass
class Context:
    answers: Answers
    answers_path: Path
    workdir: Path
    models_dir: Path | None = None  # None: <workdir>/adapters
    assume_yes: bool = False
    device: str | None = None
    install_target: Path | None = None  # pip --target for the model's code (default: this environment)
    log: callable = field(default=lambda m: print(m, file=sys.stderr))
    state: dict = field(default_factory=dict)

    def save(self) -> None:
        save_answers(self.answers, self.answers_path)

    def activate_install_target(self) -> None:
        """Make the installed code importable here (the engine gets ``--target`` via env)."""
        from .services.install import activate_installed

        activate_installed(self.install_target)

    def models_dir_resolved(self) -> Path:
        """Where model declarations go: ``--models-dir``, else ``<workdir>/adapters``."""
        from .services.register import default_models_dir

        return self.models_dir or default_models_dir(self.workdir)

    def engine_env(self) -> dict | None:
        import os

        env = {"LLMC_ADAPTERS": os.pathsep.join(filter(None, [str(self.models_dir_resolved()),
                                                              os.environ.get("LLMC_ADAPTERS")]))}
        if self.install_target:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.install_target), os.environ.get("PYTHONPATH")]))
        return env or None


def step_fetch(ctx: Context) -> None:
    from .services.fetch import fetch_repo

    src = ctx.answers.source
    if not src.weights_url:
        raise WizardError("source.weights_url is empty", "set it to the weights repository URL or path")

    def prog(p):
        ctx.log(f"  {getattr(p, 'message', '') or p}")

    dest = Path(src.weights_dir) if src.weights_dir else ctx.workdir / "weights" / Path(src.weights_url.rstrip("/")).name
    lfs = "auto" if src.lfs is None else src.lfs
    res = fetch_repo(src.weights_url, dest, progress=prog, lfs=lfs)
    src.weights_dir = str(res.path)
    ctx.log(f"weights: {res.path} @ {res.commit[:12]}" + (f" ({len(res.lfs_files)} LFS files)" if res.lfs_files else ""))
    if src.code_url:
        dest = Path(src.code_dir) if src.code_dir else ctx.workdir / "code" / Path(src.code_url.rstrip("/")).name
        res = fetch_repo(src.code_url, dest, commit=src.code_commit, progress=prog)
        src.code_dir = str(res.path)
        src.code_commit = res.commit
        ctx.log(f"code: {res.path} pinned at {res.commit[:12]}")
    ctx.save()


def step_install(ctx: Context) -> None:
    from .services.install import describe_install, detect_install_needed, pip_install

    src, ins = ctx.answers.source, ctx.answers.install
    needed, reason = detect_install_needed(Path(src.weights_dir))
    if ins.needed is not None:
        needed = ins.needed
    ctx.answers.inspect.model_kind = "custom-code" if needed else "transformers"
    if not needed:
        ctx.log(f"install: skipped ({reason})")
        ctx.save()
        return
    if not src.code_dir:
        raise WizardError("this model needs its code installed but source.code_url is empty",
                          "set source.code_url (and code_commit) to the model's code repository")
    from .services.answers import redact

    cmd = describe_install(Path(src.code_dir), editable=ins.editable, no_deps=ins.no_deps, extra=ins.extra_packages,
                           target=ctx.install_target)
    ctx.log("install: " + redact(" ".join(cmd)))
    if not (ins.consented(src) or ctx.assume_yes):
        raise WizardError(f"installing executes the cloned code of {redact(src.code_url)} at "
                          f"{(src.code_commit or '?')[:12]}, which you have not agreed to",
                          "review the command above, then pass --yes")
    res = pip_install(Path(src.code_dir), editable=ins.editable, no_deps=ins.no_deps, extra=ins.extra_packages,
                      target=ctx.install_target, on_line=lambda line: ctx.log(f"  {line}"))
    ctx.activate_install_target()
    ins.consent = ins.consent_for(src)
    ctx.log(f"install: done in {res.seconds:.1f}s")
    ctx.save()


def step_inspect(ctx: Context) -> None:
    from .services.inspect import inspect_model

    ctx.activate_install_target()
    src, ins, g = ctx.answers.source, ctx.answers.inspect, ctx.answers.generate
    code_pkg = None
    if ins.model_kind == "custom-code" and src.code_dir:
        from .services.render import _code_package

        code_pkg = _code_package(src.code_dir)
    rep = inspect_model(Path(src.weights_dir), code_package=code_pkg, group_size=g.group_size)
    ins.architecture = rep.architecture
    ins.model_kind = rep.model_kind
    ins.hidden_size = rep.hidden_size
    ins.num_blocks = rep.num_blocks
    if not ins.projector_last_layers:
        ins.projector_last_layers = list(rep.proposed_last_layers)
    ctx.state["report"] = rep
    ctx.log(f"inspect: {rep.architecture}, {rep.num_blocks} blocks, hidden {rep.hidden_size}, "
            f"projector last layer(s): {', '.join(ins.projector_last_layers) or '-'}")
    for f in rep.flags:
        ctx.log(f"  flag: {f}")
    if rep.group_size_problems:
        raise WizardError(f"group size {g.group_size} does not divide the width of "
                          f"{len(rep.group_size_problems)} layer(s), e.g. {rep.group_size_problems[0]}",
                          "choose a group size that divides every layer's input width")
    ctx.save()


def step_generate(ctx: Context) -> None:
    from .services import render

    if not ctx.answers.generate.name:
        ctx.answers.generate.name = Path(ctx.answers.source.weights_dir or ctx.answers.source.weights_url).name
    plan = render.plan(ctx.answers, ctx.models_dir_resolved(), ctx.workdir / "configs")
    results = render.write(plan, ctx.answers)
    for r in results:
        ctx.log(f"generate: {r.path} ({r.action})" + (f", backup {r.backup}" if r.backup else ""))
        if r.action == "replaced-edited":
            ctx.log(r.diff)
    ctx.state["plan"] = plan
    ctx.answers.generate.out_dir = ctx.answers.generate.out_dir or str(ctx.workdir / "runs")
    ctx.save()


def _plan(ctx: Context):
    from .services import render

    if "plan" not in ctx.state:
        ctx.state["plan"] = render.plan(ctx.answers, ctx.models_dir_resolved(), ctx.workdir / "configs")
    return ctx.state["plan"]


def step_register(ctx: Context) -> None:
    from .services.register import register_adapter

    plan = _plan(ctx)
    model_type = register_adapter(plan.module, ctx.models_dir_resolved(), plan.model_type)
    ctx.log(f"register: the engine finds {model_type} in {ctx.models_dir_resolved()} (nothing to edit)")


def step_smoke(ctx: Context) -> None:
    from .services.smoke import smoke_test

    ctx.activate_install_target()
    plan, g = _plan(ctx), ctx.answers.generate
    rep = smoke_test(plan.module, plan.model_type, Path(ctx.answers.source.weights_dir),
                     Path(g.calib_path) if g.calib_path else None, Path(g.eval_path) if g.eval_path else None,
                     device=ctx.device or "cpu", models_dir=ctx.models_dir_resolved(), log=lambda m: ctx.log(f"  smoke: {m}"))
    ctx.log(f"smoke: ok (answer {rep.answer!r}, expected {rep.expected!r})")


def step_run(ctx: Context) -> dict:

    from llmc.runner import format_table

    from .services import runner

    plan = _plan(ctx)
    stored = Path(ctx.answers.run.run_dir) if ctx.answers.run.run_dir else None
    run_dir = stored
    if run_dir is None or _holds_anything(run_dir):  # a retry never reuses a used directory
        run_dir = _fresh_run_dir(ctx.workdir / "runs", plan.module)
        if stored is not None:
            ctx.log(f"run: {stored} already holds a run; this one goes to {run_dir}")
    h = runner.launch(plan.config_path, run_dir, device=ctx.device or ctx.answers.run.device, env=ctx.engine_env())
    ctx.answers.run.run_dir = str(run_dir)
    ctx.save()
    ctx.log(f"run: {run_dir} (pid {h.pid})")
    try:
        while True:
            for e in h.events.poll():
                if e["event"] == "block":
                    ctx.log(f"  block {e['i'] + 1}/{e['n']} error {e['block_error']:.4f}"
                            f" (last token {e.get('last_error', 0.0):.4f})")
                elif e["event"] == "phase" and e.get("state") == "end":
                    ctx.log(f"  {e['name']} done in {e['seconds']:.1f}s")
                elif e["event"] == "error":
                    ctx.log(f"  error: {e['message']}")
            rc = h.poll()
            if rc is not None:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        h.cancel()
        raise
    for e in h.events.poll():
        pass
    results = read_results(run_dir, rc)
    ctx.log(format_table(results, results["label"]))
    return results


def read_results(run_dir: Path, rc: int | None = 0) -> dict:
    """The results of a complete run (its ``COMPLETE`` marker, :mod:`llmc.rundir`); a
    :class:`WizardError` for anything else, whatever ``results.json`` or the events say."""
    from llmc.rundir import complete_results

    run_dir = Path(run_dir)
    results = complete_results(run_dir) if rc == 0 else None
    if results is None:
        log = run_dir / "process.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise WizardError(f"the run in {run_dir} did not complete (exit {rc}); see {log}:\n{tail}",
                          "fix the config or adapter and run again (a new run directory is used)")
    return results


def _holds_anything(d: Path) -> bool:
    return d.exists() and (not d.is_dir() or any(d.iterdir()))


def _fresh_run_dir(root: Path, module: str) -> Path:
    """``<root>/<module>-<timestamp>``, suffixed when that name is taken."""
    base = root / f"{module}-{time.strftime('%Y%m%d-%H%M%S')}"
    d, i = base, 1
    while _holds_anything(d):
        i += 1
        d = base.with_name(f"{base.name}-{i}")
    return d


STEP_FUNCS = {"fetch": step_fetch, "install": step_install, "inspect": step_inspect, "generate": step_generate,
              "register": step_register, "smoke": step_smoke, "run": step_run}


def onboard(ctx: Context, steps=STEPS) -> dict | None:
    out = None
    for s in steps:
        ctx.log(f"== {s}")
        out = STEP_FUNCS[s](ctx)
    return out


def make_context(answers_path: Path, workdir: Path | None = None, models_dir: Path | None = None,
                 assume_yes: bool = False, device: str | None = None, install_target: Path | None = None) -> Context:
    answers = load_answers(answers_path)
    workdir = Path(workdir) if workdir else Path(answers_path).resolve().parent
    return Context(answers, Path(answers_path), workdir, Path(models_dir) if models_dir else None, assume_yes, device,
                   install_target=Path(install_target) if install_target else None)
