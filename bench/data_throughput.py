"""Throughput of the recorded-video data path; prints JSON.

Two stages, each at 64x64 and 128x128 and with 0 and 2 CPU workers:

- decode+cache: a folder of mp4 files (H.264, 160x120 source, generated here) decoded, resampled, cropped,
  resized and written to the .npy cache from scratch (workers = decode threads). Rates count source files and
  the frames written to the cache.
- cached loader: shuffled training windows (8 frames: the small preset's context 4 + horizon 4) from the warm cache
  through a torch DataLoader with the trainer's collate, batch 64 (workers = DataLoader worker processes).
  clips/s counts windows, frames/s = windows/s * 8. Goal: >= 20,000 frames/s.

    python bench/data_throughput.py [--files 24] [--frames 96] [--batches 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.recorded import DecodeSettings, RecordedSource  # noqa: E402
from training.data import model_inputs  # noqa: E402

WINDOW = 8
BATCH = 64
GOAL_FRAMES_PER_S = 20_000


def make_videos(folder: Path, files: int, frames: int) -> None:
    import av

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:120, 0:160].astype(np.float32)
    for index in range(files):
        path = folder / f"clip{index:03d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=30)
            stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
            phase = rng.uniform(0, 6.28, size=3)
            for t in range(frames):
                image = np.stack(
                    [128 + 100 * np.sin((x + 2 * t) / 9 + phase[0]), 128 + 100 * np.cos((y - t) / 7 + phase[1]),
                     128 + 60 * np.sin((x + y + 3 * t) / 13 + phase[2])], axis=-1,
                )
                frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)


def bench_decode(folder: Path, cache: Path, size: int, workers: int) -> tuple[dict, RecordedSource]:
    shutil.rmtree(cache, ignore_errors=True)
    source = RecordedSource(folder, DecodeSettings(image_size=size), cache_dir=cache, workers=workers)
    started = time.perf_counter()
    videos, _, total = source.scan()
    seconds = time.perf_counter() - started
    frames = sum(v.length for v in videos)
    return {"seconds": round(seconds, 3), "clips_per_s": round(total / seconds, 2),
            "frames_per_s": round(frames / seconds, 1)}, source


def bench_loader(source: RecordedSource, workers: int, batches: int) -> dict:
    data = source.load(window=WINDOW, val_fraction=0.1, seed=0)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=BATCH, shuffle=True, num_workers=workers, collate_fn=model_inputs,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0), drop_last=True,
    )
    iterator = iter(loader)
    for _ in range(3):  # warm-up: worker start, page cache
        next(iterator)
    windows = 0
    started = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        windows += batch["frames"].shape[0]
    seconds = time.perf_counter() - started
    del iterator
    return {"seconds": round(seconds, 3), "clips_per_s": round(windows / seconds, 1),
            "frames_per_s": round(windows * WINDOW / seconds, 1),
            "meets_goal": windows * WINDOW / seconds >= GOAL_FRAMES_PER_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_avg_1m": os.getloadavg()[0]},
        "setup": {"files": args.files, "frames_per_file": args.frames, "source_size": "160x120 h264 30fps",
                  "window": WINDOW, "batch": BATCH, "goal_cached_frames_per_s": GOAL_FRAMES_PER_S},
        "decode_cache": {}, "cached_loader": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "videos", Path(tmp) / "cache"
        folder.mkdir()
        make_videos(folder, args.files, args.frames)
        for size in (64, 128):
            for workers in (0, 2):
                stats, source = bench_decode(folder, cache, size, workers)
                results["decode_cache"][f"{size}x{size}/workers={workers}"] = stats
            for workers in (0, 2):
                results["cached_loader"][f"{size}x{size}/workers={workers}"] = bench_loader(
                    source, workers, args.batches
                )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
