"""Data-parallel MME evaluation of a quantized demo model: 1 GPU against N GPUs.

Builds the demo zoo, quantizes tiny-llava W4A16 GPTQ (group 32) with ``save_fake``, then
evaluates the saved fake-quant model on the whole 512-image evaluation set through
``python -m llmc.eval.dp``: once in one process on GPU 0, once under
``accelerate launch --num_processes N`` (one process per GPU, lmms-eval sharding the questions).
Prints, per run, the scores, the wall time of the command and the in-process evaluation time;
then whether the category scores and every prediction are identical.

    python bench/dp_eval_gpu.py [--gpus 2]

Without CUDA it runs the processes on CPU (gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def quantize(work: Path) -> tuple[Path, Path]:
    """The fake-quant tiny-llava checkpoint and the evaluation data folder."""
    import torch

    from llmc.config import load_config
    from llmc.runner import run
    from wizard.demo import zoo as zoo_mod

    zoo = zoo_mod.build(work / "zoo", log=lambda m: None)
    raw = yaml.safe_load((ROOT / "configs" / "tiny-llava_w4a16_gptq.yml").read_text())
    raw["model"]["path"] = zoo.models["tiny-llava"]["weights_repo"]
    raw["calib"]["path"] = str(zoo.calib_set)
    raw["eval"]["path"] = str(zoo.eval_set / "data")
    raw["eval"]["eval_pos"] = ["fake_quant"]
    raw["save"] = {"save_path": str(work / "saved"), "save_trans": False, "save_fake": True}
    t = time.perf_counter()
    res = run(load_config(raw), work / "run", device="cuda" if torch.cuda.is_available() else "cpu")
    print(f"quantized tiny-llava W4A16 GPTQ g32 in {time.perf_counter() - t:.1f}s; in-run fake_quant total "
          f"{res['evals']['mme']['fake_quant']['total']:.2f}", flush=True)
    return Path(res["saved_fake"]), zoo.eval_set / "data"


def evaluate(n_procs: int, model: Path, data: Path, out: Path, cpu: bool, limit: int | None) -> dict:
    from llmc.eval.dp import format_command, free_port, launch_command

    args = ["--model-type", "Llava", "--model-path", str(model), "--data", str(data), "--batch-size", "64",
            "--out", str(out), "--rank-log", str(out.with_suffix("")), "--predictions"]
    if limit:
        args += ["--limit", str(limit)]
    if n_procs == 1:
        cmd = [sys.executable, "-m", "llmc.eval.dp", *args] + (["--cpu"] if cpu else [])
    else:
        cmd = launch_command(n_procs, args, cpu=cpu, port=free_port())
        # accelerate's launcher module, so that a PYTHONPATH install (no console script) works too
        cmd[:2] = [sys.executable, "-m", "accelerate.commands.launch"]
    print("$ " + format_command(cmd), flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{n_procs}-process evaluation failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads(out.read_text())
    ranks = [json.loads(p.read_text()) for p in sorted(out.with_suffix("").glob("rank*.json"))]
    res["wall_s"] = wall
    res["ranks"] = ranks
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=2, help="processes in the data-parallel run")
    ap.add_argument("--limit", type=int, default=None, help="first N evaluation images only (default: all 512)")
    a = ap.parse_args(argv)
    import torch

    cpu = not torch.cuda.is_available()
    if not cpu and torch.cuda.device_count() < a.gpus:
        raise SystemExit(f"--gpus {a.gpus} but only {torch.cuda.device_count()} GPU(s) are visible")
    print(f"{torch.cuda.device_count()} GPU(s)" + (f": {torch.cuda.get_device_name(0)}" if not cpu else " (CPU run)"),
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    model, data = quantize(work)
    runs = {n: evaluate(n, model, data, work / f"dp{n}.json", cpu, a.limit) for n in (1, a.gpus)}
    for n, r in runs.items():
        shards = ", ".join(f"rank {x['rank']}: {x['answered']} answers in {x['seconds']:.1f}s" for x in r["ranks"])
        print(f"{n} process(es): total {r['total']:.4f} {json.dumps(r['categories'])}; "
              f"{r['n_questions']} questions; command wall {r['wall_s']:.1f}s, evaluation {r['seconds']:.1f}s "
              f"(rank 0, incl. model load); {shards}", flush=True)
    one, many = runs[1], runs[a.gpus]
    same_scores = one["categories"] == many["categories"] and one["total"] == many["total"]
    same_preds = one["predictions"] == many["predictions"]
    print(f"identical category scores: {same_scores}; identical predictions: {same_preds} "
          f"({len(one['predictions'])} vs {len(many['predictions'])})", flush=True)
    return 0 if same_scores and same_preds else 1


if __name__ == "__main__":
    sys.exit(main())
