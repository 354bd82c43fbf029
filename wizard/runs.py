"""The run steps: launch the engine on the current settings, follow it, read its results; the
data-parallel evaluation of a finished run. Shared by the Run screen and ``llmc-wizard run`` /
``llmc-wizard evaluate`` (re-exported by :mod:`wizard.steps`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .reporter import Reporter
from .services.errors import WizardError
from .services.eta import Eta, phase_history
from .session import Session


def start_run(s: Session, r: Reporter = Reporter()):
    """Write the config for the current settings and launch the engine in a fresh run directory;
    returns the RunHandle (follow it with :func:`follow_run`)."""
    from .services import runner

    p = _current_config(s)
    stored = Path(s.answers.run.run_dir) if s.answers.run.run_dir else None
    run_dir = stored
    if run_dir is None or _holds_anything(run_dir):
        run_dir = fresh_run_dir(s.runs_dir(), p.module)  # a retry never reuses a used directory
        if stored is not None and stored.exists():
            r.log(f"run: {stored} already holds a run; this one goes to {run_dir}")
    h = runner.launch(p.config_path, run_dir, device=s.device or s.answers.run.device, env=s.engine_env())
    s.answers.run.run_dir = str(run_dir)
    try:
        s.save()
    except WizardError as e:  # the engine runs already: say so, and hand it over to be followed
        r.log(f"warning: the run started, but its directory is not in the answers ({e}); "
              "the Run step's list of past runs shows it")
    r.log(f"run: {run_dir} (pid {h.pid})")
    r.child_started(h.pid)
    return h


def _current_config(s: Session):
    """The plan of the current settings, its config written (a hand-edited one kept with a backup
    and a diff: :func:`wizard.services.render.write`); a missing calibration set is refused."""
    from .planning import plan
    from .services import render

    g = s.answers.generate
    if not g.calib_path or not Path(g.calib_path).exists():
        raise WizardError("no calibration set chosen" if not g.calib_path else
                          f"calibration set {g.calib_path} not found",
                          f"enter {render.WHERE['calib.path']}: a custom_mm folder (samples.json + images)")
    p = plan(s)
    render.write(p, s.answers)  # the config reflects the current settings
    return p


def calib_preview(s: Session, r: Reporter = Reporter(), n: int = 3) -> None:
    """What the model will see of the calibration set, as the run will build it (``llmc
    calib-preview`` on the current config, in a child process of the model's environment that
    cancel kills): for ``n`` samples the rendered prompt, image tokens and length; every sample's
    length against the model's context, with a warning past it. Reported line by line."""
    from .services.child import run_child

    if not isinstance(n, int) or n < 1:
        raise WizardError(f"samples to show must be a whole number >= 1, got {n!r}", "give --n N with N >= 1")
    p = _current_config(s)
    args = ["calib-preview", str(p.config_path), "--n", str(n), "--device", s.device or s.answers.run.device or "cpu"]
    run_child("llmc", args, what="calibration preview", needs_result=False, on_line=r.log, env=s.engine_env(),
              cancelled=r.cancelled, on_start=r.child_started)


def describe_event(e) -> str | None:
    """The one log line an engine event (:mod:`llmc.events`) deserves (None: not worth a line)."""
    from llmc import events as ev

    if isinstance(e, ev.Block):
        if e.block_error is None:
            return f"block {e.i + 1}/{e.n} rounded without data"
        return f"block {e.i + 1}/{e.n} error {e.block_error:.4f} (last token {e.last_error or 0.0:.4f})"
    if isinstance(e, ev.Phase) and e.state == "end":
        return f"{e.name} done in {e.seconds or 0.0:.1f}s"
    if isinstance(e, ev.Error):
        return f"error: {e.message}"
    if isinstance(e, ev.Warned):
        return f"WARNING: {e.message}"
    return None


def follow_run(h, r: Reporter = Reporter(), poll_s: float = 0.2, history: dict[str, float] | None = None,
               eta: Eta | None = None, engine_log: bool = False, detached=lambda: False,
               log_table: bool = True) -> dict:
    """Wait for a launched run, handing each engine event to ``r.event`` and reporting it (each
    phase's end with the time left, from ``eta`` or ``history``:
    :func:`wizard.services.eta.phase_history`); ``engine_log``: the engine's own log lines go to
    ``r.log`` instead of those summaries. Cancel (``r.cancelled``) stops the run's process tree;
    ``detached()`` true stops following and leaves the run going (the TUI quitting); ``log_table``:
    the score table goes to ``r.log`` too (the TUI shows it in a table of its own). Returns the
    results of the complete run, or raises WizardError. The TUI's Run screen runs this in a
    worker thread; ``llmc-wizard run`` in the foreground."""
    from llmc.events import Block, Phase
    from llmc.runner import format_table

    from .services.runner import LineTail

    eta = eta if eta is not None else Eta(history)
    engine = LineTail(Path(h.run_dir) / "run.log") if engine_log else None

    def drain() -> None:
        for e in h.events.poll():
            eta.feed(e)
            r.event(e)
            line = describe_event(e)
            if line and engine is None:
                if isinstance(e, Phase) and e.state == "end":
                    line += eta.text()
                r.log(f"  {line}")
            if isinstance(e, Block):
                r.progress(e.i + 1, e.n, "quantize")
        for line in engine.poll() if engine is not None else ():
            r.log(line)

    try:
        while True:
            drain()
            rc = h.poll()
            if rc is not None:
                break
            if r.cancelled() and h.cancel():  # False: it had finished by then
                drain()
                raise WizardError("run cancelled", f"the incomplete run stays in {h.run_dir}; run again when ready")
            if detached():
                raise WizardError(f"stopped following the run in {h.run_dir}", "it goes on; the Run step reattaches")
            time.sleep(poll_s)
    except KeyboardInterrupt:
        h.cancel()
        raise
    drain()
    results = read_results(h.run_dir, rc)
    if log_table:
        r.log(format_table(results, results["label"]))
    return results


