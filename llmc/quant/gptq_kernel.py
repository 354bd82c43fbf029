"""GPTQ's column loop for a whole layer as one Triton kernel (GPU).

GPTQ's updates never mix output rows: row ``r`` of the quantized weight depends only on row
``r`` of the weight and on the shared ``U`` (upper Cholesky factor of ``H^-1``). So one program
owns ``BLOCK_R`` rows for the whole layer: for each lazy block of ``BC`` columns it keeps the
rows' block in registers, quantizes it column by column (rank-1 updates inside the block; each
column's row of ``U`` and parameters are loaded while the column before it is computed), then
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

from llmc.quant.quantizer import MSE_NORM, mse_factors

try:  # Triton ships with CUDA builds of torch; without it the reference loop runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

#: rows per program for layers of more than 4096 outputs (half that below), and warps per program:
#: the fastest of 8/16 rows x 2/4 warps on an H200 (bench/gptq_kernel_tune.py)
BLOCK_R = 16
NUM_WARPS = 4


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
    def _params(hi, lo, qmin, qmax, min_scale, SYMMETRIC: tl.constexpr):
        """(scale, zero) of ranges ``[lo, hi]``: :func:`llmc.quant.quantizer.range_params`."""
        if SYMMETRIC:
            s = tl.maximum(tl.div_rn(tl.maximum(tl.abs(hi), tl.abs(lo)), (qmax - qmin) / 2.0), min_scale)
            z = s * 0.0
        else:
            hi = tl.maximum(hi, 0.0)
            lo = tl.minimum(lo, 0.0)
            s = tl.maximum(tl.div_rn(hi - lo, qmax - qmin), min_scale)
            z = tl.minimum(tl.maximum(_rint(tl.div_rn(-lo, s)), qmin), qmax)
        return s, z

    @triton.jit
    def _best_factor(x, m, vmax, vmin, F, n_f, qmin, qmax, min_scale, norm, ROWS: tl.constexpr,
                     SYMMETRIC: tl.constexpr):
        """Per row of ``x`` (masked by ``m``): the first factor of ``F`` whose range gives the least
        ``sum |x - q(x)|^norm`` (the search of :meth:`IntQuantizer.search_clip`)."""
        best = tl.full((ROWS,), float("inf"), tl.float32)
        clip = tl.full((ROWS,), 1.0, tl.float32)
        for k in range(0, n_f):
            p = tl.load(F + k)
            s, z = _params(vmax * p, vmin * p, qmin, qmax, min_scale, SYMMETRIC)
            q = (tl.minimum(tl.maximum(_rint(tl.div_rn(x, s[:, None])) + z[:, None], qmin), qmax) - z[:, None]) \
                * s[:, None]
            d = tl.abs(q - x)
            err = tl.sum(tl.where(m & (d > 0.0), tl.exp2(norm * tl.log2(d)), 0.0), axis=1)
            better = err < best
            best = tl.where(better, err, best)
            clip = tl.where(better, p, clip)
        return clip

    @triton.jit
    def _gptq_rows(W, U, Q, S, Z, GIDX, F, LOSS, n_rows, n_cols, qmin, qmax, min_scale, GS, N_GROUPS, n_f, norm,
                   BLOCK_R: tl.constexpr, BC: tl.constexpr, DYNAMIC: tl.constexpr, SYMMETRIC: tl.constexpr,
                   MSE: tl.constexpr):
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
            q1 = tl.zeros((BLOCK_R, BC), dtype=tl.float32)
            # Each column's loads (its row of U, its parameters) are issued one column ahead, so
            # their latency hides behind the column before; the group index two ahead.
            lim = tl.minimum(i1 + BC, n_cols)
            d_c = tl.load(U + i1 * n_cols + i1)
            h_c = tl.load(U + i1 * n_cols + i1 + cols, mask=cmask, other=0.0)
            if not DYNAMIC:
                gi_c = tl.load(GIDX + i1)
                s_c = tl.load(S + rows * N_GROUPS + gi_c, mask=rmask, other=1.0)
                z_c = tl.load(Z + rows * N_GROUPS + gi_c, mask=rmask, other=0.0)
                gi_n = tl.load(GIDX + i1 + 1, mask=i1 + 1 < lim, other=0)
            for i in range(0, BC):
                c = i1 + i
                if c < n_cols:
                    cn = c + 1
                    more = cn < lim
                    d_n = tl.load(U + cn * n_cols + cn, mask=more, other=1.0)
                    h_n = tl.load(U + cn * n_cols + i1 + cols, mask=cmask & (cols > i) & more, other=0.0)
                    if DYNAMIC:
                        if c % GS == 0:
                            g = (cols >= i) & (cols < i + GS)
                            vmax = tl.max(tl.where(g[None, :], w1, float("-inf")), axis=1)
                            vmin = tl.min(tl.where(g[None, :], w1, float("inf")), axis=1)
                            if MSE:  # the range factor with the least |w - q|^norm on the group as it is now
                                f = _best_factor(w1, g, vmax, vmin, F, n_f, qmin, qmax, min_scale, norm, BLOCK_R,
                                                 SYMMETRIC)
                                vmax = vmax * f
                                vmin = vmin * f
                            s, z = _params(vmax, vmin, qmin, qmax, min_scale, SYMMETRIC)
                            tl.store(S + rows * N_GROUPS + c // GS, s, mask=rmask)
                            tl.store(Z + rows * N_GROUPS + c // GS, z, mask=rmask)
                    else:
                        s_n = tl.load(S + rows * N_GROUPS + gi_n, mask=rmask & more, other=1.0)
                        z_n = tl.load(Z + rows * N_GROUPS + gi_n, mask=rmask & more, other=0.0)
                        gi_nn = tl.load(GIDX + cn + 1, mask=cn + 1 < lim, other=0)
                        s = s_c
                        z = z_c
                    here = cols == i
                    w = tl.sum(tl.where(here[None, :], w1, 0.0), axis=1)
                    q = (tl.minimum(tl.maximum(_rint(tl.div_rn(w, s)) + z, qmin), qmax) - z) * s
                    q1 = tl.where(here[None, :], q[:, None], q1)
                    err = tl.div_rn(w - q, d_c)
                    loss += err * err * 0.5
                    w1 -= err[:, None] * h_c[None, :]
                    e1 = tl.where(here[None, :], err[:, None], e1)
                    d_c = d_n
                    h_c = h_n
                    if not DYNAMIC:
                        s_c = s_n
                        z_c = z_n
                        gi_n = gi_nn
            tl.store(Q + rows[:, None] * n_cols + i1 + cols[None, :], q1, mask=m2)
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
              qmin: int, qmax: int, symmetric: bool, min_scale: float, blocksize: int = 128,
              block_r: int | None = None, num_warps: int | None = None, mse: bool = False) -> tuple[Tensor, Tensor]:
    """Quantize ``W`` (out, n) float32 against ``U`` (n, n) float32 in one launch; returns
    ``(Q, per-row loss)``. ``W`` is used as scratch and ends up holding ``Q`` (the same tensor).

    ``gidx`` (n,) int32: each column's group in ``scale``/``zero`` (out, G); ``None``: dynamic
    groups of ``group_size`` columns, their parameters written into ``scale``/``zero`` (``mse``: from
    the range shrunk by the factor the MSE search picks on the group's current weights).
    ``block_r`` rows per program and ``num_warps`` tune the launch, not the result."""
    out, n = W.shape
    if blocksize not in (16, 32, 64, 128):
        blocksize = 128
    if gidx is None and blocksize % group_size:
        raise ValueError("dynamic groups need the block to be a multiple of the group size")
    block_r = block_r or (BLOCK_R if out > 4096 else BLOCK_R // 2)  # fewer rows: more programs for narrow layers
    W, U = W.contiguous(), U.contiguous()
    # the quantized columns overwrite ``W``'s: a lazy block's columns are never read once its
    # codes are written (each program owns its rows), so no second matrix of W's size is needed
    Q = W
    loss = torch.empty(out, dtype=torch.float32, device=W.device)
    dummy = torch.zeros(1, dtype=torch.int32, device=W.device)
    factors = mse_factors(W.device)
    _gptq_rows[(triton.cdiv(out, block_r),)](
        W, U, Q, scale, zero, gidx if gidx is not None else dummy, factors, loss, out, n, float(qmin), float(qmax),
        float(min_scale), group_size if gidx is None else 1, scale.shape[1], factors.numel(), float(MSE_NORM),
        BLOCK_R=block_r, BC=blocksize, DYNAMIC=gidx is None, SYMMETRIC=symmetric, MSE=mse and gidx is None,
        num_warps=num_warps or NUM_WARPS)
    return Q, loss
