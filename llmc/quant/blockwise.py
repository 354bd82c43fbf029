"""Block-by-block quantization: capture the first block's inputs, then one block at a time.

1. *Capture*: the whole (V)LM runs on the calibration samples (images + text) with its first
   decoder block replaced by a catcher that records the block's inputs and stops the forward.
2. For each block, on the compute device:
   - float outputs of the block (the reference);
   - the method's float *transform* (e.g. AWQ scales folded into the preceding op);
   - for each subset in order (q/k/v, o, gate/up, down): a forward pass with hooks collects
     the subset's inputs under the block as it is now (earlier subsets already quantized),
     then the method quantizes the subset's layers;
   - per-layer output error of quantized vs float layer on those inputs, block output error;
   - the block's (quantized, when ``quant_out``) outputs become the next block's inputs.

Where each block is processed follows the model's :class:`~llmc.models.placement.Placement`:
the compute device; the card that holds it (``auto``: several GPUs); or, with ``offload``,
the block is brought from CPU memory to the device for its turn and sent back afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.base import BaseModel
from ..models.structure import Subset
from .capture import BlockInput, _is_cache, _to, capture_block_inputs  # noqa: F401  (re-exported)
from .quantizer import WeightQuantConfig, check_group_size


def last_positions(t: torch.Tensor) -> torch.Tensor:
    """Each sequence's last position, ``(..., 1, hidden)``: where a VQA prompt is answered
    (calibration sequences are unpadded, one sample per forward pass)."""
    return t[..., -1:, :]


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
                h = run_block(blocks[j], [bi.for_block(j, h)], _device_of(blocks[j], device))[0]
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


@dataclass
class LayerStats:
    x: torch.Tensor  # sampled input rows (n, in), float32
    extra: dict = field(default_factory=dict)  # method-specific accumulators (e.g. GPTQ)


@torch.no_grad()
def collect_inputs(block: nn.Module, inputs: list[BlockInput], layers: dict[str, nn.Linear], device,
                   max_rows: int = 4096, seed: int = 0, last_only: bool = False,
                   on_batch: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, LayerStats]:
    """Forward the block over ``inputs``; sample each layer's input rows (and stream them to
    ``on_batch`` in full, e.g. for a Hessian). ``last_only`` keeps only each sequence's last
    position in the sampled rows (calibration sequences are unpadded: one sample per pass)."""
    per_batch = max(1, max_rows // max(1, len(inputs)))
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    gen = torch.Generator().manual_seed(seed)

    def hook(name):
        def fn(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            if on_batch:
                on_batch(name, x)
            if last_only:
                x = last_positions(args[0].detach()).reshape(-1, x.shape[-1])
            if x.shape[0] > per_batch:
                idx = torch.randperm(x.shape[0], generator=gen)[:per_batch]
                x = x[idx.pin_memory().to(x.device, non_blocking=True) if x.is_cuda else idx]
            rows[name].append(x)  # on its device until the pass is done: no host sync per batch

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        _forward_until(block, inputs, device, layers)
    finally:
        for h in handles:
            h.remove()
    return {n: LayerStats(torch.cat(r).float().cpu()) for n, r in rows.items()}


class _Enough(Exception):
    """Every layer of interest has its input: the rest of the block need not run."""


def _forward_until(block: nn.Module, inputs: list[BlockInput], device, layers: dict[str, nn.Linear]) -> None:
    """Run the block on every input, each pass stopping once all ``layers`` were called (when the
    first, full pass showed each of them called exactly once)."""
    calls, early = dict.fromkeys(layers, 0), False

    def pre(name):
        def fn(mod, args):
            calls[name] += 1
            if early and all(calls.values()):
                raise _Enough
        return fn

    handles = [m.register_forward_pre_hook(pre(n)) for n, m in layers.items()]
    try:
        for k, bi in enumerate(inputs):
            calls.update(dict.fromkeys(calls, 0))
            try:
                block(bi.hidden.to(device), *_to(bi.args, device), **_to(bi.kwargs, device))
            except _Enough:
                pass
            early = early or (k == 0 and all(c == 1 for c in calls.values()))
    finally:
        for h in handles:
            h.remove()


def relative_error(x: torch.Tensor, w_ref: torch.Tensor, w_new: torch.Tensor) -> float:
    x = x.to(w_ref.device, torch.float32)
    ref = x @ w_ref.float().t()
    new = x @ w_new.float().t()
    return float((new - ref).norm() / ref.norm().clamp_min(1e-12))


class Method:
    """A blockwise weight quantization method."""

    name = "base"
    #: rows the method fits on: ``"all"`` tokens, or the ``"last"`` of each calibration sequence
    loss_tokens = "all"
    #: rows its layer-level fits (the layer inputs it is given, e.g. AWQ's clip search) read
    clip_tokens = "all"
    #: whether it fits on the model's answers: the pipeline then gives each block's context the
    #: float model's next-token log-probabilities and a function computing them from the block's output
    output_loss = False
    #: whether equal-length calibration sequences may be replayed together (methods whose cost
    #: grows with the inputs per search step, such as AWQ's, keep one per forward)
    coalesce = False

    def __init__(self, wcfg: WeightQuantConfig, special: dict | None = None):
        self.wcfg = wcfg
        self.special = dict(special or {})
        #: ``layer -> (scale, zero)`` (CPU, float32, (out, n_groups)) of every quantized layer,
        #: ``None`` where the stored weight has no such layout: what exports pack the codes with.
        self.qparams: dict[nn.Module, tuple[torch.Tensor, torch.Tensor] | None] = {}

    def record(self, layer: nn.Module, scale: torch.Tensor | None, zero: torch.Tensor | None) -> None:
        """Remember the quantization parameters ``layer``'s fake-quantized weight was made with."""
        self.qparams[layer] = None if scale is None else (scale.detach().float().cpu(), zero.detach().float().cpu())

    def transform_block(self, ctx: BlockContext) -> None:
        """Float equivalence transforms of the block (default: none)."""

    def stream(self, layers: dict[str, nn.Linear]):
        """Optional ``on_batch`` accumulator for :func:`collect_inputs` and its state."""
        return None, None

    def quantize_subset(self, ctx: BlockContext, subset: Subset, stats: dict[str, LayerStats], state) -> None:
        raise NotImplementedError


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


