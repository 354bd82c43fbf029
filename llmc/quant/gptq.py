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

import os
import time

import torch
from torch import Tensor, nn

from llmc.quant import gptq_kernel
from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig, check_group_size, tf32

# How many times damping may grow (x10 each) when the damped Hessian is still not positive definite.
_MAX_DAMP_RETRIES = 4


def _columns(quantizer: IntQuantizer, W1: Tensor, Hinv1: Tensor, Q1: Tensor, Err1: Tensor, s_cols, z_cols,
             gs: int, gsc, gzc) -> None:
    """Quantize the columns of one lazy block in place: ``W1`` (out, n) is updated column by
    column, ``Q1`` gets the quantized columns and ``Err1`` the scaled errors. Per-column parameters
    come from ``s_cols``/``z_cols`` (out, n), or with ``gs`` (dynamic groups) are computed at each
    group's first column from the current weights (``calib_algo: mse``: their range shrunk by the
    searched factor), into ``gsc``/``gzc`` (out, n // gs)."""
    qmin, qmax = quantizer.qrange()
    s = z = None
    for i in range(W1.shape[1]):
        if gs:
            if i % gs == 0:  # blocks are multiples of gs: the whole group lies in W1 and is current
                group = W1[:, i : i + gs]
                scale, zero = quantizer.row_params(group, quantizer.clip_for(group, 1))
                s, z = scale[:, 0], zero[:, 0]
                gsc[:, i // gs], gzc[:, i // gs] = s, z
        else:
            s, z = s_cols[:, i], z_cols[:, i]
        w = W1[:, i]
        q = (torch.clamp(torch.round(w / s) + z, qmin, qmax) - z) * s
        Q1[:, i] = q
        err = (w - q) / Hinv1[i, i]
        W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1.0)
        Err1[:, i] = err


#: captured CUDA graphs of :func:`_columns`, by shape and quantizer: the loop is launch-bound
#: on a GPU (a few tiny kernels per column), a graph replays a whole block's kernels at once
_GRAPHS: dict[tuple, tuple] = {}


