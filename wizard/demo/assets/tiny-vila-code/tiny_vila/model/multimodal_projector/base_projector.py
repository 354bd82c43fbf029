"""VILA 1.5's projectors (``mm_projector_type``: identity, linear, mlp_downsample, mlp<N>x_gelu)."""

import re

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x


class DownSampleBlock(nn.Module):
    """``(B, N, C) -> (B, ceil(h/2)^2, 4C)``: each 2x2 neighbourhood of the square patch grid in one token.

    The one difference from VILA 1.5: the merged tokens come row by row (VILA 1.5 emits them column by
    column, the grid transposed); tiny-vila's weights were trained on this order. Each token's
    features are the same in both."""

    def forward(self, x):
        vit_embeds = x
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.flat_square(vit_embeds).permute(0, 2, 1, 3)
        return vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])

    def flat_square(self, x):
        x = x.contiguous()  # a layer's hidden states may come as a strided view
        n, w, h, c = x.size()
        if w % 2 == 1:
            x = torch.cat([x, torch.zeros((n, 1, h, c), dtype=x.dtype).to(x.device)], dim=1).contiguous()
            n, w, h, c = x.size()
        if h % 2 == 1:
            x = torch.cat([x, torch.zeros((n, w, 1, c), dtype=x.dtype).to(x.device)], dim=2).contiguous()
            n, w, h, c = x.size()
        x = x.view(n, w, int(h / 2), int(c * 2))
        x = x.permute(0, 2, 1, 3).contiguous()
        return x.view(n, int(h / 2), int(w / 2), int(c * 4))


class MultimodalProjectorConfig(PretrainedConfig):
    model_type = "v2l_projector"

    def __init__(self, mm_projector_type: str = None, **kwargs):
        super().__init__()
        self.mm_projector_type = mm_projector_type


class MultimodalProjector(PreTrainedModel):
    """``config``: the top :class:`LlavaConfig` (``mm_hidden_size`` -> ``hidden_size``)."""

    config_class = MultimodalProjectorConfig

    def __init__(self, mm_projector_cfg: MultimodalProjectorConfig, config):
        super().__init__(mm_projector_cfg)
        kind = mm_projector_cfg.mm_projector_type
        if kind == "identity":
            self.layers = IdentityMap()
        elif kind == "linear":
            self.layers = nn.Linear(config.mm_hidden_size, config.hidden_size)
        elif kind == "mlp_downsample":
            self.layers = nn.Sequential(
                DownSampleBlock(),
                nn.LayerNorm(config.mm_hidden_size * 4),
                nn.Linear(config.mm_hidden_size * 4, config.hidden_size),
                nn.GELU(),
                nn.Linear(config.hidden_size, config.hidden_size),
            )
        else:
            m = re.match(r"^mlp(\d+)x_gelu$", kind or "")
            if not m:
                raise ValueError(f"Unknown projector type: {kind}")
            modules = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
            for _ in range(1, int(m.group(1))):
                modules += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
            self.layers = nn.Sequential(*modules)
        self.post_init()

    def forward(self, x, *args, **kwargs):
        return self.layers(x)


try:
    AutoConfig.register("v2l_projector", MultimodalProjectorConfig)
except ValueError:  # registered already
    pass
