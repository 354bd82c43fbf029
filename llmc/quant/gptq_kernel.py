"""GPTQ's column loop for a whole layer as one Triton kernel (GPU).

GPTQ's updates never mix output rows: row ``r`` of the quantized weight depends only on row
``r`` of the weight and on the shared ``U`` (upper Cholesky factor of ``H^-1``). So one program
owns ``BLOCK_R`` rows for the whole layer: for each lazy block of ``BC`` columns it keeps the
rows' block in registers, quantizes it column by column (rank-1 updates inside the block), then
applies the block's errors to the rest of its rows with one fp32 matrix product per tile
(IEEE fp32, no TF32: the same arithmetic as the reference loop in :mod:`llmc.quant.gptq`, up to
the order of additions). One launch per layer replaces thousands of small kernels.

Parameters per column come from ``scale``/``zero`` (out, G) and the column's group index (static
groups and per-channel), or, with ``DYNAMIC``, from the current weights of each group of ``GS``
columns at the group's first column (written back to ``scale``/``zero``).

:func:`available` says whether the kernel can run for a tensor (``LLMC_GPTQ_KERNEL=0`` turns it
off); the tests run it on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of torch; without it the reference loop runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

BLOCK_R = 16


def available(t: Tensor) -> bool:
    if triton is None or os.environ.get("LLMC_GPTQ_KERNEL", "1") == "0":
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _rint(x):
        # round half to even, as torch.round: floor(x + 0.5), one less at exact ties onto odd
        f = tl.floor(x + 0.5)
        tie = (f - x) == 0.5
        odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
        return tl.where(tie & odd, f - 1.0, f)

    @triton.jit
    def _gptq_rows(W, U, Q, S, Z, GIDX, LOSS, n_rows, n_cols, qmin, qmax, min_scale, GS, N_GROUPS,
                   BLOCK_R: tl.constexpr, BC: tl.constexpr, DYNAMIC: tl.constexpr, SYMMETRIC: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < n_rows
        cols = tl.arange(0, BC)
        loss = tl.zeros((BLOCK_R,), dtype=tl.float32)
        s = tl.zeros((BLOCK_R,), dtype=tl.float32)
        z = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for i1 in range(0, n_cols, BC):
            cmask = (i1 + cols) < n_cols
            m2 = rmask[:, None] & cmask[None, :]
            w1 = tl.load(W + rows[:, None] * n_cols + i1 + cols[None, :], mask=m2, other=0.0)
            e1 = tl.zeros((BLOCK_R, BC), dtype=tl.float32)
            for i in range(0, BC):
                c = i1 + i
                if c < n_cols:
                    if DYNAMIC:
                        if c % GS == 0:
                            g = (cols >= i) & (cols < i + GS)
                            vmax = tl.max(tl.where(g[None, :], w1, float("-inf")), axis=1)
                            vmin = tl.min(tl.where(g[None, :], w1, float("inf")), axis=1)
                            if SYMMETRIC:
                                s = tl.maximum(tl.div_rn(tl.maximum(tl.abs(vmax), tl.abs(vmin)), (qmax - qmin) / 2.0),
                                               min_scale)
                                z = tl.zeros((BLOCK_R,), dtype=tl.float32)
                            else:
                                vmax = tl.maximum(vmax, 0.0)
                                vmin = tl.minimum(vmin, 0.0)
                                s = tl.maximum(tl.div_rn(vmax - vmin, qmax - qmin), min_scale)
                                z = tl.minimum(tl.maximum(_rint(tl.div_rn(-vmin, s)), qmin), qmax)
                            tl.store(S + rows * N_GROUPS + c // GS, s, mask=rmask)
                            tl.store(Z + rows * N_GROUPS + c // GS, z, mask=rmask)
                    else:
                        gi = tl.load(GIDX + c)
                        s = tl.load(S + rows * N_GROUPS + gi, mask=rmask, other=1.0)
                        z = tl.load(Z + rows * N_GROUPS + gi, mask=rmask, other=0.0)
                    here = cols == i
                    w = tl.sum(tl.where(here[None, :], w1, 0.0), axis=1)
                    q = (tl.minimum(tl.maximum(_rint(tl.div_rn(w, s)) + z, qmin), qmax) - z) * s
                    tl.store(Q + rows * n_cols + c, q, mask=rmask)
                    d = tl.load(U + c * n_cols + c)
                    err = tl.div_rn(w - q, d)
                    loss += err * err * 0.5
                    h = tl.load(U + c * n_cols + i1 + cols, mask=cmask & (cols >= i), other=0.0)
                    w1 -= err[:, None] * h[None, :]
                    e1 = tl.where(here[None, :], err[:, None], e1)
            # the block's errors reach the rest of these rows: W[:, i2:] -= E1 @ U[i1:i2, i2:]
            ks = i1 + cols
            for j0 in range(i1 + BC, n_cols, BC):
                jmask = (j0 + cols) < n_cols
                mw = rmask[:, None] & jmask[None, :]
                ptr = W + rows[:, None] * n_cols + j0 + cols[None, :]
                wt = tl.load(ptr, mask=mw, other=0.0)
                ut = tl.load(U + ks[:, None] * n_cols + j0 + cols[None, :], mask=cmask[:, None] & jmask[None, :],
                             other=0.0)
                wt -= tl.dot(e1, ut, input_precision="ieee")
                tl.store(ptr, wt, mask=mw)
        tl.store(LOSS + rows, loss, mask=rmask)


def gptq_rows(W: Tensor, U: Tensor, scale: Tensor, zero: Tensor, gidx: Tensor | None, group_size: int,
              qmin: int, qmax: int, symmetric: bool, min_scale: float, blocksize: int = 128) -> tuple[Tensor, Tensor]:
    """Quantize ``W`` (out, n) float32 against ``U`` (n, n) float32 in one launch; returns
    ``(Q, per-row loss)``. ``W`` is used as scratch (its columns are updated in place).

    ``gidx`` (n,) int32: each column's group in ``scale``/``zero`` (out, G); ``None``: dynamic
    groups of ``group_size`` columns, their parameters written into ``scale``/``zero``."""
    out, n = W.shape
    if blocksize not in (16, 32, 64, 128):
        blocksize = 128
    if gidx is None and blocksize % group_size:
        raise ValueError("dynamic groups need the block to be a multiple of the group size")
    W, U = W.contiguous(), U.contiguous()
    Q = torch.empty_like(W)
    loss = torch.empty(out, dtype=torch.float32, device=W.device)
    dummy = torch.zeros(1, dtype=torch.int32, device=W.device)
    _gptq_rows[(triton.cdiv(out, BLOCK_R),)](
        W, U, Q, scale, zero, gidx if gidx is not None else dummy, loss, out, n, float(qmin), float(qmax),
        float(min_scale), group_size if gidx is None else 1, scale.shape[1], BLOCK_R=BLOCK_R, BC=blocksize,
        DYNAMIC=gidx is None, SYMMETRIC=symmetric)
    return Q, loss
