"""Time left in a run: the current phase at its own pace, the phases still to come from history.

:class:`Eta` is fed the run's typed events (:mod:`llmc.events`) as they arrive, by the Run screen
and by the headless ``follow_run`` alike. Within a phase that reports i of N (quantized blocks,
evaluated questions) the time left is ``spent_at_report * (N - i) / i`` less the time since that
report (the unit in progress counts what it has taken); before its first report, and for
every phase not yet started, it is what that phase took in this model's past complete runs
(:func:`phase_history`, the median of the newest few; a phase that runs several times in a run,
such as ``eval_pretrain`` with two evaluations, counts with its total). Without history there is
no guess.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from llmc.events import Block, EvalProgress, Phase, load_events
from llmc.rundir import is_complete

#: how many of the newest complete runs the history is taken from
HISTORY_RUNS = 5


def phase_history(run_dirs: list[Path], keep: int = HISTORY_RUNS) -> dict[str, float]:
    """``{phase: seconds}`` (median) over the first ``keep`` complete runs of ``run_dirs`` (pass them
    newest first), in the order the newest of them ran its phases. Incomplete runs do not count."""
    seen: dict[str, list[float]] = {}
    used = 0
    for d in run_dirs:
        if used >= keep:
            break
        if not is_complete(d):
            continue
        used += 1
        per_run: dict[str, float] = {}  # a phase that runs several times (one eval_<pos> per eval) adds up
        for e in load_events(Path(d) / "events.jsonl"):
            if isinstance(e, Phase) and e.state == "end" and e.seconds is not None:
                per_run[e.name] = per_run.get(e.name, 0.0) + float(e.seconds)
        for name, sec in per_run.items():
            seen.setdefault(name, []).append(sec)
    return {name: statistics.median(v) for name, v in seen.items()}


def fmt_seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Eta:
    """Follows one run's events; :meth:`phase_left` and :meth:`run_left` in seconds (None: no guess)."""

    def __init__(self, history: dict[str, float] | None = None):
        self.history = dict(history or {})
        self.phase: str | None = None
        self.phase_t0: float | None = None
        self.frac = 0.0
        self.t_report: float | None = None  #: when the phase last reported i of N
        self.done: set[str] = set()

    def feed(self, e) -> None:
        if isinstance(e, Phase):
            if e.state == "start":
                self.phase, self.phase_t0, self.frac = e.name, float(e.t or time.time()), 0.0  # t 0: unset
            elif e.state == "end":
                self.done.add(e.name)
                if e.name == self.phase:
                    self.phase, self.phase_t0 = None, None
        elif isinstance(e, Block) and e.n:
            self.frac, self.t_report = (e.i + 1) / e.n, float(e.t or time.time())
        elif isinstance(e, EvalProgress) and e.total:
            self.frac, self.t_report = e.done / e.total, float(e.t or time.time())

    def phase_left(self, now: float | None = None) -> float | None:
        # one reading of the state: a worker thread may feed events while the UI asks
        phase, t0, frac, t_report = self.phase, self.phase_t0, self.frac, self.t_report
        if phase is None or t0 is None:
            return None
        now = time.time() if now is None else now
        spent = now - t0
        if 0 < frac < 1:
            # the pace up to the last report, less what the unit in progress has already taken:
            # the time left shrinks while you watch, it never grows between reports
            t = t_report if t_report is not None else now
            return max((t - t0) * (1 - frac) / frac - (now - t), 0.0)
        if frac >= 1:
            return 0.0
        past = self.history.get(phase)
        return max(past - spent, 0.0) if past is not None else None

    def run_left(self, now: float | None = None) -> float | None:
        """The current phase's time left plus the history of phases not started yet; None while
        the run has no history (a first run) or the current phase has no guess."""
        if not self.history:
            return None
        current = self.phase_left(now)
        if self.phase is not None and current is None:
            return None
        todo = [p for p in self.history if p not in self.done and p != self.phase]
        return (current or 0.0) + sum(self.history[p] for p in todo)

    def text(self, now: float | None = None) -> str:
        """``", quantize 12s left, run ~1m05s left"``: the parts that have a guess (may be empty)."""
        parts = []
        left = self.phase_left(now)
        if left is not None and self.phase:
            parts.append(f"{self.phase} {fmt_seconds(left)} left")
        total = self.run_left(now)
        if total is not None:
            parts.append(f"run ~{fmt_seconds(total)} left")
        return "".join(f", {p}" for p in parts)
