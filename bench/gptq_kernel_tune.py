"""The GPTQ Triton kernel's launch settings, timed on the GPU layer shape by layer shape.

For each layer shape of the 3B and 8B benchmarks (out x in), a random weight, the factor of a
Hessian from random correlated inputs, act-order and static groups of 128 (the setting of
``bench/vs_llmcompressor.py``): the kernel's time for each combination of rows per program and
warps. Every combination must
give the default's weights bit for bit; the table says so. Also prints the first call's time
(Triton's compile, or its cache). Usage: ``python bench/gptq_kernel_tune.py [--shapes 3072x3072,...]``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def case(out: int, n: int, dev: str):
    import torch

    from llmc.quant.gptq import GptqSolver
    from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig

    g = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(out, n, device=dev, generator=g) * 0.02
    x = torch.randn(4 * n, n, device=dev, generator=g) @ (torch.randn(n, n, device=dev, generator=g) / n**0.5)
    H = 2 * x.t() @ x / x.shape[0]
    perm = torch.argsort(torch.diag(H), descending=True)
    H = H[perm][:, perm]
    U, _ = GptqSolver._inverse_cholesky(H, 0.01 * float(torch.diag(H).mean()))
    q = IntQuantizer(WeightQuantConfig(bit=4, symmetric=True, group_size=128))
    scale, zero = q.params(w)
    return w[:, perm].contiguous(), U, scale.float().contiguous(), zero.float().contiguous(), \
        (perm // 128).to(torch.int32), q.qrange()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="3072x3072,1024x3072,8192x3072,3072x8192,4096x4096,14336x4096,4096x14336")
    ap.add_argument("--block-r", default="8,16,32")
    ap.add_argument("--warps", default="1,2,4")
    a = ap.parse_args(argv)
    import torch

    from llmc.quant import gptq_kernel
    from llmc.quant.quantizer import MIN_SCALE

    dev = "cuda"
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {gptq_kernel.triton.__version__}")
    first = True
    for shape in a.shapes.split(","):
        out, n = map(int, shape.split("x"))
        W, U, scale, zero, gidx, (qmin, qmax) = case(out, n, dev)

        def run(block_r, warps):
            return gptq_kernel.gptq_rows(W.clone(), U, scale, zero, gidx, 128, qmin, qmax, True, MIN_SCALE, 128,
                                         block_r=block_r, num_warps=warps)

        if first:
            torch.cuda.synchronize()
            t = time.perf_counter()
            run(None, None)
            torch.cuda.synchronize()
            print(f"first call (compile or cache): {time.perf_counter() - t:.2f} s")
            first = False
        ref, _ = run(None, None)
        print(f"\n{out} x {n}\n| rows/program | warps | ms | same weights |\n|---|---|---|---|")
        for block_r, warps in itertools.product(map(int, a.block_r.split(",")), map(int, a.warps.split(","))):
            q, _ = run(block_r, warps)  # compile outside the timing
            times = []
            for _ in range(3):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                run(block_r, warps)
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
            print(f"| {block_r} | {warps} | {sorted(times)[1]:.2f} | {bool(torch.equal(q, ref))} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
