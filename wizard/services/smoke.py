"""Smoke test of a generated adapter: import, build, a calibration sample, and an evaluation batch
at the run's batch size whose answers must equal the one-at-a-time answers (with finite logits),
so that a batching bug fails here in seconds rather than after the original model's evaluation."""

from __future__ import annotations

import os

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


def hook_of(e: BaseException) -> str | None:
    """The innermost named adapter hook (:data:`llmc.models.llava_lineage.HOOKS`) the exception
    went through, or None."""
    from llmc.models.base import BaseModel
    from llmc.models.llava_lineage import HOOKS

    hook, tb = None, e.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name in HOOKS and isinstance(frame.f_locals.get("self"), BaseModel):
            hook = frame.f_code.co_name
        tb = tb.tb_next
    return hook


def eval_batch(rows: list[dict], batch_size: int) -> list[dict]:
    """``batch_size`` evaluation rows (at least two), spread over different images first."""
    k = max(2, int(batch_size))
    first = {}
    for r in rows:  # one question per image first, then the rest
        first.setdefault(r.get("question_id", id(r)), r)
    seen = {id(r) for r in first.values()}
    order = list(first.values()) + [r for r in rows if id(r) not in seen]
    return order[:k]


def check_batch(adapter, rows: list[dict], max_new_tokens: int = 8) -> str:
    """Answers of ``rows`` as one batch equal their answers one at a time, and the answer logits
    are finite; returns a one-line summary, raises ValueError naming the first disagreement."""
    import torch

    from llmc.eval.vqa import VQARequest

    reqs = [VQARequest(r["question"], [r["image"]], {"max_new_tokens": max_new_tokens}) for r in rows]
    batched = adapter.answer(reqs)
    single = [adapter.answer([q])[0] for q in reqs]
    try:
        logits = adapter.answer_logits(reqs)
    except NotImplementedError:
        logits = None
    if logits is not None and not torch.isfinite(logits).all():
        raise ValueError(f"the answer logits of a batch of {len(reqs)} are not finite (nan/inf): check the dtype")
    for i, (b, s) in enumerate(zip(batched, single)):
        if b == s:
            continue
        if logits is not None:  # a near-tie that padding flipped (half precision) is not a bug
            alone = adapter.answer_logits([reqs[i]])[0].float()
            gap = float((logits[i].float() - alone).abs().max() / alone.abs().max().clamp_min(1e-6))
            if gap <= NEAR_TIE:
                continue
        raise ValueError(f"sample {i} of a batch of {len(reqs)} answers {b!r} but {s!r} alone: batching changes "
                         "the answers (padding side, attention mask, or images not matched to their samples)")
    return f"batch of {len(reqs)} answers as one at a time" + ("; logits finite" if logits is not None else "")


#: relative difference of the answer logits, batched vs alone, below which differing greedy
#: answers count as a near-tie flipped by rounding (half precision with padding), not a bug
NEAR_TIE = 1e-2


def smoke_test(module: str, model_type: str, weights: Path, calib_path: Path | None, eval_path: Path | None,
               device: str = "cpu", models_dir: Path | None = None, log=None, eval_bs: int = 2) -> SmokeReport:
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
            hook = hook_of(e)
            where = f"'{name}'" + (f" in the adapter's {hook} hook" if hook else "")
            raise WizardError(f"smoke test failed at {where}: {type(e).__name__}: {e}",
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

        ds = load_dataset(Path(eval_path))
        row = ds[0]
        rep.answer = step("eval sample", lambda: adapter.answer([VQARequest(row["question"], [row["image"]],
                                                                            {"max_new_tokens": 8})])[0])
        rep.expected = row["answer"]
        rows = eval_batch([ds[i] for i in range(min(len(ds), max(2, eval_bs) * 2))], eval_bs)
        step("eval batch", lambda: check_batch(adapter, rows))
    rep.ok = True
    return rep


def smoke_timeout() -> float:
    """How long the smoke test (one sample, one small batch) may take: ``$LLMC_WIZARD_SMOKE_TIMEOUT_S``,
    600 s by default."""
    try:
        return max(1.0, float(os.environ.get("LLMC_WIZARD_SMOKE_TIMEOUT_S", "600")))
    except ValueError:
        return 600.0


def smoke_test_in_child(module: str, model_type: str, weights: Path, calib_path: Path | None,
                        eval_path: Path | None, device: str = "cpu", models_dir: Path | None = None, log=None,
                        cancelled=None, on_start=None, env: dict | None = None, eval_bs: int = 2) -> SmokeReport:
    """:func:`smoke_test` in a child process: ``cancelled()`` turning true kills it (WizardError)."""
    from .child import run_child

    args = ["--module", module, "--model-type", model_type, "--weights", weights, "--device", device,
            "--eval-bs", str(eval_bs)]
    for flag, value in (("--calib", calib_path), ("--eval", eval_path), ("--models-dir", models_dir)):
        if value is not None:
            args += [flag, value]
    limit = smoke_timeout()
    res = run_child("wizard.services.smoke", args, what="smoke test", on_line=log, cancelled=cancelled,
                    on_start=on_start, env=env, timeout=limit,
                    timeout_fix="a hook, the processor's chat template or the model hangs on one sample; fix it, "
                    f"or allow more time with LLMC_WIZARD_SMOKE_TIMEOUT_S (now {limit:.0f})")
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
    ap.add_argument("--eval-bs", type=int, default=2, help="the run's evaluation batch size (at least 2 are checked)")
    a = ap.parse_args(argv)
    return child_main(lambda: asdict(smoke_test(a.module, a.model_type, a.weights, a.calib, a.eval, a.device,
                                                a.models_dir, log=print, eval_bs=a.eval_bs)))


if __name__ == "__main__":
    raise SystemExit(main())
