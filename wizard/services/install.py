"""Installing a model's own code (custom-code models), and running subprocesses that can be cancelled.

* :func:`detect_install_needed` decides from the weights' ``config.json`` whether transformers
  can load the model by itself or the model's code must be installed.
* :func:`describe_install` gives the exact pip command, to show and confirm before executing
  cloned code; :func:`pip_install` runs it, streaming every output line and honouring cancel.
* :func:`run_streaming` / :func:`kill_process_group` are the subprocess plumbing shared with
  :mod:`wizard.services.fetch`: a child in its own process group, output streamed line by line,
  cancel = SIGTERM to the whole group, then SIGKILL after a grace period.

Example (CLI or tests)::

    needed, why = detect_install_needed("weights/tiny-vila")
    if needed:
        print(" ".join(describe_install("code/tiny-vila")))
        pip_install("code/tiny-vila", on_line=print)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .answers import redact
from .errors import WizardError

CancelCheck = Callable[[], bool]
PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")
KILL_GRACE_S = 3.0


# ---------------------------------------------------------------------------------------------
# subprocess plumbing


def as_cancel_check(cancelled) -> CancelCheck:
    """Accept ``None``, a ``threading.Event`` or a zero-argument callable; return a callable."""
    if cancelled is None:
        return lambda: False
    if hasattr(cancelled, "is_set"):
        return cancelled.is_set
    if callable(cancelled):
        return cancelled
    raise TypeError(f"cancelled must be a threading.Event or a callable, not {type(cancelled).__name__}")


def kill_group(pgid: int, wait: Callable[[float], object], grace: float = KILL_GRACE_S) -> None:
    """The one kill routine (git, pip, the smoke test and the engine): SIGTERM the process group
    ``pgid``, ``wait(grace)`` for its leader, then SIGKILL whatever is left of the group (the
    leader may be gone while children linger)."""
    for sig, pause in ((signal.SIGTERM, True), (signal.SIGKILL, False)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if pause:
            wait(grace)


def kill_process_group(proc: subprocess.Popen, grace: float = KILL_GRACE_S) -> None:
    """Stop ``proc`` and every process in its group (it must have been started with
    ``start_new_session=True``)."""
    def wait(seconds: float) -> None:
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    kill_group(proc.pid, wait, grace)
    proc.wait()


@dataclass
class StreamedRun:
    """Outcome of :func:`run_streaming`."""

    returncode: int
    tail: list[str]  #: the last output lines (stdout and stderr merged)
    cancelled: bool
    seconds: float


def run_streaming(cmd: Sequence[str], *, cwd=None, env: dict | None = None,
                  on_line: Callable[[str], None] | None = None, cancelled=None,
                  grace: float = KILL_GRACE_S, tail_lines: int = 40) -> StreamedRun:
    """Run ``cmd`` in its own process group, calling ``on_line`` for every line of its merged
    stdout/stderr (carriage-return progress updates count as lines).

    ``cancelled`` is checked after every line and every 0.1 s by a watchdog (so a silent child is
    stopped too); once true, the whole group is killed and the result has ``cancelled=True``.
    If ``on_line`` raises, the group is killed and the exception propagates.
    Raises ``OSError`` when the program cannot be started.
    """
    check = as_cancel_check(cancelled)
    start = time.monotonic()
    from .net import net_env

    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=net_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", start_new_session=True,
    )
    lock = threading.Lock()
    state = {"killed": False, "cancelled": False}

    def stop(cancel: bool) -> None:
        with lock:
            if state["killed"]:
                return
            state["killed"] = True
            state["cancelled"] = state["cancelled"] or cancel
        kill_process_group(proc, grace)

    done = threading.Event()

    def watchdog() -> None:
        while not done.wait(0.1):
            if check():
                stop(True)
                return

    dog = threading.Thread(target=watchdog, name="cancel-watchdog", daemon=True)
    dog.start()
    tail: deque[str] = deque(maxlen=tail_lines)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            tail.append(line)
            if on_line is not None:
                on_line(line)
            if check():
                stop(True)
        proc.wait()
    except BaseException:
        stop(False)
        raise
    finally:
        done.set()
        dog.join()
        if proc.stdout is not None:
            proc.stdout.close()
    was_cancelled = state["cancelled"] or check()
    return StreamedRun(proc.returncode, list(tail), was_cancelled, time.monotonic() - start)


# ---------------------------------------------------------------------------------------------
# does the model need its code installed?


def detect_install_needed(weights_dir) -> tuple[bool, str]:
    """``(needed, reason)`` from ``weights_dir/config.json``.

    The model is transformers-native (``needed=False``) when its ``model_type`` is registered in
    ``transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES`` *and* ``architectures[0]``
    is a class exported by ``transformers``; otherwise its own code must be installed.
    """
    weights_dir = Path(weights_dir)
    cfg_path = weights_dir / "config.json"
    if not weights_dir.is_dir():
        raise WizardError(f"weights folder {weights_dir} does not exist", "fetch the weights first (Source step)")
    if not cfg_path.is_file():
        raise WizardError(f"{weights_dir} has no config.json",
                          "point source.weights_dir at the model folder that holds config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WizardError(f"cannot read {cfg_path}: {e}",
                          "re-fetch the weights (the file may be an un-downloaded git-lfs pointer)") from None
    if not isinstance(cfg, dict):
        raise WizardError(f"{cfg_path} is not a JSON object", "re-fetch the weights")
    from llmc.textsafe import identity_problem

    problem = identity_problem(cfg)
    if problem:
        raise WizardError(f"{cfg_path}: {problem}", "use the model's real config.json (this one may be hostile)")

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    version = transformers.__version__
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs and isinstance(archs[0], str) else None
    remote = " (config.json has auto_map: code ships with the weights, loadable with trust_remote_code)" \
        if cfg.get("auto_map") else ""
    if not model_type:
        return True, f"config.json has no model_type: {arch or 'the model'} needs its own code{remote}"
    if model_type not in CONFIG_MAPPING_NAMES:
        return True, (f"model_type '{model_type}' is not known to transformers {version}: "
                      f"{arch or 'the model'} needs its own code{remote}")
    if arch is None:
        return True, f"config.json names no architectures: cannot load '{model_type}' with transformers alone"
    # dir() of transformers' lazy module lists every exported name without importing torch models
    if arch not in dir(transformers) and not hasattr(transformers, arch):
        return True, (f"architecture {arch} is not part of transformers {version} "
                      f"(model_type '{model_type}' is): the model's own code is needed{remote}")
    return False, f"model_type '{model_type}' and {arch} are built into transformers {version}"


# ---------------------------------------------------------------------------------------------
# pip


@dataclass
class InstallResult:
    returncode: int
    command: list[str]  #: the command that ran (credentials masked)
    seconds: float


def describe_install(code_dir, *, editable: bool = True, no_deps: bool = False, extra: Sequence[str] = (),
                     python: str = sys.executable, target=None) -> list[str]:
    """The exact pip command :func:`pip_install` runs with the same arguments (argv list).

    * ``--no-build-isolation``: the build uses the packages already installed (works offline);
    * ``target``: ``--target DIR`` installs into a private folder (add it to ``PYTHONPATH``);
      pip cannot combine ``-e`` with ``--target``, so ``editable`` is ignored when ``target`` is given;
    * ``extra``: passed verbatim after the project: more packages, or pip options
      (e.g. ``["--index-url", URL, "some-pkg"]``).
    """
    cmd = [str(python), "-m", "pip", "install", "--no-build-isolation", "--disable-pip-version-check",
           "--no-input", "--progress-bar", "off"]
    if no_deps:
        cmd.append("--no-deps")
    if target is not None:
        cmd += ["--target", str(target), str(code_dir)]
    elif editable:
        cmd += ["-e", str(code_dir)]
    else:
        cmd.append(str(code_dir))
    cmd += [str(x) for x in extra]
    return cmd


def _fix_hint(tail: list[str], no_deps: bool) -> str:
    text = "\n".join(tail)
    if "No matching distribution" in text or "Could not find a version" in text or "Failed to establish" in text:
        return "check the package names and your network or index" + (
            "" if no_deps else ", or install with --no-deps if the dependencies are already present")
    if "BackendUnavailable" in text or ("No module named" in text and "build" in text.lower()):
        return ("the build runs without isolation: install the project's build backend first "
                "(e.g. pip install setuptools wheel), then retry")
    if "Permission denied" in text:
        return "install into a virtual environment you own (or pass a target folder)"
    return "read the output above; fix the project's packaging, or retry with --no-deps"


_ERROR_LINE = re.compile(r"^\s*(ERROR:|error:|×|╰─>)|\b\w+Error\b:")


def _summary(tail: list[str], n: int = 3) -> str:
    """The first few error lines of pip's output (the root cause comes first), else its last lines."""
    errors = [line.strip().lstrip("×╰─> ").strip() for line in tail if _ERROR_LINE.search(line)]
    picked = list(dict.fromkeys(errors))[:n] if errors else [line.strip() for line in tail[-n:]]
    return " | ".join(picked) or "no output"


