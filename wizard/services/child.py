"""Run a wizard service in a child process that Cancel really stops.

A service that loads a model (smoke test, the Try step's two answers) cannot be interrupted
inside a thread: torch holds the thread until the call returns. Run in a child process, it
can: :func:`run_child` starts ``python -m <module> <args>`` in its own process group, streams
its output lines to ``on_line``, polls ``cancelled()`` and kills the whole group when it
returns true.

The child speaks a two-line protocol on stdout, through :func:`emit_result` and
:func:`emit_error`; every other line is log text.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .errors import WizardError
from .install import kill_process_group

RESULT = "@@result "
ERROR = "@@error "


def emit_result(payload: dict) -> None:
    print(RESULT + json.dumps(payload), flush=True)


def emit_error(message: str, fix: str | None = None) -> None:
    print(ERROR + json.dumps({"message": message, "fix": fix}), flush=True)


def child_main(fn: Callable[[], dict]) -> int:
    """Run ``fn`` in the child: its dict is the result, a :class:`WizardError` the error line."""
    try:
        emit_result(fn())
    except WizardError as e:
        emit_error(e.message, e.fix)
        return 1
    return 0


def run_child(module: str, args: list[str], *, what: str, on_line: Callable[[str], None] | None = None,
              cancelled: Callable[[], bool] | None = None, on_start: Callable[[int], None] | None = None,
              poll_s: float = 0.1, env: dict | None = None, needs_result: bool = True,
              python: str | os.PathLike | None = None, timeout: float | None = None, timeout_fix: str = "") -> dict:
    """Run ``python -m module args``; return the child's result dict.

    ``needs_result=False`` runs a module that does not speak the protocol (it writes its own
    output files): a zero exit code is then success and the result is ``{}``.

    Raises :class:`WizardError` with the child's own message, with the tail of its output when it
    died without one, or ``"<what> cancelled"`` after ``cancelled()`` turned true (the process
    group is gone by then). ``on_start`` receives the child's pid. ``python``: another interpreter
    (the model's own environment) instead of this one. ``timeout``: seconds after which the child's
    group is killed and the error says so (``timeout_fix`` is its fix).
    """
    cmd = [str(python or sys.executable), "-m", module, *[str(a) for a in args]]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **(env or {})}
    # whatever imports here imports there: this package, installed model code put on sys.path
    # (not this interpreter's own library folders: they would shadow another Python's)
    own = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix})
    # (nor any site folder: the child's own start-up adds those, in its own order)
    paths = [str(Path(__file__).resolve().parents[2])] + [
        p for p in sys.path if p and os.path.isdir(p) and not os.path.realpath(p).startswith(own)
        and Path(p).name not in ("site-packages", "dist-packages")]
    paths += full_env.get("PYTHONPATH", "").split(os.pathsep)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys(paths) if p)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, encoding="utf-8", errors="replace", bufsize=1, start_new_session=True,
                            env=full_env)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
        finally:
            lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    result: dict | None = None
    error: dict | None = None
    tail: deque[str] = deque(maxlen=8)  # the last lines, for a crash report
    try:
        if on_start:
            on_start(proc.pid)
        done = False
        t0 = time.monotonic()
        while not done:
            if cancelled and cancelled():
                kill_process_group(proc)
                raise WizardError(f"{what} cancelled", "start it again when ready")
            if timeout is not None and time.monotonic() - t0 > timeout:
                kill_process_group(proc)
                last = f" (its last line: {tail[-1][:200]})" if tail else ""
                raise WizardError(f"{what} did not finish within {timeout:.0f} s and was stopped{last}",
                                  timeout_fix or "find what hangs, or allow more time")
            try:
                line = lines.get(timeout=poll_s)
            except queue.Empty:
                continue
            if line is None:
                done = True
            elif line.startswith(RESULT):
                result = json.loads(line[len(RESULT):])
            elif line.startswith(ERROR):
                error = json.loads(line[len(ERROR):])
            else:
                tail.append(line)
                if on_line:
                    on_line(line)
        rc = proc.wait()
    finally:  # whatever went wrong here (a callback raising, bad output), the child goes too
        if proc.poll() is None:
            kill_process_group(proc)
    if error is not None:
        raise WizardError(error["message"], error.get("fix"))
    if rc == 0 and result is None and not needs_result:
        return {}
    if rc != 0 or result is None:
        last = "\n".join(tail)
        raise WizardError(f"{what} failed (exit code {rc})" + (f":\n{last}" if last else ""),
                          "read the log above; fix the adapter or the inputs and try again")
    return result


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once no process ``pid`` exists (reaped or never started)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
