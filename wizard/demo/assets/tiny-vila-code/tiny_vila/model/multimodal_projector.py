"""VILA's ``mlp_downsample`` projector: merge 2x2 neighbouring patches, then a 2-layer MLP."""

from __future__ import annotations

import math

import torch
from torch import nn


class DownSampleBlock(nn.Module):
    """``(B, H*W, C) -> (B, H/2*W/2, 4C)``: concatenates each 2x2 patch neighbourhood."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(f"DownSampleBlock needs a square patch grid, got {n} tokens")
        x = x.reshape(b, side, side, c)
        if side % 2:
            x = torch.cat([x, x.new_zeros(b, 1, side, c)], dim=1)
            x = torch.cat([x, x.new_zeros(b, side + 1, 1, c)], dim=2)
            side += 1
        x = x.reshape(b, side, side // 2, c * 2).permute(0, 2, 1, 3).contiguous()
        x = x.reshape(b, side // 2, side // 2, c * 4).permute(0, 2, 1, 3).contiguous()
        return x.reshape(b, -1, c * 4)


class MultimodalProjector(nn.Module):
    def __init__(self, vision_hidden: int, llm_hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            DownSampleBlock(),
            nn.LayerNorm(vision_hidden * 4),
            nn.Linear(vision_hidden * 4, llm_hidden),
            nn.GELU(),
            nn.Linear(llm_hidden, llm_hidden),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
