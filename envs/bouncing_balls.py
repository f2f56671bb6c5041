"""Gymnasium wrapper of the bouncing-balls simulator ("BouncingBalls-v0").

The environment is passive: the world evolves on its own, so the action space is Discrete(1) (one no-op), the
reward is always 0 and episodes never end by themselves (wrap in TimeLimit or pass max_episode_steps to
gymnasium.make). The observation is the rendered frame; `info` carries the ground-truth state for probes.

This is the only module in `envs` that imports gymnasium, and `envs/__init__.py` loads it lazily.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.physics import BallsConfig, BallsSim

ENV_ID = "BouncingBalls-v0"


class BouncingBallsEnv(gymnasium.Env):
    """Observation: uint8 (H, W, 3) frame. Action: Discrete(1), ignored. info: `BallsSim.state()`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, config: BallsConfig | None = None, render_mode: str | None = "rgb_array") -> None:
        if config is None:
            config = BallsConfig()
        if not isinstance(config, BallsConfig):
            raise ValueError(f"config must be a BallsConfig, got {type(config).__name__}")
        config.validate()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.config = config
        self.render_mode = render_mode
        side = config.image_size
        self.observation_space = spaces.Box(low=0, high=255, shape=(side, side, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(1)
        self._sim: BallsSim | None = None
        self._frame: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        super().reset(seed=seed)
        if options:
            raise ValueError(f"options are not supported (the config fixes everything), got {options!r}")
        # The simulator draws from the env's own generator, so reset(seed=s) fixes the whole episode.
        self._sim = BallsSim(self.config, self.np_random)
        self._frame = self._sim.render()
        return self._frame.copy(), self._sim.state()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, np.ndarray]]:
        if self._sim is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an element of {self.action_space} (the no-op 0), got {action!r}")
        self._sim.step()
        self._frame = self._sim.render()
        return self._frame.copy(), 0.0, False, False, self._sim.state()

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        if self._frame is None:
            raise RuntimeError("call reset() before render()")
        return self._frame.copy()


# Re-importing the module (e.g. under importlib.reload) must not trip gymnasium's duplicate-id error.
if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.bouncing_balls:BouncingBallsEnv")
