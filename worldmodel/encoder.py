"""Convolutional frame encoder: frames (..., 3, H, W) in [0, 1] -> representations (..., D).

Stride-2 conv stages with GroupNorm + SiLU, then a linear map of the flattened final feature map. GroupNorm keeps
every sample independent of the batch, so an EMA copy is a faithful target and DDP needs no buffer sync.
The convs run in channels_last when the input is (it is the fast layout for cuDNN on GPUs).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .config import EncoderConfig


class FrameEncoder(nn.Module):
    def __init__(self, config: EncoderConfig, *, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in config.channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1),
                nn.GroupNorm(config.groups, out_channels),
                nn.SiLU(),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
                nn.GroupNorm(config.groups, out_channels),
                nn.SiLU(),
            ]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers)
        side = image_size // 2 ** len(config.channels)
        self.to_representation = nn.Linear(in_channels * side * side, config.dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, 3, H, W) float -> (B, T, D)."""
        batch = frames.shape[0]
        x = rearrange(frames, "b t c h w -> (b t) c h w")
        x = self.convs(x)  # (B*T, C, h, w)
        x = rearrange(x, "bt c h w -> bt (c h w)")
        return rearrange(self.to_representation(x), "(b t) d -> b t d", b=batch)
