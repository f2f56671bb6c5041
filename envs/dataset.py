"""Torch view of clip arrays: fixed-length windows cut from clips, and a train/validation split by clip.

Windows never straddle two clips (the frames on either side of a clip boundary are unrelated worlds), and the
split is by clip so no validation frame has a near-duplicate neighbour in the training set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class WindowDataset(Dataset):
    """Every `window`-frame slice of every clip, starting at multiples of `stride`.

    Item: {"frames": uint8 (window, 3, H, W), "clip": int64, "start": int64} plus, when `state` is given,
    "state/<name>": that array's (window, ...) slice as a tensor. `frames` may be a memmap: only the window
    that is asked for is read.
    """

    def __init__(
        self,
        frames: np.ndarray,
        window: int,
        stride: int = 1,
        state: dict[str, np.ndarray] | None = None,
    ) -> None:
        if not (isinstance(frames, np.ndarray) and frames.ndim == 5 and frames.shape[-1] == 3):
            shape = getattr(frames, "shape", None)
            raise ValueError(f"frames must be an (N, T, H, W, 3) ndarray, got {type(frames).__name__} {shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        num_clips, clip_length = frames.shape[:2]
        for name, value in (("window", window), ("stride", stride)):
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if window > clip_length:
            raise ValueError(f"window ({window}) must be <= clip length T ({clip_length}) of frames {frames.shape}")
        state = dict(state or {})
        for name, value in state.items():
            if not (isinstance(value, np.ndarray) and value.shape[:2] == (num_clips, clip_length)):
                shape = getattr(value, "shape", None)
                raise ValueError(f"state[{name!r}] must lead with (N, T) = {(num_clips, clip_length)}, got {shape}")
        self.frames = frames
        self.state = state
        self.window = int(window)
        self.stride = int(stride)
        self.num_clips = int(num_clips)
        self.starts_per_clip = (clip_length - self.window) // self.stride + 1

    def __len__(self) -> int:
        return self.num_clips * self.starts_per_clip

    def index_of(self, item: int) -> tuple[int, int]:
        """(clip, start frame) of item number `item`."""
        n = len(self)
        if not -n <= item < n:
            raise IndexError(f"index {item} out of range for {n} windows")
        item %= n
        clip, k = divmod(item, self.starts_per_clip)
        return clip, k * self.stride

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        clip, start = self.index_of(int(item))
        stop = start + self.window
        # The transpose copy also detaches from a read-only memmap, which torch.from_numpy would warn about.
        frames = np.ascontiguousarray(self.frames[clip, start:stop].transpose(0, 3, 1, 2))
        out = {
            "frames": torch.from_numpy(frames),
            "clip": torch.tensor(clip, dtype=torch.int64),
            "start": torch.tensor(start, dtype=torch.int64),
        }
        for name, value in self.state.items():
            out[f"state/{name}"] = torch.from_numpy(np.array(value[clip, start:stop]))
        return out


def split_clips(num_clips: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle clip indices with `seed` and hold out round(num_clips * val_fraction) of them.

    Returns sorted int64 (train_idx, val_idx), disjoint and covering range(num_clips).
    """
    if not (isinstance(num_clips, (int, np.integer)) and not isinstance(num_clips, bool) and num_clips >= 1):
        raise ValueError(f"num_clips must be an int >= 1, got {num_clips!r}")
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    num_val = int(round(num_clips * val_fraction))
    if num_val >= num_clips:
        raise ValueError(
            f"val_fraction ({val_fraction}) of num_clips ({num_clips}) leaves no training clips; "
            "expected a smaller fraction"
        )
    order = np.random.default_rng(seed).permutation(num_clips)
    return np.sort(order[num_val:]).astype(np.int64), np.sort(order[:num_val]).astype(np.int64)
