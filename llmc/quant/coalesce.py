"""Fewer, larger block replays: calibration inputs with the same shape and the same per-block
arguments, wherever they stand in the set, are concatenated along the batch before a block is
replayed over them.

Text calibration feeds one sequence per forward pass (no padding), so a block of a 3B model is
replayed as 128 forwards of one 512-token sequence per pass: launch-bound on a GPU. Sequences of
equal length share every argument the decoder loop computes (causal masks, rotary tables), so 16
of them can run as one batch with the same numbers in every row. Inputs whose arguments differ
(VQA prompts of other lengths, other image positions) stay apart. A group is kept only if
replaying the first block over it gives what replaying its members one by one gives.
"""

from __future__ import annotations

import torch

from .blockwise import BlockInput, run_block
from .capture import Added

#: sequences replayed together at most
MOST = 16


def _equal(a, b) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype \
            and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and type(a) is type(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b if isinstance(a, (int, float, str, bool, type(None))) else a is b


def _joinable(a: BlockInput, b: BlockInput) -> bool:
    if a.hidden.shape[1:] != b.hidden.shape[1:] or a.hidden.dtype != b.hidden.dtype:
        return False
    calls_a = a.calls if a.calls is not None else [(a.args, a.kwargs)]
    calls_b = b.calls if b.calls is not None else [(b.args, b.kwargs)]
    return (a.calls is None) == (b.calls is None) and _equal(calls_a, calls_b) \
        and (a.adds or {}).keys() == (b.adds or {}).keys()


def _cat(group: list[BlockInput]) -> BlockInput:
    first = group[0]
    adds = {j: Added.cat([g.adds[j] for g in group]) for j in first.adds} if first.adds else None
    return BlockInput(torch.cat([g.hidden for g in group]), first.args, first.kwargs, first.calls, adds)


def coalesce(inputs: list[BlockInput], block: torch.nn.Module, device, most: int | None = None) -> list[BlockInput]:
    """``inputs`` joined into batches of up to ``most`` (:data:`MOST`): each input joins the first
    not yet full batch whose first member it is joinable with (VQA prompts of a few lengths, in any
    order, make a few batches per length), else starts one; batches keep the order of their first
    members and their members' order."""
    most = MOST if most is None else most
    if most <= 1 or len(inputs) < 2 or any(bi.hidden.shape[0] != 1 for bi in inputs):
        return inputs
    groups: list[list[BlockInput]] = []
    open_groups: list[list[BlockInput]] = []  # not full yet: an input joins the first that allows it
    for bi in inputs:
        home = next((g for g in open_groups if _joinable(g[0], bi)), None)
        if home is None:
            home = []
            groups.append(home)
            open_groups.append(home)
        home.append(bi)
        if len(home) == most:
            open_groups.remove(home)
    if all(len(g) == 1 for g in groups):
        return inputs
    # the first multi-member group, replayed both ways through the first block, must agree
    probe = next(g for g in groups if len(g) > 1)
    try:
        joined = run_block(block, [_cat(probe)], device)[0]
    except (RuntimeError, ValueError, IndexError):
        return inputs  # an argument that does not broadcast over a batch: keep one per forward
    apart = torch.cat(run_block(block, probe, device))
    if not torch.allclose(joined.float(), apart.float(), rtol=1e-3, atol=1e-3 * float(apart.abs().max()) + 1e-6):
        return inputs
    return [g[0] if len(g) == 1 else _cat(g) for g in groups]
