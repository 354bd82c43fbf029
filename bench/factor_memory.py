"""Peak GPU memory of the ways to get U (upper Cholesky factor of H^-1) from an n x n Hessian.

Prints, for the plain way (cholesky -> cholesky_inverse -> cholesky upper, what GPTQ's reference
code and llm-compressor run) and the engine's (:meth:`llmc.quant.gptq.GptqSolver._inverse_cholesky`),
the peak allocated memory above the input matrix (in n x n matrices), the time, and the largest
difference of U from the plain way's. ``python bench/factor_memory.py [--n 8192]``
"""

from __future__ import annotations

import argparse

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def spd(n, dev):
    torch.manual_seed(0)
    x = torch.randn(2 * n, n, device=dev, dtype=torch.bfloat16)
    h = torch.zeros(n, n, device=dev)
    h.addmm_(x.t().float(), x.float(), alpha=1 / n)
    h.diagonal().add_(0.01 * h.diagonal().mean())
    return h


def reference(h):
    L = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def plain(held):  # the reference code's way (and llm-compressor's), H freed after its factor
    h = held.pop()
    L, _ = torch.linalg.cholesky_ex(h)
    del h
    Hinv = torch.cholesky_inverse(L)
    del L
    U, _ = torch.linalg.cholesky_ex(Hinv, upper=True)
    return U


def engine(held):  # llmc.quant.gptq: U = J L^-1 J (one factor, a triangular solve, an in-place reversal)
    from llmc.quant.gptq import GptqSolver

    return GptqSolver._inverse_cholesky(held, 0.0)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    n = ap.parse_args().n
    dev = "cuda"
    mat = n * n * 4
    ref = reference(spd(n, dev))
    for name, fn in (("plain", plain), ("engine", engine)):  # warm-up
        fn([spd(n, dev)])
    torch.cuda.empty_cache()
    for name, fn in (("plain", plain), ("engine", engine)):
        held, u = [spd(n, dev)], None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        import time
        try:
            t = time.perf_counter()
            u = fn(held)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            peak = (torch.cuda.max_memory_allocated() - base) / mat
            diff = float((u.triu() - ref).abs().max() / ref.abs().max())
            print(f"{name:8s} peak above H: {peak:.2f} matrices of {mat / 2**20:.0f} MiB; rel max diff {diff:.2e}; {dt * 1e3:.0f} ms")
        except Exception as e:  # noqa: BLE001 - a probe: report and go on
            print(f"{name:8s} failed: {type(e).__name__}: {e}")
        u = held = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
