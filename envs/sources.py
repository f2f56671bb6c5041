"""The common interface of video sources: settings in, train/validation window datasets (split by clip) out.

Implementations: `BouncingBallsSource` (here), `GymSource` (envs/gym_video.py), `RecordedSource`
(envs/recorded.py). `training/data.py` builds one from `data.source` and calls `load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset


@dataclass
class SourceData:
    """What a source hands the trainer."""

    train: Dataset
    """Training windows: dicts with "frames" uint8 (window, 3, H, W) (+ "actions" (window, A) when action_dim)."""
    val: Dataset
    """Validation windows from clips disjoint from the training clips."""
    action_dim: int = 0
    """Width A of each window's "actions" (0: the source has no actions)."""
    summary: str = ""
    """One line for the log: what was loaded, what was dropped or skipped."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Counts behind the summary (clips, frames, dropped_short, skipped_bad, ...)."""


@runtime_checkable
class VideoSource(Protocol):
    """Anything that can produce train/validation windows of `image_size` frames."""

    name: str
    """Short name used in messages ("recorded /data/videos", "gym CartPole-v1")."""

    def load(self, *, window: int, val_fraction: float, seed: int) -> SourceData:
        """Build (or read from cache) the clips and split them by clip into train/validation windows."""
        ...


@dataclass
class BouncingBallsSource:
    """The stochastic bouncing-balls simulator: fixed-length clips, generated once and cached."""

    config: Any
    """envs.physics.BallsConfig."""
    num_clips: int
    clip_length: int
    seed: int
    cache_dir: str | Path
    name: str = "bouncing_balls"

    def load(self, *, window: int, val_fraction: float, seed: int) -> SourceData:
        from envs.clips import load_or_generate
        from envs.dataset import WindowDataset, split_clips

        clips = load_or_generate(self.cache_dir, self.config, self.num_clips, self.clip_length, self.seed)
        train_idx, val_idx = split_clips(self.num_clips, val_fraction, seed)

        def windows(indices) -> WindowDataset:
            state = {name: values[indices] for name, values in clips.state.items()}
            return WindowDataset(clips.frames[indices], window=window, state=state)

        summary = f"bouncing_balls: {self.num_clips} clips x {self.clip_length} frames"
        stats = {"clips": self.num_clips, "frames": self.num_clips * self.clip_length}
        return SourceData(train=windows(train_idx), val=windows(val_idx), summary=summary, stats=stats)
