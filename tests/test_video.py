"""Tests for analysis.video: MP4/GIF round trips (exact frame counts, pixel fidelity,
odd sizes, atomic writes), grid layout arithmetic, labels and input validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import video
from analysis.video import make_grid, read_video_frames, write_video

REPO_ROOT = Path(__file__).resolve().parents[1]


def smooth_video(T: int, H: int, W: int) -> np.ndarray:
    """Slowly varying colour pattern that moves over time (every frame distinct)."""
    t, y, x = np.meshgrid(np.arange(T), np.arange(H), np.arange(W), indexing="ij")
    rgb = np.stack(
        [
            128 + 100 * np.sin(x / 9 + t / 3),
            128 + 100 * np.cos(y / 7 - t / 5),
            128 + 80 * np.sin((x + y) / 11),
        ],
        axis=-1,
    )
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decode_with_pyav(path: Path) -> tuple[list[np.ndarray], str]:
    """Independent decode (no read_video_frames) returning frames and the codec name."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, codec


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --------------------------------------------------------------------------- mp4


@pytest.mark.parametrize("T", [1, 2, 17])
def test_mp4_round_trip_preserves_frame_count_and_pixels(tmp_path: Path, T: int) -> None:
    frames = smooth_video(T, 64, 64)
    out = write_video(frames, tmp_path / "clip.mp4", fps=8)

    assert out == tmp_path / "clip.mp4" and out.is_file()
    raw, _ = decode_with_pyav(out)
    assert len(raw) == T
    back = read_video_frames(out)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert mean_abs_error(back, frames) < 3.0


def test_mp4_odd_size_is_padded_for_the_codec_and_cropped_on_read(tmp_path: Path) -> None:
    frames = smooth_video(9, 61, 83)
    out = write_video(frames, tmp_path / "odd.mp4", fps=10)

    raw, _ = decode_with_pyav(out)
    assert len(raw) == 9
    assert raw[0].shape == (62, 84, 3)  # yuv420p needs even sizes
    back = read_video_frames(out)
    assert back.shape == (9, 61, 83, 3)
    assert mean_abs_error(back, frames) < 3.0


def test_mp4_uses_h264_when_available(tmp_path: Path) -> None:
    import av

    out = write_video(smooth_video(3, 16, 16), tmp_path / "a.mp4")
    _, codec = decode_with_pyav(out)
    expected = "h264" if "libx264" in av.codecs_available else "mpeg4"
    assert codec == expected


def test_mp4_mpeg4_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "_pick_codec", lambda av: "mpeg4")
    frames = smooth_video(11, 40, 30)
    out = write_video(frames, tmp_path / "m.mp4", fps=5)

    raw, codec = decode_with_pyav(out)
    assert codec == "mpeg4"
    assert len(raw) == 11
    assert mean_abs_error(read_video_frames(out), frames) < 4.0


def test_write_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.mp4"
    write_video(smooth_video(2, 8, 8), target)
    write_video(smooth_video(3, 8, 8), target)  # overwrite in place

    assert sorted(p.name for p in target.parent.iterdir()) == ["c.mp4"]
    assert read_video_frames(target).shape[0] == 3


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.mp4"
    write_video(smooth_video(4, 8, 8), target)
    before = target.read_bytes()

    def broken_writer(frames: np.ndarray, path: Path, fps: object) -> None:
        path.write_bytes(b"half written")
        raise RuntimeError("encoder died")

    monkeypatch.setitem(video._WRITERS, ".mp4", broken_writer)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_video(smooth_video(5, 8, 8), target)

    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.mp4"]


# --------------------------------------------------------------------------- gif


def test_gif_round_trip(tmp_path: Path) -> None:
    from PIL import Image

    frames = smooth_video(7, 32, 48)
    out = write_video(frames, tmp_path / "clip.gif", fps=10)

    with Image.open(out) as gif:
        assert gif.n_frames == 7
        assert gif.info.get("loop") == 0
        assert gif.info.get("duration") == 100
        assert gif.size == (48, 32)
        gif.seek(3)
        frame3 = np.asarray(gif.convert("RGB"))
    # 256-colour palette quantisation is lossy but close on a smooth pattern.
    assert mean_abs_error(frame3, frames[3]) < 8.0