@dataclass
class BlockReport:
    index: int
    seconds: float
    #: relative output error over every token of the calibration inputs (None: quantized
    #: without data, nothing measured)
    block_error: float | None
    layer_errors: dict[str, float]
    #: the same at each sequence's last position (where a VQA prompt is answered)
    last_error: float | None = 0.0


def _relative(new: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    num = sum(float((n - r).float().norm() ** 2) for n, r in zip(new, ref))
    den = sum(float(r.float().norm() ** 2) for r in ref)
    return (num / max(den, 1e-24)) ** 0.5


def check_layers(adapter: BaseModel, wcfg: WeightQuantConfig) -> None:
    for i, block in enumerate(adapter.get_blocks()):
        for n, m in adapter.named_linears(block).items():
            check_group_size(m.in_features, wcfg, f"{adapter.block_name(i)}.{n}")


def quantize_blockwise(adapter: BaseModel, method: Method, batches: list[dict], *, device=None,
                       quant_out: bool = True, placement=None,
                       on_block: Callable[[BlockReport, int], None] | None = None,
                       stash: Callable[[int, nn.Module], None] | None = None,
                       cancelled: Callable[[], bool] | None = None,
                       on_note: Callable[[str], None] | None = None) -> list[BlockReport]:
    """Quantize every decoder block of ``adapter`` in place (fake-quant weights); ``on_note``
    receives what the run should say (e.g. a fallback of the input capture)."""
    device = torch.device(device or adapter.device)
    offload = placement is not None and placement.offload
    check_layers(adapter, method.wcfg)
    inputs = capture_block_inputs(adapter, batches, on_note)
    last = [k for k in ("loss_tokens", "clip_tokens") if getattr(method, k) == "last"]
    if last and any(bi.hidden.shape[0] > 1 for bi in inputs):
        raise ValueError(f"{last[0]}: last fits each sequence's last position, which needs one unpadded "
                         f"calibration sample per forward pass; pass single-sample batches or use {last[0]}: all")
    if method.coalesce and not last:  # equal-length sequences replay together (llmc.quant.coalesce)
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
    reports = []
    for i, block in enumerate(blocks):
        if cancelled and cancelled():
            raise KeyboardInterrupt("cancelled")
        t0 = time.time()
        if placement is not None:
            device = placement.block_device(i)
        if offload:
            placement.pin(block)  # stays on the device for all of its quantization
        fp_out = run_block(block, inputs, device)
        ctx = BlockContext(i, adapter.block_name(i), block, inputs, adapter.get_subsets_in_block(block), device,
                           answer_tail(adapter, i + 1, device) if method.output_loss else None, float_answers)
        method.transform_block(ctx)
        if stash:
            stash(i, block)
        errors: dict[str, float] = {}
        for subset in ctx.subsets:
            on_batch, state = method.stream(subset.layers)
            stats = collect_inputs(block, inputs, subset.layers, device, on_batch=on_batch, seed=i,
                                   last_only=method.clip_tokens == "last")
            before = {n: m.weight.detach().clone() for n, m in subset.layers.items()}
            method.quantize_subset(ctx, subset, stats, state)
            for n, m in subset.layers.items():
                errors[n] = relative_error(stats[n].x, before[n], m.weight.detach())
        q_out = run_block(block, inputs, device)
        rep = BlockReport(i, time.time() - t0, _relative(q_out, fp_out), errors,
                          _relative([last_positions(q) for q in q_out], [last_positions(f) for f in fp_out]))
        reports.append(rep)
        if offload:
            placement.unpin(block)
        if i + 1 < len(blocks):
            inputs = [bi.for_block(i + 1, o) for o, bi in zip(q_out if quant_out else fp_out, inputs)]
        if on_block:
            on_block(rep, len(blocks))
    return reports
