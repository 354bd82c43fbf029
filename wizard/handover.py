"""``python -m wizard.handover``: run wizard steps in this interpreter (the model's own environment)
for a parent wizard, speaking :mod:`wizard.services.child`'s protocol: log lines, then the last
step's result (when it is a dict) or the error."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from .services.child import child_main
    from .session import Session
    from .steps import STEP_FUNCS, Reporter, onboard

    ap = argparse.ArgumentParser(prog="python -m wizard.handover")
    ap.add_argument("--answers", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--steps", required=True)
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--yes", action="store_true")
    a = ap.parse_args(argv)
    steps = [x for x in a.steps.split(",") if x]
    unknown = [x for x in steps if x not in STEP_FUNCS]
    if unknown:
        ap.error(f"unknown step(s): {', '.join(unknown)}")

    def go() -> dict:
        s = Session.load(a.answers, a.workdir, models_dir=a.models_dir, device=a.device, assume_yes=a.yes)
        out = onboard(s, steps, Reporter(log=lambda m: print(m, flush=True)))
        return {"result": out if isinstance(out, dict) else None}

    return child_main(go)


if __name__ == "__main__":
    raise SystemExit(main())