def test_gif_identical_frames_keep_total_duration(tmp_path: Path) -> None:
    from PIL import Image

    frames = np.repeat(smooth_video(1, 8, 8), 4, axis=0)
    out = write_video(frames, tmp_path / "still.gif", fps=10)
    with Image.open(out) as gif:
        total = 0
        for i in range(gif.n_frames):
            gif.seek(i)
            total += gif.info["duration"]
    assert total == 400  # Pillow may merge frames, but playback time is preserved


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((0, 8, 8, 3), np.uint8), "T, H, W >= 1"),
        ([[0]], "uint8"),
    ],
)
def test_write_video_rejects_bad_frames(tmp_path: Path, frames: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_video(frames, tmp_path / "x.mp4")  # type: ignore[arg-type]
    assert not (tmp_path / "x.mp4").exists()


def test_write_video_rejects_bad_suffix_and_fps(tmp_path: Path) -> None:
    frames = smooth_video(2, 8, 8)
    with pytest.raises(ValueError, match="unsupported video suffix"):
        write_video(frames, tmp_path / "x.avi")
    with pytest.raises(ValueError, match="fps"):
        write_video(frames, tmp_path / "x.mp4", fps=0)


def test_missing_pyav_is_reported_on_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(ImportError, match="pip install av"):
        write_video(smooth_video(2, 8, 8), tmp_path / "x.mp4")
    with pytest.raises(ImportError, match="pip install av"):
        read_video_frames(tmp_path / "x.mp4")


def test_module_imports_without_optional_packages() -> None:
    code = (
        "import sys\n"
        "for name in ('av', 'PIL', 'moviepy'):\n"
        "    sys.modules[name] = None\n"
        "import analysis.video as v\n"
        "import numpy as np\n"
        "g = v.make_grid([np.zeros((1, 2, 2, 3), np.uint8)])\n"
        "try:\n"
        "    v.make_grid([np.zeros((1, 2, 2, 3), np.uint8)], labels=['x'])\n"
        "except ImportError as e:\n"
        "    assert 'pip install pillow' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('expected ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


# --------------------------------------------------------------------------- grid


def test_grid_shape_and_placement() -> None:
    T, H, W, pad = 3, 10, 12, 2
    gt, a, b, c = [smooth_video(T, H, W) // (k + 1) for k in range(4)]
    grid = make_grid([gt, [a, b, c]], pad=pad, pad_value=255)

    assert grid.dtype == np.uint8
    assert grid.shape == (T, 2 * H + 3 * pad, 3 * W + 4 * pad, 3)
    np.testing.assert_array_equal(grid[:, pad : pad + H, pad : pad + W], gt)
    row1 = 2 * pad + H
    for col, clip in enumerate([a, b, c]):
        x = pad + col * (W + pad)
        np.testing.assert_array_equal(grid[:, row1 : row1 + H, x : x + W], clip)
    # Row 0 has one video; the cells to its right are blank padding.
    assert (grid[:, :row1, pad + W :] == 255).all()


def test_grid_scale_is_nearest_neighbour() -> None:
    T, H, W, pad, scale = 2, 5, 7, 1, 3
    clip = smooth_video(T, H, W)
    grid = make_grid([[clip, clip]], pad=pad, scale=scale, pad_value=0)

    assert grid.shape == (T, H * scale + 2 * pad, 2 * W * scale + 3 * pad, 3)
    cell = grid[:, pad : pad + H * scale, pad : pad + W * scale]
    np.testing.assert_array_equal(cell[:, ::scale, ::scale], clip)
    np.testing.assert_array_equal(cell[:, scale - 1 :: scale, scale - 1 :: scale], clip)


def test_grid_without_padding() -> None:
    clip = smooth_video(2, 4, 6)
    grid = make_grid([[clip, clip], [clip]], pad=0)
    assert grid.shape == (2, 8, 12, 3)


def test_grid_labels_form_a_strip_on_the_left() -> None:
    T, H, W, pad, scale = 2, 16, 16, 2, 2
    clip = smooth_video(T, H, W)
    rows = [clip, [clip, clip]]
    plain = make_grid(rows, pad=pad, scale=scale)
    labelled = make_grid(rows, labels=["ground truth", "#1 E=0.123"], pad=pad, scale=scale)

    assert labelled.shape[:2] == plain.shape[:2]
    strip_w = labelled.shape[2] - plain.shape[2]
    assert strip_w > 20  # wide enough for "ground truth" in the default font
    np.testing.assert_array_equal(labelled[:, :, strip_w:], plain)
    strip = labelled[:, :, :strip_w]
    assert (strip[0] == strip[1]).all()  # labels do not change over time
    for r in range(2):
        top = pad + r * (H * scale + pad)
        band = strip[0, top : top + H * scale]
        assert (band < 128).any(), f"no text drawn for row {r}"


def test_grid_label_colour_follows_background() -> None:
    clip = smooth_video(1, 16, 16)
    dark = make_grid([clip], labels=["x"], pad_value=0)
    strip_w = dark.shape[2] - make_grid([clip], pad_value=0).shape[2]
    assert (dark[0, :, :strip_w] > 128).any()  # light text on a dark background


def test_grid_rejects_mismatched_sizes_naming_them() -> None:
    a = smooth_video(3, 10, 12)
    b = smooth_video(3, 10, 13)
    with pytest.raises(ValueError, match=r"3x10x12.*3x10x13"):
        make_grid([a, [a, b]])
    with pytest.raises(ValueError, match=r"4x10x12"):
        make_grid([a, smooth_video(4, 10, 12)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rows": []}, "non-empty"),
        ({"rows": [[]]}, "at least one video"),
        ({"rows": [np.zeros((2, 4, 4, 3), np.float32)]}, "uint8"),
        ({"rows": [np.zeros((2, 4, 4), np.uint8)]}, r"\(T, H, W, 3\)"),
        ({"rows": [np.zeros((2, 4, 4, 3), np.uint8)], "labels": ["a", "b"]}, "labels"),
        ({"rows": [np.zeros((2, 4, 4, 3), np.uint8)], "scale": 0}, "scale"),
        ({"rows": [np.zeros((2, 4, 4, 3), np.uint8)], "pad": -1}, "pad"),
        ({"rows": [np.zeros((2, 4, 4, 3), np.uint8)], "pad_value": 300}, "pad_value"),
    ],
)
def test_grid_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_grid(**kwargs)


def test_grid_to_video_round_trip(tmp_path: Path) -> None:
    clip = smooth_video(5, 21, 21)
    grid = make_grid([clip, [clip, clip]], labels=["ground truth", "#1 E=0.123"], scale=2)
    out = write_video(grid, tmp_path / "grid.mp4")
    back = read_video_frames(out)
    assert back.shape == grid.shape
