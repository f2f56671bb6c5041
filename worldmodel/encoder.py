"""Convolutional frame encoder: frames (..., 3, H, W) in [0, 1] -> representations (..., D).

Stride-2 conv stages with GroupNorm + SiLU. Two readouts make the D-dim representation: spatial-softmax keypoints
of an earlier, finer stage, whose coordinates are passed through as the first 2K dimensions (see
`EncoderConfig.keypoint_passthrough`), and a linear projection of the flattened final feature map (what is where,
in any form) with the keypoints' presence scores for the rest. The keypoints follow Levine et al. (2016,
"End-to-end training of deep visuomotor policies"): for each of `keypoints` channels, the softmax-weighted mean
x and y over the map plus a presence score. Keypoint coordinates are smooth, near-linear functions of object
positions, so a moving object traces a straight line in representation space, and the predictor can extrapolate
motion instead of having to learn the geometry of an arbitrary embedding from scratch.
GroupNorm keeps every sample independent of the batch, so an EMA copy is a faithful target and DDP needs no
buffer sync. The convs run in channels_last when the input is (the fast layout for cuDNN on GPUs).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .config import EncoderConfig


class SpatialSoftmax(nn.Module):
    """(N, C, h, w) feature map -> (N, 3K): per keypoint channel, expected x, expected y in [-1, 1] and presence."""

    def __init__(self, channels: int, keypoints: int, side: int) -> None:
        super().__init__()
        self.to_logits = nn.Conv2d(channels, keypoints, kernel_size=1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        coords = torch.linspace(-1.0, 1.0, side)
        grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("grid", torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = rearrange(self.to_logits(features), "n k h w -> n k (h w)").float()
        attention = torch.softmax(logits / self.log_temperature.exp(), dim=-1)  # (N, K, h*w)
        positions = attention @ self.grid  # (N, K, 2)
        presence = logits.logsumexp(dim=-1, keepdim=True) - logits.mean(dim=-1, keepdim=True)  # (N, K, 1)
        return rearrange(torch.cat([positions, presence], dim=-1), "n k three -> n (k three)")


class FrameEncoder(nn.Module):
    def __init__(self, config: EncoderConfig, *, image_size: int) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        in_channels = 3
        for out_channels in config.channels:
            stages.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1),
                nn.GroupNorm(config.groups, out_channels),
                nn.SiLU(),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
                nn.GroupNorm(config.groups, out_channels),
                nn.SiLU(),
            ))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        side = image_size // 2 ** len(config.channels)
        self.keypoint_stage = config.keypoint_stage % len(config.channels)
        self.keypoints = None
        if config.keypoints > 0:
            keypoint_side = image_size // 2 ** (self.keypoint_stage + 1)
            self.keypoints = SpatialSoftmax(config.channels[self.keypoint_stage], config.keypoints, keypoint_side)
        self.passthrough = config.keypoint_passthrough and config.keypoints > 0
        self.keypoint_scale = config.keypoint_scale
        readout = in_channels * side * side + 3 * config.keypoints
        if self.passthrough:
            # The 2K coordinates go through untouched; the projection fills the other D - 2K dimensions.
            self.to_representation = nn.Linear(readout - 2 * config.keypoints, config.dim - 2 * config.keypoints)
        else:
            self.to_representation = nn.Linear(readout, config.dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (B, T, 3, H, W) float -> (B, T, D)."""
        batch = frames.shape[0]
        x = rearrange(frames, "b t c h w -> (b t) c h w")
        keypoints = None
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if self.keypoints is not None and index == self.keypoint_stage:
                keypoints = self.keypoints(x)  # (B*T, 3K) from a finer map than the last one
        flat = rearrange(x, "bt c h w -> bt (c h w)")  # x: (B*T, C, h, w), the last stage
        if keypoints is None:
            representation = self.to_representation(flat)
        elif self.passthrough:
            points = rearrange(keypoints, "bt (k three) -> bt k three", three=3)
            coordinates = rearrange(points[..., :2], "bt k xy -> bt (k xy)")  # (B*T, 2K)
            projected = self.to_representation(torch.cat([flat, points[..., 2].to(flat.dtype)], -1))
            representation = torch.cat([self.keypoint_scale * coordinates.to(projected.dtype), projected], dim=-1)
        else:
            representation = self.to_representation(torch.cat([flat, keypoints.to(flat.dtype)], -1))
        return rearrange(representation, "(b t) d -> b t d", b=batch)
