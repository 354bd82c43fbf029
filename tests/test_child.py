"""Services run in a child process: results, errors, crashes, and a Cancel that kills the group."""

from __future__ import annotations

import os
import textwrap
import time

import pytest

from wizard.services.child import run_child, wait_gone
from wizard.services.errors import WizardError

CHILD = textwrap.dedent('''
    import os, subprocess, sys, time
    from wizard.services.child import child_main
    from wizard.services.errors import WizardError

    def work():
        mode = sys.argv[1]
        print("starting", mode, flush=True)
        if mode == "ok":
            return {"answer": 42, "args": sys.argv[2:]}
        if mode == "refuse":
            raise WizardError("layer foo.bar does not exist", "pick one of the listed layers")
        if mode == "crash":
            raise RuntimeError("boom in the adapter")
        # "hang": a grandchild in the same group, then wait forever
        sub = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"grandchild {sub.pid}", flush=True)
        time.sleep(600)

    raise SystemExit(child_main(work))
''')


@pytest.fixture
def child_env(tmp_path):
    (tmp_path / "fake_service.py").write_text(CHILD)
    return {"PYTHONPATH": str(tmp_path)}


def test_result_and_log_lines(child_env):
    lines: list[str] = []
    res = run_child("fake_service", ["ok", "a b", 3], what="demo", on_line=lines.append, env=child_env)
    assert res == {"answer": 42, "args": ["a b", "3"]}
    assert lines == ["starting ok"]


def test_child_wizard_error_comes_back_as_is(child_env):
    with pytest.raises(WizardError) as e:
        run_child("fake_service", ["refuse"], what="demo", env=child_env)
    assert e.value.message == "layer foo.bar does not exist" and e.value.fix == "pick one of the listed layers"


def test_crash_names_the_work_and_shows_the_traceback_tail(child_env):
    with pytest.raises(WizardError) as e:
        run_child("fake_service", ["crash"], what="smoke test", env=child_env)
    assert e.value.message.startswith("smoke test failed (exit code 1)")
    assert "RuntimeError: boom in the adapter" in e.value.message


def test_cancel_kills_the_child_and_its_children(child_env):
    lines: list[str] = []
    pids: list[int] = []
    t0 = time.monotonic()

    def cancelled() -> bool:  # cancel once the grandchild has reported
        return any(x.startswith("grandchild") for x in lines)

    with pytest.raises(WizardError, match="demo cancelled"):
        run_child("fake_service", ["hang"], what="demo", on_line=lines.append, cancelled=cancelled,
                  on_start=pids.append, env=child_env)
    assert time.monotonic() - t0 < 30
    grandchild = int(next(x for x in lines if x.startswith("grandchild")).split()[1])
    assert wait_gone(pids[0]) and wait_gone(grandchild)
    with pytest.raises(ProcessLookupError):
        os.kill(grandchild, 0)


def test_a_failing_callback_does_not_orphan_the_child(child_env):
    pids: list[int] = []

    def boom(line: str) -> None:
        raise RuntimeError("the app is gone")

    with pytest.raises(RuntimeError, match="the app is gone"):
        run_child("fake_service", ["hang"], what="demo", on_line=boom, on_start=pids.append, env=child_env)
    assert wait_gone(pids[0])


def test_undecodable_output_and_a_closed_stdin(child_env, tmp_path):
    (tmp_path / "odd_service.py").write_text(textwrap.dedent('''
        import sys
        from wizard.services.child import child_main
        sys.stdout.buffer.write(b"bytes \\xff\\xfe not utf-8\\n"); sys.stdout.flush()
        raise SystemExit(child_main(lambda: {"stdin": sys.stdin.read()}))
    '''))
    lines: list[str] = []
    res = run_child("odd_service", [], what="demo", on_line=lines.append, env=child_env)
    assert res == {"stdin": ""}  # reads end of file at once, never the caller's terminal
    assert lines == ["bytes \ufffd\ufffd not utf-8"]
