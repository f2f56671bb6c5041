"""Resizing video frames to the model's square size: optional centre crop, then separable linear resampling.

Each axis is resampled on its own. Shrinking uses area interpolation: every output pixel is the exact
fractional-area average of the input pixels it covers (like OpenCV's INTER_AREA; thin lines such as CartPole's pole
fade instead of aliasing away), computed from a running sum along the axis, so the cost is linear in the input size
whatever the factor. Enlarging uses bilinear weights with half-pixel centres (area weights would degenerate into
nearest neighbour there), two gathered taps per output sample. `resample_weights` gives both as matrices.

numpy only: the gym recorder resizes inside vector-env worker processes and the video decoder inside threads.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def resample_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float32 weights, rows summing to 1, mapping an input axis to an output axis."""
    if size_in < 1 or size_out < 1:
        raise ValueError(f"axis sizes must be >= 1, got {size_in} -> {size_out}")
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    if size_out == size_in:
        np.fill_diagonal(weights, 1.0)
    elif size_out < size_in:
        # Output pixel j covers input interval [j * scale, (j + 1) * scale); input pixel i covers [i, i + 1).
        scale = size_in / size_out
        edges = np.arange(size_out + 1) * scale
        for j in range(size_out):
            lo, hi = edges[j], edges[j + 1]
            first, last = int(np.floor(lo)), min(int(np.ceil(hi)), size_in)
            pixels = np.arange(first, last)
            overlap = np.minimum(pixels + 1, hi) - np.maximum(pixels, lo)
            weights[j, first:last] = np.clip(overlap, 0.0, None) / scale
    else:
        # Half-pixel centres (align_corners=False), clamped at the borders.
        source = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
        source = np.clip(source, 0.0, size_in - 1)
        left = np.floor(source).astype(np.int64)
        right = np.minimum(left + 1, size_in - 1)
        frac = source - left
        rows = np.arange(size_out)
        np.add.at(weights, (rows, left), 1.0 - frac)
        np.add.at(weights, (rows, right), frac)
    weights.setflags(write=False)
    return weights.astype(np.float32)


def center_crop_box(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the largest centred square inside a height x width frame."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def resize_frames(frames: np.ndarray, size: int, *, crop: bool) -> np.ndarray:
    """(..., H, W, C) uint8 frames -> (..., size, size, C) uint8.

    crop=True cuts the centred square first (keeps the aspect ratio, loses the borders of the longer side);
    crop=False squeezes the whole frame into the square (keeps everything, distorts the aspect ratio).
    """
    if not isinstance(frames, np.ndarray) or frames.ndim < 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be a uint8 array laid out (..., H, W, C), got {getattr(frames, 'dtype', type(frames))} "
            f"{getattr(frames, 'shape', '')}"
        )
    if not (isinstance(size, (int, np.integer)) and size >= 1):
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    height, width, channels = frames.shape[-3:]
    if crop:
        top, left, side = center_crop_box(height, width)
        frames = frames[..., top : top + side, left : left + side, :]
        height = width = side
    if height == size and width == size:
        return np.ascontiguousarray(frames)
    lead = frames.shape[:-3]
    batch = frames.reshape(-1, height, width, channels).astype(np.float32)
    out = _resample_axis(_resample_axis(batch, 1, size), 2, size)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.reshape(*lead, size, size, channels)


def _resample_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Resample float32 `x` along `axis` to `size` samples (area when shrinking, bilinear when enlarging)."""
    n = x.shape[axis]
    if n == size:
        return x
    x = np.moveaxis(x, axis, 0)
    if size > n:
        # Bilinear: two taps per output sample, gathered (the same weights as resample_weights, without the zeros).
        source = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0, n - 1)
        left = np.floor(source).astype(np.int64)
        right = np.minimum(left + 1, n - 1)
        frac = (source - left).astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
        out = x[left] * (1.0 - frac) + x[right] * frac
        return np.moveaxis(out, 0, axis)
    # Area: integral I(t) = sum of x over [0, t), linear inside a pixel; output j = (I(hi) - I(lo)) / scale.
    scale = n / size
    running = np.empty((n + 1, *x.shape[1:]), dtype=np.float32)
    running[0] = 0.0
    np.cumsum(x, axis=0, dtype=np.float32, out=running[1:])
    edges = np.arange(size + 1) * scale
    whole = np.minimum(np.floor(edges).astype(np.int64), n)
    frac = (edges - whole).astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
    integral = running[whole] + frac * x[np.minimum(whole, n - 1)]
    out = (integral[1:] - integral[:-1]) / np.float32(scale)
    return np.moveaxis(out, 0, axis)
