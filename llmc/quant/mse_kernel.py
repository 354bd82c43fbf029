"""The MSE range search of :meth:`llmc.quant.quantizer.IntQuantizer.search_clip` as one Triton kernel.

Each program owns ``BLOCK_G`` groups (a group: one row's run of ``GW`` columns), loads them once
and tries every shrink factor on them in registers: the weight is read once, however many factors
are tried (the torch search reads it once per factor). Same arithmetic as the torch search up to
the rounding of ``|w - q|^norm`` (``exp2(norm * log2)`` here), so where two factors' errors
differ by that rounding the pick may differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmc.quant.gptq_kernel import available, triton

if triton is not None:
    import triton.language as tl

    from llmc.quant.gptq_kernel import _best_factor

    @triton.jit
    def _mse_clip(W, F, CLIP, n_groups, GW, n_f, qmin, qmax, min_scale, norm,
                  BLOCK_G: tl.constexpr, GW_P: tl.constexpr, SYMMETRIC: tl.constexpr):
        pid = tl.program_id(0)
        gids = pid * BLOCK_G + tl.arange(0, BLOCK_G)
        gmask = gids < n_groups
        cols = tl.arange(0, GW_P)
        m = gmask[:, None] & (cols < GW)[None, :]
        g = tl.load(W + gids[:, None] * GW + cols[None, :], mask=m, other=0.0)
        vmax = tl.max(tl.where(m, g, float("-inf")), axis=1)
        vmin = tl.min(tl.where(m, g, float("inf")), axis=1)
        clip = _best_factor(g, m, vmax, vmin, F, n_f, qmin, qmax, min_scale, norm, BLOCK_G, SYMMETRIC)
        tl.store(CLIP + gids, clip, mask=gmask)


#: widest group the kernel keeps in registers; wider ones (per-channel rows) use the torch search
MAX_WIDTH = 4096


def fits(wg: Tensor) -> bool:
    """Whether the kernel can search the groups of ``wg`` (rows, groups, width)."""
    return available(wg) and wg.shape[-1] <= MAX_WIDTH


def mse_clip(wg: Tensor, factors: Tensor, qmin: int, qmax: int, symmetric: bool, min_scale: float,
             norm: float) -> Tensor:
    """The factor of ``factors`` (float32, tried in order, ties keep the earlier) with the least
    ``sum |w - q(w)|^norm`` for each group of ``wg`` (rows, groups, width) float32; (rows, groups)."""
    rows, groups, gw = wg.shape
    wg = wg.contiguous()
    gw_p = triton.next_power_of_2(gw)
    block_g = max(1, min(64, 2048 // gw_p))
    clip = torch.empty(rows, groups, dtype=torch.float32, device=wg.device)
    n = rows * groups
    _mse_clip[(triton.cdiv(n, block_g),)](wg, factors.contiguous(), clip, n, gw, factors.numel(), float(qmin),
                                         float(qmax), float(min_scale), float(norm), BLOCK_G=block_g, GW_P=gw_p,
                                         SYMMETRIC=symmetric, num_warps=4)
    return clip
