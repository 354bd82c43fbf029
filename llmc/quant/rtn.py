"""Round-to-nearest (RTN) weight quantization: the baseline every other method must beat."""

from __future__ import annotations

import torch
from torch import nn

from llmc.quant.quantizer import IntQuantizer, WeightQuantConfig, check_group_size


@torch.no_grad()
def rtn_(layer: nn.Linear, cfg: WeightQuantConfig, name: str = "<linear>") -> None:
    """Replace ``layer.weight`` in place by its round-to-nearest fake-quantized version.

    ``name`` only labels the error raised when ``cfg``'s group size does not fit the layer.
    """
    check_group_size(layer.in_features, cfg, name)
    layer.weight.data.copy_(IntQuantizer(cfg).fake(layer.weight.data))
