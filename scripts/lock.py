#!/usr/bin/env python3
"""The development environment's lock files, and the deliberate step that moves them.

    scripts/lock.py write    resolve requirements/*.in to the newest releases allowed and rewrite
                             requirements/dev.lock and requirements/files.lock (prints what changed)
    scripts/lock.py check    the same resolution into build/lock-next/, an environment of its own
                             (.venv-next) built from it, the whole suite run there: prints what
                             changed and what broke; the repository's lock is not touched
    scripts/lock.py diff A B the version changes between two lock files

Each lock records the moment it was resolved ("# resolved-before: ..."): resolving again with that
moment (uv's --exclude-newer) gives the same versions, and the test suite resolves the models'
environments with it too, so nothing a test installs depends on the day it runs.
Run it with any Python 3.10+; it uses the uv of .venv (or of PATH).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
#: folders some machines keep a copy of registry files in (the same files, the same hashes): setup-env.sh
#: installs from them when they are there. Resolution never reads them: their files carry no upload
#: time, so "as of the lock's moment" would take whatever they hold today.
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def uv() -> str:
    for cand in (ROOT / ".venv" / "bin" / "uv", shutil.which("uv")):
        if cand and Path(cand).exists():
            return str(cand)
    sys.exit("lock: uv not found: run scripts/setup-env.sh first (it installs the locked uv), or pip install uv")


def compile_one(src: Path, out: Path, moment: str, no_deps: bool = False) -> str:
    cmd = [uv(), "pip", "compile", "-q", str(src.relative_to(ROOT)), "--python-version", PYTHON_VERSION,
           "--python-platform", PLATFORM, "--generate-hashes", "--exclude-newer", moment, "--no-header",
           *(["--no-deps"] if no_deps else [])]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"lock: resolving {src.name} failed:\n{p.stderr.strip()}")
    return p.stdout


def resolve(dest: Path, moment: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    head = (f"# resolved-before: {moment}\n# Written by `make lock` (scripts/lock.py) from requirements/*.in for "
            f"Python {PYTHON_VERSION} on {PLATFORM}; do not edit.\n")
    dev = compile_one(REQ / "dev.in", dest / "dev.lock", moment)
    nodeps = compile_one(REQ / "no-deps.in", dest / "dev.lock", moment, no_deps=True)
    (dest / "dev.lock").write_text(head + dev + "# installed without their dependencies (no-deps.in):\n" + nodeps)
    files = compile_one(REQ / "files.in", dest / "files.lock", moment, no_deps=True)
    (dest / "files.lock").write_text(head + files)


def pins(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in PIN.findall(path.read_text())}


def diff(old: Path, new: Path) -> list[str]:
    a, b = pins(old), pins(new)
    lines = [f"  {n}: {a[n]} -> {b[n]}" for n in sorted(a.keys() & b.keys()) if a[n] != b[n]]
    lines += [f"  + {n}=={b[n]}" for n in sorted(b.keys() - a.keys())]
    lines += [f"  - {n}=={a[n]}" for n in sorted(a.keys() - b.keys())]
    return lines


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def report_changes(dest: Path) -> None:
    for name in ("dev.lock", "files.lock"):
        changes = diff(REQ / name, dest / name)
        print(f"[lock] {name}: " + (f"{len(changes)} change(s)" if changes else "no version changes"))
        print("\n".join(changes)) if changes else None


def cmd_write(a) -> int:
    tmp = ROOT / "build" / "lock-write"
    resolve(tmp, a.before or now())
    report_changes(tmp)
    for name in ("dev.lock", "files.lock"):
        shutil.copyfile(tmp / name, REQ / name)
    print("[lock] requirements/dev.lock and files.lock rewritten; `make test` rebuilds .venv from them")
    return 0


def cmd_check(a) -> int:
    dest = ROOT / "build" / "lock-next"
    moment = now()
    resolve(dest, moment)
    report_changes(dest)
    env = dict(os.environ, VENV=".venv-next", LOCK_DIR=str(dest))
    if subprocess.run([str(ROOT / "scripts" / "setup-env.sh")], cwd=ROOT, env=env).returncode != 0:
        print("[lock] the newest releases do not even install: see the output above")
        return 1
    log = dest / "pytest.log"
    env["UV_EXCLUDE_NEWER"] = moment
    with log.open("w") as fh:
        rc = subprocess.run([str(ROOT / ".venv-next" / "bin" / "python"), "-m", "pytest", "-q", "-rfE", *a.pytest_args],
                            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    text = log.read_text(errors="replace")
    broke = [ln for ln in text.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    tail = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)][-1:]
    print(f"[lock] suite under the newest releases: {' '.join(tail) or f'pytest exit {rc}'} (log: {log})")
    print("\n".join("  " + ln for ln in broke) if broke else "[lock] nothing broke")
    print("[lock] to adopt these versions: make lock (then commit requirements/)")
    return 0 if rc == 0 else 1


def cmd_diff(a) -> int:
    print("\n".join(diff(Path(a.old), Path(a.new))) or "no version changes")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/lock.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="rewrite the lock files with the newest allowed releases")
    w.add_argument("--before", help="resolve as the registry stood at this moment (ISO 8601, UTC); default: now")
    w.set_defaults(f=cmd_write)
    c = sub.add_parser("check", help="try the newest releases in .venv-next with the whole suite")
    c.add_argument("pytest_args", nargs="*", help="passed to pytest (default: the whole suite)")
    c.set_defaults(f=cmd_check)
    d = sub.add_parser("diff", help="version changes between two lock files")
    d.add_argument("old")
    d.add_argument("new")
    d.set_defaults(f=cmd_diff)
    a = ap.parse_args()
    return a.f(a)


if __name__ == "__main__":
    raise SystemExit(main())
