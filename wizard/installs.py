"""The install step: the model's code into this environment, or into an environment of its own.

``install.environment`` decides: ``shared`` pip-installs the code here (``no_deps`` keeps the
engine's packages); ``isolated`` builds ``<workdir>/envs/<code>`` (:mod:`wizard.services.isolate`):
the code's pins, except the relaxed ones, layered over this environment; ``auto`` (the default)
isolates when the code pins versions this environment does not have and ``no_deps`` is off.
Once a model has its environment, the later steps run with its Python (:func:`wizard.steps.onboard`
hands them over; the CLI and the TUI restart themselves in it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .reporter import Reporter
from .services.errors import WizardError
from .session import Session


@dataclass
class InstallPlan:
    needed: bool
    reason: str
    command: list[str] | None = None  #: credentials masked (for the isolated environment: what it does)
    consented: bool = False
    seconds: float | None = None  #: how long the install took, once it ran
    #: the code's pins this environment does not satisfy (an install with dependencies replaces them)
    conflicts: list[str] = field(default_factory=list)
    isolated: bool = False  #: the code goes into an environment of its own
    env_dir: Path | None = None
    details: list[str] = field(default_factory=list)  #: what the environment holds, once built


def isolates(s: Session, conflicts: list) -> bool:
    ins = s.answers.install
    return ins.environment == "isolated" or (ins.environment == "auto" and bool(conflicts) and not ins.no_deps)


def install_plan(s: Session) -> InstallPlan:
    """Whether the model's code must be installed, where, and the exact command (nothing runs)."""
    from .services.answers import redact
    from .services.install import describe_install, detect_install_needed
    from .services.isolate import uv

    src, ins = s.answers.source, s.answers.install
    if not src.weights_dir:
        raise WizardError("the weights have not been fetched", "run the fetch step (Source) first")
    needed, reason = detect_install_needed(Path(src.weights_dir))
    if ins.needed is not None:
        needed, reason = ins.needed, f"install.needed is {ins.needed} in the answers"
    if not needed:
        return InstallPlan(False, reason)
    if not src.code_dir:
        raise WizardError("this model needs its code installed but no code repository was fetched",
                          "set source.code_url (and code_commit) to the model's code repository and fetch it")
    from .services.pins import conflicts

    found = [str(c) for c in conflicts(Path(src.code_dir))]
    if isolates(s, found):
        env = s.env_dir()
        cmd = [*uv(), "venv", str(env), "&&", *uv(), "pip", "install", "--python", str(env / "bin" / "python"),
               "<the code's pins except: " + ", ".join(ins.effective_relax()) + ">", *(["-e"] if ins.editable else []), str(src.code_dir)]
        return InstallPlan(True, reason, [redact(str(c)) for c in cmd], ins.consented(src), conflicts=found,
                           isolated=True, env_dir=env)
    cmd = describe_install(Path(src.code_dir), editable=ins.editable, no_deps=ins.no_deps, extra=ins.extra_packages,
                           target=s.install_target)
    return InstallPlan(True, reason, [redact(c) for c in cmd], ins.consented(src), conflicts=found)


def consent(s: Session) -> None:
    """Record that the user agreed to install this code, at this commit, with these options."""
    ins = s.answers.install
    ins.consent = ins.consent_for(s.answers.source)
    s.save()


def _isolated(s: Session, plan: InstallPlan, r: Reporter) -> None:
    from .services.isolate import create_env, env_is_current, plan_env
    from .services.render import _code_package

    src, ins = s.answers.source, s.answers.install
    assert plan.env_dir is not None
    # what the environment was built for
    asked = ins.effective_relax() + ["+" + x for x in ins.extra_packages] + ["~" + x for x in ins.stand_ins]
    if env_is_current(plan.env_dir, src.code_commit or "", asked):
        r.log(f"install: {plan.env_dir} is up to date for {(src.code_commit or '?')[:12]}")
    else:
        r.log(f"install: resolving the code's requirements for {plan.env_dir}")
        env = plan_env(Path(src.code_dir), plan.env_dir, ins.effective_relax(), extra=ins.extra_packages,
                       stand_ins=ins.stand_ins)
        create_env(env, commit=src.code_commit or "", relax=asked, code_package=_code_package(src.code_dir),
                   editable=ins.editable, on_line=r.log, cancelled=r.cancelled)
        plan.details = env.describe()
        for line in plan.details:
            r.log("  " + line)
    ins.env_dir = str(plan.env_dir)


def install(s: Session, r: Reporter = Reporter()) -> InstallPlan:
    """Install the model's code, only with consent for exactly this code (or ``--yes``)."""
    import time

    from .services.answers import redact
    from .services.install import pip_install

    plan = install_plan(s)
    src, ins = s.answers.source, s.answers.install
    s.answers.inspect.model_kind = "custom-code" if plan.needed else "transformers"
    if not plan.needed:
        r.log(f"install: skipped ({plan.reason})")
        s.save()
        return plan
    r.log("install: " + " ".join(plan.command or []))
    for c in plan.conflicts:
        r.log(f"  pin: {c}")
    if plan.conflicts and not ins.no_deps and not plan.isolated:
        raise WizardError(f"installing the code with its dependencies would replace {len(plan.conflicts)} package(s) "
                          f"the engine runs on: {'; '.join(plan.conflicts)}",
                          "set install.environment: isolated (an environment of its own with its pins), or "
                          "install.no_deps: true (the engine's versions stay; the Install step's checkbox)")
    if not (plan.consented or s.assume_yes):
        raise WizardError(f"installing executes the cloned code of {redact(src.code_url)} at "
                          f"{(src.code_commit or '?')[:12]}, which you have not agreed to",
                          "review the command above, then agree (the Install button, or --yes)")
    t0 = time.monotonic()
    if plan.isolated:
        _isolated(s, plan, r)
    else:
        ins.env_dir = None
        pip_install(Path(src.code_dir), editable=ins.editable, no_deps=ins.no_deps, extra=ins.extra_packages,
                    target=s.install_target, on_line=r.log, cancelled=r.cancelled)
        s.activate_install_target()
    ins.consent = ins.consent_for(src)
    plan.seconds = time.monotonic() - t0
    r.log(f"install: done in {plan.seconds:.1f}s")
    s.save()
    return plan


def handover(s: Session, steps: list[str], r: Reporter) -> dict:
    """Run ``steps`` with the model environment's Python (``python -m wizard.handover``), streaming
    its log; the answers it saved are read back. Returns the last step's result when it is a dict."""
    from .services.answers import load_answers
    from .services.child import run_child

    py = s.model_python()
    r.log(f"== continuing in the model's environment ({py})")
    path = s.save()
    args = ["--answers", path, "--workdir", s.workdir, "--steps", ",".join(steps)]
    args += ["--models-dir", s.models_dir] if s.models_dir else []
    args += ["--device", s.device] if s.device else []
    args += ["--yes"] if s.assume_yes else []
    try:
        out = run_child("wizard.handover", args, what="the steps in the model's environment", on_line=r.log,
                        cancelled=r.cancelled, on_start=r.child_started, python=py, env=s.engine_env())
    finally:
        s.answers = load_answers(path)
    return out.get("result")
