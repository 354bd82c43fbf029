"""A run is complete or absent: run directories are locked, fresh (or explicitly overwritten),
written through staged outputs and finished by a ``COMPLETE`` marker that every reader trusts.

The engine runs for real (``python -m llmc run`` on tiny-llava, a few samples); runs are killed
with SIGKILL at phase starts read from ``events.jsonl``, then every reader is asked about them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmc.progress import read_events
from llmc.rundir import (
    LOCK_NAME,
    MARKER_NAME,
    OUTPUT_KINDS,
    RunDirError,
    complete_results,
    open_run_dir,
    read_marker,
    write_marker,
)
from wizard.services.errors import WizardError

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "wizard" / "demo" / "assets"
RTN = {"method": "RTN", "weight": {"bit": 4, "symmetric": True, "granularity": "per_group", "group_size": 32}}
GPTQ = {"method": "GPTQ", "weight": {"bit": 4, "symmetric": True, "granularity": "per_group", "group_size": 32}}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _write_config(raw: dict, path: Path) -> Path:
    raw = json.loads(json.dumps(raw))
    raw["eval"]["num_samples"] = 8
    path.write_text(yaml.safe_dump(raw))
    return path


def _raw_config(zoo, save_path: Path, quant=RTN, **save) -> dict:
    """What ``llava_run_config`` builds, for module-scoped fixtures (8 calibration samples)."""
    return {
        "model": {"type": "Llava", "path": str(ASSETS / "tiny-llava"), "torch_dtype": "float32"},
        "calib": {"name": "custom_mm", "path": str(zoo.calib_set), "n_samples": 8},
        "eval": {"eval_pos": ["pretrain", "fake_quant"], "type": "vqa", "name": "mme",
                 "path": str(zoo.eval_set / "data"), "num_samples": 8, "bs": 32, "cache": False},
        "quant": quant,
        "save": {"save_path": str(save_path), "save_fake": True, **save},
    }


def _engine_cmd(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llmc", "run", str(config), "--run-dir", str(run_dir), "--device", "cpu", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _launch(config: Path, run_dir: Path, *extra: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(_engine_cmd(config, run_dir, *extra), stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=_env())


def _llmc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmc", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


def _kill_when(proc: subprocess.Popen, run_dir: Path, pred, timeout: float = 240) -> dict | None:
    """Follow ``run_dir/events.jsonl`` from this engine's own ``start`` event (an earlier run's events
    may be there until it clears them); SIGKILL the engine as soon as an event satisfies ``pred``.
    Returns that event (None when the run ended first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ev = read_events(run_dir / "events.jsonl")
        mine = next((i for i, e in enumerate(ev) if e["event"] == "start" and e.get("pid") == proc.pid), None)
        for e in ev[mine:] if mine is not None else []:
            if pred(e):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return e
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no matching event within {timeout}s")


def _phase_start(name):
    return lambda e: e["event"] == "phase" and e.get("state") == "start" and e["name"] == name


def _one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("llmc: error: "), lines
    assert "Traceback" not in stderr
    return lines[0]


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def _assert_output_folders_whole(root: Path) -> None:
    """Under its final name an output folder is never partly written."""
    for kind in OUTPUT_KINDS:
        out = root / kind
        if out.exists():
            assert (out / "config.json").exists(), out
            assert list(out.glob("*.safetensors")), out


def _assert_complete_or_incomplete(run_dir: Path, proc: subprocess.Popen | None = None,
                                   save_root: Path | None = None) -> str:
    """The invariant: the run is complete (marker, results and outputs consistent, every reader
    says done) or every reader says it is not (never "done", never "running" once the engine died)."""
    from wizard import steps
    from wizard.services import runner

    save_root = save_root or run_dir
    _assert_output_folders_whole(save_root)
    states = {r.run_dir.name: r.state for r in runner.list_runs(run_dir.parent)}
    has_start = any(e["event"] == "start" for e in read_events(run_dir / "events.jsonl"))
    marker = read_marker(run_dir)
    if marker is not None:
        results = json.loads((run_dir / "results.json").read_text())
        assert results["run_id"] == marker["run_id"]
        for kind in OUTPUT_KINDS:
            if results.get(f"saved_{kind}"):  # (a copied run dir: the marker's relative paths follow it)
                assert marker["paths"][kind].name == Path(results[f"saved_{kind}"]).name == kind
                assert (marker["paths"][kind] / "config.json").exists()
        assert not list(save_root.glob(".*.partial"))
        assert states[run_dir.name] == "done"
        assert runner._exit_from_events(run_dir) == 0
        assert runner.reattach(run_dir).poll() == 0
        assert steps.read_results(run_dir)["run_id"] == marker["run_id"]
        if proc is not None:
            assert runner.RunHandle(run_dir, proc.pid, proc).poll() == 0
        return "complete"
    assert complete_results(run_dir) is None
    if has_start:
        assert states[run_dir.name] in ("failed", "cancelled"), states
        assert runner.reattach(run_dir).poll() not in (None, 0)
    assert runner._exit_from_events(run_dir) != 0
    with pytest.raises(WizardError, match="did not complete"):
        steps.read_results(run_dir)
    if proc is not None:
        assert runner.RunHandle(run_dir, proc.pid, proc).poll() not in (None, 0)
    return "incomplete"


# ---------------------------------------------------------------------------------------------
# readers trust only the marker (no engine needed)
# ---------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_events_and_results_without_the_marker_are_not_done(tmp_path):
    from wizard import steps
    from wizard.services import runner

    d = tmp_path / "runs" / "r"
    d.mkdir(parents=True)
    pid = _dead_pid()
    (d / "events.jsonl").write_text(json.dumps({"t": 1, "event": "start", "pid": pid}) + "\n"
                                    + json.dumps({"t": 2, "event": "done", "results": "results.json"}) + "\n")
    (d / "results.json").write_text(json.dumps({"run_id": "abc", "label": "W4A16 RTN", "evals": {}}))
    (d / "config.yml").write_text("x: 1\n")
    assert [r.state for r in runner.list_runs(d.parent)] == ["failed"]
    assert runner._exit_from_events(d) == 1 and runner.reattach(d).poll() == 1
    with pytest.raises(WizardError, match="did not complete"):
        steps.read_results(d)
    # the marker, written last, makes it complete ...
    write_marker(d, run_id="abc", started=time.time(), outputs={"config": d / "config.yml",
                                                                "results": d / "results.json"})
    assert [r.state for r in runner.list_runs(d.parent)] == ["done"]
    assert runner._exit_from_events(d) == 0 and steps.read_results(d)["run_id"] == "abc"
    # ... as long as it is consistent: results of another run, a listed output gone, garbage
    (d / "results.json").write_text(json.dumps({"run_id": "other", "label": "x", "evals": {}}))
    assert read_marker(d) is None and runner.list_runs(d.parent)[0].state == "failed"
    (d / "results.json").write_text(json.dumps({"run_id": "abc", "label": "x", "evals": {}}))
    assert read_marker(d) is not None
    (d / "config.yml").unlink()
    assert read_marker(d) is None
    (d / MARKER_NAME).write_text("{not json")
    assert read_marker(d) is None and runner._exit_from_events(d) == 1


def test_a_held_lock_is_running_and_a_second_open_is_refused_naming_the_holder(tmp_path):
    from wizard.services import runner

    d = tmp_path / "runs" / "r"
    ws = open_run_dir(d)
    try:
        (d / "events.jsonl").write_text(json.dumps({"t": 1, "event": "start", "pid": _dead_pid()}) + "\n")
        holder = json.loads((d / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["started"] <= time.time()
        assert [r.state for r in runner.list_runs(d.parent)] == ["running"]  # the lock, not the (dead) pid
        assert runner.reattach(d).poll() is None
        for overwrite in (False, True):
            with pytest.raises(RunDirError, match=f"in use by another run \\(pid {os.getpid()}") as ei:
                open_run_dir(d, overwrite=overwrite)
            assert "\n" not in str(ei.value)
        assert (d / "events.jsonl").exists()  # a refused --overwrite removed nothing
    finally:
        ws.close()
    assert (d / LOCK_NAME).read_text() == ""
    assert [r.state for r in runner.list_runs(d.parent)] == ["failed"]


def test_progress_redacts_credentials_in_events_and_log(tmp_path, monkeypatch):
    import io

    from llmc.progress import Progress

    secret = "s3cr3t-token-value"
    monkeypatch.setenv("HF_TOKEN", secret)
    echo = io.StringIO()
    p = Progress(tmp_path / "r", echo=echo)
    assert not (tmp_path / "r").exists()  # nothing is written before the first event
    p.event("start", run_dir=str(tmp_path / "r"), device="cpu", pid=1, url=f"https://user:{secret}@example.com/x",
            nested={"k": [f"hf_{'a' * 20}"]}, path=Path(f"/tmp/{secret}"))
    p.log(f"cloning https://bob:pw123456@host/repo with {secret}")
    p.close()
    events = (tmp_path / "r" / "events.jsonl").read_text()
    log = (tmp_path / "r" / "run.log").read_text()
    for text in (events, log, echo.getvalue()):
        assert secret not in text and "pw123456" not in text and "a" * 20 not in text
    ev = read_events(tmp_path / "r" / "events.jsonl")[0]
    assert ev["event"] == "start" and ev["url"] == "https://***@example.com/x"
    assert ev["nested"] == {"k": ["hf_***"]} and ev["path"] == "/tmp/***"
    assert "https://***@host/repo with ***" in log


# ---------------------------------------------------------------------------------------------
# SIGKILL at any point
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("pred,must_be_incomplete,separate_save", [
    pytest.param(_phase_start("calibration_data"), True, False, id="calibration"),
    pytest.param(lambda e: e["event"] == "block", True, False, id="quantization"),
    pytest.param(_phase_start("save_trans"), True, False, id="save_trans"),
    pytest.param(_phase_start("save_fake"), False, False, id="save_fake"),
    pytest.param(_phase_start("save_vllm"), False, False, id="save_vllm"),
    pytest.param(_phase_start("save_fake"), False, True, id="save_fake-outputs-outside-the-run-dir"),
])
def test_sigkill_leaves_a_complete_run_or_one_every_reader_calls_incomplete(
        pred, must_be_incomplete, separate_save, llava_run_config, tmp_path):
    save_root = tmp_path / "out" if separate_save else tmp_path / "runs" / "r"
    raw = llava_run_config(RTN, save_trans=True, save_fake=True, save_vllm=True)
    raw["eval"]["eval_pos"] = ["pretrain", "transformed", "fake_quant"]  # work between the saves
    cfg = _write_config(raw, tmp_path / "cfg.yml")
    run_dir = tmp_path / "runs" / "r"
    extra = () if separate_save else ("--save-path", str(run_dir))
    proc = _launch(cfg, run_dir, *extra, log=tmp_path / "engine.log")
    hit = _kill_when(proc, run_dir, pred)
    assert hit is not None, (tmp_path / "engine.log").read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL
    state = _assert_complete_or_incomplete(run_dir, proc, save_root)
    print(f"killed at {hit}: {state}; left {sorted(p.name for p in save_root.iterdir())}")
    if must_be_incomplete:
        assert state == "incomplete"
    if state == "incomplete":
        assert not (run_dir / MARKER_NAME).exists()


@pytest.fixture(scope="module")
def complete_run(zoo, tmp_path_factory):
    """One finished engine run (RTN, fake model saved in the run dir), to copy from."""
    root = tmp_path_factory.mktemp("complete")
    run_dir = root / "runs" / "a"
    cfg = _write_config(_raw_config(zoo, run_dir), root / "a.yml")
    r = _llmc("run", str(cfg), "--run-dir", str(run_dir), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    return cfg, run_dir


def _copy_run(complete_run, tmp_path) -> Path:
    d = tmp_path / "runs" / "x"
    shutil.copytree(complete_run[1], d)
    return d


@pytest.mark.slow
def test_complete_run_then_overwrite_killed_mid_quantization_is_not_done(complete_run, zoo, tmp_path):
    from wizard.services import runner

    x = _copy_run(complete_run, tmp_path)
    assert _assert_complete_or_incomplete(x) == "complete"
    b = _write_config(_raw_config(zoo, x, quant=GPTQ), tmp_path / "b.yml")
    proc = _launch(b, x, "--overwrite", log=tmp_path / "b.log")
    assert _kill_when(proc, x, lambda e: e["event"] == "block") is not None, (tmp_path / "b.log").read_text()
    # A's outputs went before B wrote anything: no mix of B's config with A's results and model
    assert _assert_complete_or_incomplete(x, proc) == "incomplete"
    assert not (x / "results.json").exists() and not (x / "fake").exists() and not (x / MARKER_NAME).exists()
    assert yaml.safe_load((x / "config.yml").read_text())["quant"]["method"] == "GPTQ"
    starts = [e for e in read_events(x / "events.jsonl") if e["event"] == "start"]
    assert [e["pid"] for e in starts] == [proc.pid]  # B's events only, nothing appended to A's
    assert [r.state for r in runner.list_runs(x.parent)] == ["failed"]
    # the incomplete run is refused too without --overwrite
    r = _llmc("run", str(b), "--run-dir", str(x), "--device", "cpu")
    assert r.returncode != 0 and "already holds an incomplete run" in _one_error_line(r.stderr)


@pytest.mark.slow
def test_rerun_without_overwrite_is_refused_in_one_line_and_changes_nothing(complete_run, tmp_path):
    x = _copy_run(complete_run, tmp_path)
    before = _snapshot(x)
    cfg = complete_run[0]
    for args in (["run", str(cfg), "--run-dir", str(x), "--device", "cpu"],
                 ["--config_path", str(cfg), "--run-dir", str(x)]):
        r = _llmc(*args)
        assert r.returncode != 0
        line = _one_error_line(r.stderr)
        assert str(x) in line and "already holds a complete run" in line and "--overwrite" in line
        assert _snapshot(x) == before
    assert _assert_complete_or_incomplete(x) == "complete"


@pytest.mark.slow
def test_two_concurrent_runs_one_proceeds_the_other_is_refused_naming_the_holder(llava_run_config, tmp_path):
    cfg = _write_config(llava_run_config(RTN, save_fake=True), tmp_path / "cfg.yml")
    run_dir = tmp_path / "runs" / "r"
    procs = [_launch(cfg, run_dir, "--save-path", str(run_dir), log=tmp_path / f"p{i}.log") for i in range(2)]
    try:
        t0 = time.time()
        while all(p.poll() is None for p in procs) and time.time() - t0 < 240:
            time.sleep(0.05)
        refused = [i for i, p in enumerate(procs) if p.poll() is not None]
        assert len(refused) == 1, [(tmp_path / f"p{i}.log").read_text()[-2000:] for i in range(2)]
        loser, winner = procs[refused[0]], procs[1 - refused[0]]
        assert loser.returncode == 1
        line = _one_error_line((tmp_path / f"p{refused[0]}.log").read_text())
        assert f"is in use by another run (pid {winner.pid}" in line
        # the winner proceeds: the only events are its own
        t0 = time.time()
        while not any(e["event"] == "block" for e in read_events(run_dir / "events.jsonl")):
            assert winner.poll() is None and time.time() - t0 < 240, (tmp_path / f"p{1 - refused[0]}.log").read_text()
            time.sleep(0.05)
        assert {e["pid"] for e in read_events(run_dir / "events.jsonl") if e["event"] == "start"} == {winner.pid}
        assert winner.wait(timeout=300) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert _assert_complete_or_incomplete(run_dir, winner) == "complete"


# ---------------------------------------------------------------------------------------------
# paths checked before compute
# ---------------------------------------------------------------------------------------------


def _unwritable(tmp_path: Path) -> Path:
    """A folder nobody here can create entries in (root ignores permission bits: use sysfs)."""
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o500)
        return d
    import tempfile

    d = Path("/sys")
    try:
        os.rmdir(tempfile.mkdtemp(dir=d))
    except OSError:
        return d
    pytest.skip("no folder this root user cannot write to")


@pytest.mark.parametrize("what", ["save path unwritable", "save path name too long", "save path is a file",
                                  "run dir unwritable", "run dir name too long", "run dir is a file"])
def test_path_problems_are_one_line_before_the_model_loads(what, llava_run_config, tmp_path, capsys):
    from llmc.cli import main

    cfg = _write_config(llava_run_config(RTN, save_fake=True), tmp_path / "cfg.yml")
    run_dir = tmp_path / "runs" / "r"
    bad = {"unwritable": _unwritable(tmp_path) / "llmc-test" / "out", "name too long": tmp_path / ("a" * 5000),
           "is a file": tmp_path / "file.txt"}[what.split(" ", 2)[2]]
    (tmp_path / "file.txt").write_text("not a folder\n")
    if what.startswith("save path"):
        rc = main(["run", str(cfg), "--run-dir", str(run_dir), "--save-path", str(bad), "--device", "cpu"])
    else:
        run_dir = bad
        rc = main(["run", str(cfg), "--run-dir", str(bad), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc != 0
    line = _one_error_line(err)
    assert len(line) < 400  # a 5,000-character name is elided
    assert ("save" in line) if what.startswith("save path") else ("run directory" in line)
    assert not (tmp_path / "runs").exists()  # nothing created, the model never loaded
    assert (tmp_path / "file.txt").read_text() == "not a folder\n"


@pytest.mark.slow
def test_a_5000_character_name_from_the_command_line_is_one_line_without_traceback(llava_run_config, tmp_path):
    cfg = _write_config(llava_run_config(RTN, save_fake=True), tmp_path / "cfg.yml")
    long = tmp_path / ("b" * 5000)
    for args in (["run", str(cfg), "--run-dir", str(long)], ["--config_path", str(cfg), "--run-dir", str(long)],
                 ["run", str(cfg), "--save-path", str(long / "out")]):
        r = _llmc(*args)
        assert r.returncode != 0
        assert len(_one_error_line(r.stderr)) < 400
    r = _llmc("run", str(long) + ".yml")  # the config file's own name
    assert r.returncode != 0 and _one_error_line(r.stderr)


# ---------------------------------------------------------------------------------------------
# the headless wizard retries after a failed run
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_onboard_run_retries_after_a_failed_run_without_editing_the_answers(zoo, tmp_path):
    from wizard import steps
    from wizard.session import Session
    from wizard.services import runner
    from wizard.services.answers import Answers, load_answers, save_answers

    a = Answers()
    a.source.weights_url = a.source.weights_dir = str(ASSETS / "tiny-llava")
    a.inspect.model_kind = "transformers"
    a.inspect.architecture = "LlavaForConditionalGeneration"
    a.inspect.projector_last_layers = ["model.multi_modal_projector.linear_2"]
    a.generate.name = "retry-llava"
    a.generate.method = "RTN"
    a.generate.calib_path = str(zoo.calib_set)
    a.generate.eval_path = str(zoo.eval_set / "data")
    a.generate.n_calib = 8
    a.generate.eval_samples = 8
    answers = tmp_path / "answers.yml"
    save_answers(a, answers)
    # the first run fails in the engine after it started (no such device)
    ctx = Session.load(answers, tmp_path, models_dir=tmp_path / "adapters", assume_yes=True, device="cuda:99")
    steps.onboard(ctx, ("generate", "register"))
    with pytest.raises(WizardError, match="did not complete"):
        steps.run(ctx)
    failed = Path(load_answers(answers).run.run_dir)
    assert any(e["event"] == "start" for e in read_events(failed / "events.jsonl"))
    assert [r.state for r in runner.list_runs(failed.parent)] == ["failed"]
    # the next `llmc-wizard run`, same answers file untouched, runs into a fresh directory
    r = subprocess.run([sys.executable, "-m", "wizard.cli", "run", "--answers", str(answers), "--models-dir",
                        str(tmp_path / "adapters"), "--device", "cpu"], capture_output=True, text=True,
                       timeout=600, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already holds a run" in r.stderr
    retry = Path(load_answers(answers).run.run_dir)
    assert retry != failed and retry.parent == failed.parent
    assert _assert_complete_or_incomplete(retry) == "complete"
    assert complete_results(retry)["table"] in r.stderr
    assert sorted(r.state for r in runner.list_runs(failed.parent)) == ["done", "failed"]


def test_a_run_reads_its_launch_time_config_not_the_shared_file(zoo, tmp_path):
    """A second wizard on the same model rewrites ``configs/<model>_<method>.yml`` just after a W3
    launch: the run still quantizes at W3 (it reads the copy frozen in its run directory)."""
    from wizard.services.runner import launch

    shared = tmp_path / "configs" / "m_rtn.yml"
    shared.parent.mkdir()
    w3 = json.loads(json.dumps(RTN))
    w3["weight"]["bit"] = 3
    raw = _raw_config(zoo, tmp_path / "out", quant=w3)
    raw.pop("eval")
    raw.pop("calib")
    shared.write_text(yaml.safe_dump(raw))
    handle = launch(shared, tmp_path / "runs" / "r1", device="cpu", env={"OMP_NUM_THREADS": "1"})
    raw["quant"]["weight"]["bit"] = 4  # the other wizard, at once
    shared.write_text(yaml.safe_dump(raw))
    deadline = time.monotonic() + 300
    while handle.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert handle.poll() == 0, (handle.run_dir / "process.log").read_text()[-2000:]
    used = yaml.safe_load((handle.run_dir / "config.yml").read_text())
    assert used["quant"]["weight"]["bit"] == 3
    assert (handle.run_dir / "source-config.yml").read_text() != shared.read_text()
