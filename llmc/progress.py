"""Structured progress: JSON-lines events beside a human log.

Each event is one JSON object per line: ``{"t": <unix time>, "event": <kind>, ...}``. Kinds:
``start``, ``config``, ``phase`` (name, state: start|end, seconds), ``block`` (i, n, seconds,
block_error, last_error: the relative output error over every token and at each sequence's
last position), ``layer_error`` (block, layer, error: on the rows the method fits — every token,
or each sequence's last position for AWQ with ``loss_tokens: last``; GPTQ adds gptq_loss, its own objective), ``eval_progress`` (pos, done, total),
``scores`` (pos, scores), ``saved`` (kind, path), ``done`` (seconds, results, complete), ``error``
(message), ``cancelled``. Readers (the wizard) consume events and never parse the log; whether a
run finished is said by its ``COMPLETE`` marker (:mod:`llmc.rundir`), never by the events.
Everything written (events, log lines, the echo) passes through :func:`llmc.secrets.redact`.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .events import check_fields
from .secrets import redact


class Progress:
    def __init__(self, run_dir: Path | None = None, echo: IO | None = sys.stderr):
        self.run_dir = Path(run_dir) if run_dir else None
        self._events = self._log = None
        self._closed = False
        self.echo = echo
        self.t0 = time.time()

    def _open(self) -> None:
        """Open the files on the first write: creating a Progress touches nothing (a refused run
        writes nothing into a directory it does not hold)."""
        if self._events is None and self.run_dir and not self._closed:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._events = open(self.run_dir / "events.jsonl", "a", buffering=1)
            self._log = open(self.run_dir / "run.log", "a", buffering=1)

    def event(self, event: str, /, **fields) -> None:
        check_fields(event, fields)  # the fields of a known kind are those of its class (llmc.events)
        self._open()
        rec = _redacted({"t": round(time.time(), 3), "event": event, **fields})
        if self._events:
            self._events.write(json.dumps(rec, default=lambda o: redact(o)) + "\n")

    def log(self, message: str, *, echo: bool = True) -> None:
        """A line of the human log (``echo=False``: the log file only, e.g. a traceback)."""
        self._open()
        line = redact(f"[{time.time() - self.t0:7.1f}s] {message}")
        if self._log:
            self._log.write(line + "\n")
        if self.echo and echo:
            print(line, file=self.echo, flush=True)

    @contextmanager
    def phase(self, name: str, **fields):
        t = time.time()
        self.event("phase", name=name, state="start", **fields)
        self.log(f"{name}: start")
        yield
        dt = time.time() - t
        self.event("phase", name=name, state="end", seconds=round(dt, 3), **fields)
        self.log(f"{name}: done in {dt:.1f}s")

    def close(self) -> None:
        self._closed = True
        for f in (self._events, self._log):
            if f:
                f.close()
        self._events = self._log = None


def _redacted(obj):
    """``obj`` with every string (keys too) passed through :func:`llmc.secrets.redact`."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: _redacted(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_redacted(v) for v in obj]
    return obj


def read_events(path: Path) -> list[dict]:
    """All complete events of an events file (a partly written last line is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
