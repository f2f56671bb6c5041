"""Recorded video folders: decoding, resampling, caching, windows, and every kind of bad input.

All fixtures are generated here with PyAV: a truncated mp4, a zero-byte file, text renamed to .mp4, a gif, a
greyscale video, odd sizes (83x61), a 1-frame clip, clips shorter than the window, variable frame rate and a file
name with `..` in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from envs.frames import resize_frames  # noqa: E402
from envs.recorded import (  # noqa: E402
    DecodeSettings,
    RecordedSource,
    VideoError,
    decode_video,
    find_videos,
    inspect_video,
    load_or_decode,
)
from envs.windows import ClipReadError  # noqa: E402
from training.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_video(
    path: Path,
    frames: np.ndarray,
    *,
    fps: int = 10,
    codec: str = "libx264",
    pix_fmt: str = "yuv444p",
    times: list[float] | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode (T, H, W, 3) or (T, H, W) uint8 frames; `times` (seconds) gives a variable frame rate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = frames.ndim == 3
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if times is not None:
            stream.time_base = Fraction(1, 1000)
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="gray" if gray else "rgb24")
            if times is not None:
                frame.pts = int(round(times[index] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def solid_frames(values: list[int], height: int = 48, width: int = 64) -> np.ndarray:
    """Frame i is a flat grey of values[i] (easy to identify after lossy coding)."""
    return np.stack([np.full((height, width, 3), v, dtype=np.uint8) for v in values])


def smooth_frames(count: int, height: int, width: int) -> np.ndarray:
    """Smooth colour gradients that move: lossy codecs keep them within a few levels."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        r = 128 + 100 * np.sin((x + 3 * t) / 9.0)
        g = 128 + 100 * np.cos((y - 2 * t) / 7.0)
        b = 128 + 60 * np.sin((x + y + t) / 11.0)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def settings(size: int = 16, fps: float = 0.0) -> DecodeSettings:
    return DecodeSettings(image_size=size, fps=fps)


# --------------------------------------------------------------------------------------------------- bad files


def truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_mp4_with_index_first_is_reported_not_used(tmp_path: Path) -> None:
    # faststart puts the index (moov) first: the header survives and announces 30 frames, the data stops early.
    path = write_video(tmp_path / "truncated.mp4", smooth_frames(30, 48, 64), pix_fmt="yuv420p",
                       container_options={"movflags": "faststart"})
    truncate(path, 0.6)
    report = inspect_video(path)
    assert report.header_frames == 30
    assert 0 < report.decoded_frames < 30
    assert "truncated" in report.problem
    with pytest.raises(VideoError) as caught:
        decode_video(path, settings())
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "avcodec" not in message and "Traceback" not in message


def test_truncated_mp4_with_index_last_is_unreadable(tmp_path: Path) -> None:
    path = truncate(write_video(tmp_path / "cut.mp4", smooth_frames(30, 48, 64), pix_fmt="yuv420p"), 0.6)
    assert inspect_video(path).problem == "not a readable video file (FFmpeg: Invalid data found when processing input)"
    with pytest.raises(VideoError, match=rf"^{path}: not a readable video file"):
        decode_video(path, settings())


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    assert inspect_video(path).problem == "is empty (0 bytes); expected a video file"
    with pytest.raises(VideoError, match=rf"^{path}: is empty \(0 bytes\)"):
        decode_video(path, settings())


def test_text_renamed_to_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("these are not video frames\n" * 50)
    report = inspect_video(path)
    assert report.problem.startswith("not a readable video file (FFmpeg: Invalid data")
    with pytest.raises(VideoError, match=rf"^{path}: not a readable video file"):
        decode_video(path, settings())


def test_bad_file_error_mode_names_the_file(tmp_path: Path) -> None:
    for i in range(3):
        write_video(tmp_path / f"good{i}.mp4", smooth_frames(8, 32, 32))
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01garbage" * 10)
    source = RecordedSource(tmp_path, settings(), cache_dir=tmp_path / "cache", on_bad_file="error")
    with pytest.raises(VideoError) as caught:
        source.load(window=4, val_fraction=0.3, seed=0)
    assert str(caught.value).startswith(str(tmp_path / "broken.mp4"))
    assert "on_bad_file=skip" in str(caught.value)


