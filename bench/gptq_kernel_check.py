"""GPTQ's one-launch Triton kernel against the reference column loop, layer by layer.

Runs GPTQ on small random layers in eight settings (static groups with act-order, dynamic groups,
dynamic groups with act-order, per-channel, static asymmetric; three with ``calib_algo: mse``) and writes the quantized weights,
losses and scales as JSON. Run it twice — ``LLMC_GPTQ_KERNEL=0`` (the reference loop) and the
default (the kernel; on a CPU with ``TRITON_INTERPRET=1``) — and compare with ``--compare A B``.
Usage: ``python bench/gptq_kernel_check.py OUT.json [--device cuda] [--size 192x40]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = [
    ("static-act-sym", dict(actorder=True, static_groups=True), dict(bit=4, symmetric=True, group_size=32)),
    ("dyn-asym", dict(), dict(bit=4, symmetric=False, group_size=32)),
    ("dyn-act-asym", dict(actorder=True), dict(bit=3, symmetric=False, group_size=32)),
    ("channel-sym", dict(), dict(bit=4, symmetric=True, granularity="per_channel")),
    ("static-asym", dict(static_groups=True), dict(bit=4, symmetric=False, group_size=32)),
    # calib_algo: mse (the range search runs as its own kernel, or in torch for the loop)
    ("dyn-act-sym-mse", dict(actorder=True), dict(bit=4, symmetric=True, group_size=32, calib_algo="mse")),
    ("static-act-asym-mse", dict(actorder=True, static_groups=True),
     dict(bit=4, symmetric=False, group_size=32, calib_algo="mse")),
    ("channel-asym-mse", dict(), dict(bit=4, symmetric=False, granularity="per_channel", calib_algo="mse")),
]


def run(out: Path, device: str, cols: int, rows: int) -> None:
    import torch
    from torch import nn

    from llmc.quant.gptq import GptqSolver
    from llmc.quant.quantizer import WeightQuantConfig

    res = {}
    for name, kw, cfg in SETTINGS:
        torch.manual_seed(0)
        lin = nn.Linear(cols, rows, bias=False).to(device)
        g = GptqSolver(lin)
        g.add_batch((torch.randn(4 * cols, cols) * torch.linspace(0.2, 3, cols)).to(device))
        r = g.quantize_(WeightQuantConfig(**cfg), blocksize=64, **kw)
        res[name] = {"w": lin.weight.detach().cpu().flatten().tolist(), "error": r["error"],
                     "scale": None if r["scale"] is None else r["scale"].cpu().flatten().tolist()}
    Path(out).write_text(json.dumps(res))


def compare(a: Path, b: Path) -> dict:
    """Per setting: the largest weight difference, the share of weights that differ, both losses."""
    ra, rb = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    out = {}
    for k in ra:
        diffs = [abs(x - y) for x, y in zip(ra[k]["w"], rb[k]["w"])]
        out[k] = {"max_diff": max(diffs), "differ": sum(d > 1e-6 for d in diffs) / len(diffs),
                  "loss": (ra[k]["error"], rb[k]["error"])}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="192x40", help="in_features x out_features")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    a = ap.parse_args(argv)
    if a.compare:
        for k, v in compare(*a.compare).items():
            print(f"{k:16s} max diff {v['max_diff']:.3g}  differ {v['differ']:.4f}  loss {v['loss'][0]:.6g} / "
                  f"{v['loss'][1]:.6g}")
        return 0
    cols, rows = (int(x) for x in a.size.split("x"))
    run(Path(a.out), a.device, cols, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
