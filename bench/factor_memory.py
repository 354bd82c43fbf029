"""Peak GPU memory of the ways to get U (upper Cholesky factor of H^-1) from an n x n Hessian.

Prints, for each variant, the peak allocated memory above the input matrix (in n x n matrices)
and the largest difference of its U from the reference
(cholesky -> cholesky_inverse -> cholesky upper). ``python bench/factor_memory.py [--n 8192]``
"""

from __future__ import annotations

import argparse

import torch


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


def plain(held):  # what the engine ran: H freed after its factor
    h = held.pop()
    L, _ = torch.linalg.cholesky_ex(h)
    del h
    Hinv = torch.cholesky_inverse(L)
    del L
    U, _ = torch.linalg.cholesky_ex(Hinv, upper=True)
    return U


def inplace(held):  # factor in place through the column-major view (H is symmetric)
    h = held.pop()
    m = h.mT
    info = torch.zeros((), dtype=torch.int32, device=h.device)
    torch.linalg.cholesky_ex(m, out=(m, info))
    Hinv = torch.cholesky_inverse(m)
    del m, h
    hm = Hinv.mT
    torch.linalg.cholesky_ex(hm, upper=True, out=(hm, info))
    return hm


def flipped(held):  # U = J chol(J H J)^-1 J: one factor and one triangular solve in place
    h = held.pop()
    n = h.shape[0]
    rev = torch.arange(n - 1, -1, -1, device=h.device)
    h = h.index_select(0, rev)
    h = h.index_select(1, rev)
    m = h.mT
    info = torch.zeros((), dtype=torch.int32, device=h.device)
    torch.linalg.cholesky_ex(m, out=(m, info))
    b = torch.eye(n, device=h.device).mT
    torch.linalg.solve_triangular(m, b, upper=False, out=b)
    del m, h
    return b.mT.flip(0, 1)  # a copy (after the peak is read: see main)


def _flipped_raw(held, out):
    """:func:`flipped` without its final (checking) flip: ``out["b"]`` holds chol(J H J)^-1 (column-major)."""
    h = held.pop()
    n = h.shape[0]
    rev = torch.arange(n - 1, -1, -1, device=h.device)
    h = h.index_select(0, rev)
    h = h.index_select(1, rev)
    m = h.mT
    info = torch.zeros((), dtype=torch.int32, device=h.device)
    torch.linalg.cholesky_ex(m, out=(m, info))
    b = torch.eye(n, device=h.device).mT
    torch.linalg.solve_triangular(m, b, upper=False, out=b)
    del m, h
    out["b"] = b
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    n = ap.parse_args().n
    dev = "cuda"
    mat = n * n * 4
    ref = reference(spd(n, dev))
    for name, fn in (("plain", plain), ("inplace", inplace), ("flipped", flipped)):  # warm-up
        fn([spd(n, dev)])
    torch.cuda.empty_cache()
    for name, fn in (("plain", plain), ("inplace", inplace), ("flipped", flipped)):
        held, u = [spd(n, dev)], None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        import time
        try:
            t = time.perf_counter()
            out = {}
            u = fn(held) if name != "flipped" else _flipped_raw(held, out)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            peak = (torch.cuda.max_memory_allocated() - base) / mat
            if name == "flipped":
                u = out["b"].mT.flip(0, 1)
            diff = float((u.triu() - ref).abs().max() / ref.abs().max())
            print(f"{name:8s} peak above H: {peak:.2f} matrices of {mat / 2**20:.0f} MiB; rel max diff {diff:.2e}; {dt * 1e3:.0f} ms")
        except Exception as e:  # noqa: BLE001 - a probe: report and go on
            print(f"{name:8s} failed: {type(e).__name__}: {e}")
        u = held = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
