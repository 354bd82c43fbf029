"""Round-to-nearest without calibration data: every decoder block's Linears rounded where they
are, no forward pass at all. The runner takes this path for RTN when the config has no ``calib``
section (with one, RTN runs block by block like the other methods, to measure each block's
output error on the calibration inputs)."""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import nn

from llmc.models.base import BaseModel

from .blockwise import BlockContext, BlockReport, _device_of, check_layers


def quantize_without_data(adapter: BaseModel, method, *, placement=None,
                          on_block: Callable[[BlockReport, int], None] | None = None,
                          stash: Callable[[int, nn.Module], None] | None = None,
                          cancelled: Callable[[], bool] | None = None) -> list[BlockReport]:
    """RTN of every block in place; the reports carry no errors (``None``: nothing was measured)."""
    check_layers(adapter, method.wcfg)
    blocks = adapter.get_blocks()
    offload = placement is not None and placement.offload
    reports = []
    for i, block in enumerate(blocks):
        if cancelled and cancelled():
            raise KeyboardInterrupt("cancelled")
        t0 = time.time()
        if offload:
            placement.pin(block)  # rounded on the device, then back to CPU memory
        if stash:
            stash(i, block)
        subsets = adapter.get_subsets_in_block(block)
        ctx = BlockContext(i, adapter.block_name(i), block, [], subsets, _device_of(block, "cpu"))
        for subset in subsets:
            method.quantize_subset(ctx, subset, {}, None)  # RTN's own rounding: no statistics needed
        if offload:
            placement.unpin(block)
        reports.append(BlockReport(i, time.time() - t0, None, {}, None))
        if on_block:
            on_block(reports[-1], len(blocks))
    return reports
