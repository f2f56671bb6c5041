"""Pixel decoder: representation (..., D) -> frame (..., 3, H, W) in [0, 1].

It exists so people can look at predicted and sampled futures. It is trained on detached target representations,
so it never shapes what the encoder learns (the model stays a joint-embedding predictor, not a pixel generator).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .config import DecoderConfig


class PixelDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, *, dim: int, image_size: int) -> None:
        super().__init__()
        self.side = image_size // 2 ** len(config.channels)
        first = config.channels[0]
        self.from_representation = nn.Linear(dim, first * self.side * self.side)
        layers: list[nn.Module] = []
        in_channels = first
        for out_channels in config.channels:
            layers += [
                nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1),
                nn.GroupNorm(min(8, out_channels), out_channels),
                nn.SiLU(),
            ]
            in_channels = out_channels
        layers.append(nn.Conv2d(in_channels, 3, kernel_size=3, padding=1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, representations: torch.Tensor) -> torch.Tensor:
        """representations: (B, T, D) -> frames (B, T, 3, H, W) in [0, 1] (sigmoid output)."""
        batch = representations.shape[0]
        x = self.from_representation(rearrange(representations, "b t d -> (b t) d"))
        x = rearrange(x, "bt (c h w) -> bt c h w", h=self.side, w=self.side)
        x = torch.sigmoid(self.deconvs(x))  # (B*T, 3, H, W)
        return rearrange(x, "(b t) c h w -> b t c h w", b=batch)
