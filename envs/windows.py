"""Fixed-length training windows cut from clips of different lengths (gym episodes, video files).

A `ClipStore` holds N clips of their own lengths; `ClipWindows` enumerates every `window`-frame slice that lies
inside one clip, so an episode boundary or a cut between two files never falls inside a window, and
`split_clip_indices` splits by clip so validation never sees a frame of a training clip.

Item layout (tensors): "frames" uint8 (window, 3, H, W); "clip", "start" int64; plus whatever per-frame arrays
the store has, e.g. "actions" float32 (window, A) where actions[t] is the action taken after frame t.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset


class ClipReadError(RuntimeError):
    """A window could not be read; the message starts with the source file (or episode) it came from."""


@runtime_checkable
class ClipStore(Protocol):
    """N clips of their own lengths, readable a slice at a time (safe to pickle into DataLoader workers)."""

    lengths: np.ndarray
    """(N,) int64 frames per clip."""
    names: list[str]
    """Human-readable origin of each clip (file path, 'episode 12 of DIR'), used in error messages."""

    def read(self, clip: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Frames start..stop-1 of a clip: "frames" uint8 (k, 3, H, W) (channels first, as the model takes them)
        plus per-frame arrays (k, ...). Views into memmaps are fine: the dataset copies."""
        ...


class ClipWindows(Dataset):
    """Every `window`-frame slice of the chosen clips starting at multiples of `stride`; windows never cross clips.

    Clips shorter than `window` contribute no windows (sources drop and count them before this point).
    """

    def __init__(self, store: ClipStore, clips: Sequence[int] | np.ndarray, window: int, stride: int = 1) -> None:
        for name, value in (("window", window), ("stride", stride)):
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        clips = np.asarray(clips, dtype=np.int64).reshape(-1)
        if clips.size and (clips.min() < 0 or clips.max() >= len(store.lengths)):
            raise ValueError(f"clip indices must be in [0, {len(store.lengths)}), got {clips.min()}..{clips.max()}")
        self.store = store
        self.clips = clips
        self.window, self.stride = int(window), int(stride)
        lengths = np.asarray(store.lengths, dtype=np.int64)[clips]
        per_clip = np.where(lengths >= self.window, (lengths - self.window) // self.stride + 1, 0)
        self._ends = np.cumsum(per_clip)  # window count up to and including each clip

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._ends.size else 0

    def index_of(self, item: int) -> tuple[int, int]:
        """(store clip index, start frame) of window number `item`."""
        n = len(self)
        if not -n <= item < n:
            raise IndexError(f"index {item} out of range for {n} windows")
        item %= n
        position = int(np.searchsorted(self._ends, item, side="right"))
        before = int(self._ends[position - 1]) if position else 0
        return int(self.clips[position]), (item - before) * self.stride

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        clip, start = self.index_of(int(item))
        stop = start + self.window
        try:
            arrays = self.store.read(clip, start, stop)
        except ClipReadError:
            raise
        except Exception as error:  # noqa: BLE001 - re-raised with the file named, the cause kept
            raise ClipReadError(
                f"{self.store.names[clip]}: cannot read frames {start}..{stop - 1}: {type(error).__name__}: {error}"
            ) from error
        frames = arrays.pop("frames")
        if frames.shape[0] != self.window:
            raise ClipReadError(
                f"{self.store.names[clip]}: expected {self.window} frames from {start}, got {frames.shape[0]}"
            )
        # np.array copies: detaches from a read-only memmap (torch.from_numpy would warn) and makes it contiguous.
        # (torch.tensor on a Python int costs ~10 us, a 0-d numpy array ~1 us: this is the per-window hot path.)
        out = {
            "frames": torch.from_numpy(np.array(frames, dtype=np.uint8)),
            "clip": torch.from_numpy(np.array(clip, dtype=np.int64)),
            "start": torch.from_numpy(np.array(start, dtype=np.int64)),
        }
        for name, value in arrays.items():
            out[name] = torch.from_numpy(np.array(value))
        return out


def split_clip_indices(num_clips: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle clip indices with `seed`, hold out max(1, round(num_clips * val_fraction)) clips (at least one
    clip stays for training). Returns sorted int64 (train, val)."""
    if num_clips < 2:
        raise ValueError(
            f"a train/validation split by clip needs at least 2 usable clips, got {num_clips}; add more videos or "
            "episodes (a single long video can be cut into several files)"
        )
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_val = min(num_clips - 1, max(1, int(round(num_clips * val_fraction))))
    order = np.random.default_rng(seed).permutation(num_clips)
    return np.sort(order[num_val:]).astype(np.int64), np.sort(order[:num_val]).astype(np.int64)
