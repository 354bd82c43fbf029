"""Capture the terminal walkthrough (docs/screens/*.txt) by driving `llmc-wizard demo` in tmux.

    .venv/bin/python scripts/walkthrough.py [--out docs/screens] [--model tiny-llava]

Keys only, as a newcomer would press them: enter on the model, enter in the URL field (clone),
ctrl+n through the steps, enter to preview and enter again to write (the focus moves to Write),
enter on Run and Try. Needs tmux; uses a
fresh cache in a temporary folder, so nothing of yours is touched.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SESSION = "llmc-walkthrough"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen() -> str:
    return tmux("capture-pane", "-t", SESSION, "-p")


def keys(*k: str, pause: float = 0.6) -> None:
    for key in k:
        tmux("send-keys", "-t", SESSION, key)
        time.sleep(0.15)
    time.sleep(pause)


def wait_for(pattern: str, timeout: float = 240.0) -> str:
    """The screen once ``pattern`` (a regular expression) appears on it."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = screen()
        if re.search(pattern, s):
            return s
        time.sleep(0.5)
    raise SystemExit(f"walkthrough: {pattern!r} did not appear in {timeout:.0f}s; the screen was:\n{screen()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screens")
    ap.add_argument("--model", default="tiny-llava", choices=["tiny-llava"],
                    help="a transformers-native demo model (installing tiny-vila's code would touch the venv)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llmc-walkthrough-"))
    env = f"LLMC_WIZARD_CACHE={shlex.quote(str(work / 'cache'))}"
    wizard = shlex.quote(str(Path(sys.executable).with_name("llmc-wizard")))
    subprocess.run([str(Path(sys.executable).with_name("llmc-wizard")), "demo", "build"], check=True,
                   env={**os.environ, "LLMC_WIZARD_CACHE": str(work / "cache")}, capture_output=True)
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    tmux("new-session", "-d", "-s", SESSION, "-x", "120", "-y", "40", f"cd {shlex.quote(str(work))} && {env} {wizard} demo")
    shots: dict[str, str] = {}
    try:
        shots["01-welcome"] = wait_for("enter: onboard")
        keys("Enter")  # the first model: tiny-llava
        wait_for("Clone / fetch")
        keys("Enter")  # in the URL field: clone
        shots["02-source"] = wait_for("weights:")
        keys("C-n")
        shots["03-install"] = wait_for("No install needed")
        keys("C-n")  # Inspect runs on entry
        shots["04-inspect"] = wait_for(r"\d+ layers to quantize")
        keys("C-n")
        wait_for("Preview")
        keys("Enter")  # in the name field: preview both files
        shots["05-generate-preview"] = wait_for("preview of")
        keys("Enter")  # the focus moved to Write: write both files
        shots["05-generate"] = wait_for("wrote ")
        keys("C-n")
        wait_for(re.escape("Run (ctrl+r)"))
        keys("Enter")  # the Run button has the focus
        shots["06-run-progress"] = wait_for("phase: quantize")
        shots["06-run"] = wait_for(r"done in [\d.]+s —", timeout=600)
        keys("C-n")
        wait_for("Ask both models")
        keys("Enter")  # in the question field: ask both models
        shots["07-try"] = wait_for("asked: ", timeout=300)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
        for name, text in shots.items():  # what was captured, also when a step did not come
            (args.out / f"{name}.txt").write_text(text.rstrip() + "\n")
    print(f"wrote {len(shots)} captures to {args.out}")
    page = REPO / "docs" / "walkthrough.md"
    if args.out == REPO / "docs" / "screens" and len(shots) == len(SHOTS) and page.exists():
        page.write_text(embed(page.read_text(), [shots[n] for n in SHOTS]))
        print(f"updated {page}")
    return 0


#: the captures in the order docs/walkthrough.md shows them
SHOTS = ("01-welcome", "02-source", "03-install", "04-inspect", "05-generate-preview", "05-generate",
         "06-run-progress", "06-run", "07-try")


def embed(page: str, captures: list[str]) -> str:
    """``page`` with its ```text blocks replaced, in order, by ``captures``."""
    parts = re.split(r"(?m)^```text\n.*?^```$", page, flags=re.S)
    if len(parts) != len(captures) + 1:
        raise SystemExit(f"docs/walkthrough.md has {len(parts) - 1} text blocks, expected {len(captures)}")
    out = parts[0]
    for text, rest in zip(captures, parts[1:]):
        out += "```text\n" + text.rstrip() + "\n```" + rest
    return out


if __name__ == "__main__":
    raise SystemExit(main())
