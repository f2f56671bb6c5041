"""Torch renderer of bouncing-balls state: whole batches of frames drawn on the training device.

The training clips store every frame's ball state next to its pixels, so a GPU run can skip the host-to-device copy
of uint8 frames altogether: it gathers the (tiny) state of a batch of windows on the GPU and draws the frames there.
This module draws exactly what `envs.physics.Renderer` draws: the same pixel-centre coverage (a 1-pixel
anti-aliased rim), the same float32 blend with round-to-nearest, a clip's own wall under the balls, balls in slot
order (later over earlier), then the occluders. Given the simulator's float64 state the output is bitwise the numpy
renderer's on CPU (tests check this); from the float32 state stored with cached clips a handful of rim pixels can differ by 1 (the position rounding).

Unlike `Renderer.draw`, which touches only each ball's bounding box, this evaluates every pixel for every ball slot:
wasteful on a CPU, but a handful of fused elementwise kernels over the whole batch is what a GPU is fast at, and a
pixel outside a ball's rim gets coverage 0, which leaves it bit-for-bit unchanged.

torch + numpy + envs.physics only (no training/analysis imports).
"""

from __future__ import annotations

import math

import torch

from envs.physics import BallsConfig


class TorchRenderer:
    """Draws ball state into uint8 frames on whatever device the state tensors live on.

    `render(positions, radii, colors, present)` takes per-ball tensors with any leading shape `L...`:
    positions (L..., M, 2) image fractions (x right, y down), radii (L..., M) image fractions, colors (L..., M, 3)
    uint8 RGB, present (L..., M) bool, and returns frames (L..., H, W, 3) uint8 (the on-disk layout; see `to_bthw`
    for the model's (B, T, 3, H, W) view).
    """

    def __init__(self, config: BallsConfig) -> None:
        config.validate()
        self.size = config.image_size
        self.background = tuple(int(c) for c in config.background)
        self.occluder_color = tuple(int(c) for c in config.occluder_color)
        self.occluder_columns = config.occluder_columns()
        self.wall_color = tuple(int(c) for c in config.wall_color)

    def render(
        self,
        positions: torch.Tensor,
        radii: torch.Tensor,
        colors: torch.Tensor,
        present: torch.Tensor,
        wall: torch.Tensor | None = None,
        occluder: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """wall: optional (L..., 2) faces in image fractions (pixel aligned; equal: none), drawn under the balls;
        occluder: optional (L..., 2) pixel columns [c0, c1) of the clip's own occluder, drawn on top."""
        leading = tuple(radii.shape[:-1])
        balls = radii.shape[-1]
        if positions.shape != (*leading, balls, 2):
            raise ValueError(f"positions must be {(*leading, balls, 2)} like radii {tuple(radii.shape)} + (2,), "
                             f"got {tuple(positions.shape)}")
        if colors.shape != (*leading, balls, 3):
            raise ValueError(f"colors must be {(*leading, balls, 3)}, got {tuple(colors.shape)}")
        if present.shape != (*leading, balls):
            raise ValueError(f"present must be {(*leading, balls)}, got {tuple(present.shape)}")
        device, size = radii.device, self.size
        frames = math.prod(leading)
        # (L, M, ...) with L = every frame of the batch: one pass per ball slot over all frames at once.
        positions = positions.reshape(frames, balls, 2)
        radii = radii.reshape(frames, balls)
        colors = colors.reshape(frames, balls, 3)
        present = present.reshape(frames, balls)

        # Centre and rim in pixels are formed in float64 and only then rounded to float32, as the numpy renderer
        # does with Python floats; that is what keeps the two bitwise equal.
        centers_px = (positions.double() * size).float()  # (L, M, 2)
        rim = (radii.double() * size + 0.5).float()  # (L, M): coverage reaches 0 at r + 0.5 pixels
        pixel = torch.arange(size, device=device, dtype=torch.float32) + 0.5  # pixel centres

        canvas = torch.empty((frames, size, size, 3), device=device, dtype=torch.float32)
        canvas[...] = torch.tensor(self.background, device=device, dtype=torch.float32)
        columns = torch.arange(size, device=device)
        if wall is not None:
            faces = (wall.reshape(frames, 2).double() * size).round().long()  # (L, 2) pixel columns
            inside = (columns >= faces[:, :1]) & (columns < faces[:, 1:])  # (L, W)
            color = torch.tensor(self.wall_color, device=device, dtype=torch.float32)
            canvas = torch.where(inside[:, None, :, None], color, canvas)
        for k in range(balls):
            dx = pixel - centers_px[:, k, 0, None]  # (L, W)
            dy = pixel - centers_px[:, k, 1, None]  # (L, H)
            coverage = (dy * dy)[:, :, None] + (dx * dx)[:, None, :]  # (L, H, W) squared distance
            coverage = (rim[:, k, None, None] - coverage.sqrt()).clamp_(0.0, 1.0)
            # An absent slot covers nothing, which leaves every pixel exactly as it was (see _blend below).
            coverage = coverage * present[:, k, None, None]
            canvas = _blend(canvas, coverage, colors[:, k].float())
        canvas = canvas.to(torch.uint8)
        c0, c1 = self.occluder_columns
        if c1 > c0:
            canvas[:, :, c0:c1] = torch.tensor(self.occluder_color, device=device, dtype=torch.uint8)
        if occluder is not None:
            bounds = occluder.reshape(frames, 2).long()
            inside = (columns >= bounds[:, :1]) & (columns < bounds[:, 1:])  # (L, W)
            color = torch.tensor(self.occluder_color, device=device, dtype=torch.uint8)
            canvas = torch.where(inside[:, None, :, None], color, canvas)
        return canvas.reshape(*leading, size, size, 3)


def _blend(canvas: torch.Tensor, coverage: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """One ball over a float canvas of whole numbers: (L, H, W, 3), coverage (L, H, W), color (L, 3).

    Mirrors `envs.physics._blend` followed by its truncating uint8 store: `floor(under + 0.5 + a * (c - under))`
    computed as `base = under + 0.5; base += a * ((c + 0.5) - base)`, one float32 operation at a time in the same
    order (separate kernels, so nothing is contracted into a fused multiply-add). Coverage 0 gives back `under`.
    """
    base = canvas + 0.5
    delta = (color[:, None, None, :] + 0.5) - base
    delta *= coverage[..., None]
    base += delta
    return base.floor_()


def to_bthw(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) -> the model's (B, T, 3, H, W) as a view: the memory stays channels-last, which is the fast
    layout for convolutions on GPUs (flattening B and T then gives a channels_last (B*T, 3, H, W) batch for free)."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (B, T, H, W, 3), got {tuple(frames.shape)}")
    return frames.permute(0, 1, 4, 2, 3)
