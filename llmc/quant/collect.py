"""Collecting what a block's layers read: sampled input rows, streamed in full to a method
(e.g. GPTQ's Hessian), each pass stopping once every layer of interest has its input; and the
order in which a block's subsets are quantized."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .capture import BlockInput, _to


def last_positions(t: torch.Tensor) -> torch.Tensor:
    """Each sequence's last position, ``(..., 1, hidden)``: where a VQA prompt is answered (unpadded)."""
    return t[..., -1:, :]


@dataclass
class LayerStats:
    x: torch.Tensor  # sampled input rows (n, in), float32, on the device the block ran on
    extra: dict = field(default_factory=dict)  # method-specific accumulators (e.g. GPTQ)
    #: the layer read the very tensor ``same_as`` read, in every pass: its rows are that layer's
    #: (the same object) and ``on_batch`` streamed them under that name only
    same_as: str | None = None


@torch.no_grad()
def collect_inputs(block: nn.Module, inputs: list[BlockInput], layers: dict[str, nn.Linear], device,
                   max_rows: int = 4096, seed: int = 0, last_only: bool = False,
                   on_batch: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, LayerStats]:
    """Forward the block over ``inputs``; sample each layer's input rows (and stream them to
    ``on_batch`` in full, e.g. for a Hessian). ``last_only`` keeps only each sequence's last
    position in the sampled rows (calibration sequences are unpadded: one sample per pass).

    Layers that are handed the same tensor object (q/k/v reading one normed hidden state) are
    found on the first input: later ones get ``same_as`` the first, their rows are its rows and
    ``on_batch`` sees the tensor once. Should a later input break that pairing, the collection
    stops with an error naming both layers (a block whose wiring depends on its data)."""
    per_batch = max(1, max_rows // max(1, len(inputs)))
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    gen = torch.Generator().manual_seed(seed)
    same_as: dict[str, str | None] = {}
    # this pass's inputs, weakly: none kept alive past its use, none mistaken for a later one
    seen: list[tuple[weakref.ref, int, str]] = []
    passes = [0]

    def hook(name):
        def fn(mod, args):
            t = args[0]
            leader = next((n for r, v, n in seen if r() is t and v == t._version), None)
            if passes[0] == 0 and name not in same_as:
                same_as[name] = leader
            elif same_as.get(name) != leader:
                raise RuntimeError(f"{name} read the same input as {same_as[name] or leader} in one call and not in "
                                   f"another (calibration input {passes[0]}): this block's wiring depends on its data")
            if leader is None:
                seen.append((weakref.ref(t), t._version, name))
            else:
                return
            x = t.detach().reshape(-1, t.shape[-1])
            if on_batch:
                on_batch(name, x)
            if last_only:
                x = last_positions(t.detach()).reshape(-1, x.shape[-1])
            if x.shape[0] > per_batch:
                idx = torch.randperm(x.shape[0], generator=gen)[:per_batch]
                x = x[idx.pin_memory().to(x.device, non_blocking=True) if x.is_cuda else idx]
            elif x.untyped_storage().nbytes() > x.numel() * x.element_size():
                x = x.clone()  # rows viewing part of a larger buffer (a last position, a split) would keep all of it
            rows[name].append(x)  # on its device: no host sync per batch, none when the pass is done

        return fn

    def next_pass():
        seen.clear()
        passes[0] += 1

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        _forward_until(block, inputs, device, layers, after_each=next_pass)
    finally:
        for h in handles:
            h.remove()
        seen.clear()
    stats = {n: LayerStats(torch.cat(r).float()) for n, r in rows.items() if not same_as.get(n)}
    for n in layers:
        if same_as.get(n):
            stats[n] = LayerStats(stats[same_as[n]].x, same_as=same_as[n])
    return {n: stats[n] for n in layers}


class _Enough(Exception):
    """Every layer of interest has its input: the rest of the block need not run."""


@torch.no_grad()
def _forward_until(block: nn.Module, inputs: list[BlockInput], device, layers: dict[str, nn.Linear],
                   after_each: Callable[[], None] | None = None) -> None:
    """Run the block on every input, each pass stopping once all ``layers`` were called (when the
    first, full pass showed each of them called exactly once); ``after_each`` runs after each pass."""
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
            if after_each:
                after_each()
    finally:
        for h in handles:
            h.remove()


def _subset_order(block: nn.Module, subsets: list, inputs: list[BlockInput], device,
                  true_sequential: bool) -> list | None:
    """The order to quantize ``subsets`` in, each collecting its inputs just before.

    True-sequential: the block's own (each subset's inputs under the subsets before it,
    quantized). Otherwise the last called first: a layer's input comes only from layers called
    before it, so each subset reads what the float block gives it, with one subset's Hessians
    alive at a time. That holds when the subsets run one after another on the first input:
    every layer called, each subset's calls in one stretch. Where they do not (cross-attention
    q/k/v grouped with self-attention's, a layer called twice, a layer the first input skips),
    ``None``: the caller collects every subset from the float block in one pass instead."""
    if true_sequential:
        return list(subsets)
    if not inputs:
        return None
    owner = {n: k for k, sub in enumerate(subsets) for n in sub.layers}
    stretches: list[int] = []  # the subsets in call order, one entry per stretch of calls
    called: set[str] = set()

    def record(name):
        def hook(mod, args):
            called.add(name)
            if not stretches or stretches[-1] != owner[name]:
                stretches.append(owner[name])
        return hook

    layers = {n: m for sub in subsets for n, m in sub.layers.items()}
    hooks = [m.register_forward_pre_hook(record(n)) for n, m in layers.items()]
    try:
        _forward_until(block, inputs[:1], device, layers)
    finally:
        for h in hooks:
            h.remove()
    if called != set(layers) or len(stretches) != len(set(stretches)):
        return None
    return [subsets[k] for k in reversed(stretches)]
