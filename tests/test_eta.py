"""Time left in a run (wizard/services/eta.py): the phase at its pace, phases to come from history."""

from __future__ import annotations

import json
import time

from llmc.events import Block, EvalProgress, Phase
from llmc.progress import Progress
from llmc.rundir import write_marker
from wizard.services.eta import Eta, phase_history


def _past_run(d, seconds: dict[str, float], complete: bool = True):
    """A run directory whose events say each phase took ``seconds[name]`` (the engine's writer)."""
    p = Progress(d, echo=None)
    for name, s in seconds.items():
        p.event("phase", name=name, state="start")
        p.event("phase", name=name, state="end", seconds=s)
    p.close()
    if complete:
        (d / "results.json").write_text(json.dumps({"label": "x"}))
        write_marker(d, run_id="r", started=time.time() - 1, outputs={})
    return d


def test_history_is_the_median_of_complete_runs_only(tmp_path):
    runs = [_past_run(tmp_path / "a", {"load_model": 2, "quantize": 10, "eval_quantized": 30}),
            _past_run(tmp_path / "b", {"load_model": 4, "quantize": 20, "eval_quantized": 50}),
            _past_run(tmp_path / "c", {"load_model": 100, "quantize": 900}, complete=False),  # failed: ignored
            _past_run(tmp_path / "d", {"load_model": 3, "quantize": 12, "eval_quantized": 40})]
    h = phase_history(runs)
    assert h == {"load_model": 3, "quantize": 12, "eval_quantized": 40}
    assert list(h) == ["load_model", "quantize", "eval_quantized"]  # the order the newest ran them
    assert phase_history(runs, keep=1) == {"load_model": 2, "quantize": 10, "eval_quantized": 30}
    assert phase_history([]) == {}


def test_eta_uses_the_pace_then_the_history():
    t0 = 1000.0
    eta = Eta({"load_model": 5, "quantize": 40, "eval_quantized": 60})
    eta.feed(Phase(t=t0, name="load_model", state="start"))
    # before any report: what the phase took before, less the time spent in it
    assert eta.phase_left(now=t0 + 2) == 3
    assert eta.run_left(now=t0 + 2) == 3 + 40 + 60
    eta.feed(Phase(t=t0 + 5, name="load_model", state="end", seconds=5))
    eta.feed(Phase(t=t0 + 5, name="quantize", state="start", n_blocks=4))
    eta.feed(Block(t=t0 + 15, i=0, n=4, seconds=10, block_error=0.1, last_error=0.1))
    # a quarter done in 10 s: 30 s left in the phase, then the evaluation's 60 s
    assert eta.phase_left(now=t0 + 15) == 30
    assert eta.run_left(now=t0 + 15) == 90
    assert "quantize 30s left" in eta.text(now=t0 + 15) and "run ~1m30s left" in eta.text(now=t0 + 15)
    eta.feed(Phase(t=t0 + 45, name="quantize", state="end", seconds=40))
    eta.feed(Phase(t=t0 + 45, name="eval_quantized", state="start"))
    eta.feed(EvalProgress(t=t0 + 55, pos="quantized", name="mme", done=10, total=20))
    assert eta.phase_left(now=t0 + 55) == 10 and eta.run_left(now=t0 + 55) == 10


def test_no_history_no_guess_before_the_first_report():
    eta = Eta()
    eta.feed(Phase(t=100.0, name="quantize", state="start"))
    assert eta.phase_left(now=110) is None and eta.run_left(now=110) is None and eta.text(now=110) == ""
    eta.feed(Block(t=110.0, i=0, n=4, seconds=10, block_error=0.1, last_error=0.1))
    assert eta.phase_left(now=110) == 30
    assert eta.run_left(now=110) is None  # the phases after this one are unknown
    eta.feed(Block(t=140.0, i=3, n=4, seconds=10, block_error=0.1, last_error=0.1))
    assert eta.phase_left(now=140) == 0


def test_an_event_without_a_time_starts_the_phase_now():
    import time

    eta = Eta()
    eta.feed(Phase(name="quantize", state="start"))  # t left at its default
    assert eta.phase_t0 is not None and abs(eta.phase_t0 - time.time()) < 5


def test_a_phase_run_twice_in_a_run_counts_with_its_total(tmp_path):
    p = Progress(tmp_path / "r", echo=None)
    for s in (10, 30):  # two evaluations of the original model
        p.event("phase", name="eval_pretrain", state="start")
        p.event("phase", name="eval_pretrain", state="end", seconds=s)
    p.close()
    (tmp_path / "r" / "results.json").write_text(json.dumps({"label": "x"}))
    write_marker(tmp_path / "r", run_id="r", started=time.time() - 1, outputs={})
    assert phase_history([tmp_path / "r"]) == {"eval_pretrain": 40}


def test_time_left_shrinks_between_reports():
    """Watching a phase between two reports: the unit in progress counts what it has taken, so the
    time left goes down second by second (it grew: 3m00s -> 3m56s after block 1 of 2)."""
    eta = Eta()
    eta.feed(Phase(t=1000.0, name="quantize", state="start", n_blocks=2))
    eta.feed(Block(t=1060.0, i=0, n=2, seconds=60, block_error=0.1, last_error=0.1))
    seen = [eta.phase_left(now=1060.0 + k) for k in range(0, 70, 10)]
    assert seen[0] == 60 and all(b <= a for a, b in zip(seen, seen[1:])) and seen[-1] == 0