def pip_install(code_dir, *, editable: bool = True, no_deps: bool = False, extra: Sequence[str] = (),
                python: str = sys.executable, target=None, on_line: Callable[[str], None] | None = None,
                cancelled=None) -> InstallResult:
    """pip-install the project in ``code_dir`` (see :func:`describe_install` for the command).

    Every output line goes to ``on_line`` (credentials masked). ``cancelled`` (a ``threading.Event``
    or callable) stops pip and all its children (SIGTERM, SIGKILL after 3 s) and raises
    ``WizardError("install cancelled", ...)``. A non-zero exit raises :class:`WizardError` with the
    last lines of pip's output in the message (and the last 40 in ``details``).
    """
    code_dir = Path(code_dir)
    if not code_dir.is_dir():
        raise WizardError(f"code folder {code_dir} does not exist", "fetch the code first (Source step)")
    if not any((code_dir / f).is_file() for f in PROJECT_FILES):
        raise WizardError(f"{code_dir} is not a Python project (no pyproject.toml, setup.py or setup.cfg)",
                          "point source.code_dir at the repository folder that holds pyproject.toml or setup.py")
    cmd = describe_install(code_dir.resolve(), editable=editable, no_deps=no_deps, extra=extra,
                           python=python, target=Path(target).resolve() if target is not None else None)
    shown = [redact(c) for c in cmd]
    if as_cancel_check(cancelled)():
        raise WizardError("install cancelled", "nothing was run; start the install again when ready")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PIP_NO_INPUT": "1", "PIP_ROOT_USER_ACTION": "ignore"}

    def forward(line: str) -> None:
        if on_line is not None:
            on_line(redact(line))

    try:
        run = run_streaming(cmd, cwd=code_dir, env=env, on_line=forward, cancelled=cancelled)
    except OSError as e:
        raise WizardError(f"cannot run {python}: {e.strerror or e}",
                          "check the Python interpreter path (it must have pip)") from None
    if run.cancelled:
        raise WizardError("install cancelled",
                          "pip was stopped; a partial install may remain — start the install again when ready")
    if run.returncode != 0:
        tail = [redact(t) for t in run.tail]
        raise WizardError(f"pip install of {code_dir} failed (exit {run.returncode}): {_summary(tail)}",
                          _fix_hint(tail, no_deps), details="\n".join(tail))
    return InstallResult(run.returncode, shown, run.seconds)


def activate_installed(target=None) -> None:
    """Make what pip just installed importable in *this* process.

    ``--target`` folders go on ``sys.path``; an (editable) install into the environment adds a
    ``.pth`` file that Python only reads at start-up, so the site directories are re-read.
    """
    import importlib
    import site

    if target is not None:
        if str(target) not in sys.path:
            sys.path.insert(0, str(target))
    else:
        for d in site.getsitepackages() + [site.getusersitepackages()]:
            if os.path.isdir(d):
                site.addsitedir(d)
    importlib.invalidate_caches()
