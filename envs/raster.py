"""Compositing painter for hand-built scenes: discs, squares, solid wall bars and the occluder, in a given order.

The simulator's `Renderer` draws balls over a uniform background and the occluder on top, which is all the
training data needs. Scenes that test intuitive physics need more: a ball that turns into a square, a solid wall
that a ball is drawn over when it (impossibly) passes through. This module paints those, and paints discs with the
simulator's own coverage and blending, so a scene made only of balls is bitwise the frame `Renderer` would draw
(tests check this): the model sees no rendering shift between its training data and these scenes.

numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from envs.physics import BallsConfig, _blend, _coverage, bar_columns


@dataclass(frozen=True)
class Shape:
    """One object in one frame. Lengths are fractions of the image side, like the simulator's state."""

    x: float
    """Centre, horizontal (+x right)."""
    y: float
    """Centre, vertical (+y down)."""
    radius: float
    """Disc radius; a square has the same area as the disc of this radius."""
    color: tuple[int, int, int]
    """RGB."""
    kind: Literal["disc", "square"] = "disc"
    """Outline."""


@dataclass(frozen=True)
class Wall:
    """A solid vertical bar spanning the full height, painted under every shape (shapes in front of it are seen)."""

    x: float
    """Centre of the bar, fraction of the image width."""
    width: float
    """Width of the bar, fraction of the image width."""
    color: tuple[int, int, int] = (235, 235, 235)
    """RGB; light gray, unlike every palette colour and unlike the (mid-gray) occluder."""

    def columns(self, size: int) -> tuple[int, int]:
        """Pixel columns [c0, c1) the bar covers, rounded the way the occluder's are."""
        return bar_columns(self.x, self.width, size)

    def faces(self, size: int) -> tuple[float, float]:
        """Left and right faces in image fractions, at the painted pixel boundaries (what collisions use)."""
        c0, c1 = self.columns(size)
        return c0 / size, c1 / size


class Painter:
    """Paints frames for one simulator configuration: its size, background, and occluder (if enabled)."""

    def __init__(self, config: BallsConfig) -> None:
        config.validate()
        self.size = config.image_size
        self.background = np.asarray(config.background, dtype=np.uint8)
        self.occluder = config.occluder_columns()
        self.occluder_color = np.asarray(config.occluder_color, dtype=np.uint8)
        # Pixel j covers [j, j+1); coverage is measured at its centre, as in the simulator's renderer.
        self._centers = np.arange(self.size, dtype=np.float32) + np.float32(0.5)

    def paint(self, shapes: list[Shape], walls: tuple[Wall, ...] = ()) -> np.ndarray:
        """One (H, W, 3) uint8 frame: background, walls, shapes in list order (later on top), then the occluder."""
        size = self.size
        out = np.empty((size, size, 3), dtype=np.uint8)
        out[...] = self.background
        for wall in walls:
            c0, c1 = wall.columns(size)
            out[:, c0:c1] = np.asarray(wall.color, dtype=np.uint8)
        for shape in shapes:
            if shape.kind == "disc":
                self._disc(out, shape)
            elif shape.kind == "square":
                self._square(out, shape)
            else:
                raise ValueError(f"Shape.kind must be 'disc' or 'square', got {shape.kind!r}")
        c0, c1 = self.occluder
        if c1 > c0:
            out[:, c0:c1] = self.occluder_color
        return out

    def paint_clip(self, frames: list[list[Shape]], walls: tuple[Wall, ...] = ()) -> np.ndarray:
        """(T, H, W, 3) uint8 from one shape list per frame."""
        return np.stack([self.paint(shapes, walls) for shapes in frames])

    def _disc(self, out: np.ndarray, shape: Shape) -> None:
        size, centers = self.size, self._centers
        cx, cy, r = shape.x * size, shape.y * size, shape.radius * size
        # The same bounding box and float32 operations as Renderer.draw, so ball-only frames match it bit for bit.
        x0, x1 = max(int(cx - r - 1.0), 0), min(int(cx + r + 1.0) + 1, size)
        y0, y1 = max(int(cy - r - 1.0), 0), min(int(cy + r + 1.0) + 1, size)
        if x0 >= x1 or y0 >= y1:
            return
        dx = centers[x0:x1] - np.float32(cx)
        dy = centers[y0:y1] - np.float32(cy)
        dist2 = dy[:, None] * dy[:, None] + dx * dx
        region = out[y0:y1, x0:x1]
        region[...] = _blend(region, _coverage(dist2, r), np.asarray(shape.color, dtype=np.float32))

    def _square(self, out: np.ndarray, shape: Shape) -> None:
        size = self.size
        half = 0.5 * math.sqrt(math.pi) * shape.radius * size  # equal area: side**2 = pi * r**2
        cx, cy = shape.x * size, shape.y * size
        x0, x1 = max(int(math.floor(cx - half)), 0), min(int(math.ceil(cx + half)), size)
        y0, y1 = max(int(math.floor(cy - half)), 0), min(int(math.ceil(cy + half)), size)
        if x0 >= x1 or y0 >= y1:
            return
        # Exact area of each pixel inside the square (box-filtered edges), separable in x and y.
        cols = np.arange(x0, x1, dtype=np.float32)
        rows = np.arange(y0, y1, dtype=np.float32)
        cover_x = np.clip(np.minimum(cols + 1, cx + half) - np.maximum(cols, cx - half), 0.0, 1.0)
        cover_y = np.clip(np.minimum(rows + 1, cy + half) - np.maximum(rows, cy - half), 0.0, 1.0)
        alpha = (cover_y[:, None] * cover_x[None, :]).astype(np.float32)
        region = out[y0:y1, x0:x1]
        region[...] = _blend(region, alpha, np.asarray(shape.color, dtype=np.float32))
