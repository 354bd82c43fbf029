"""Where GPTQ's GPU memory goes: what is allocated when each of a block's collection passes and
solves starts, the peak during it, and the large tensors alive when each layer's first Hessian
batch arrives (the forward's intermediates are alive then).

Builds the random-weight Llama of ``bench/gpu_quant_speed.py`` with ``--layers`` blocks (3 by
default: block 1 shows the steady state), quantizes it as ``bench/gptq_phases.py`` does (W4A16
g128, act-order, static groups) once true-sequential and once with ``true_sequential: false``,
and prints one table per setting for block ``--block``.

    python bench/gptq_memory.py --shape 3b [--layers 3] [--block 1] [--mse]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from gptq_phases import quantize  # noqa: E402
from gpu_quant_speed import SHAPES, build  # noqa: E402  (also puts the repository on sys.path)

MIB = 2 ** 20


def live_tensors(least: int = 16 * MIB) -> list[str]:
    """The CUDA tensors of at least ``least`` bytes alive now (parameters left out)."""
    import torch

    out = []
    for o in gc.get_objects():
        if torch.is_tensor(o) and not isinstance(o, torch.nn.Parameter) and \
                (o.is_cuda or not torch.cuda.is_available()):
            size = o.untyped_storage().nbytes()
            if size >= least:
                out.append(f"{tuple(o.shape)} {str(o.dtype).removeprefix('torch.')} {size / MIB:,.0f}")
    return sorted(out)


def measure(path: Path, calib, onepass: bool, mse: bool, block: int) -> None:
    """Quantize as ``bench/gptq_phases.py`` does, recording block ``block``'s passes and solves."""
    import torch

    import llmc.quant.collect as collect
    from llmc.quant.gptq import GptqSolver

    cuda = torch.cuda.is_available()  # on a CPU: the calls only, no figures
    rows: list[tuple[str, float, float]] = []
    order: dict[int, int] = {}  # id(block) -> its index: blocks are collected in order
    current = [-1]
    peak_outer = [0]
    orig_fwd, orig_add, orig_solve = collect._forward_until, GptqSolver.add_batch, GptqSolver.quantize_layers_

    def timed(label, fn, *a, **k):
        peak_outer[0] = max(peak_outer[0], torch.cuda.max_memory_allocated() if cuda else 0)
        start = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            return fn(*a, **k)
        finally:
            peak = torch.cuda.max_memory_allocated() if cuda else 1
            peak_outer[0] = max(peak_outer[0], peak)
            if current[0] == block:
                rows.append((label, start / MIB, peak / MIB))

    def fwd(blk, inputs, device, layers, after_each=None):
        current[0] = order.setdefault(id(blk), len(order))
        label = ("probe " if after_each is None else "collect ") + ",".join(n.split(".")[-1] for n in layers)
        if current[0] == block:
            rows.append((f"  before {label}: " + ("; ".join(live_tensors()) or "-"), 0, 0))
        return timed(label, orig_fwd, blk, inputs, device, layers, after_each)

    seen: set[str] = set()

    def add_batch(self, x):
        if current[0] == block and self.name not in seen:
            seen.add(self.name)
            rows.append((f"  first batch of {self.name}: " + ("; ".join(live_tensors()) or "-"), 0, 0))
        return orig_add(self, x)

    def solve(self, layers, *a, **k):
        return timed("solve " + ",".join(n.split(".")[-1] for n in layers), orig_solve, self, layers, *a, **k)

    collect._forward_until, GptqSolver.add_batch, GptqSolver.quantize_layers_ = fwd, add_batch, solve
    try:  # the peak it would print is reset by the timed calls: the largest seen is printed here
        quantize(path, calib, "cuda:0" if cuda else "cpu", onepass, mse, peak=False)
    finally:
        collect._forward_until, GptqSolver.add_batch, GptqSolver.quantize_layers_ = orig_fwd, orig_add, orig_solve
    peak_outer[0] = max(peak_outer[0], torch.cuda.max_memory_allocated() if cuda else 0)
    print(f"\n{'float-block' if onepass else 'true-sequential'}: peak {peak_outer[0] / MIB:,.0f} MiB "
          f"(load + quantize); block {block}:")
    print("| call | allocated at start MiB | peak during MiB |\n|---|---|---|")
    for label, start, peak in rows:
        print(f"| {label} | {start:,.0f} | {peak:,.0f} |" if peak else f"| {label} | | |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="3b")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--block", type=int, default=1)
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--mse", action="store_true")
    a = ap.parse_args(argv)
    import torch

    work = Path(tempfile.mkdtemp(prefix="gptq-memory-"))
    build(work / "model", a.shape, a.layers)
    calib = torch.randint(0, SHAPES[a.shape]["vocab_size"], (a.n_calib, a.seq),
                          generator=torch.Generator().manual_seed(1))
    for onepass in (False, True):
        measure(work / "model", calib, onepass, a.mse, a.block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
