"""Smoke test of a generated adapter: import, build, one calibration and one eval sample."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WizardError


@dataclass
class SmokeReport:
    ok: bool
    steps: list[tuple[str, str, float]] = field(default_factory=list)  # (step, detail, seconds)
    answer: str | None = None
    expected: str | None = None


def smoke_test(module: str, model_type: str, weights: Path, calib_path: Path | None, eval_path: Path | None,
               device: str = "cpu", models_dir: Path | None = None, log=None) -> SmokeReport:
    from llmc.models import get_model_class

    from .register import import_adapter

    rep = SmokeReport(ok=False)

    def step(name, fn):
        t = time.time()
        try:
            detail = fn()
        except WizardError:
            raise
        except Exception as e:  # report which step broke, with the cause
            raise WizardError(f"smoke test failed at '{name}': {type(e).__name__}: {e}",
                              "fix the adapter or the inputs and run the smoke test again") from e
        rep.steps.append((name, str(detail), time.time() - t))
        if log:
            log(f"{name}: {detail} ({time.time() - t:.1f}s)")
        return detail

    step("import adapter", lambda: import_adapter(module, models_dir).__name__)
    cls = step("registered", lambda: get_model_class(model_type, [models_dir]))
    adapter = step("build model", lambda: cls(weights, "auto", device))
    rep.steps[-1] = ("build model", f"{type(adapter.mm_model).__name__}, {len(adapter.get_blocks())} blocks",
                     rep.steps[-1][2])
    if calib_path:
        from llmc.data.calib import load_custom_mm

        def calib():
            (sample,) = load_custom_mm(Path(calib_path), 1)
            adapter.forward_calib(adapter.batch_process([sample]))
            return "one calibration forward pass"

        step("calibration sample", calib)
    if eval_path:
        from llmc.eval.mme import load_dataset
        from llmc.eval.vqa import VQARequest

        row = load_dataset(Path(eval_path))[0]
        rep.answer = step("eval sample", lambda: adapter.answer([VQARequest(row["question"], [row["image"]],
                                                                            {"max_new_tokens": 8})])[0])
        rep.expected = row["answer"]
    rep.ok = True
    return rep


def smoke_test_in_child(module: str, model_type: str, weights: Path, calib_path: Path | None,
                        eval_path: Path | None, device: str = "cpu", models_dir: Path | None = None, log=None,
                        cancelled=None, on_start=None, env: dict | None = None) -> SmokeReport:
    """:func:`smoke_test` in a child process: ``cancelled()`` turning true kills it (WizardError)."""
    from .child import run_child

    args = ["--module", module, "--model-type", model_type, "--weights", weights, "--device", device]
    for flag, value in (("--calib", calib_path), ("--eval", eval_path), ("--models-dir", models_dir)):
        if value is not None:
            args += [flag, value]
    res = run_child("wizard.services.smoke", args, what="smoke test", on_line=log, cancelled=cancelled,
                    on_start=on_start, env=env)
    return SmokeReport(ok=res["ok"], steps=[tuple(s) for s in res["steps"]], answer=res["answer"],
                       expected=res["expected"])


def main(argv=None) -> int:
    import argparse
    from dataclasses import asdict

    from .child import child_main

    ap = argparse.ArgumentParser(prog="python -m wizard.services.smoke", description=__doc__)
    ap.add_argument("--module", required=True)
    ap.add_argument("--model-type", required=True)
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--calib", type=Path)
    ap.add_argument("--eval", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models-dir", type=Path)
    a = ap.parse_args(argv)
    return child_main(lambda: asdict(smoke_test(a.module, a.model_type, a.weights, a.calib, a.eval, a.device,
                                                a.models_dir, log=print)))


if __name__ == "__main__":
    raise SystemExit(main())
