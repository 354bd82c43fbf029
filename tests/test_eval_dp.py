"""Data-parallel MME evaluation: 2 CPU processes (gloo) score exactly what one process scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmc.eval.dp import free_port, launch_command
from llmc.eval.vqa import evaluate_mme

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "wizard" / "demo" / "assets" / "tiny-llava"
LIMIT = 32  # images; 64 questions


def test_launch_command_shapes():
    args = ["--model-type", "Llava", "--model-path", "p", "--data", "d"]
    cpu2 = launch_command(2, args, cpu=True, port=29555)
    assert cpu2[:2] == ["accelerate", "launch"]
    assert cpu2[cpu2.index("--num_processes") + 1] == "2"
    # multi-process goes through accelerate's torchrun launcher; its own --cpu would run one process
    assert "--multi_gpu" in cpu2 and cpu2.index("--multi_gpu") < cpu2.index("-m")
    assert cpu2[cpu2.index("--main_process_port") + 1] == "29555"
    assert cpu2[cpu2.index("-m") + 1] == "llmc.eval.dp"
    assert cpu2[cpu2.index("-m") + 2:] == [*args, "--cpu"]
    gpu4 = launch_command(4, args, cpu=False)
    assert "--cpu" not in gpu4 and "--multi_gpu" in gpu4 and gpu4[-len(args):] == args
    one = launch_command(1, args, cpu=True)
    assert "--multi_gpu" not in one and one.index("--cpu") < one.index("-m")
    with pytest.raises(ValueError):
        launch_command(0, args)


def test_not_distributed_under_launcher_env_runs_everything(zoo, monkeypatch):
    """distributed=False inside a launcher's environment: this process evaluates the whole set."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    stats: dict = {}
    res = evaluate_mme(lambda reqs: ["Yes"] * len(reqs), zoo.eval_set / "data", batch_size=64, limit=8,
                       distributed=False, stats=stats)
    assert res is not None and len(res.predictions) == 16
    assert stats == {"rank": 0, "world_size": 1, "answered": 16}
    assert os.environ["WORLD_SIZE"] == "2" and os.environ["RANK"] == "1"  # restored


def test_two_cpu_processes_match_single_process(zoo, tmp_path):
    from llmc.models import get_model_class

    data = zoo.eval_set / "data"
    adapter = get_model_class("Llava")(WEIGHTS, "float32", "cpu")
    stats: dict = {}
    t0 = time.perf_counter()
    single = evaluate_mme(adapter.answer, data, batch_size=16, limit=LIMIT, stats=stats)
    t_single = time.perf_counter() - t0
    del adapter
    assert stats == {"rank": 0, "world_size": 1, "answered": 2 * LIMIT}

    out, ranks = tmp_path / "dp.json", tmp_path / "ranks"
    args = ["--model-type", "Llava", "--model-path", str(WEIGHTS), "--data", str(data),
            "--limit", str(LIMIT), "--batch-size", "16", "--out", str(out), "--rank-log", str(ranks),
            "--predictions"]
    cmd = launch_command(2, args, cpu=True, port=free_port())
    cmd[0] = str(Path(sys.executable).with_name("accelerate"))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    t_dp = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"single process {t_single:.1f}s, 2 processes (incl. launch + load) {t_dp:.1f}s")

    dp = json.loads(out.read_text())
    assert dp["world_size"] == 2
    assert dp["categories"] == single.scores.categories
    assert dp["n_images"] == single.scores.n_images
    assert dp["total"] == single.scores.total
    assert dp["lmms_eval_total"] == single.lmms_total
    assert dp["n_questions"] == len(single.predictions) == 2 * LIMIT
    # rank 0 gathered every question, in document order, with the same answers
    assert dp["predictions"] == single.predictions

    logs = sorted((json.loads(p.read_text()) for p in ranks.glob("rank*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in logs] == [0, 1]
    assert all(r["world_size"] == 2 and r["answered"] > 0 for r in logs)
    assert sum(r["answered"] for r in logs) == 2 * LIMIT
