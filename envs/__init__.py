"""Video sources for the world model: a stochastic bouncing-balls simulator, its clips and datasets.

Only the numpy-only modules are imported eagerly, so `import envs.clips` needs neither torch nor gymnasium;
`BouncingBallsEnv` (gymnasium) and `WindowDataset` / `split_clips` (torch) load on first attribute access.
"""

from __future__ import annotations

from typing import Any

from envs.clips import ClipSet, generate_clips, load_or_generate
from envs.physics import BallsBatch, BallsConfig, BallsSim, Renderer

# name -> module that defines it; imported lazily because those modules pull in gymnasium / torch.
_LAZY = {
    "BouncingBallsEnv": "envs.bouncing_balls",
    "WindowDataset": "envs.dataset",
    "split_clips": "envs.dataset",
}

__all__ = [
    "BallsBatch",
    "BallsConfig",
    "BallsSim",
    "BouncingBallsEnv",
    "ClipSet",
    "Renderer",
    "WindowDataset",
    "generate_clips",
    "load_or_generate",
    "split_clips",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
