"""LearnedRound: each block's rounding and ranges learned on the block's output.

Every Linear of a block gets a rounding offset per weight (``v`` in [-0.5, 0.5]: a weight rounds
up or down as ``round(w / s + v)``) and a factor on each group's range (its max, and its min for
asymmetric grids), and all of them are fitted together, by signed gradient steps (or Adam) with a
straight-through rounding, so that the block's quantized output matches the float model's output
of the block. The inputs are the quantized model's own activations (the blocks before it already
quantized), the targets the float model's (``target: model``), so each block also makes up for
the error the blocks before it left. The rounding starts from GPTQ's codes (``init: gptq``) or
round-to-nearest, the ranges where ``quant.weight.calib_algo`` puts them. The loss over the whole
calibration set is read where the fit starts and after each quarter of the steps; the offsets and
ranges with the lowest are kept, so the result is never worse on it than the start.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from llmc.config.types import Bool, Float, Int, _positive_fields

from .base import Method, MethodOptions, MethodSpec, torch

#: the range factors stay within [RANGE_MIN, 1] of each group's min/max
RANGE_MIN = 0.3


class LearnedRoundOptions(MethodOptions):
    """LearnedRound: rounding offsets and group ranges fitted on each block's output."""

    _method: ClassVar[str] = "LearnedRound"

    iters: Int = Field(100, description="optimizer steps per block")
    lr: Float | None = Field(None, description="step size (default 1 / iters: a sign step moves an offset by "
                             "at most lr, and the steps shrink linearly to 0)")
    batch_size: Int = Field(8, description="calibration sequences per step")
    optimizer: Literal["sign", "adam"] = Field("sign", description="signed gradient steps, or Adam")
    learn_ranges: Bool = Field(True, description="also fit a factor on each group's range")
    init: Literal["rtn", "gptq"] = Field(
        "gptq", description="where the rounding starts: round to nearest, or GPTQ's codes (one Hessian pass "
                            "over the block's inputs)")
    target: Literal["model", "block"] = Field(
        "model", description="fit the float model's output of the block (model), or the float block's "
                             "output on the quantized model's inputs (block)")

    _check_positive = _positive_fields("iters", "batch_size")


def _round_ste(x):
    """Round in the forward pass, identity in the backward pass."""
    return (x.round() - x).detach() + x


class _Learned:
    """One Linear's learned rounding: offsets ``v`` (out, G, gw), range factors ``hi`` / ``lo``
    (out, G) on the group's max / min (``lo`` unused on a symmetric grid)."""

    def __init__(self, weight, wcfg, clip, codes=None):
        from llmc.quant.quantizer import IntQuantizer

        q = IntQuantizer(wcfg)
        self.qmin, self.qmax = q.qrange()
        self.symmetric = wcfg.symmetric
        out, n = weight.shape
        gw = wcfg.group_width(n)
        self.shape, self.dtype = weight.shape, weight.dtype
        self.wg = weight.detach().float().reshape(out, n // gw, gw)
        self.vmax, self.vmin = self.wg.amax(-1), self.wg.amin(-1)
        start = torch.ones_like(self.vmax) if clip is None else clip.to(self.vmax).clone()
        self.hi = start.clone().requires_grad_(True)
        self.lo = start.clone().requires_grad_(True)
        self.bound = 0.5
        if codes is None:
            self.v = torch.zeros_like(self.wg, requires_grad=True)
        else:  # the offsets that put each weight on its code's centre: a code changes only where
            # the steps keep pushing it the same way (as from round-to-nearest's centre)
            with torch.no_grad():
                scale, zero = self.scale_zero()
                x = self.wg / scale.unsqueeze(-1)
                v = codes.to(x.device).float().reshape(self.wg.shape) - zero.unsqueeze(-1) - x
            self.bound = max(0.5, float(v.abs().max()) + 0.5)
            self.v = v.requires_grad_(True)

    def params(self):
        return [self.v, self.hi] + ([] if self.symmetric else [self.lo])

    def scale_zero(self):
        from llmc.quant.quantizer import MIN_SCALE

        if self.symmetric:
            absmax = torch.maximum(self.vmax.abs(), self.vmin.abs()) * self.hi
            scale = (absmax / ((self.qmax - self.qmin) / 2)).clamp(min=MIN_SCALE)
            return scale, torch.zeros_like(scale)
        hi = (self.vmax * self.hi).clamp(min=0)
        lo = (self.vmin * self.lo).clamp(max=0)
        scale = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=MIN_SCALE)
        return scale, _round_ste(-lo / scale).clamp(self.qmin, self.qmax)

    def weight(self):
        """The fake-quantized weight (differentiable in ``v``, ``hi``, ``lo``) and its (scale, zero)."""
        scale, zero = self.scale_zero()
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
        q = (_round_ste(self.wg / s + self.v) + z).clamp(self.qmin, self.qmax)
        return ((q - z) * s).reshape(self.shape), scale, zero

    def clamp_(self):
        self.v.data.clamp_(-self.bound, self.bound)
        self.hi.data.clamp_(RANGE_MIN, 1.0)
        self.lo.data.clamp_(RANGE_MIN, 1.0)

    def snapshot(self):
        return [p.detach().clone() for p in (self.v, self.hi, self.lo)]

    def restore(self, saved):
        for p, s in zip((self.v, self.hi, self.lo), saved):
            p.data.copy_(s)


