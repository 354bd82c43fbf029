"""Data-parallel MME evaluation: one model copy per process, lmms-eval shards the questions.

Run it under a launcher, e.g.::

    accelerate launch --num_processes 2 --multi_gpu -m llmc.eval.dp \\
        --model-type Llava --model-path P --data D --out results.json [--cpu]

(:func:`launch_command` builds that line; on a CPU-only machine, or with ``--cpu``, the
processes join a gloo group, on GPUs an nccl one.)

Every process loads the adapter (on ``cuda:LOCAL_RANK`` when CUDA is available, else cpu) and
answers its shard; rank 0 writes the scores. Run without a launcher it evaluates in one process,
with the same scores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path


def launch_command(n_procs: int, args: list[str], cpu: bool = False, port: int | None = None) -> list[str]:
    """``accelerate launch`` argv running :mod:`llmc.eval.dp` over ``n_procs`` processes.

    ``args`` are this module's own arguments (``--model-type ... --data ...``). ``cpu`` runs
    every process on CPU with a gloo group (this module's ``--cpu``); otherwise process ``i``
    uses ``cuda:i`` and nccl. ``port``: the rendezvous port (accelerate's default is 29500).
    """
    n = int(n_procs)
    if n < 1:
        raise ValueError(f"n_procs must be >= 1, got {n_procs}")
    cmd = ["accelerate", "launch", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    if n > 1:
        # accelerate's torchrun-based launcher. Its ``--cpu`` flag would pick the single-process
        # launcher (multi-CPU there means MPI), so CPU runs go through this one too and our own
        # ``--cpu`` makes each process join a gloo group instead of nccl.
        cmd.append("--multi_gpu")
    elif cpu:
        cmd.append("--cpu")
    if port is not None:
        cmd += ["--main_process_port", str(int(port))]
    tail = [str(a) for a in args]
    if cpu and "--cpu" not in tail:
        tail.append("--cpu")
    return [*cmd, "-m", "llmc.eval.dp", *tail]


def free_port() -> int:
    """A TCP port free on this host now, for ``launch_command(..., port=)``'s rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def format_command(cmd: list[str]) -> str:
    """A shell-ready rendering of :func:`launch_command`'s argv (for the wizard to show)."""
    return shlex.join(cmd)


def _device(cpu: bool = False) -> str:
    import torch

    if torch.cuda.is_available() and not cpu:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m llmc.eval.dp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-type", required=True, help="adapter name in llmc.models (e.g. Llava)")
    ap.add_argument("--model-path", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="MME-format dataset folder")
    ap.add_argument("--limit", type=int, default=None, help="first N images (2 questions each)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cpu", action="store_true", help="run on CPU (gloo) even when CUDA is available")
    ap.add_argument("--predictions", action="store_true", help="include every prediction in --out")
    ap.add_argument("--out", type=Path, default=None, help="scores JSON, written by rank 0")
    ap.add_argument("--rank-log", type=Path, default=None,
                    help="folder where every rank writes rank<R>.json with the requests it answered")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from llmc.eval.vqa import env_world_size, evaluate_mme, init_distributed
    from llmc.models import get_model_class

    if env_world_size() > 1:
        init_distributed(cpu=True if args.cpu else None)  # join the group before loading
    t0 = time.perf_counter()
    adapter = get_model_class(args.model_type)(args.model_path, args.dtype, _device(args.cpu))
    stats: dict = {}
    res = evaluate_mme(adapter.answer, args.data, batch_size=args.batch_size, limit=args.limit,
                       max_new_tokens=args.max_new_tokens, stats=stats)
    seconds = time.perf_counter() - t0
    if args.rank_log is not None:
        args.rank_log.mkdir(parents=True, exist_ok=True)
        (args.rank_log / f"rank{stats['rank']}.json").write_text(json.dumps({**stats, "seconds": seconds}))
    if res is None:  # not rank 0: lmms-eval gathered everything there
        return 0
    out = {
        **res.scores.to_dict(),
        "lmms_eval_total": res.lmms_total,
        "n_questions": len(res.predictions),
        "world_size": stats["world_size"],
        "seconds": seconds,
        "model_type": args.model_type,
        "model_path": str(args.model_path),
        "data": str(args.data),
        "limit": args.limit,
    }
    if args.predictions:
        out["predictions"] = res.predictions
    text = json.dumps(out, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
