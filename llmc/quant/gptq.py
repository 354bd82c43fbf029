"""GPTQ: second-order weight quantization (Frantar et al., 2022, arXiv:2210.17323).

GPTQ quantizes a Linear layer's weight one input column at a time and, after each column,
updates the not-yet-quantized columns to compensate its rounding error, minimising the
layer-output error ``||X W^T - X Q^T||^2`` on calibration inputs ``X``. The quadratic form of
that error is the Hessian ``H = 2/n X^T X``; with ``U`` the upper Cholesky factor of ``H^-1``
(so ``H^-1 = U^T U``), quantizing column ``i`` with error ``e_i = (w_i - q_i) / U_ii``
moves the later columns by ``-e_i U_{i, i:}`` and costs ``(w_i - q_i)^2 / (2 U_ii^2)``.

Updates are applied lazily: inside a block of columns they touch only the block; the rest of
the matrix gets them in one matrix product when the block is done. That is exactly the
sequential algorithm in a different order of additions, so ``blocksize`` only affects speed.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig, check_group_size

# How many times damping may grow (x10 each) when the damped Hessian is still not positive definite.
_MAX_DAMP_RETRIES = 4


class GPTQ:
    """Accumulate a Linear layer's input Hessian, then GPTQ-quantize its weight in place.

    Usage::

        g = GPTQ(layer)
        for x in calibration_inputs:     # (..., in_features), e.g. captured with a forward hook
            g.add_batch(x)
        stats = g.quantize_(cfg)
    """

    def __init__(self, layer: nn.Linear, name: str = "<linear>"):
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"GPTQ quantizes nn.Linear layers, got {type(layer).__name__}")
        self.layer = layer
        self.name = name
        self.columns = layer.in_features
        self.H: Tensor | None = torch.zeros(
            self.columns, self.columns, dtype=torch.float32, device=layer.weight.device
        )
        self.nsamples = 0

    @torch.no_grad()
    def add_batch(self, x: Tensor) -> None:
        """Fold the rows of ``x`` (..., in_features) into ``H = 2/n * sum x x^T``.

        Kept as a running average, so ``H`` is always normalised by the rows seen so far.
        """
        if self.H is None:
            raise RuntimeError(f"GPTQ for {self.name}: the Hessian was freed by quantize_()")
        if x.shape[-1] != self.columns:
            raise ValueError(
                f"GPTQ for {self.name}: input width {x.shape[-1]} does not match in_features {self.columns}"
            )
        x = x.reshape(-1, self.columns).to(device=self.H.device, dtype=torch.float32)
        n = x.shape[0]
        if n == 0:
            return
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        x = math.sqrt(2.0 / self.nsamples) * x
        self.H += x.t() @ x

    def free(self) -> None:
        """Drop the Hessian (it is as large as the weight's input width squared)."""
        self.H = None

    @staticmethod
    def _inverse_cholesky(H: Tensor, damp: float) -> tuple[Tensor, float]:
        """Upper Cholesky factor of ``(H + damp I)^-1``; grows ``damp`` if ``H`` is not PD."""
        eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        for _ in range(_MAX_DAMP_RETRIES + 1):
            L, info = torch.linalg.cholesky_ex(H + damp * eye)
            if int(info) == 0:
                Hinv = torch.cholesky_inverse(L)
                U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
                if int(info) == 0:
                    return U, damp
            damp *= 10.0
        raise RuntimeError(
            f"damped Hessian is not positive definite even with damping {damp / 10:g}; "
            "use more calibration data or a larger percdamp"
        )

    @torch.no_grad()
    def quantize_(
        self,
        cfg: WeightQuantConfig,
        blocksize: int = 128,
        percdamp: float = 0.01,
        actorder: bool = False,
        static_groups: bool = False,
    ) -> dict:
        """Replace ``layer.weight`` by its GPTQ fake-quantized version, then free the Hessian.

        Args:
            cfg: bit width, symmetry and granularity.
            blocksize: columns per lazy-update block (rounded up to a multiple of the group
                size for per-group quantization so each group's parameters are computed from
                fully updated weights); affects speed, not the result.
            percdamp: damping added to the Hessian diagonal, as a fraction of its mean.
            actorder: quantize columns in order of descending Hessian diagonal (most
                activated inputs first). With per-group quantization the groups are then runs
                of consecutive columns *in that order*, unless ``static_groups``.
            static_groups: compute all group parameters up front from the original weight
                (groups of consecutive original columns), so act-order keeps the standard
                group layout.

        Returns:
            ``{"scale", "zero": the (out, n_groups) parameters of the stored weight in
            original column order (``None`` for act-order with dynamic groups), "error":
            summed GPTQ loss, "seconds": wall time, "damp": damping used, "nsamples":
            calibration rows}``.
        """
        if self.H is None:
            raise RuntimeError(f"GPTQ for {self.name}: quantize_() was already called")
        if self.nsamples == 0:
            raise RuntimeError(f"GPTQ for {self.name}: no calibration data (call add_batch first)")
        check_group_size(self.columns, cfg, self.name)
        if blocksize <= 0:
            raise ValueError(f"blocksize must be positive, got {blocksize}")
        t0 = time.perf_counter()
        quantizer = IntQuantizer(cfg)
        per_group = cfg.granularity == "per_group"
        gs = cfg.group_size if per_group else self.columns
        if per_group and not static_groups:
            blocksize = max(gs, blocksize // gs * gs)

        weight = self.layer.weight
        W = weight.data.detach().clone().float()
        H = self.H
        self.H = None

        # Inputs that never fire: their weights cannot matter, quantize them as zero.
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0

        if static_groups:
            static_scale, static_zero = quantizer.params(W)  # (out, n_groups), original order
        elif not per_group:
            row_scale, row_zero = quantizer.row_params(W)  # (out, 1)

        perm = None
        if actorder:
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]

        damp = percdamp * torch.mean(torch.diag(H)).item()
        Hinv, damp = self._inverse_cholesky(H, damp)
        del H

        Q = torch.zeros_like(W)
        # (scale, zero) of each group in original column order, for exports: collected here for
        # dynamic groups without act-order (whose groups are runs of permuted columns, with no
        # such layout); static groups and per-channel parameters are known up front.
        g_scale = g_zero = None
        if per_group and not static_groups and perm is None:
            g_scale = torch.zeros(W.shape[0], cfg.n_groups(self.columns), device=W.device)
            g_zero = torch.zeros_like(g_scale)
        losses = torch.zeros(W.shape[0], dtype=torch.float32, device=W.device)
        scale = zero = None
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                if static_groups:
                    g = (int(perm[col]) if perm is not None else col) // gs
                    scale, zero = static_scale[:, g : g + 1], static_zero[:, g : g + 1]
                elif not per_group:
                    scale, zero = row_scale, row_zero
                elif col % gs == 0:
                    # Blocks are multiples of gs, so the whole group lies in W1 and is current.
                    scale, zero = quantizer.row_params(W1[:, i : i + gs])
                    if g_scale is not None:
                        g_scale[:, col // gs], g_zero[:, col // gs] = scale[:, 0], zero[:, 0]
                w = W1[:, i]
                d = Hinv1[i, i]
                q = quantizer.fake_with(w.unsqueeze(1), scale, zero).squeeze(1)
                Q1[:, i] = q
                err = (w - q) / d
                losses += (w - q) ** 2 / d**2 / 2
                W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
                Err1[:, i] = err
            Q[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

        if perm is not None:
            Q = Q[:, torch.argsort(perm)]
        weight.data.copy_(Q.to(weight.dtype))
        if static_groups:
            g_scale, g_zero = static_scale, static_zero
        elif not per_group:
            g_scale, g_zero = row_scale, row_zero
        return {
            "scale": g_scale,
            "zero": g_zero,
            "error": float(losses.sum()),
            "seconds": time.perf_counter() - t0,
            "damp": damp,
            "nsamples": self.nsamples,
        }
