"""Round-to-nearest (RTN) weight quantization: the baseline every other method must beat."""

from __future__ import annotations

import torch
from torch import nn

from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig, check_group_size


@torch.no_grad()
def rtn_(layer: nn.Linear, cfg: WeightQuantConfig, name: str = "<linear>",
         clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``layer.weight`` in place by its round-to-nearest fake-quantized version.

    ``name`` only labels the error raised when ``cfg``'s group size does not fit the layer;
    ``clip`` (out, n_groups) shrinks each group's range first (see ``IntQuantizer.params``);
    without it ``cfg.calib_algo: mse`` searches one (:meth:`IntQuantizer.search_clip`).
    Returns the ``(scale, zero)`` used, shapes (out, n_groups) (for exports).
    """
    check_group_size(layer.in_features, cfg, name)
    quantizer = IntQuantizer(cfg)
    if clip is None:
        clip = quantizer.clip_for(layer.weight.data)
    scale, zero = quantizer.params(layer.weight.data, clip)
    layer.weight.data.copy_(quantizer.fake_with(layer.weight.data, scale, zero).to(layer.weight.dtype))
    return scale, zero
