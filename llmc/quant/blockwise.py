"""Block-by-block quantization: capture the first block's inputs, then one block at a time.

1. *Capture*: the whole (V)LM runs on the calibration samples (images + text) with its first
   decoder block replaced by a catcher that records the block's inputs and stops the forward.
2. For each block, on the compute device:
   - float outputs of the block (the reference);
   - the method's float *transform* (e.g. AWQ scales folded into the preceding op);
   - for each subset in order (q/k/v, o, gate/up, down): a forward pass with hooks collects
     the subset's inputs under the block as it is now (earlier subsets already quantized),
     then the method quantizes the subset's layers (``true_sequential: false``: the subsets in
     reverse order, so each reads the float block's outputs; :mod:`llmc.quant.collect`);
   - per-layer output error of quantized vs float layer on those inputs, block output error;
   - the block's (quantized, when ``quant_out``) outputs become the next block's inputs.

Where each block is processed follows the model's :class:`~llmc.models.placement.Placement`:
the compute device; the card that holds it (``auto``: several GPUs); or, with ``offload``,
the block is brought from CPU memory to the device for its turn and sent back afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models.base import BaseModel
from ..models.structure import Subset
from .capture import BlockInput, _is_cache, _to, capture_block_inputs  # noqa: F401  (re-exported)
from .collect import LayerStats, _forward_until, _subset_order, collect_inputs, last_positions  # noqa: F401
from .methods.base import Method  # noqa: F401  (re-exported: what this pipeline drives)
from .quantizer import WeightQuantConfig, check_group_size, tf32


def _block_out(out):
    return out[0] if isinstance(out, (tuple, list)) else out


#: why ``search: output`` refuses ``model.offload`` (and what to use instead)
OUTPUT_NO_OFFLOAD = ("output runs the rest of the model for every scale candidate, which model.offload would "
                     "stream over PCIe each time; use search: block, or device_map: auto over several GPUs")


def _device_of(module: nn.Module, default):
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device(default)


def answer_tail(adapter: BaseModel, first: int, device) -> Callable[[list[torch.Tensor], list[BlockInput]], list[torch.Tensor]]:
    """A function from the inputs of block ``first`` (one hidden-state tensor per calibration
    input) to the model's next-token log-probabilities at each sequence's last position: the
    remaining blocks, the pre-head norm and the head run on them, each where its weights are."""
    blocks = adapter.get_blocks()
    norms, heads = adapter.get_pre_head_layernorm_layers(), adapter.get_head_layers()
    if not heads:
        raise ValueError(f"{type(adapter).__name__} has no output head: the output-loss search needs one")

    @torch.no_grad()
    def tail(hidden: list[torch.Tensor], inputs: list[BlockInput]) -> list[torch.Tensor]:
        out = []
        for h, bi in zip(hidden, inputs):
            for j in range(first, len(blocks)):
                # h is block j - 1's output (block 0's input where j is 0): what the decoder
                # loop adds before block j goes in, for the first block of the tail too
                x = bi.into_block(j, h)
                h = run_block(blocks[j], [x], _device_of(blocks[j], device))[0]
            h = last_positions(h)
            for norm in norms:
                h = norm(h.to(_device_of(norm, device)))
            logits = heads[0](h.to(_device_of(heads[0], device)))
            out.append(torch.log_softmax(logits.float(), -1))
        return out

    return tail


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[BlockInput], device) -> list[torch.Tensor]:
    outs = []
    for bi in inputs:
        o = _block_out(block(bi.hidden.to(device), *_to(bi.args, device), **_to(bi.kwargs, device)))
        outs.append(o.to(bi.hidden.device))
    return outs


def relative_error(x: torch.Tensor, w_ref: torch.Tensor, w_new: torch.Tensor) -> torch.Tensor:
    """``||x (W_new - W_ref)^T|| / ||x W_ref^T||``, a 0-d tensor on the weight's device (read it
    with the block's other figures, in one host sync)."""
    x = x.to(w_ref.device, torch.float32)
    with tf32(x.is_cuda):  # a figure for the report: TF32's precision is plenty
        return (x @ (w_new.float() - w_ref.float()).t()).norm() / (x @ w_ref.float().t()).norm().clamp_min(1e-12)


