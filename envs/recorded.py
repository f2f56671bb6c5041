"""Recorded video as training clips: a folder (searched recursively) of mp4/avi/mov/webm/gif/mkv files.

Each file is one clip. It is decoded with PyAV (every frame, so frame counts are exact; moviepy is used only when
PyAV is not installed), resampled to a target fps by presentation timestamps (each output instant shows the latest
frame at or before it, so variable-frame-rate files come out evenly timed), converted to RGB (grey and palette
formats included), centre-cropped to a square (or squeezed, crop=False) and area-resized to the model's size.

Decoded clips are cached as uint8 .npy files laid out (T, 3, S, S), the layout the model reads, so a training
window is one contiguous copy out of a memmap (no per-window transpose). The cache key is the
file's absolute path, size and mtime plus the decode settings, so an edited file is decoded again; files are
written to temporary names and renamed, the JSON sidecar last, so an interrupted run never leaves an entry that
looks complete. Unreadable files are cached as such (same key) so `on_bad_file=skip` does not retry them every run.

Bad input never surfaces as a decoder traceback: every problem becomes a `VideoError` whose message starts with the
file's path and says what was expected. Files shorter than the training window are dropped and counted, never
padded. A train/validation split is by file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from envs.frames import resize_frames
from envs.sources import SourceData
from envs.storage import DEFAULT_CACHE_DIR, NpyAppender, write_json
from envs.windows import ClipReadError, ClipWindows, split_clip_indices

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".gif", ".mkv", ".m4v")
"""File suffixes (any case) picked up in a folder."""

CACHE_FORMAT = 2
"""Part of the cache key: bump when decoding changes what a file produces."""

_CHUNK = 8
"""Frames resized together: amortises the matrix products without holding many full-size frames."""

_TRUNCATION_TOLERANCE = 0.01
"""A file decoding to fewer frames than its header announces by more than this fraction (and at least one frame)
is reported as truncated. A small shortfall is normal (edit lists, B-frame priming)."""


class VideoError(ValueError):
    """A video file cannot be used; the message starts with its path and says what was expected."""


@dataclass
class VideoReport:
    """What one full decode of a file found (one row of `worldmodel data validate`)."""

    path: Path
    codec: str = "?"
    width: int = 0
    height: int = 0
    fps: float = 0.0
    """Frame rate from the header (average rate), 0 if unknown."""
    header_frames: int = 0
    """Frame count the container announces (0: it does not say, e.g. webm, mkv)."""
    decoded_frames: int = 0
    """Frames that actually decode."""
    variable_fps: bool = False
    """Frame durations differ by more than 10%."""
    problem: str = ""
    """Why the file cannot be used; empty when it can."""

    @property
    def ok(self) -> bool:
        return not self.problem

    def error(self) -> VideoError:
        return VideoError(f"{self.path}: {self.problem}")


@dataclass(frozen=True)
class DecodeSettings:
    """How files become clips (part of the cache key)."""

    image_size: int
    """Output frames are image_size x image_size."""
    fps: float = 0.0
    """Resample to this rate by timestamps (0: keep every decoded frame)."""
    crop: bool = True
    """Centre-crop to a square before resizing (False: squeeze the whole frame)."""

    def validate(self) -> None:
        if not (isinstance(self.image_size, (int, np.integer)) and self.image_size >= 1):
            raise ValueError(f"image_size must be an int >= 1, got {self.image_size!r}")
        if not (isinstance(self.fps, (int, float)) and self.fps >= 0 and np.isfinite(self.fps)):
            raise ValueError(f"fps must be a number >= 0 (0: native frames), got {self.fps!r}")


# --------------------------------------------------------------------------------------------------- finding


def find_videos(root: str | Path) -> list[Path]:
    """Video files under `root` (recursive, symlinked folders not followed), sorted by relative path."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"video folder {root} does not exist")
    if root.is_file():
        if root.suffix.lower() not in VIDEO_SUFFIXES:
            raise VideoError(f"{root}: not a video file; expected a folder or one of {', '.join(VIDEO_SUFFIXES)}")
        return [root]
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if Path(name).suffix.lower() in VIDEO_SUFFIXES:
                found.append(Path(folder) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


# --------------------------------------------------------------------------------------------------- decoding


def _import_av() -> Any | None:
    try:
        import av
    except ImportError:
        return None
    return av


class _Resampler:
    """Turns (timestamp, frame) pairs into evenly spaced output instants, each showing the latest frame at or
    before it (native mode, fps=0: every frame once)."""

    def __init__(self, fps: float) -> None:
        self.step = 1.0 / fps if fps else 0.0
        self.start: float | None = None
        self.count = 0  # output instants emitted
        self.last: tuple[float, Any] | None = None
        self.deltas: list[float] = []

    def _until(self, time: float) -> Iterator[Any]:
        assert self.last is not None and self.start is not None
        while self.start + self.count * self.step < time - 1e-6:
            self.count += 1
            yield self.last[1]

    def push(self, time: float, frame: Any) -> Iterator[Any]:
        if not self.step:
            yield frame
            return
        if self.last is None:
            self.start = time
        else:
            time = max(time, self.last[0])  # non-monotonic timestamps: hold, never go back
            self.deltas.append(time - self.last[0])
            yield from self._until(time)
        self.last = (time, frame)

    def finish(self, last_duration: float) -> Iterator[Any]:
        if not self.step or self.last is None:
            return
        if last_duration <= 0:
            last_duration = float(np.median(self.deltas)) if self.deltas else self.step
        yield from self._until(self.last[0] + max(last_duration, 1e-6))


def _ffmpeg_message(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.split(": '")[0].strip() or type(error).__name__


def _scan_pyav(av: Any, path: Path, report: VideoReport, on_frame: Callable[[float, Any], None] | None) -> float:
    """Decode every frame of `path` into `report`, calling on_frame(time, frame); returns the last frame's
    duration in seconds (0 if unknown). Problems go into report.problem; nothing is raised for bad files."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        report.problem = f"not a readable video file (FFmpeg: {_ffmpeg_message(error)})"
        return 0.0
    last_duration = 0.0
    with container:
        if not container.streams.video:
            report.problem = "contains no video stream"
            return 0.0
        stream = container.streams.video[0]
        # No frame threading: it hides decode errors and silently drops the frames queued around them.
        context = stream.codec_context
        report.codec = context.name if context is not None else "?"
        report.width, report.height = int(stream.width or 0), int(stream.height or 0)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        report.fps = float(rate) if rate else 0.0
        report.header_frames = int(stream.frames or 0)
        times: list[float] = []
        errors: list[BaseException] = []

        def take(frame: Any) -> None:
            nonlocal last_duration
            if frame.time is not None:
                time = float(frame.time)
            else:  # no timestamps (some AVI/raw streams): assume the nominal rate
                time = report.decoded_frames / report.fps if report.fps else float(report.decoded_frames)
            times.append(time)
            report.decoded_frames += 1
            if report.decoded_frames == 1:
                report.width, report.height = frame.width, frame.height
            if on_frame is not None:
                on_frame(time, frame)
            if frame.duration and frame.time_base:
                last_duration = float(frame.duration * frame.time_base)

        # Packet by packet, so one corrupt packet is counted and skipped instead of ending the count there.
        try:
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except (av.FFmpegError, ValueError) as error:
                    errors.append(error)
                    continue
                for frame in decoded:
                    take(frame)
        except (av.FFmpegError, OSError, ValueError) as error:  # the container itself is cut or damaged
            errors.append(error)
        if errors:
            announced = f" of the {report.header_frames} the header announces" if report.header_frames else ""
            report.problem = (
                f"corrupt or truncated: {len(errors)} undecodable packet(s), {report.decoded_frames} frames{announced} "
                f"decode (FFmpeg: {_ffmpeg_message(errors[0])})"
            )
            return last_duration
        deltas = np.diff(np.asarray(times))
        positive = deltas[deltas > 0]
        report.variable_fps = bool(positive.size >= 2 and positive.max() > 1.1 * positive.min())
    _check_counts(report)
    return last_duration


def _scan_moviepy(path: Path, report: VideoReport, on_frame: Callable[[float, Any], None] | None) -> float:
    """Fallback when PyAV is missing: moviepy (ffmpeg subprocess), frame counts from its reader."""
    try:
        from moviepy import VideoFileClip
    except ImportError as error:
        raise ImportError("decoding video needs PyAV (pip install av) or, as a fallback, moviepy") from error
    try:
        clip = VideoFileClip(str(path), audio=False)
    except Exception as error:  # noqa: BLE001 - moviepy raises plain OSError/KeyError/IndexError for bad input
        report.problem = f"not a readable video file (moviepy: {str(error).splitlines()[0] if str(error) else error!r})"
        return 0.0
    try:
        report.codec = str(clip.reader.infos.get("video_codec_name", "?"))
        report.width, report.height = (int(v) for v in clip.size)
        report.fps = float(clip.fps or 0.0)
        report.header_frames = int(getattr(clip.reader, "n_frames", 0) or 0)
        step = 1.0 / report.fps if report.fps else 0.0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for index, frame in enumerate(clip.iter_frames(dtype="uint8")):
                # moviepy pads a short read with the last good frame and only warns: that is truncation, not data.
                if any("bytes wanted but" in str(w.message) for w in caught):
                    report.problem = (
                        f"truncated: the header announces {report.header_frames} frames but only "
                        f"{report.decoded_frames} decode"
                    )
                    return 0.0
                report.decoded_frames += 1
                if on_frame is not None:
                    on_frame(index * step, frame)
    except Exception as error:  # noqa: BLE001
        report.problem = f"decoding failed after {report.decoded_frames} frames (moviepy: {error})"
    finally:
        clip.close()
    if report.ok:
        _check_counts(report)
    return 1.0 / report.fps if report.fps else 0.0


def _check_counts(report: VideoReport) -> None:
    if report.decoded_frames == 0:
        report.problem = "contains no decodable video frames"
        return
    missing = report.header_frames - report.decoded_frames
    if missing >= 1 and missing > _TRUNCATION_TOLERANCE * report.header_frames:
        report.problem = (
            f"truncated: the header announces {report.header_frames} frames but only {report.decoded_frames} decode"
        )


def _scan(path: Path, on_frame: Callable[[float, Any], None] | None) -> tuple[VideoReport, float]:
    report = VideoReport(path=path)
    try:
        size = path.stat().st_size
    except OSError as error:
        report.problem = f"cannot be read ({error.strerror or error})"
        return report, 0.0
    if size == 0:
        report.problem = "is empty (0 bytes); expected a video file"
        return report, 0.0
    av = _import_av()
    if av is None:
        return report, _scan_moviepy(path, report, on_frame)
    return report, _scan_pyav(av, path, report, on_frame)


def inspect_video(path: str | Path) -> VideoReport:
    """Decode every frame of a file (no conversion) and report codec, size, rates, counts and any problem.

    Never raises for a bad file: the problem is in `report.problem`.
    """
    report, _ = _scan(Path(path), None)
    return report


def _to_rgb(frame: Any, reformatter: Any) -> np.ndarray:
    if isinstance(frame, np.ndarray):  # moviepy already hands out RGB arrays
        rgb = frame
    else:
        # Grey, palette (gif), alpha and YUV formats all become RGB. One reformatter per file keeps its swscale
        # context: frame.to_ndarray(format=...) builds a new one per frame, ~8x slower on small frames.
        rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    return np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)


def decode_into(path: str | Path, settings: DecodeSettings, sink: Callable[[np.ndarray], None]) -> VideoReport:
    """Decode, resample, crop/resize a file, handing (k, S, S, 3) uint8 chunks to `sink` in order.

    Raises VideoError (naming the file) if the file is bad; the chunks already handed out are then to be dropped.
    """
    settings.validate()
    path = Path(path)
    resampler = _Resampler(settings.fps)
    av = _import_av()
    reformatter = av.video.reformatter.VideoReformatter() if av is not None else None
    pending: list[np.ndarray] = []
    held: list[Any] = [None, None]  # [frame, its RGB]: a held frame may be emitted several times, convert it once

    def flush() -> None:
        if pending:
            sink(resize_frames(np.stack(pending), settings.image_size, crop=settings.crop))
            pending.clear()

    def emit(frames: Iterator[Any]) -> None:
        for frame in frames:
            if held[0] is not frame:  # identity, not id(): the held reference keeps the frame alive
                held[0], held[1] = frame, _to_rgb(frame, reformatter)
            if pending and pending[0].shape != held[1].shape:
                flush()  # the resolution changed mid-stream: one chunk must share a size
            pending.append(held[1])
            if len(pending) >= _CHUNK:
                flush()

    def on_frame(time: float, frame: Any) -> None:
        emit(resampler.push(time, frame))

    try:
        report, last_duration = _scan(path, on_frame)
        if report.ok:
            emit(resampler.finish(last_duration))
            flush()
    except VideoError:
        raise
    except (ValueError, MemoryError) as error:
        raise VideoError(f"{path}: converting frames failed ({type(error).__name__}: {error})") from error
    if not report.ok:
        raise report.error()
    return report


def decode_video(path: str | Path, settings: DecodeSettings) -> tuple[np.ndarray, VideoReport]:
    """A whole file as (T, S, S, 3) uint8 in memory (see `decode_into`)."""
    chunks: list[np.ndarray] = []
    report = decode_into(path, settings, chunks.append)
    size = settings.image_size
    frames = np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8)
    return frames, report


# --------------------------------------------------------------------------------------------------- cache


@dataclass
class CachedVideo:
    """A decoded file in the cache."""

    path: Path
    """The video file."""
    frames_path: Path
    """Its decoded frames, (length, 3, S, S) uint8 .npy (channels first, see the module docstring)."""
    length: int
    report: VideoReport


def cache_key(path: Path, settings: DecodeSettings) -> str:
    stat = path.stat()
    payload = {
        "format": CACHE_FORMAT,
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "settings": asdict(settings),
        "decoder": "pyav" if _import_av() is not None else "moviepy",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _report_dict(report: VideoReport) -> dict[str, Any]:
    return {**asdict(report), "path": str(report.path)}


def load_or_decode(path: str | Path, settings: DecodeSettings, cache_dir: str | Path) -> CachedVideo:
    """The cached decode of `path` (decoded and cached first when missing or stale). Raises VideoError for a bad
    file, from the cache too when it was found bad before with the same size and mtime."""
    path = Path(path)
    try:
        key = cache_key(path, settings)
    except OSError as error:
        raise VideoError(f"{path}: cannot be read ({error.strerror or error})") from error
    directory = Path(cache_dir) / "recorded"
    frames_path, meta_path = directory / f"{key}.npy", directory / f"{key}.json"
    if meta_path.is_file():
        cached = _load_cached(path, frames_path, meta_path, settings)
        if cached is not None:
            return cached
    directory.mkdir(parents=True, exist_ok=True)
    size = settings.image_size
    try:
        with NpyAppender(frames_path, np.uint8, (3, size, size)) as out:
            report = decode_into(path, settings, lambda chunk: out.append(chunk.transpose(0, 3, 1, 2)))
            length = out.count
    except VideoError as error:
        frames_path.unlink(missing_ok=True)
        write_json(meta_path, {"status": "bad", "problem": str(error).removeprefix(f"{path}: "), "source": str(path)})
        raise
    write_json(meta_path, {"status": "ok", "length": length, "report": _report_dict(report), "source": str(path)})
    return CachedVideo(path=path, frames_path=frames_path, length=length, report=report)


def _load_cached(path: Path, frames_path: Path, meta_path: Path, settings: DecodeSettings) -> CachedVideo | None:
    """The cache entry, or None if it is unreadable (then it is rebuilt: it is derived data)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("status") == "bad":
            raise VideoError(f"{path}: {meta['problem']}")
        length = int(meta["length"])
        frames = np.load(frames_path, mmap_mode="r", allow_pickle=False)
        size = settings.image_size
        if frames.dtype != np.uint8 or frames.shape != (length, 3, size, size):
            return None
        fields = {**meta["report"], "path": path}
        return CachedVideo(path=path, frames_path=frames_path, length=length, report=VideoReport(**fields))
    except VideoError:
        raise
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------- bad files


def check_bad_files(
    bad: list[tuple[Path, str]], total: int, on_bad_file: Literal["error", "skip"], max_bad_fraction: float,
    where: str,
) -> None:
    """Apply the bad-file policy: raise VideoError if any is bad under 'error', or if too many are under 'skip';
    otherwise warn once, naming the skipped files."""
    if not bad:
        return
    listing = "; ".join(f"{path}: {problem}" for path, problem in bad[:10])
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    if on_bad_file == "error":
        raise VideoError(
            f"{len(bad)} of {total} video files under {where} cannot be used (on_bad_file=error; use skip to train "
            f"on the rest): {listing}{more}"
        )
    fraction = len(bad) / max(total, 1)
    if fraction > max_bad_fraction:
        raise VideoError(
            f"{len(bad)} of {total} video files under {where} are unreadable ({fraction:.0%} > max_bad_fraction="
            f"{max_bad_fraction:.0%}): {listing}{more}"
        )
    warnings.warn(f"skipped {len(bad)} of {total} unreadable video files under {where}: {listing}{more}",
                  RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------- the source


class VideoFileStore:
    """ClipStore over cached decodes; each process opens the memmaps lazily (workers included)."""

    def __init__(self, videos: list[CachedVideo]) -> None:
        self.videos = videos
        self.lengths = np.asarray([v.length for v in videos], dtype=np.int64)
        self.names = [str(v.path) for v in videos]
        self._open: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}

    def _frames(self, clip: int) -> np.ndarray:
        frames = self._open.get(clip)
        if frames is None:
            video = self.videos[clip]
            try:
                frames = np.load(video.frames_path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise ClipReadError(
                    f"{video.path}: its decoded cache {video.frames_path} is unreadable ({error}); delete it and "
                    "restart to decode the file again"
                ) from error
            if frames.shape[0] != video.length or frames.dtype != np.uint8:
                raise ClipReadError(
                    f"{video.path}: its decoded cache {video.frames_path} holds {frames.dtype} {frames.shape}, "
                    f"expected {video.length} uint8 frames; delete it and restart"
                )
            self._open[clip] = frames
        return frames

    def read(self, clip: int, start: int, stop: int) -> dict[str, np.ndarray]:
        return {"frames": self._frames(clip)[start:stop]}


@dataclass
class RecordedSource:
    """A folder of videos as clips (one per file), decoded once into the cache."""

    root: str | Path
    """Folder searched recursively (or a single file)."""
    settings: DecodeSettings
    cache_dir: str | Path = DEFAULT_CACHE_DIR
    on_bad_file: Literal["error", "skip"] = "error"
    """error: stop at an unusable file; skip: leave it out (named in a warning), see max_bad_fraction."""
    max_bad_fraction: float = 0.1
    """skip: fail anyway when more than this fraction of the files is unusable."""
    stride: int = 1
    """Windows start every `stride` frames."""
    workers: int = 0
    """Decode threads (0: decode in this thread)."""
    progress: bool = False
    """Show a progress bar while decoding."""
    name: str = field(default="recorded", init=False)

    def scan(self) -> tuple[list[CachedVideo], list[tuple[Path, str]], int]:
        """Decode (or read from cache) every file: (usable videos, bad (path, problem) pairs, files found)."""
        paths = find_videos(self.root)
        if not paths:
            raise VideoError(f"{self.root}: no video files ({', '.join(VIDEO_SUFFIXES)}) found")
        videos: list[CachedVideo] = []
        bad: list[tuple[Path, str]] = []
        with contextlib.closing(self._decode_all(paths)) as results:
            for path, result in zip(paths, results):
                if isinstance(result, CachedVideo):
                    videos.append(result)
                    continue
                if self.on_bad_file == "error":
                    raise VideoError(
                        f"{result} (on_bad_file=error; use on_bad_file=skip to leave unusable files out)"
                    ) from result
                bad.append((path, str(result).removeprefix(f"{path}: ")))
        check_bad_files(bad, len(paths), self.on_bad_file, self.max_bad_fraction, str(self.root))
        return videos, bad, len(paths)

    def _decode_all(self, paths: list[Path]) -> Iterator[CachedVideo | VideoError]:
        def one(path: Path) -> CachedVideo | VideoError:
            try:
                return load_or_decode(path, self.settings, self.cache_dir)
            except VideoError as error:
                return error

        bar = _progress(len(paths), "decode") if self.progress else None
        pool = ThreadPoolExecutor(self.workers) if self.workers > 0 else None
        try:
            results = pool.map(one, paths) if pool is not None else map(one, paths)
            for result in results:
                if bar is not None:
                    bar.update(1)
                yield result
        finally:
            if pool is not None:
                # A raised on_bad_file=error stops here: do not decode the rest of the folder first.
                pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()

    def load(self, *, window: int, val_fraction: float, seed: int) -> SourceData:
        videos, bad, total = self.scan()
        short = [v for v in videos if v.length < window]
        usable = [v for v in videos if v.length >= window]
        if short:
            names = ", ".join(f"{v.path} ({v.length} frames)" for v in short[:10])
            more = f" and {len(short) - 10} more" if len(short) > 10 else ""
            warnings.warn(
                f"dropped {len(short)} of {total} video files shorter than the {window}-frame training window "
                f"(never padded): {names}{more}",
                RuntimeWarning,
                stacklevel=2,
            )
        if len(usable) < 2:
            raise VideoError(
                f"{self.root}: {len(usable)} usable video files (of {total}: {len(bad)} unreadable, {len(short)} "
                f"shorter than the {window}-frame window); a train/validation split by file needs at least 2"
            )
        store = VideoFileStore(usable)
        train_idx, val_idx = split_clip_indices(len(usable), val_fraction, seed)
        frames = int(store.lengths.sum())
        summary = (
            f"recorded {self.root}: {total} files, {len(usable)} used ({frames} frames at "
            f"{self.settings.fps or 'native'} fps), {len(bad)} unreadable skipped, {len(short)} shorter than the "
            f"{window}-frame window dropped; {len(train_idx)} train / {len(val_idx)} val files"
        )
        stats = {"files": total, "used": len(usable), "frames": frames, "skipped_bad": len(bad),
                 "dropped_short": len(short), "train_clips": len(train_idx), "val_clips": len(val_idx)}
        return SourceData(
            train=ClipWindows(store, train_idx, window, self.stride),
            val=ClipWindows(store, val_idx, window, self.stride),
            summary=summary,
            stats=stats,
        )


def _progress(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True)
