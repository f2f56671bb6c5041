"""The demo's videos: sampled futures of two clips in which something happens that the past cannot settle alone.

    fork.mp4       a ball bounces off a rough wall, which turns it one of two ways (a fair coin): the samples
                   should split between the ways after the bounce
    occluder.mp4   a ball goes behind the occluder and the context ends while it is hidden: the samples should bring
                   it out on the far side, about when and where it comes out in the real clip

Each grid, top to bottom: the real clip (context, then the real future with a red border), the decoder applied to
the real frames' representations (what the decoder can show at best), then 8 sampled futures, lowest energy first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envs.physics import BallsConfig
from envs.scenes import generate_fork_scenes
from envs.voe import generate_pairs, voe_config_for
from worldmodel.model import WorldModel

from . import inference
from .futures import write_futures_video
from .multifuture import FuturesConfig, fork_configs, headline_family


def occluder_clip(balls: BallsConfig, memory: int, seed: int) -> tuple[np.ndarray, int]:
    """A clip (T, H, W, 3) of a ball crossing behind the occluder and the frame it is first fully hidden in."""
    voe = voe_config_for(4, memory=memory)
    pairs = generate_pairs(balls, "permanence", 2, seed, voe)
    index = int(np.flatnonzero(pairs.variant == "vanish_occluder")[0])
    return pairs.possible[index], int(pairs.violation_frame[index])


def demo_videos(model: WorldModel, balls: BallsConfig, out: Path, *, window: int, seed: int = 0,
                samples: int = 8) -> list[Path]:
    """Write fork.mp4 and occluder.mp4 (each with a .gif) into `out`; returns the mp4 paths."""
    context = model.config.context_frames
    horizon = min(10, model.config.predictor.max_len - context)
    futures = FuturesConfig(horizon=horizon)
    fork_config = fork_configs(balls, futures, context, horizon)[headline_family(balls, futures)]
    fork = generate_fork_scenes(balls, fork_config, 1, seed=seed)
    paths = [write_futures_video(model, inference.as_frames(fork.realized_clips())[0], context=context,
                                 num_samples=samples, path=out / "fork.mp4", seed=seed, window=window)]
    clip, hidden = occluder_clip(balls.open_scene(), memory=window, seed=seed)
    seen = hidden + 1  # the context ends with the ball out of sight
    paths.append(write_futures_video(model, inference.as_frames(clip[None])[0], context=seen, num_samples=samples,
                                     path=out / "occluder.mp4", seed=seed, window=window))
    return paths
