"""The development environment is the lock, and the lock is what its inputs resolve to."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILT_FROM = Path(sys.prefix) / ".llmc-wizard-lock"


def _lock_tool():
    spec = importlib.util.spec_from_file_location("lock_tool", REPO / "scripts" / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_installed_environment_is_exactly_the_lock():
    if not BUILT_FROM.is_file():
        pytest.skip(f"{sys.prefix} was not built by scripts/setup-env.sh (no {BUILT_FROM.name})")
    lock = _lock_tool()
    if Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        assert BUILT_FROM.read_text() == (REPO / "requirements" / "dev.lock").read_text(), \
            "requirements/dev.lock changed since .venv was built: run scripts/setup-env.sh"
    from conftest import INSTALLED_AT_START as have  # before any test installed a demo package

    want = lock.pins(BUILT_FROM)
    assert len(want) > 50
    wrong = {n: (v, have.get(n)) for n, v in want.items() if have.get(n) != v}
    assert not wrong, f"locked version != installed: {wrong}"
    extra = sorted(set(have) - set(want) - {"llmc-wizard"})
    assert not extra, f"installed but not in the lock: {extra}"


def test_the_lock_is_what_its_inputs_resolve_to_at_its_moment(tmp_path):
    lock = _lock_tool()
    text = (REPO / "requirements" / "dev.lock").read_text()
    moment = re.search(r"^# resolved-before: (\S+)", text, re.M).group(1)
    lock.resolve(tmp_path, moment)
    for name in ("dev.lock", "files.lock"):
        assert lock.diff(REPO / "requirements" / name, tmp_path / name) == [], \
            f"requirements/{name} is not what requirements/*.in resolve to: run make lock"
    assert lock.pins(tmp_path / "dev.lock")["lmms-eval"] == "0.7.3"


def test_the_diff_names_every_change(tmp_path):
    lock = _lock_tool()
    (tmp_path / "a").write_text("a==1 \\\n    --hash=sha256:00\nb_c==2\nd==3\n")
    (tmp_path / "b").write_text("a==1.1\nB.C==2\ne==4\n")
    assert lock.diff(tmp_path / "a", tmp_path / "b") == ["  a: 1 -> 1.1", "  + e==4", "  - d==3"]
