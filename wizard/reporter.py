"""How a step talks back to whoever runs it (the TUI's worker, the headless command line)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Reporter:
    """How a step talks back: log lines, progress (done/total, either may be None), cancel."""

    log: Callable[[str], None] = lambda message: None
    progress: Callable[[float | None, float | None, str], None] = lambda done, total, message: None
    cancelled: Callable[[], bool] = lambda: False
    #: the pid of a child process the step started (so a UI can show or stop it)
    child_started: Callable[[int], None] = lambda pid: None
    #: each typed engine event (:mod:`llmc.events`) of a run being followed, as it arrives
    event: Callable[[object], None] = lambda e: None