def test_bad_file_skip_mode_counts_and_limits(tmp_path: Path) -> None:
    for i in range(4):
        write_video(tmp_path / f"good{i}.mp4", smooth_frames(8, 32, 32))
    (tmp_path / "broken.mp4").write_bytes(b"")
    cache = tmp_path / "cache"
    with pytest.warns(RuntimeWarning, match=r"skipped 1 of 5 unreadable video files.*broken\.mp4: is empty"):
        data = RecordedSource(tmp_path, settings(), cache_dir=cache, on_bad_file="skip",
                              max_bad_fraction=0.25).load(window=4, val_fraction=0.25, seed=0)
    assert data.stats["skipped_bad"] == 1 and data.stats["used"] == 4
    assert len(data.train) + len(data.val) == 4 * (8 - 4 + 1)
    # 1 of 5 = 20% > 10%: the run fails, naming the file (the bad verdict comes from the cache this time).
    with pytest.raises(VideoError, match=r"1 of 5 video files .* unreadable \(20% > max_bad_fraction=10%\).*broken"):
        RecordedSource(tmp_path, settings(), cache_dir=cache, on_bad_file="skip",
                       max_bad_fraction=0.1).load(window=4, val_fraction=0.25, seed=0)


# --------------------------------------------------------------------------------------------------- odd but valid


def test_gif_decodes_with_exact_palette_colours(tmp_path: Path) -> None:
    values = [0, 40, 80, 120, 160, 200]
    frames = solid_frames(values, 24, 30)
    frames[:, :, :, 0] = 255 - frames[:, :, :, 0]  # a non-grey colour, exactly representable in a palette
    from PIL import Image

    path = tmp_path / "anim.gif"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    report = inspect_video(path)
    assert (report.codec, report.decoded_frames, report.width, report.height) == ("gif", 6, 30, 24)
    clip, _ = decode_video(path, settings(size=8))
    assert clip.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(clip[:, 0, 0], frames[:, 0, 0])


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    gray = np.stack([np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)) + t for t in range(5)])  # (5, 48, 64)
    path = write_video(tmp_path / "gray.mov", gray, codec="png", pix_fmt="gray")
    assert av.open(str(path)).streams.video[0].codec_context.pix_fmt == "gray"
    clip, report = decode_video(path, settings(size=32))
    assert report.decoded_frames == 5 and clip.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(clip[..., 0], clip[..., 1])
    np.testing.assert_array_equal(clip[..., 0], clip[..., 2])
    # Lossless png: exactly the centre crop of the grey ramp, area-resized.
    expected = resize_frames(np.repeat(gray[..., None], 3, axis=-1), 32, crop=True)
    np.testing.assert_array_equal(clip, expected)


def test_odd_size_is_center_cropped_and_resized(tmp_path: Path) -> None:
    frames = smooth_frames(6, 61, 83)
    path = write_video(tmp_path / "odd.mp4", frames, options={"crf": "0"})
    report = inspect_video(path)
    assert (report.width, report.height, report.decoded_frames) == (83, 61, 6)
    clip, _ = decode_video(path, settings(size=32))
    assert clip.shape == (6, 32, 32, 3)
    expected = resize_frames(frames, 32, crop=True)
    assert np.abs(clip.astype(int) - expected).mean() < 2.0
    squeezed, _ = decode_video(path, DecodeSettings(image_size=32, crop=False))
    assert np.abs(squeezed.astype(int) - resize_frames(frames, 32, crop=False)).mean() < 2.0


def test_one_frame_and_short_clips_are_dropped_and_counted(tmp_path: Path) -> None:
    write_video(tmp_path / "one.mp4", smooth_frames(1, 32, 32))
    write_video(tmp_path / "three.mp4", smooth_frames(3, 32, 32))
    for i, length in enumerate((9, 7, 6)):
        write_video(tmp_path / f"long{i}.mp4", smooth_frames(length, 32, 32))
    assert inspect_video(tmp_path / "one.mp4").decoded_frames == 1
    with pytest.warns(RuntimeWarning) as record:
        data = RecordedSource(tmp_path, settings(), cache_dir=tmp_path / "cache").load(
            window=6, val_fraction=0.3, seed=0
        )
    message = " ".join(str(w.message) for w in record)
    assert "dropped 2 of 5 video files shorter than the 6-frame training window (never padded)" in message
    assert "one.mp4 (1 frames)" in message and "three.mp4 (3 frames)" in message
    assert data.stats["dropped_short"] == 2
    # Never padded: exactly the windows that fit inside the three long files.
    assert len(data.train) + len(data.val) == (9 - 5) + (7 - 5) + (6 - 5)
    for dataset in (data.train, data.val):
        for i in range(len(dataset)):
            clip, start = dataset.index_of(i)
            assert start + 6 <= dataset.store.lengths[clip]


