"""Building blocks of the video sources: frame resizing, streaming .npy writes, windows over ragged clips, the
split by clip, and the `data.source` config fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from envs.frames import resample_weights, resize_frames
from envs.storage import NpyAppender
from envs.windows import ClipReadError, ClipWindows, split_clip_indices
from training.config import preset
from training.config_io import ConfigError, apply_overrides


def test_area_resize_matches_torch_on_integer_factors() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    ours = resize_frames(frames, 32, crop=False)  # 3x and 4x: exact block means
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2).double(), size=(32, 32), mode="area"
    )
    expected = reference.round().permute(0, 2, 3, 1).numpy()
    assert np.abs(ours.astype(int) - expected).max() <= 1  # float32 running sums vs float64: rounding only


def test_area_resize_fractional_factor_is_exact_area_average() -> None:
    frames = np.random.default_rng(1).integers(0, 256, (1, 61, 83, 3), dtype=np.uint8)
    ours = resize_frames(frames, 17, crop=False)
    rows, cols = resample_weights(61, 17).astype(np.float64), resample_weights(83, 17).astype(np.float64)
    expected = np.einsum("ih,bhwc,jw->bijc", rows, frames.astype(np.float64), cols)
    assert np.abs(ours - expected).max() <= 0.5 + 1e-3
    # Area weights: each output pixel averages a 61/17-pixel span; rows sum to one.
    np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-6)
    assert (rows > 0).sum(1).max() <= int(np.ceil(61 / 17)) + 1


def test_resize_keeps_flat_frames_flat_and_thin_lines_visible() -> None:
    flat = np.full((3, 400, 600, 3), 77, dtype=np.uint8)
    assert (resize_frames(flat, 64, crop=False) == 77).all()
    line = np.zeros((1, 400, 600, 3), dtype=np.uint8)
    line[:, :, 300:303] = 255  # a 3-pixel pole, ~1/3 of an output pixel wide at 64
    small = resize_frames(line, 64, crop=False)
    assert small.max() >= 70  # blended in, not aliased away


def test_upsampling_is_bilinear_and_crop_is_centred() -> None:
    frames = np.random.default_rng(2).integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    ours = resize_frames(frames, 40, crop=True)
    centre = torch.from_numpy(frames[:, :, 5:25]).permute(0, 3, 1, 2).double()
    reference = torch.nn.functional.interpolate(centre, size=(40, 40), mode="bilinear", align_corners=False)
    assert np.abs(ours.astype(int) - reference.round().permute(0, 2, 3, 1).numpy()).max() <= 1
    with pytest.raises(ValueError, match=r"uint8 array laid out \(\.\.\., H, W, C\)"):
        resize_frames(frames.astype(np.float32), 8, crop=True)


def test_npy_appender_streams_and_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    with NpyAppender(path, np.uint8, (2, 3)) as out:
        for k in range(4):
            out.append(np.full((k + 1, 2, 3), k, dtype=np.uint8))
        assert not path.exists()  # published only when complete
    loaded = np.load(path, mmap_mode="r")
    assert loaded.shape == (10, 2, 3) and loaded[-1, 0, 0] == 3 and loaded[0, 0, 0] == 0
    with pytest.raises(RuntimeError):
        with NpyAppender(tmp_path / "b.npy", np.float32, ()) as out:
            out.append(np.ones(3))
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]  # no partial file, no temp left


class _Store:
    """Three clips of lengths 5, 2, 7; frame value = clip * 10 + index."""

    def __init__(self) -> None:
        self.lengths = np.array([5, 2, 7])
        self.names = ["a.mp4", "b.mp4", "c.mp4"]

    def read(self, clip: int, start: int, stop: int) -> dict[str, np.ndarray]:
        if clip == 2 and start >= 3:
            raise OSError("disk went away")
        values = clip * 10 + np.arange(start, stop, dtype=np.uint8)
        frames = np.broadcast_to(values[:, None, None, None], (stop - start, 3, 2, 2))
        return {"frames": frames, "actions": values[:, None].astype(np.float32)}


def test_windows_stay_inside_clips_and_errors_name_the_clip() -> None:
    windows = ClipWindows(_Store(), [0, 1, 2], window=3)
    assert len(windows) == 3 + 0 + 5  # the 2-frame clip has none
    starts = [windows.index_of(i) for i in range(len(windows))]
    assert starts == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4)]
    item = windows[4]
    assert item["frames"][:, 0, 0, 0].tolist() == [21, 22, 23]
    assert item["actions"].shape == (3, 1) and item["clip"].item() == 2 and item["start"].item() == 1
    with pytest.raises(ClipReadError, match=r"^c\.mp4: cannot read frames 3\.\.5: OSError: disk went away"):
        windows[6]
    strided = ClipWindows(_Store(), [2], window=3, stride=2)
    assert [strided.index_of(i) for i in range(len(strided))] == [(2, 0), (2, 2), (2, 4)]


def test_split_by_clip_keeps_one_of_each() -> None:
    train, val = split_clip_indices(5, 0.1, seed=0)
    assert len(val) == 1 and len(train) == 4 and set(train) | set(val) == set(range(5))
    train, val = split_clip_indices(2, 0.9, seed=0)
    assert len(train) == len(val) == 1
    with pytest.raises(ValueError, match="at least 2 usable clips, got 1"):
        split_clip_indices(1, 0.1, seed=0)


def test_data_source_config_fields() -> None:
    config = apply_overrides(preset("debug"), ["data.source=recorded", "data.path=videos", "data.fps=12.5",
                                               "data.on_bad_file=skip", "data.max_bad_fraction=0.2"])
    assert (config.data.fps, config.data.on_bad_file, config.data.max_bad_fraction) == (12.5, "skip", 0.2)
    config.validate()  # bouncing-ball constraints (clip_length, balls.image_size) do not apply
    with pytest.raises(ValueError, match="data.path must name a folder of video files"):
        apply_overrides(preset("debug"), ["data.source=recorded"])
    with pytest.raises(ConfigError, match="data.on_bad_file"):
        apply_overrides(preset("debug"), ["data.on_bad_file=ignore"])
    with pytest.raises(ValueError, match=r"data.max_bad_fraction must be in \[0, 1\]"):
        apply_overrides(preset("debug"), ["data.max_bad_fraction=1.5"])
    with pytest.raises(ValueError, match="data.frame_skip must be >= 1"):
        apply_overrides(preset("debug"), ["data.source=gym", "data.frame_skip=0"])