def _block(quantizer: IntQuantizer, W1: Tensor, Hinv1: Tensor, s_cols, z_cols, gs: int):
    """``(Q1, Err1, gsc, gzc)`` of one block (see :func:`_columns`); ``W1`` is not modified. On CUDA
    the block runs as a replayed CUDA graph (``LLMC_GPTQ_GRAPHS=0`` turns that off)."""
    out, n = W1.shape
    if W1.is_cuda and os.environ.get("LLMC_GPTQ_GRAPHS", "1") != "0":
        cfg = quantizer.cfg
        key = (out, n, gs, W1.device, cfg.bit, cfg.symmetric, cfg.calib_algo)
        if key not in _GRAPHS:
            _GRAPHS[key] = _capture(quantizer, out, n, gs, W1.device)
        graph, bufs = _GRAPHS[key]
        bufs["W1"].copy_(W1)
        bufs["Hinv1"].copy_(Hinv1)
        if not gs:
            bufs["s"].copy_(s_cols)
            bufs["z"].copy_(z_cols)
        graph.replay()
        return (bufs["Q1"].clone(), bufs["Err1"].clone(), bufs["gsc"].clone() if gs else None,
                bufs["gzc"].clone() if gs else None)
    W1 = W1.clone()
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    gsc = torch.zeros(out, n // gs, device=W1.device) if gs else None
    gzc = torch.zeros_like(gsc) if gs else None
    _columns(quantizer, W1, Hinv1, Q1, Err1, s_cols, z_cols, gs, gsc, gzc)
    return Q1, Err1, gsc, gzc


def _capture(quantizer: IntQuantizer, out: int, n: int, gs: int, device):
    z = dict(device=device, dtype=torch.float32)
    bufs = {"W1": torch.zeros(out, n, **z), "Hinv1": torch.eye(n, **z), "Q1": torch.zeros(out, n, **z),
            "Err1": torch.zeros(out, n, **z), "s": torch.ones(out, n, **z), "z": torch.zeros(out, n, **z),
            "gsc": torch.zeros(out, max(n // max(gs, 1), 1), **z), "gzc": torch.zeros(out, max(n // max(gs, 1), 1), **z)}

    def step():
        _columns(quantizer, bufs["W1"], bufs["Hinv1"], bufs["Q1"], bufs["Err1"], bufs["s"], bufs["z"], gs,
                 bufs["gsc"], bufs["gzc"])

    with torch.cuda.device(device):  # the layer's card (several with device_map: auto)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    return graph, bufs


#: elements of each piece :func:`_reverse_` swaps at a time
_REVERSE_CHUNK = 1 << 22


def _reverse_(t: Tensor) -> None:
    """Reverse the flat storage of contiguous ``t`` in place (for a square matrix: ``J t J``),
    a piece at a time from both ends (two pieces of temporary memory)."""
    flat = t.view(-1)
    n = flat.numel()
    for a in range(0, n // 2, _REVERSE_CHUNK):
        c = min(_REVERSE_CHUNK, n // 2 - a)
        head, tail = flat[a:a + c], flat[n - a - c:n - a]
        keep = head.flip(0)
        head.copy_(tail.flip(0))
        tail.copy_(keep)


_FP32_OUT: dict[torch.dtype, bool] = {}


def _mm_fp32_out(x: Tensor) -> bool:
    """Whether this torch adds products of 16-bit CUDA matrices into an fp32 one in place
    (``torch.addmm(..., out_dtype=, out=)``), checked once per dtype on a slice of ``x``."""
    if x.dtype not in _FP32_OUT:
        p = x[:4, :8]
        h = torch.ones(8, 8, device=x.device)
        try:
            torch.addmm(h, p.t(), p, alpha=2.0, out_dtype=torch.float32, out=h)
            _FP32_OUT[x.dtype] = bool(torch.allclose(h, 1 + 2 * p.float().t() @ p.float()))
        except (TypeError, RuntimeError):
            _FP32_OUT[x.dtype] = False
    return _FP32_OUT[x.dtype]


class GptqSolver:
    """Accumulate a Linear layer's input Hessian, then GPTQ-quantize its weight in place.

    Usage::

        g = GptqSolver(layer)
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
        #: allocated by the first batch: a layer that shares another's Hessian (k/v reading q's
        #: input) never gets one, and none exists before its block is collected
        self.H: Tensor | None = None
        self.nsamples = 0
        self._done = False  # quantized or freed: the Hessian is gone for good

    @torch.no_grad()
    def add_batch(self, x: Tensor) -> None:
        """Fold the rows of ``x`` (..., in_features) into ``H = 2/n * sum x x^T``.

        Kept as a running average, so ``H`` is always normalised by the rows seen so far.
        """
        if self._done:
            raise RuntimeError(f"GPTQ for {self.name}: the Hessian was freed by quantize_()")
        if x.shape[-1] != self.columns:
            raise ValueError(
                f"GPTQ for {self.name}: input width {x.shape[-1]} does not match in_features {self.columns}"
            )
        exact16 = x.dtype in (torch.bfloat16, torch.float16)
        x = x.reshape(-1, self.columns)
        n = x.shape[0]
        if n == 0:
            return
        if self.H is None:
            self.H = torch.zeros(self.columns, self.columns, dtype=torch.float32, device=self.layer.weight.device)
        x = x.to(self.H.device)
        self.H *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        if exact16 and x.is_cuda and _mm_fp32_out(x):
            # 16-bit products are exact in fp32: tensor cores at the 16-bit rate, summed in fp32
            # into H itself (no temporary as large as H)
            torch.addmm(self.H, x.t(), x, alpha=2.0 / self.nsamples, out_dtype=torch.float32, out=self.H)
            return
        x = x.float()
        # 16-bit inputs are exact in TF32, whose tensor cores then give fp32 products and sums:
        # the same Hessian as plain fp32, several times faster on a GPU
        with tf32(exact16 and x.is_cuda):
            self.H.addmm_(x.t(), x, alpha=2.0 / self.nsamples)

    def free(self) -> None:
        """Drop the Hessian (it is as large as the weight's input width squared)."""
        self.H = None
        self._done = True

    @staticmethod
    def _inverse_cholesky(H: Tensor | list[Tensor], damp: float, order: Tensor | None = None) -> tuple[Tensor, float]:
        """Upper Cholesky factor ``U`` of ``(H + damp I)^-1`` (rows and columns of ``H`` taken in
        ``order`` first, when given); grows ``damp`` if ``H`` is not positive definite. ``H`` is
        damped in place; given as a one-element list it is taken out of it and freed once factored.

        With ``J`` the reversal, ``U = J L^-1 J`` for ``L`` the lower Cholesky factor of ``J H J``:
        one factorization and one triangular solve into an identity (no explicit inverse, half the
        work), then the solve's storage reversed in place, so at most two ``n x n`` matrices exist
        at a time (``H`` and ``L``, then ``L`` and ``U``)."""
        if isinstance(H, list):
            H = H.pop()
        n = H.shape[0]
        rev = order.flip(0) if order is not None else torch.arange(n - 1, -1, -1, device=H.device)
        H = H.index_select(0, rev)  # each step frees the matrix before it
        H = H.index_select(1, rev)
        diag, added = H.diagonal(), 0.0
        for _ in range(_MAX_DAMP_RETRIES + 1):
            diag.add_(damp - added)
            added = damp
            L, info = torch.linalg.cholesky_ex(H)
            if int(info) == 0:
                H = diag = None
                E = torch.eye(n, dtype=L.dtype, device=L.device)
                # E^T (column-major, solved in place) = L^-T, so E = L^-1 (row-major)
                torch.linalg.solve_triangular(L.mT, E.mT, upper=True, out=E.mT)
                del L
                _reverse_(E)  # J L^-1 J: the flat storage of a square matrix reversed
                return E, damp
            del L
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
        return self.quantize_layers_({self.name: self.layer}, cfg, blocksize, percdamp, actorder,
                                     static_groups)[self.name]

    @torch.no_grad()
    def quantize_layers_(self, layers: dict[str, nn.Linear], cfg: WeightQuantConfig, blocksize: int = 128,
                         percdamp: float = 0.01, actorder: bool = False, static_groups: bool = False) -> dict[str, dict]:
        """:meth:`quantize_` for every layer of ``layers``, each of which read the inputs this
        Hessian was accumulated from (q/k/v on one normed hidden state): the Hessian is damped,
        ordered and factored once for them all. Returns each layer's :meth:`quantize_` result
        (``seconds``: its own solve, the shared factorization counted in the first)."""
        if self._done:
            raise RuntimeError(f"GPTQ for {self.name}: quantize_() was already called")
        if self.nsamples == 0:
            raise RuntimeError(f"GPTQ for {self.name}: no calibration data (call add_batch first)")
        for name, layer in layers.items():
            if layer.in_features != self.columns:
                raise ValueError(f"GPTQ for {self.name}: {name} reads {layer.in_features} inputs, the Hessian "
                                 f"is {self.columns} wide")
            check_group_size(self.columns, cfg, name)
        if blocksize <= 0:
            raise ValueError(f"blocksize must be positive, got {blocksize}")
        t0 = time.perf_counter()
        H = self.H
        self.free()
        # Inputs that never fire: their weights cannot matter, quantize them as zero.
        dead = torch.diag(H) == 0
        H.diagonal().masked_fill_(dead, 1.0)
        perm = torch.argsort(torch.diag(H), descending=True) if actorder else None
        damp = percdamp * torch.mean(torch.diag(H)).item()
        held = [H]
        del H
        Hinv, damp = self._inverse_cholesky(held, damp, perm)
        results = {}
        for name, layer in layers.items():
            res = self._solve(layer, cfg, Hinv, perm, dead, blocksize, static_groups)
            results[name] = {**res, "seconds": time.perf_counter() - t0, "damp": damp, "nsamples": self.nsamples}
            t0 = time.perf_counter()
        return results

    def _solve(self, layer: nn.Linear, cfg: WeightQuantConfig, Hinv: Tensor, perm: Tensor | None, dead: Tensor,
               blocksize: int, static_groups: bool) -> dict:
        """GPTQ of one layer's weight against the factored Hessian (``perm``: act-order)."""
        quantizer = IntQuantizer(cfg)
        per_group = cfg.granularity == "per_group"
        gs = cfg.group_size if per_group else self.columns
        if per_group and not static_groups:
            blocksize = max(gs, blocksize // gs * gs)
        weight = layer.weight
        W = weight.data.to(torch.float32, copy=True)
        W.masked_fill_(dead[None, :], 0.0)

        # calib_algo: mse shrinks each group's range by its searched factor (dynamic groups: searched
        # on the group's current weights when the loop reaches it)
        if static_groups:
            static_scale, static_zero = quantizer.params(W, quantizer.clip_for(W))  # (out, n_groups), original order
        elif not per_group:
            row_scale, row_zero = quantizer.row_params(W, quantizer.clip_for(W))  # (out, 1)
        if perm is not None:
            W = W[:, perm]

        dynamic = per_group and not static_groups
        # (scale, zero) of each group in original column order, for exports: collected here for
        # dynamic groups without act-order (whose groups are runs of permuted columns, with no
        # such layout); static groups and per-channel parameters are known up front.
        g_scale = g_zero = None
        if dynamic and perm is None:
            g_scale = torch.zeros(W.shape[0], cfg.n_groups(self.columns), device=W.device)
            g_zero = torch.zeros_like(g_scale)
        if gptq_kernel.available(W) and (not dynamic or 128 % gs == 0):  # the whole loop in one launch
            Q, losses = self._kernel(quantizer, W, Hinv, perm, gs, static_groups, per_group, blocksize,
                                     static_scale if static_groups else None, row_scale if not per_group else None,
                                     static_zero if static_groups else None, row_zero if not per_group else None,
                                     g_scale, g_zero)
        else:
            # per-column parameters when they are known before the loop (no host sync inside it)
            s_cols = z_cols = None
            if static_groups:
                groups = (perm if perm is not None else torch.arange(self.columns, device=W.device)) // gs
                s_cols, z_cols = static_scale[:, groups], static_zero[:, groups]
            elif not per_group:
                s_cols, z_cols = row_scale.expand_as(W), row_zero.expand_as(W)
            Q, losses = self._loop(quantizer, W, Hinv, blocksize, dynamic, gs, s_cols, z_cols, g_scale, g_zero)
        del W
        if perm is not None:  # column j of Q is column perm[j] of the weight
            weight.data.index_copy_(1, perm, Q.to(weight.dtype))
        else:
            weight.data.copy_(Q.to(weight.dtype))
        if static_groups:
            g_scale, g_zero = static_scale, static_zero
        elif not per_group:
            g_scale, g_zero = row_scale, row_zero
        return {"scale": g_scale, "zero": g_zero, "error": float(losses.sum())}

    def _kernel(self, quantizer, W, Hinv, perm, gs, static_groups, per_group, blocksize, s_static, s_row, z_static,
                z_row, g_scale, g_zero):
        """The column loop as :func:`llmc.quant.gptq_kernel.gptq_rows` (same parameters, same result)."""
        from llmc.quant.quantizer import MIN_SCALE

        qmin, qmax = quantizer.qrange()
        cols = perm if perm is not None else torch.arange(self.columns, device=W.device)
        if static_groups or not per_group:
            scale, zero = (s_static, z_static) if static_groups else (s_row, z_row)
            gidx = (cols // gs if static_groups else torch.zeros_like(cols)).to(torch.int32)
        else:  # dynamic groups: written by the kernel, in the loop's (possibly permuted) order
            scale = torch.zeros(W.shape[0], self.columns // gs, device=W.device)
            zero, gidx = torch.zeros_like(scale), None
        Q, losses = gptq_kernel.gptq_rows(W, Hinv, scale.float().contiguous(), zero.float().contiguous(), gidx, gs,
                                          qmin, qmax, quantizer.cfg.symmetric, MIN_SCALE, blocksize,
                                          mse=quantizer.cfg.calib_algo == "mse")
        if g_scale is not None:  # dynamic groups without act-order: the export's layout
            g_scale.copy_(scale)
            g_zero.copy_(zero)
        return Q, losses

    def _loop(self, quantizer, W, Hinv, blocksize, dynamic, gs, s_cols, z_cols, g_scale, g_zero):
        """The reference column loop, lazy block by lazy block (a CUDA graph per block on a GPU)."""
        Q = torch.zeros_like(W)
        losses = torch.zeros(W.shape[0], dtype=torch.float32, device=W.device)
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            Q1, Err1, gsc, gzc = _block(quantizer, W[:, i1:i2], Hinv[i1:i2, i1:i2],
                                        None if dynamic else s_cols[:, i1:i2], None if dynamic else z_cols[:, i1:i2],
                                        gs if dynamic else 0)
            if g_scale is not None:
                g_scale[:, i1 // gs:i2 // gs], g_zero[:, i1 // gs:i2 // gs] = gsc, gzc
            Q[:, i1:i2] = Q1
            losses += Err1.pow(2).sum(1) / 2  # (w - q)^2 / d^2 / 2 for each column of the block
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        return Q, losses