def test_variable_frame_rate_is_resampled_by_timestamps(tmp_path: Path) -> None:
    times = [0.0, 0.1, 0.15, 0.4, 0.5, 0.9]
    values = [10, 50, 90, 130, 170, 210]
    path = write_video(tmp_path / "vfr.mkv", solid_frames(values, 32, 32), codec="ffv1", pix_fmt="bgr0",
                       times=times)
    report = inspect_video(path)
    assert report.variable_fps and report.decoded_frames == 6
    native, _ = decode_video(path, settings(size=8))
    assert native[:, 0, 0, 0].tolist() == values
    clip, _ = decode_video(path, settings(size=8, fps=10))
    # Instant k/10 s shows the latest frame at or before it; the last frame lasts its ~0.1 s duration.
    expected = [10, 50, 90, 90, 130, 170, 170, 170, 170, 210]
    assert clip[:, 0, 0, 0].tolist() == expected
    half, _ = decode_video(path, settings(size=8, fps=5))
    assert half[:, 0, 0, 0].tolist() == [10, 90, 130, 170, 170]  # instants 0, .2, .4, .6, .8 s


def test_file_names_with_dotdot(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    odd = write_video(root / "a..b" / "..clip..final.mp4", smooth_frames(7, 32, 32))
    plain = write_video(root / "plain.mp4", smooth_frames(7, 32, 32))
    assert find_videos(root) == [odd, plain]
    data = RecordedSource(root, settings(), cache_dir=tmp_path / "cache").load(window=4, val_fraction=0.5, seed=0)
    assert sorted(data.train.store.names) == sorted([str(odd), str(plain)])
    # The cache lives under the cache folder whatever the name: nothing written next to or above the videos.
    assert sorted(p.name for p in root.rglob("*")) == ["..clip..final.mp4", "a..b", "plain.mp4"]


def test_find_videos_is_recursive_and_sorted(tmp_path: Path) -> None:
    for name in ("b/z.webm", "a/y.MOV", "c.avi", "d.gif", "notes.txt", "e.mp4.part"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_videos(tmp_path)] == [
        "a/y.MOV", "b/z.webm", "c.avi", "d.gif"
    ]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_videos(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------- cache + loader


def test_cache_is_reused_and_invalidated_by_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_video(tmp_path / "clip.mp4", smooth_frames(8, 32, 32))
    cache = tmp_path / "cache"
    first = load_or_decode(path, settings(), cache)
    assert first.length == 8 and first.frames_path.is_file()
    assert not list((cache / "recorded").glob("*.tmp"))
    direct, _ = decode_video(path, settings())
    np.testing.assert_array_equal(np.load(first.frames_path), direct.transpose(0, 3, 1, 2))  # cached channels first

    import envs.recorded as recorded

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(recorded, "decode_into", no_decoding)
    assert load_or_decode(path, settings(), cache).frames_path == first.frames_path
    monkeypatch.undo()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "edited": new key, decoded again
    second = load_or_decode(path, settings(), cache)
    assert second.frames_path != first.frames_path


def test_windows_and_split_by_file(tmp_path: Path) -> None:
    values = [[10 * f + i for i in range(9)] for f in range(6)]
    for f, vals in enumerate(values):
        write_video(tmp_path / f"f{f}.mkv", solid_frames(vals, 16, 16), codec="ffv1", pix_fmt="bgr0")
    data = RecordedSource(tmp_path, settings(size=16), cache_dir=tmp_path / "cache", stride=2).load(
        window=5, val_fraction=0.34, seed=3
    )
    train_files = {data.train.store.names[c] for c in data.train.clips}
    val_files = {data.val.store.names[c] for c in data.val.clips}
    assert len(val_files) == 2 and len(train_files) == 4 and not train_files & val_files
    assert len(data.train) == 4 * 3  # starts 0, 2, 4 in each 9-frame file
    item = data.train[4]
    clip, start = data.train.index_of(4)
    file_index = int(Path(data.train.store.names[clip]).stem[1:])
    assert item["frames"].shape == (5, 3, 16, 16) and item["frames"].dtype == torch.uint8
    assert item["frames"][:, 0, 0, 0].tolist() == values[file_index][start : start + 5]
    assert "actions" not in item


def test_dataloader_worker_error_names_the_file(tmp_path: Path) -> None:
    for i in range(2):
        write_video(tmp_path / f"clip{i}.mp4", smooth_frames(6, 32, 32))
    data = RecordedSource(tmp_path, settings(), cache_dir=tmp_path / "cache").load(window=4, val_fraction=0.5, seed=0)
    store = data.train.store
    broken = store.videos[int(data.train.clips[0])]
    broken.frames_path.write_bytes(broken.frames_path.read_bytes()[:200])  # cache truncated under our feet
    loader = torch.utils.data.DataLoader(data.train, batch_size=2, num_workers=1)
    with pytest.raises(ClipReadError) as caught:
        next(iter(loader))
    assert str(broken.path) in str(caught.value) and "unreadable" in str(caught.value)


def test_moviepy_fallback_matches_pyav(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("moviepy")
    path = write_video(tmp_path / "clip.mp4", smooth_frames(7, 32, 48))
    with_av, _ = decode_video(path, settings())
    import envs.recorded as recorded

    monkeypatch.setattr(recorded, "_import_av", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fallback, report = decode_video(path, settings())
    assert report.decoded_frames == 7 and fallback.shape == with_av.shape
    assert np.abs(fallback.astype(int) - with_av).mean() < 3.0


# --------------------------------------------------------------------------------------------------- CLI + training


def test_validate_prints_table_and_fails_on_bad(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_video(tmp_path / "good.mp4", smooth_frames(8, 32, 32))
    write_video(tmp_path / "one.mp4", smooth_frames(1, 32, 32))
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert main(["data", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].split() == ["path", "codec", "WxH", "fps", "frames", "(header/decoded)", "status"]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert rows["good.mp4"].split()[1:5] == ["h264", "32x32", "10.00", "8/8"]
    assert rows["good.mp4"].rstrip().endswith("ok")
    assert "BAD: is empty (0 bytes)" in rows["empty.mp4"]
    assert "short: 1 frame" in rows["one.mp4"]
    assert "3 files: 1 ok, 1 short (< 2 frames), 1 bad (33%)" in out.out
    assert "1 of 3 files are unusable" in out.err
    assert main(["data", "validate", str(tmp_path), "--on-bad-file", "skip", "--max-bad-fraction", "0.5"]) == 0
    assert main(["data", "validate", str(tmp_path), "--on-bad-file", "skip"]) == 1


@pytest.mark.slow
def test_train_end_to_end_on_recorded_folder(tmp_path: Path) -> None:
    from envs.clips import generate_clips
    from envs.physics import BallsConfig

    clips = generate_clips(BallsConfig(image_size=40, max_balls=2), 6, 12, seed=5)
    videos = tmp_path / "videos"
    for i, clip in enumerate(clips.frames):
        # Simulator clips written as real mp4 files (40x40: the source must resize them to the model's 32).
        write_video(videos / f"part{i % 2}" / f"clip{i}.mp4", clip, pix_fmt="yuv420p")
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "training.cli", "train", "--preset", "debug", "data.source=recorded",
        f"data.path={videos}", f"data.cache_dir={tmp_path / 'cache'}", f"run.out_dir={out}", "run.steps=4",
        "run.log_every=2", "run.tracking=none", "run.sample_video=false", "run.progress=false", "data.batch_size=8",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: recorded" in result.stdout and "6 used" in result.stdout
    assert (out / "model" / "model.safetensors").is_file()
    line = next(l for l in result.stdout.splitlines() if l.startswith("validation: prediction error"))
    assert np.isfinite(float(line.split()[3]))
    # Sampled futures come from the run's own held-out videos, or from any video file given.
    sample = [sys.executable, "-m", "training.cli", "sample", "--checkpoint", str(out), "--clips", "2",
              "--num-samples", "3", "--out", str(tmp_path / "samples")]
    result = subprocess.run(sample, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("validation clip") == 2 and "simulator" not in result.stdout
    assert (tmp_path / "samples" / "futures-001.mp4").is_file()
    held_out = write_video(tmp_path / "other" / "new.mp4", clips.frames[0], pix_fmt="yuv420p")
    short = write_video(tmp_path / "other" / "short.mp4", clips.frames[1][:4], pix_fmt="yuv420p")
    result = subprocess.run([*sample, "--video", str(held_out), "--start", "2"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and f"{held_out}: wrote" in result.stdout, result.stderr[-3000:]
    result = subprocess.run([*sample, "--video", str(short)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and str(short) in result.stderr and "4 frames" in result.stderr
    # The analysis suites drive the simulator; for a model of other video they say so.
    futures = [sys.executable, "-m", "training.cli", "futures", "--checkpoint", str(out), "--scenes", "2", "--samples",
               "5", "--horizon", "4", "--probe-clips", "8", "--no-mlflow", "--threads", "1", "--out",
               str(tmp_path / "futures")]
    result = subprocess.run(futures, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data.source=recorded" in result.stderr and "transfers" in result.stderr