class LearnedRound(Method):
    Options = LearnedRoundOptions
    name = "LearnedRound"
    coalesce = True

    def __init__(self, wcfg, options=None):
        super().__init__(wcfg, options)
        self.float_targets = self.opts.target == "model"
        self._learned: dict = {}  # layer -> _Learned, from the block's fit to its quantize_subset
        #: block index -> (the calibration set's loss where the fit starts, the loss kept)
        self.fit: dict[int, tuple[float, float]] = {}

    def describe(self) -> str:
        o = self.opts
        return (f"LearnedRound: {o.iters} {o.optimizer} steps per block, batches of {o.batch_size} sequences, "
                f"targets: the float {o.target}'s outputs, ranges {'learned' if o.learn_ranges else 'fixed'}")

    def block_events(self, block: int) -> list[tuple[str, dict]]:
        if block not in self.fit:
            return []
        first, best = self.fit[block]
        return [("learned_round", dict(block=block, loss_start=first, loss=best, steps=self.opts.iters))]

    def transform_block(self, ctx) -> None:
        """Fit every Linear's offsets and ranges on the block's output (the weights stay as they
        are: :meth:`quantize_subset` writes what was learned)."""
        from torch.func import functional_call

        from llmc.quant.blockwise import _block_out
        from llmc.quant.capture import _to
        from llmc.quant.quantizer import IntQuantizer

        o = self.opts
        block, dev = ctx.block, ctx.device
        layers = {n: m for sub in ctx.subsets for n, m in sub.layers.items()}
        quantizer = IntQuantizer(self.wcfg)
        codes = self._gptq_codes(ctx, layers) if o.init == "gptq" else {}
        learned = {n: _Learned(m.weight, self.wcfg, quantizer.clip_for(m.weight.data), codes.get(n))
                   for n, m in layers.items()}
        targets = ctx.targets
        if targets is None:
            from llmc.quant.blockwise import run_block

            targets = run_block(block, ctx.inputs, dev)
        pieces = _pieces(ctx.inputs, o.batch_size)
        params = [p for lr in learned.values() for p in (lr.params() if o.learn_ranges else [lr.v])]
        lr0 = o.lr if o.lr is not None else 1.0 / o.iters
        adam = torch.optim.Adam(params, lr=lr0) if o.optimizer == "adam" else None
        gen = torch.Generator().manual_seed(ctx.index)
        order = torch.randperm(len(pieces), generator=gen).tolist()
        frozen = [(p, p.requires_grad) for p in block.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        checks = {max(1, o.iters * k // 4) for k in (1, 2, 3)} | {o.iters}  # steps after which the set's loss is read

        def quantized_weights() -> dict:
            """Every Linear's fake-quantized weight under the current offsets and ranges."""
            return {f"{n}.weight": lr.weight()[0].to(lr.dtype) for n, lr in learned.items()}

        def piece_loss(weights: dict, piece: tuple[int, int, int]):
            """The squared error of the block's output on one slice of inputs, times its rows."""
            k, r0, r1 = piece
            bi = ctx.inputs[k]
            out = _block_out(functional_call(block, weights, (bi.hidden[r0:r1].to(dev), *_to(bi.args, dev)),
                                             _to(bi.kwargs, dev), strict=False))
            return (out.float() - targets[k][r0:r1].to(out.device).float()).pow(2).mean() * (r1 - r0)

        def set_loss() -> float:
            """The loss over every calibration input (no gradient): what the kept offsets minimise."""
            with torch.no_grad():
                weights = quantized_weights()
                total = sum(float(piece_loss(weights, p)) for p in pieces)
                return total / max(sum(r1 - r0 for _, r0, r1 in pieces), 1)

        first = best_loss = set_loss()
        best = {n: lr.snapshot() for n, lr in learned.items()}
        try:
            with torch.enable_grad():
                at = 0
                for step in range(o.iters):
                    rows = 0
                    weights = quantized_weights()  # one quantized weight per layer per step
                    while rows < o.batch_size:
                        piece = pieces[order[at % len(order)]]
                        at += 1
                        n_rows = piece[2] - piece[1]
                        piece_loss(weights, piece).backward(retain_graph=rows + n_rows < o.batch_size)
                        rows += n_rows
                    lr_t = lr0 * (1 - step / o.iters)
                    with torch.no_grad():
                        if adam is not None:
                            for g in adam.param_groups:
                                g["lr"] = lr_t
                            adam.step()
                        else:
                            for p in params:
                                if p.grad is not None:
                                    p.add_(p.grad.sign(), alpha=-lr_t)
                        for p in params:
                            p.grad = None
                        for lr in learned.values():
                            lr.clamp_()
                    if step + 1 in checks and (now := set_loss()) < best_loss:
                        best_loss, best = now, {n: lr.snapshot() for n, lr in learned.items()}
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
        for n, lr in learned.items():
            lr.restore(best[n])
        self.fit[ctx.index] = (first, best_loss)
        for n, m in layers.items():
            self._learned[m] = learned[n]

    def _gptq_codes(self, ctx, layers: dict) -> dict:
        """GPTQ's integer codes of every Linear of the block (static groups: the ranges are the
        weights' own, as the fit starts from), the Hessians from one pass over the block's inputs;
        the weights are left as they were."""
        from llmc.quant.collect import collect_inputs
        from llmc.quant.gptq import GptqSolver
        from llmc.quant.quantizer import IntQuantizer

        solvers = {n: GptqSolver(m, n) for n, m in layers.items()}
        stats = collect_inputs(ctx.block, ctx.inputs, layers, ctx.device, max_rows=1, seed=ctx.index,
                               on_batch=lambda name, x: solvers[name].add_batch(x))
        groups: dict[str, dict] = {}
        for n, m in layers.items():
            groups.setdefault(stats[n].same_as or n, {})[n] = m
        before = {n: m.weight.data.clone() for n, m in layers.items()}
        codes, q = {}, IntQuantizer(self.wcfg)
        try:
            for lead, group in groups.items():
                for n, res in solvers[lead].quantize_layers_(group, self.wcfg, actorder=True,
                                                             static_groups=True).items():
                    codes[n] = q.quant(layers[n].weight.data, res["scale"], res["zero"])
                solvers[lead].free()
        finally:
            for n, m in layers.items():
                m.weight.data.copy_(before[n])
        return codes

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        for n, layer in subset.layers.items():
            lr = self._learned.pop(layer)
            with torch.no_grad():
                w, scale, zero = lr.weight()
            layer.weight.data.copy_(w.to(layer.weight.dtype))
            self.record(layer, scale, zero)


def _pieces(inputs, batch_size: int) -> list[tuple[int, int, int]]:
    """``(input, first row, end row)`` slices of at most ``batch_size`` sequences: replayed-together
    inputs are cut along their rows where nothing else in them has a batch of its own."""
    out = []
    for k, bi in enumerate(inputs):
        rows = bi.hidden.shape[0]
        if rows <= batch_size or bi.adds or bi.calls is not None:
            out.append((k, 0, rows))
        else:
            out += [(k, r, min(rows, r + batch_size)) for r in range(0, rows, batch_size)]
    return out


SPEC = MethodSpec(name="LearnedRound", impl=LearnedRound, order=35, needs_data=True,
                  summary="rounding and ranges learned on each block's output (sign steps)")