@dataclass
class BlockContext:
    index: int
    name: str
    block: nn.Module
    inputs: list[BlockInput]
    subsets: list[Subset]
    device: torch.device
    #: (``output_loss`` methods) the block's outputs -> the model's last-position log-probabilities
    tail: Callable[[list[torch.Tensor], list[BlockInput]], list[torch.Tensor]] | None = None
    #: (``output_loss`` methods) the float model's last-position log-probabilities, one per input
    float_answers: list[torch.Tensor] | None = None
    #: (``float_targets`` methods) the float model's own outputs of this block, one per input: the
    #: float block run on the float model's inputs (``inputs`` carry the quantized blocks' outputs)
    targets: list[torch.Tensor] | None = None


@dataclass
class BlockReport:
    index: int
    seconds: float
    #: relative output error over the tokens of the calibration inputs (evenly spaced inputs of at
    #: least :data:`REF_TOKENS` tokens; None: quantized without data, nothing measured)
    block_error: float | None
    layer_errors: dict[str, float]
    #: the same at each sequence's last position (where a VQA prompt is answered)
    last_error: float | None = 0.0


#: the float block outputs kept for the block's error: evenly spaced inputs of at least this many
#: tokens (all of them when the next block reads float outputs); the quantized outputs then replace
#: the block's inputs one batch at a time, so at most two copies of the activations are held
REF_TOKENS = 16384


def _reference_inputs(inputs: list[BlockInput]) -> list[int]:
    tokens = [bi.hidden.shape[:-1].numel() for bi in inputs]
    for step in range(len(inputs), 0, -1):  # the sparsest even spacing that has enough tokens
        idx = list(range(0, len(inputs), step))
        if sum(tokens[k] for k in idx) >= min(REF_TOKENS, sum(tokens)):
            return idx
    return list(range(len(inputs)))


def _advance(block: nn.Module, inputs: list[BlockInput], fp_out: dict[int, torch.Tensor], device,
             nxt: int | None, quant_out: bool) -> tuple[float, float]:
    """Run the (quantized) block on each input and replace the input in ``inputs`` by the input of
    block ``nxt`` (its quantized output, or the float one without ``quant_out``; ``None``: the last
    block, nothing replaced). Returns the relative output error against ``fp_out`` over all tokens
    and at each sequence's last position."""
    sums = []
    for k, bi in enumerate(inputs):
        q = run_block(block, [bi], device)[0]
        f = fp_out.pop(k, None)
        if f is not None:
            d, f32 = (q - f).float(), f.float()
            sums.append(torch.stack([d.pow(2).sum(), f32.pow(2).sum(), last_positions(d).pow(2).sum(),
                                     last_positions(f32).pow(2).sum()]))
        if nxt is not None:
            inputs[k] = bi.into_block(nxt, q if quant_out else f)
    num, den, num_last, den_last = torch.stack([t.to(sums[0].device) for t in sums]).sum(0).tolist()
    return (num / max(den, 1e-24)) ** 0.5, (num_last / max(den_last, 1e-24)) ** 0.5


