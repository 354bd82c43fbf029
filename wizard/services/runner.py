"""Launch the engine (``python -m llmc run``) as a subprocess; follow its events; cancel; reattach.

A run directory holds ``config.yml``, ``run.log`` and ``events.jsonl`` (written by the engine),
``process.log`` (the subprocess's stdout/stderr), ``results.json`` and, last, the ``COMPLETE``
marker (:mod:`llmc.rundir`). A run is done only when its marker is there and sound; it is running
while the engine holds the directory's lock (``.lock``, released by the kernel when the process
dies); otherwise it is cancelled or failed, whatever its events or results say.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmc.events import Event, decode_lines
from llmc.progress import read_events
from llmc.rundir import LOCK_NAME, is_complete, is_locked, lock_holder

from .errors import WizardError
from .install import kill_group


def engine_command(config: Path, run_dir: Path, device: str | None = None, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "llmc", "run", str(config), "--run-dir", str(run_dir), "--save-path", str(run_dir)]
    if device:
        cmd += ["--device", device]
    return cmd


class LineTail:
    """Incremental reader of a growing text file: its complete lines since the last poll."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def _complete(self) -> bytes:
        if not self.path.exists():
            return b""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        complete, newline, self._partial = (self._partial + data).rpartition(b"\n")
        return complete + newline

    def poll(self) -> list[str]:
        return self._complete().decode(errors="replace").splitlines()


class EventTail(LineTail):
    """Incremental reader of a growing events.jsonl: the complete lines, as typed events
    (:mod:`llmc.events`)."""

    def poll(self) -> list[Event]:
        return decode_lines(self._complete())


@dataclass
class RunHandle:
    run_dir: Path
    pid: int
    proc: subprocess.Popen | None = None  # None when reattached
    started: float | None = None  #: when the run started (epoch seconds), where known
    events: EventTail = field(init=False)

    def __post_init__(self):
        self.events = EventTail(self.run_dir / "events.jsonl")

    def poll(self) -> int | None:
        """Exit code, or None while running. 0 means a complete run (its marker), and only that: an
        engine that exited 0 without one reads as failed (1)."""
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is None:
                return None
            return 0 if is_complete(self.run_dir) else (rc or 1)
        return None if _running(self.run_dir, self.pid) else _exit_from_events(self.run_dir)

    def cancel(self, grace: float = 3.0) -> bool:
        """Stop the whole process tree (its process group). False, and nothing recorded, when the
        run had already ended: a cancel that comes too late never marks a finished run cancelled."""
        if self.poll() is not None:
            return False

        def wait(seconds: float) -> None:
            deadline = time.time() + seconds
            while time.time() < deadline and self.poll() is None:
                time.sleep(0.05)

        kill_group(self.pid, wait, grace)
        if self.proc is not None:
            self.proc.wait(timeout=5)
        if is_complete(self.run_dir):  # it finished while the signal was on its way
            return False
        with open(self.run_dir / "events.jsonl", "a") as f:
            f.write(json.dumps({"t": round(time.time(), 3), "event": "cancelled"}) + "\n")
        return True

    def wait(self, timeout: float | None = None) -> int | None:
        t0 = time.time()
        while (rc := self.poll()) is None:
            if timeout is not None and time.time() - t0 > timeout:
                return None
            time.sleep(0.1)
        return rc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as finished
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _running(run_dir: Path, pid: int | None = None) -> bool:
    """The engine still holds the run directory's lock (directories from before the lock: its pid lives)."""
    if (Path(run_dir) / LOCK_NAME).exists():
        return is_locked(run_dir)
    return bool(pid) and pid_alive(int(pid))


def _exit_from_events(run_dir: Path) -> int:
    """A finished run's exit code: 0 only with its completeness marker, 130 when cancelled, else 1."""
    if is_complete(run_dir):
        return 0
    kinds = [e["event"] for e in read_events(run_dir / "events.jsonl")]
    return 130 if "cancelled" in kinds else 1


def launch(config: Path, run_dir: Path, device: str | None = None, env: dict | None = None) -> RunHandle:
    config = Path(config)
    if not config.exists():
        raise WizardError(f"config {config} does not exist", "run the Generate step first")
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise WizardError(f"run directory {run_dir} already holds a run", "choose a new run directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WizardError(f"cannot create run directory {run_dir}: {e.strerror or e}",
                          "choose a run directory you can write to") from None
    frozen = run_dir / "source-config.yml"
    shutil.copyfile(config, frozen)
    log = open(run_dir / "process.log", "ab")
    # the engine reads the launch-time copy: the shared config may be rewritten (another wizard on
    # the same model) while it starts
    cmd = engine_command(frozen, run_dir, device)
    (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    log.close()
    return RunHandle(run_dir, proc.pid, proc, started=time.time())


@dataclass
class PastRun:
    run_dir: Path
    state: str  # running, done, failed, cancelled
    started: float | None
    label: str


def list_runs(root: Path, module: str | None = None) -> list[PastRun]:
    """The runs under ``root``, newest first; with ``module``, only that model's
    (``<module>-<timestamp>`` folders)."""
    out = []
    root = Path(root)
    if not root.is_dir():  # none yet, or not a folder (starting a run then says so)
        return out
    for d in sorted(root.iterdir()):
        if module is not None and not d.name.startswith(f"{module}-"):
            continue
        ev = read_events(d / "events.jsonl") if d.is_dir() else []
        holder = (lock_holder(d) or {}) if d.is_dir() else {}
        if not ev and not holder.get("pid"):
            continue
        kinds = [e["event"] for e in ev]
        # a run that has not written its first event yet is known by its lock
        start = next((e for e in ev if e["event"] == "start"), None) or {"pid": holder.get("pid"),
                                                                          "t": holder.get("started")}
        if is_complete(d):  # the marker, never the events, says a run is done
            state = "done"
        elif _running(d, start.get("pid")):
            state = "running"
        elif "cancelled" in kinds:
            state = "cancelled"
        else:
            state = "failed"
        label = (d / "command.txt").read_text().strip() if (d / "command.txt").exists() else d.name
        out.append(PastRun(d, state, start.get("t"), label))
    return sorted(out, key=lambda r: r.started or 0.0, reverse=True)


def reattach(run_dir: Path) -> RunHandle:
    run_dir = Path(run_dir)
    start = next((e for e in read_events(run_dir / "events.jsonl") if e["event"] == "start"), None)
    if start is None:
        holder = lock_holder(run_dir)  # started, no event written yet
        if holder and holder.get("pid"):
            return RunHandle(run_dir, int(holder["pid"]), None, started=holder.get("started"))
        raise WizardError(f"{run_dir} has no started run", "pick a run from the list of past runs")
    return RunHandle(run_dir, int(start["pid"]), None, started=start.get("t"))