def history(s: Session, exclude: Path | None = None) -> dict[str, float]:
    """How long each phase took in this model's past complete runs (for the time left)."""
    from .services.render import module_name
    from .services.runner import list_runs

    name = s.answers.generate.name
    if not name:
        return {}
    past = [p.run_dir for p in list_runs(s.runs_dir(), module_name(name)) if p.run_dir != exclude]
    return phase_history(past)


def run(s: Session, r: Reporter = Reporter()) -> dict:
    h = start_run(s, r)
    return follow_run(h, r, history=history(s, exclude=Path(h.run_dir)))


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


def fresh_run_dir(root: Path, module: str) -> Path:
    """``<root>/<module>-<timestamp>``, suffixed when that name is taken."""
    base = root / f"{module}-{time.strftime('%Y%m%d-%H%M%S')}"
    d, i = base, 1
    while _holds_anything(d):
        i += 1
        d = base.with_name(f"{base.name}-{i}")
    return d


# ---------------------------------------------------------------------------------------------
# data-parallel evaluation


def quantized_model(s: Session) -> str | None:
    """The fake-quant model the current run saved, if that run completed (its marker)."""
    from llmc.rundir import complete_results

    results = complete_results(s.answers.run.run_dir) if s.answers.run.run_dir else None
    return results.get("saved_fake") if results else None


def dp_args(s: Session, model: str | None, out: Path | None = None) -> list[str]:
    """:mod:`llmc.eval.dp`'s arguments for ``model`` (None: the original weights) on the evaluation set."""
    from .services.render import class_name

    g = s.answers.generate
    args = ["--model-type", class_name(g.class_name or g.name or "model"),
            "--model-path", model or str(s.answers.source.weights_dir or "<weights>"),
            "--data", g.eval_path or "<eval set>"]
    if g.eval_samples:
        args += ["--limit", str(g.eval_samples)]
    if out is not None:
        args += ["--out", str(out)]
    return args


def evaluate(s: Session, r: Reporter = Reporter(), gpus: int = 1) -> dict:
    """Evaluate the current run's quantized model data-parallel: ``gpus`` processes under
    ``accelerate launch`` (one per GPU; gloo processes on a machine without CUDA). The scores go to
    ``<run dir>/dp_eval_<gpus>.json``; returns them (``world_size``, ``total``, ``seconds``, ...)."""
    import torch

    from llmc.eval.dp import format_command, free_port, launch_command

    from .services.child import run_child

    if not isinstance(gpus, int) or gpus < 1:
        raise WizardError(f"GPUs must be a whole number >= 1, got {gpus!r}", "give --gpus N with N >= 1")
    model = quantized_model(s)
    if not model:
        raise WizardError("no quantized model yet", "run the quantization first (the Run step)")
    data = s.answers.generate.eval_path
    if not data or not Path(data).exists():
        raise WizardError(f"evaluation set {data!r} not found", "set generate.eval_path to the MME-format folder")
    out = Path(s.answers.run.run_dir) / f"dp_eval_{gpus}.json"
    cmd = launch_command(gpus, dp_args(s, model, out), cpu=not torch.cuda.is_available(), port=free_port())
    r.log("$ " + format_command(cmd))
    # accelerate's launcher module: the same command, without needing its console script
    run_child("accelerate.commands.launch", cmd[2:], what="data-parallel evaluation", needs_result=False,
              on_line=r.log, env=s.engine_env(), cancelled=r.cancelled, on_start=r.child_started)
    try:
        res = json.loads(out.read_text())
        r.log(f"data-parallel evaluation over {res['world_size']} process(es): total {res['total']:.2f} "
              f"in {res['seconds']:.1f}s ({out})")
    except (OSError, ValueError, KeyError) as e:
        raise WizardError(f"the data-parallel evaluation wrote no scores to {out} ({e})",
                          "see the log above for the evaluation's own error") from e
    return res