def _floats(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """The 0-d tensors as floats, one host transfer per device."""
    out = {}
    for dev in {t.device for t in tensors.values()}:
        names = [n for n, t in tensors.items() if t.device == dev]
        out.update(zip(names, torch.stack([tensors[n].float() for n in names]).tolist()))
    return {n: out[n] for n in tensors}


def check_layers(adapter: BaseModel, wcfg: WeightQuantConfig) -> None:
    for i, block in enumerate(adapter.get_blocks()):
        for n, m in adapter.named_linears(block).items():
            check_group_size(m.in_features, wcfg, f"{adapter.block_name(i)}.{n}")


@torch.no_grad()  # every forward of the run: none records a graph (its activations would be kept)
def quantize_blockwise(adapter: BaseModel, method: Method, batches: list[dict], *, device=None,
                       quant_out: bool = True, placement=None,
                       on_block: Callable[[BlockReport, int], None] | None = None,
                       stash: Callable[[int, nn.Module], None] | None = None,
                       cancelled: Callable[[], bool] | None = None,
                       on_note: Callable[[str], None] | None = None,
                       context: int | None = None) -> list[BlockReport]:
    """Quantize every decoder block of ``adapter`` in place (fake-quant weights); ``on_note``
    receives what the run should say (e.g. a fallback of the input capture, or calibration
    sequences longer than the model's ``context`` as the first block reads them: with the image
    tokens a forward expands, which the input ids do not show)."""
    device = torch.device(device or adapter.device)
    offload = placement is not None and placement.offload
    check_layers(adapter, method.wcfg)
    inputs = capture_block_inputs(adapter, batches, on_note)
    if context and on_note is not None:
        from ..context import lengths_warning

        too_long = lengths_warning([bi.hidden.shape[1] for bi in inputs for _ in range(bi.hidden.shape[0])], context)
        if too_long:
            on_note(too_long)
    last = [k for k in ("loss_tokens", "clip_tokens") if getattr(method, k) == "last"]
    if last and any(bi.hidden.shape[0] > 1 for bi in inputs):
        raise ValueError(f"{last[0]}: last fits each sequence's last position, which needs one unpadded "
                         f"calibration sample per forward pass; pass single-sample batches or use {last[0]}: all")
    # equal-length sequences replay together (llmc.quant.coalesce), each row with its own last position
    if method.coalesce:
        from .coalesce import coalesce

        first = adapter.get_blocks()[0]
        if offload:
            placement.pin(first)  # the probe replays the first block where it quantizes
        try:
            inputs = coalesce(inputs, first, placement.block_device(0) if placement is not None else device)
        finally:
            if offload:
                placement.unpin(first)
    float_answers = None
    if method.output_loss:
        if offload:
            raise ValueError(f"search: {OUTPUT_NO_OFFLOAD}")
        # kept in CPU memory: the blocks may sit on several cards
        float_answers = [a.cpu() for a in answer_tail(adapter, 0, device)([bi.hidden for bi in inputs], inputs)]
    blocks = adapter.get_blocks()
    # the float model's inputs of each block, next to the quantized model's (float_targets methods)
    fp_inputs = list(inputs) if method.float_targets else None
    reports = []
    for i, block in enumerate(blocks):
        if cancelled and cancelled():
            raise KeyboardInterrupt("cancelled")
        t0 = time.time()
        if placement is not None:
            device = placement.block_device(i)
        if offload:
            placement.pin(block)  # stays on the device for all of its quantization
        ref_at = _reference_inputs(inputs) if quant_out else list(range(len(inputs)))
        fp_out = dict(zip(ref_at, run_block(block, [inputs[k] for k in ref_at], device)))
        targets = run_block(block, fp_inputs, device) if fp_inputs is not None else None
        ctx = BlockContext(i, adapter.block_name(i), block, inputs, adapter.get_subsets_in_block(block), device,
                           answer_tail(adapter, i + 1, device) if method.output_loss else None, float_answers,
                           targets)
        method.transform_block(ctx)
        if stash:
            stash(i, block)
        errors: dict[str, torch.Tensor] = {}
        order, one_pass = _subset_order(block, ctx.subsets, inputs, device, method.true_sequential), None
        if order is None:  # subsets that do not run one after another: every one's inputs in one pass
            merged = {n: m for sub in ctx.subsets for n, m in sub.layers.items()}
            on_batch, state = method.stream(merged)
            one_pass = (collect_inputs(block, inputs, merged, device, max_rows=method.sample_rows, on_batch=on_batch,
                                       seed=i, last_only=method.clip_tokens == "last"), state)
        for subset in order or ctx.subsets:
            if one_pass is None:
                on_batch, state = method.stream(subset.layers)
                stats = collect_inputs(block, inputs, subset.layers, device, max_rows=method.sample_rows,
                                       on_batch=on_batch, seed=i, last_only=method.clip_tokens == "last")
            else:
                stats, state = one_pass
            before = {n: m.weight.detach().clone() for n, m in subset.layers.items()}
            method.quantize_subset(ctx, subset, stats, state)
            for n, m in subset.layers.items():
                errors[n] = relative_error(stats[n].x, before[n], m.weight.detach())
            del stats, before, state  # the rows and weight copies: freed before the next subset's
        del one_pass
        errors = {n: errors[n] for sub in ctx.subsets for n in sub.layers}  # the block's order
        block_error, last_error = _advance(block, inputs, fp_out, device, i + 1 if i + 1 < len(blocks) else None,
                                           quant_out)
        if targets is not None:
            fp_inputs = [bi.into_block(i + 1, t) for bi, t in zip(fp_inputs, targets)] if i + 1 < len(blocks) \
                else None
        del targets, ctx
        rep = BlockReport(i, time.time() - t0, block_error, _floats(errors), last_error)
        reports.append(rep)
        if offload:
            placement.unpin(block)
        if on_block:
            on_block(rep, len(blocks))
    return reports
