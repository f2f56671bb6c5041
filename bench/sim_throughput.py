"""Single-core throughput of the bouncing-balls video source, printed as one JSON object.

Measures frames/s (physics step + render) on one CPU core for several scenes, on the two paths that produce
frames: `generate_clips` (batched, what datasets are built with; the target is >= 5,000 frames/s at 64x64 with
3 balls) and `BallsSim` step + render one frame at a time (what the gym env does).

    .venv/bin/python bench/sim_throughput.py [--frames 16384] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# numpy reads thread counts at import, so these must be set before it loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from envs.clips import generate_clips  # noqa: E402
from envs.physics import BallsConfig, BallsSim  # noqa: E402

CLIP_LENGTH = 32
"""Frames per clip on the clip path (a typical training clip length)."""


def pin_to_one_core() -> int | None:
    """Restrict this process to one CPU so the number means 'per core'; returns that core, or None if unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def clips_fps(config: BallsConfig, frames: int, repeats: int) -> float:
    """Best of `repeats`: the first generation of a big set also pays the OS for fresh pages, which is noise here."""
    num_clips = max(1, frames // CLIP_LENGTH)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        clips = generate_clips(config, num_clips, CLIP_LENGTH, seed=0)
        best = max(best, num_clips * CLIP_LENGTH / (time.perf_counter() - start))
        del clips
    return best


def sim_fps(config: BallsConfig, frames: int, repeats: int) -> float:
    sim = BallsSim(config, np.random.default_rng(0))
    out = np.empty((config.image_size, config.image_size, 3), dtype=np.uint8)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(frames):
            sim.step()
            sim.render(out)
        best = max(best, frames / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16384, help="frames timed per scene and path")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the best is reported")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    core = pin_to_one_core()
    try:
        import torch  # only to pin its pool; the simulator itself never uses torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    scenes = {
        "1ball": BallsConfig(image_size=args.size, min_balls=1, max_balls=1),
        "3balls": BallsConfig(image_size=args.size, min_balls=3, max_balls=3),
        "3balls_gravity_occluder": BallsConfig(
            image_size=args.size, min_balls=3, max_balls=3, gravity=0.002, occluder=True
        ),
    }
    result: dict[str, object] = {
        "bench": "sim_throughput",
        "image_size": args.size,
        "frames_per_scene": args.frames,
        "repeats": args.repeats,
        "clip_length": CLIP_LENGTH,
        "pinned_core": core,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for name, config in scenes.items():
        result[f"clips_fps_{name}"] = round(clips_fps(config, args.frames, args.repeats), 1)
    # The per-frame path is several times slower, so it gets fewer frames to keep the whole run short.
    for name, config in scenes.items():
        result[f"sim_fps_{name}"] = round(sim_fps(config, max(1, args.frames // 8), args.repeats), 1)
    result["target_fps"] = 5000
    result["meets_target"] = bool(result["clips_fps_3balls"] >= 5000)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
