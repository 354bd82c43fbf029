"""AWQ: activation-aware scales folded into the preceding op, then a clip search and RTN."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

from pydantic import Field

from llmc.config.errors import _KeyedError
from llmc.config.types import Bool, Int, _positive_fields

from .base import Method, MethodOptions, MethodSpec, RunFacts, no_grad, torch

#: AWQ ``search: auto`` picks the answer-level search up to this depth: its cost grows with the
#: square of the depth (block i runs the L - i blocks after it for every candidate; measured
#: 3.6x the block search's time at 8 blocks, 7.8x at 16: bench/awq_search_cost.py)
AUTO_OUTPUT_MAX_BLOCKS = 8


class AwqOptions(MethodOptions):
    """AWQ: activation-aware scaling (``trans``) and weight clipping."""

    _method: ClassVar[str] = "Awq"

    trans: Bool = True
    trans_version: Literal["v1", "v2"] = Field(
        "v2", description="scale candidates: v1 mean|x|^r; v2 mean|x|^r / mean|W|^(1-r) (group-normalised W)")
    weight_clip: Bool = True
    clip_sym: Bool | None = Field(None, description="defaults to quant.weight.symmetric")
    n_grid: Int = 20
    search: Literal["auto", "block", "layer", "output"] = Field(
        "auto", description="scale-search loss: the block's output, the layers' outputs, or the model's answers "
        "(KL from the float model's at each prompt's last position; also gates the clip); auto: output where "
        "it is affordable and applies (at most 8 blocks, loss_tokens last, no offload), block otherwise")
    loss_tokens: Literal["auto", "all", "last"] = Field(
        "auto", description="positions the block scale search (and by default the clip search) fit: every token, or the last one "
        "of each calibration sequence (where a VQA prompt is answered); auto: last for custom_mm "
        "calibration without answers, all otherwise")
    clip_tokens: Literal["auto", "same", "all", "last"] = Field(
        "auto", description="positions the clip search fits; same: those of loss_tokens; auto: all under "
        "search: output, same otherwise")

    _check_positive = _positive_fields("n_grid")

    def complete(self, quant) -> None:
        if self.clip_sym is None:
            self.clip_sym = quant.weight.symmetric

    def check(self, config) -> None:
        if self.search == "output":
            from llmc.quant.blockwise import OUTPUT_NO_OFFLOAD

            from . import default_loss_tokens

            if (self.loss_tokens if self.loss_tokens != "auto" else default_loss_tokens(config.calib)) != "last":
                raise _KeyedError(OUTPUT_NEEDS_LAST, key=("quant", "special", "search"))
            if config.model.offload:
                raise _KeyedError(OUTPUT_NO_OFFLOAD, key=("quant", "special", "search"))

    def resolve(self, facts: RunFacts) -> AwqOptions:
        from . import default_loss_tokens

        o = self.model_copy()
        if o.loss_tokens == "auto":
            o.loss_tokens = default_loss_tokens(facts.calib)
        if o.search == "auto":
            fits = facts.n_blocks is not None and facts.n_blocks <= AUTO_OUTPUT_MAX_BLOCKS
            o.search = "output" if fits and o.loss_tokens == "last" and facts.placement != "offload" else "block"
        if o.clip_tokens == "auto":
            o.clip_tokens = "all" if o.search == "output" else "same"
        return o


#: why ``search: output`` needs ``loss_tokens: last`` (and how to get it)
OUTPUT_NEEDS_LAST = ("output fits the answer at each calibration prompt's last position; set "
                     "quant.special.loss_tokens: last (auto picks it for custom_mm calibration without add_answer)")


class Awq(Method):
    """Activation-aware scales folded into the preceding op, then clip search and RTN.

    The scales are searched on the *block output*, jointly: the whole block is simulated as it
    will be quantized (every layer's weight replaced by ``Q(W * c) / c`` for its column scale
    ``c``; a Linear that absorbs the next subset's ``1/s`` in its rows quantizes to the same
    function, since groups lie along rows), and the subsets' scales are chosen one after the
    other, each given the scales already chosen before it. Each subset's candidates are
    ``s = 1`` (no scaling: plain RTN) and the AWQ grid, so the chosen scales never make this
    block's simulated output error worse than RTN's.
    Attention, the MLP's non-linearity and the way the subsets' errors add up all count, as they
    do for the model. ``search: layer`` uses each subset's own layer outputs instead (the cheaper
    classic loss, with the other layers in float). ``search: output`` goes the other way: the
    loss is the KL divergence of the model's answer (next-token distribution at each calibration
    prompt's last position, through the rest of the model) from the float model's, and the clip
    search's ratios are then kept for a subset only where they lower that loss too.
    """

    Options = AwqOptions
    name = "Awq"
    search_inputs = 64  # calibration sequences used by the block-output search
    # equal-length sequences replay together: the search then takes whole batches of about
    # search_inputs sequences in all (_search_set), and each candidate costs a few batched
    # forwards instead of search_inputs launch-bound ones
    coalesce = True

    def __init__(self, wcfg, options=None):
        super().__init__(wcfg, options)
        o = self.opts
        # ``auto`` values are decided by AwqOptions.resolve; a method built without it (tests,
        # benches) takes the classic choices
        self.loss_tokens = "all" if o.loss_tokens == "auto" else o.loss_tokens
        self.clip_tokens = self.loss_tokens if o.clip_tokens in ("same", "auto") else o.clip_tokens
        self.search = "block" if o.search == "auto" else o.search
        self.output_loss = self.search == "output"
        if self.output_loss and self.loss_tokens != "last":
            raise ValueError(f"search: {OUTPUT_NEEDS_LAST}")
        #: block index -> the block search's loss with every chosen scale in place (simulated)
        self.search_loss: dict[int, float] = {}
        #: (``search: output``) (block index, "layer[,layer]") -> (clip kept, answer loss without, with the clip)
        self.clip_verdicts: dict[tuple[int, str], tuple[bool, float, float]] = {}

    def describe(self) -> str:
        return f"AWQ search: {self.search}, loss tokens {self.loss_tokens}, clip tokens {self.clip_tokens}"

    def block_events(self, block: int) -> list[tuple[str, dict]]:
        return [("clip_verdict", dict(block=i, layers=layers, kept=kept, answer_kl=without, answer_kl_clipped=with_clip))
                for (i, layers), (kept, without, with_clip) in self.clip_verdicts.items() if i == block]

    def transform_block(self, ctx: BlockContext) -> None:
        from llmc.quant import awq
        from llmc.quant.collect import collect_inputs

        if not self.opts.trans:
            return
        n_grid = self.opts.n_grid
        subsets = [s for s in ctx.subsets if s.prev_op is not None]
        if not subsets:
            return
        # every layer of a subset reads the same input: hook the first one of each
        firsts = {str(k): next(iter(sub.layers.values())) for k, sub in enumerate(subsets)}
        stats = collect_inputs(ctx.block, ctx.inputs, firsts, ctx.device, seed=ctx.index)
        xs = [stats[str(k)].x for k in range(len(subsets))]
        if self.search == "layer":
            chosen = [awq.search_scales(x.to(ctx.device), list(sub.layers.values()), self.wcfg, n_grid=n_grid)[0]
                      for x, sub in zip(xs, subsets)]
        else:
            v2 = self.opts.trans_version == "v2"
            chosen, self.search_loss[ctx.index] = self._search_on_block(
                ctx, subsets, [x.abs().mean(0) for x in xs], n_grid, v2)
        for sub, scales in zip(subsets, chosen):
            layers = list(sub.layers.values())
            awq.apply_scales_(sub.prev_op, layers, scales.to(layers[0].weight.device))

    def _candidates(self, x_mean: torch.Tensor, w_mean: torch.Tensor | None, n_grid: int):
        yield torch.ones_like(x_mean)  # no scaling
        for i in range(1 if w_mean is None else 0, n_grid):  # v1's ratio 0 is the ones above
            r = i / n_grid
            if w_mean is None:  # v1: activation statistics only
                s = x_mean.pow(r).clamp(min=1e-4)
            else:  # v2 ("duo"): salient inputs up, channels with large weights down
                s = (x_mean.pow(r) / (w_mean.to(x_mean.device).pow(1 - r) + 1e-4)).clamp(min=1e-4)
            yield s / (s.max() * s.min()).sqrt()

    @no_grad
    def _search_on_block(self, ctx: BlockContext, subsets, x_means: list, n_grid: int,
                         v2: bool) -> tuple[list[torch.Tensor], float]:
        from llmc.quant.blockwise import last_positions, run_block
        from llmc.quant.quantizer import IntQuantizer

        inputs, answers = self._search_set(ctx)
        ref = run_block(ctx.block, inputs, ctx.device) if answers is None else None
        last = self.loss_tokens == "last"
        q = IntQuantizer(self.wcfg)
        linears = [fc for sub in ctx.subsets for fc in sub.layers.values()]
        # Each layer is simulated as Q(W * c) / c for its column scale c. Where a Linear of the
        # block absorbs the next subset's 1/s (v_proj <- o_proj, up_proj <- down_proj) its rows
        # are divided by s; quantization groups lie along rows, so Q(W / s_row) = Q(W) / s_row
        # and that Linear's simulated output needs no change.
        def use(layers, s):
            for fc in layers:
                fc.weight.data = (q.fake(orig[fc].float() * s) / s).to(orig[fc].dtype)

        chosen = []
        with _weights_restored(linears) as orig:
            for fc in linears:
                fc.weight.data = q.fake(orig[fc].float()).to(orig[fc].dtype)
            for sub, x_mean in zip(subsets, x_means):
                layers = list(sub.layers.values())
                x_mean = x_mean.to(orig[layers[0]].device, torch.float32)
                w_mean = _group_normalized_weight_mean([orig[fc] for fc in layers], self.wcfg) if v2 else None
                best, best_loss = None, float("inf")
                for s in self._candidates(x_mean, w_mean, n_grid):
                    use(layers, s)
                    out = run_block(ctx.block, inputs, ctx.device)
                    if answers is not None:
                        loss = _answer_kl(ctx.tail(out, inputs), answers)
                    else:
                        # a replayed-together batch counts as its sequences, as they would one by one
                        loss = sum(o.shape[0] * (_token_relative_mse(last_positions(o), last_positions(r)) if last
                                                 else _token_relative_mse(o, r)) for o, r in zip(out, ref))
                    if loss < best_loss:
                        best, best_loss = s.clone(), loss
                if best is None:  # every candidate's loss was NaN: leave this subset unscaled
                    best = torch.ones_like(x_mean)
                use(layers, best)
                chosen.append(best)
        return chosen, best_loss

    def _search_set(self, ctx: BlockContext):
        """The calibration inputs the searches fit (evenly spaced, about ``search_inputs``
        sequences: as many batches of replayed-together sequences) and, for ``search: output``,
        the float model's answers to them."""
        per = sum(bi.hidden.shape[0] for bi in ctx.inputs) / max(1, len(ctx.inputs))  # sequences per input
        k = max(1, round(self.search_inputs / per))
        step = max(1, len(ctx.inputs) // k)
        inputs = ctx.inputs[::step][:k]
        answers = ctx.float_answers[::step][:k] if self.output_loss else None
        return inputs, answers

    def quantize_subset(self, ctx, subset, stats, state) -> None:
        from llmc.quant import awq
        from llmc.quant.quantizer import WeightQuantConfig

        clip_cfg = self.wcfg
        if self.opts.clip_sym is not None and self.opts.clip_sym != self.wcfg.symmetric:
            clip_cfg = WeightQuantConfig(self.wcfg.bit, self.opts.clip_sym, self.wcfg.granularity,
                                         self.wcfg.group_size)
        clips = {}
        for n, layer in subset.layers.items():
            # like AutoAWQ, no clip search for q/k: their errors are amplified by the softmax
            if self.opts.weight_clip and not n.endswith(("q_proj", "k_proj")):
                clips[n] = awq.search_clip_(layer, stats[n].x.to(ctx.device), clip_cfg,
                                            n_grid=self.opts.n_grid, name=f"{ctx.name}.{n}")
        if clips and self.output_loss and not self._clip_lowers_answer_loss(ctx, subset, clips):
            clips = {}
        for n, layer in subset.layers.items():
            self.record(layer, *awq.awq_quantize_(layer, self.wcfg, clips.get(n), name=f"{ctx.name}.{n}"))

    @no_grad
    def _clip_lowers_answer_loss(self, ctx: BlockContext, subset, clips: dict) -> bool:
        """Whether the subset quantized with ``clips`` answers closer to the float model than
        without them (the clip search minimises each group's output error, which can bias the
        model's answers all the same)."""
        from llmc.quant.blockwise import run_block
        from llmc.quant.quantizer import IntQuantizer

        inputs, answers = self._search_set(ctx)
        q = IntQuantizer(self.wcfg)
        losses: list[float] = []
        with _weights_restored(subset.layers.values()) as orig:
            for use_clip in (False, True):
                for n, fc in subset.layers.items():
                    fc.weight.data = q.fake(orig[fc].float(), clips.get(n) if use_clip else None).to(orig[fc].dtype)
                losses.append(_answer_kl(ctx.tail(run_block(ctx.block, inputs, ctx.device), inputs), answers))
        kept = losses[1] < losses[0]
        self.clip_verdicts[ctx.index, ",".join(clips)] = (kept, losses[0], losses[1])
        return kept


def _group_normalized_weight_mean(weights: list, wcfg) -> torch.Tensor:
    """Mean over output rows of |W| normalised by each quantization group's max (AWQ v2)."""
    w = torch.cat([w.detach().float() for w in weights])
    gw = wcfg.group_width(w.shape[1])
    g = w.abs().reshape(w.shape[0], -1, gw)
    g = g / g.amax(dim=-1, keepdim=True).clamp_min(1e-8)
    return g.reshape(w.shape).mean(0)


@contextmanager
def _weights_restored(layers) -> Iterator[dict]:
    """``{layer: its weight tensor}``; every layer gets that tensor back on exit, whatever the
    code inside assigned to ``layer.weight.data`` (simulated quantization)."""
    orig = {fc: fc.weight.data.clone() for fc in layers}
    try:
        yield orig
    finally:
        for fc, w in orig.items():
            fc.weight.data = w


def _answer_kl(log_probs: list[torch.Tensor], ref_log_probs: list[torch.Tensor]) -> float:
    """Summed over sequences: the KL divergence of the answers ``log_probs`` (one ``(rows, 1,
    vocab)`` tensor per input; replayed-together sequences are its rows) from the reference ones
    (each reference is moved to its answer's device: blocks may sit on several cards)."""
    total = 0.0
    for p, r in zip(log_probs, ref_log_probs):
        r = r.to(p.device)
        total += float((r.exp() * (r - p)).sum(-1).mean(-1).sum())
    return total


def _token_relative_mse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over tokens of the squared error relative to the token's reference norm, so the few
    tokens with massive activations (e.g. the first one) do not decide the search alone."""
    err = (out - ref).float().pow(2).sum(-1)
    return float((err / ref.float().pow(2).sum(-1).clamp_min(1e-12)).mean())


SPEC = MethodSpec(name="Awq", impl=Awq, order=20, suggested=True, needs_data=True, own_ranges="weight_clip",
                  preset={"trans": True, "weight_clip": True},
                  summary="activation-aware scales and a clip search, then round to nearest")
