"""Record video clips from any gymnasium environment: frames + actions + rewards + terminations + low-dim state.

`record(spec, out_dir)` runs `spec.episodes` episodes of `spec.env_id` with `render_mode="rgb_array"` under a
random or scripted policy, in a `gymnasium.make_vec` vector env (async worker processes render and resize in
parallel), and streams them to `out_dir`:

    meta.json             the spec, the action encoding, counts (written last: its presence marks a complete recording)
    frames.npy            (F, S, S, 3) uint8   every episode's frames back to back, resized to S x S
    actions.npy           (F, A) float32       actions[t]: the action taken after frame t, encoded (see below);
                                               zeros on an episode's last frame (no action follows it)
    rewards.npy           (F,) float32         reward received on arriving at frame t (0 on a first frame)
    terminated.npy        (F,) bool            frame t is a terminal state of the MDP
    truncated.npy         (F,) bool            the episode was cut at frame t (time limit)
    observations.npy      (F, O) float32       the env's observation at frame t, flattened: ground-truth state
    episode_starts.npy    (E+1,) int64         episode e is frames episode_starts[e] : episode_starts[e+1]

Action encoding (width A = `action_dim`): Discrete(n) one-hot of size n; Box flattened floats as the env takes them;
MultiDiscrete concatenated one-hots; MultiBinary floats. With `frame_skip` k each recorded frame is k env steps
under the same action (rewards summed), which makes the action's effect visible from one frame to the next.

Episode e is a function of (spec, e) alone: its env seed and its policy's draws come from
SeedSequence(seed, spawn_key=(e,)), so recordings are identical for any number of vector envs and sync/async.
Episodes are separate clips downstream (`GymSource`): a training window never spans two episodes.

gymnasium (and pygame for classic control, mujoco for MuJoCo envs) is imported here, lazily from `envs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from envs.frames import resize_frames
from envs.sources import SourceData
from envs.storage import DEFAULT_CACHE_DIR, NpyAppender, write_json, write_npy
from envs.windows import ClipWindows, split_clip_indices

FORMAT = 1
"""Recording format version, part of meta.json and of the cache key."""

_ARRAYS = ("frames", "actions", "rewards", "terminated", "truncated", "observations")
_MAX_STATE_DIM = 4096
"""Observations wider than this (pixel observations) are not kept as state."""


def require_gymnasium() -> Any:
    """The gymnasium module, set up to render headless; ImportError with the pip line when it is missing."""
    # Classic-control envs render with pygame; without a display it must use SDL's dummy video driver.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    if "DISPLAY" not in os.environ:
        # MuJoCo's default GLFW backend needs a display; EGL renders headless.
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import gymnasium
    except ImportError as error:
        raise ImportError("recording gym video needs gymnasium: pip install 'gymnasium[classic-control]'") from error
    return gymnasium


@dataclass(frozen=True)
class GymRecordingSpec:
    """Everything that determines a recording's content."""

    env_id: str = "CartPole-v1"
    """Any registered gymnasium id with an rgb_array render mode."""
    episodes: int = 200
    """Number of episodes (each one a clip)."""
    seed: int = 0
    """Root seed; episode e uses SeedSequence(seed, spawn_key=(e,))."""
    image_size: int = 64
    """Frames are resized (whole frame, area interpolation) to image_size x image_size."""
    policy: Literal["random", "scripted"] = "random"
    """random: uniform actions; scripted: a hand-written controller (CartPole, Pendulum, Acrobot, MountainCar)
    taking a uniformly random action 20% of the time."""
    frame_skip: int = 1
    """Env steps per recorded frame, the action held throughout."""
    max_episode_steps: int = 0
    """Time limit in env steps (0: the env's registered limit)."""

    def validate(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"env_id must be a gymnasium environment id, got {self.env_id!r}")
        for name, low in (("episodes", 1), ("image_size", 1), ("frame_skip", 1), ("max_episode_steps", 0),
                          ("seed", 0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.policy not in ("random", "scripted"):
            raise ValueError(f"policy must be 'random' or 'scripted', got {self.policy!r}")

    def key(self) -> str:
        text = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- actions


class ActionCodec:
    """Encodes an env's actions as float vectors and draws uniform random actions from a numpy generator."""

    def __init__(self, space: Any) -> None:
        spaces = require_gymnasium().spaces
        self.space = space
        if isinstance(space, spaces.Discrete):
            self.kind, self.dim = "discrete", int(space.n)
        elif isinstance(space, spaces.Box):
            self.kind, self.dim = "box", int(np.prod(space.shape))
        elif isinstance(space, spaces.MultiDiscrete):
            self.kind, self.dim = "multi_discrete", int(np.sum(space.nvec))
        elif isinstance(space, spaces.MultiBinary):
            self.kind, self.dim = "multi_binary", int(np.prod(space.shape))
        else:
            raise ValueError(
                f"action space {space} is not supported; expected Discrete, Box, MultiDiscrete or MultiBinary"
            )

    def describe(self) -> dict[str, Any]:
        return {"space": str(self.space), "kind": self.kind, "dim": self.dim}

    def sample(self, rng: np.random.Generator) -> Any:
        space = self.space
        if self.kind == "discrete":
            return int(space.start + rng.integers(space.n))
        if self.kind == "box":
            low, high = np.broadcast_to(space.low, space.shape), np.broadcast_to(space.high, space.shape)
            bounded = np.isfinite(low) & np.isfinite(high)
            value = np.where(bounded, rng.uniform(np.where(bounded, low, 0), np.where(bounded, high, 1)),
                             rng.standard_normal(space.shape))
            return value.astype(space.dtype)
        if self.kind == "multi_discrete":
            return (space.start + rng.integers(space.nvec)).astype(space.dtype)
        return rng.integers(0, 2, size=space.shape).astype(space.dtype)

    def encode(self, action: Any) -> np.ndarray:
        space = self.space
        if self.kind == "discrete":
            out = np.zeros(self.dim, dtype=np.float32)
            out[int(action) - int(space.start)] = 1.0
            return out
        if self.kind == "multi_discrete":
            nvec = np.asarray(space.nvec).reshape(-1)
            index = (np.asarray(action) - np.asarray(space.start)).reshape(-1)
            out = np.zeros(self.dim, dtype=np.float32)
            out[np.concatenate([[0], np.cumsum(nvec)[:-1]]) + index] = 1.0
            return out
        return np.asarray(action, dtype=np.float32).reshape(-1)

    def batch(self, actions: list[Any]) -> Any:
        """Per-env actions -> the vector env's batched action."""
        if self.kind == "discrete":
            return np.asarray(actions, dtype=np.int64)
        return np.stack([np.asarray(a, dtype=self.space.dtype) for a in actions])


# --------------------------------------------------------------------------------------------------- policies


def _cartpole(obs: np.ndarray, codec: ActionCodec) -> Any:
    x, x_dot, theta, theta_dot = obs[:4]
    return int(theta + 0.5 * theta_dot + 0.02 * x + 0.1 * x_dot > 0)


def _pendulum(obs: np.ndarray, codec: ActionCodec) -> Any:
    cos, sin, speed = obs[:3]
    angle = np.arctan2(sin, cos)
    # Pump energy with the swing until near the top, then a PD controller holds it up.
    torque = -10.0 * angle - 2.0 * speed if cos > 0.85 else 2.0 * np.sign(speed or 1.0)
    return np.clip(np.array([torque], dtype=np.float32), -2.0, 2.0)


def _acrobot(obs: np.ndarray, codec: ActionCodec) -> Any:
    return 2 if obs[5] >= 0 else 0  # torque with the second joint's swing pumps energy in


def _mountain_car(obs: np.ndarray, codec: ActionCodec) -> Any:
    if codec.kind == "box":
        return np.array([1.0 if obs[1] >= 0 else -1.0], dtype=np.float32)
    return 2 if obs[1] >= 0 else 0  # push along the velocity: builds up the swing


SCRIPTED: dict[str, Callable[[np.ndarray, ActionCodec], Any]] = {
    "CartPole": _cartpole,
    "Pendulum": _pendulum,
    "Acrobot": _acrobot,
    "MountainCar": _mountain_car,
    "MountainCarContinuous": _mountain_car,
}
"""Scripted controllers by env name (the id without its version)."""

SCRIPTED_EPSILON = 0.2
"""Probability that the scripted policy takes a uniformly random action instead (keeps actions informative)."""


def _base_name(env_id: str) -> str:
    return env_id.split("/")[-1].rsplit("-v", 1)[0]


class _Policy:
    def __init__(self, spec: GymRecordingSpec, codec: ActionCodec) -> None:
        self.codec = codec
        self.scripted = None
        if spec.policy == "scripted":
            self.scripted = SCRIPTED.get(_base_name(spec.env_id))
            if self.scripted is None:
                raise ValueError(
                    f"no scripted policy for {spec.env_id}; available for {sorted(SCRIPTED)}; use policy=random"
                )

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> Any:
        if self.scripted is None:
            return self.codec.sample(rng)
        # Both draws every step, so the random stream does not depend on which branch was taken.
        explore, random_action = rng.random(), self.codec.sample(rng)
        return random_action if explore < SCRIPTED_EPSILON else self.scripted(obs, self.codec)


def episode_rng(seed: int, episode: int) -> tuple[int, np.random.Generator]:
    """(env reset seed, policy generator) of one episode."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(episode,)))
    return int(rng.integers(2**31 - 1)), rng


# --------------------------------------------------------------------------------------------------- the env side


def _frame_observation(env: Any, *, image_size: int, frame_skip: int) -> Any:
    """Wraps one env so that reset/step return {"state": flat float32 obs, "pixels": resized frame}."""
    gym = require_gymnasium()

    class FrameObservation(gym.Wrapper):
        def __init__(self, inner: Any) -> None:
            super().__init__(inner)
            flat = gym.spaces.flatten_space(inner.observation_space)
            self._flatten = flat.shape[0] <= _MAX_STATE_DIM
            state_dim = flat.shape[0] if self._flatten else 0
            self.observation_space = gym.spaces.Dict(
                {
                    "state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
                    "pixels": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                }
            )

        def _observe(self, obs: Any) -> dict[str, np.ndarray]:
            frame = self.env.render()
            if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[-1] in (3, 4)):
                raise ValueError(
                    f"{self.env.spec.id if self.env.spec else self.env}: render() returned "
                    f"{getattr(frame, 'shape', type(frame))}, expected an (H, W, 3) rgb_array"
                )
            frame = np.asarray(frame[..., :3], dtype=np.uint8)
            state = (
                gym.spaces.flatten(self.env.observation_space, obs).astype(np.float32)
                if self._flatten
                else np.zeros(0, np.float32)
            )
            return {"state": state, "pixels": resize_frames(frame, image_size, crop=False)}

        def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict]:
            obs, info = self.env.reset(**kwargs)
            return self._observe(obs), info

        def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
            total = 0.0
            for _ in range(frame_skip):
                obs, reward, terminated, truncated, info = self.env.step(action)
                total += float(reward)
                if terminated or truncated:
                    break
            return self._observe(obs), total, bool(terminated), bool(truncated), info

    return FrameObservation(env)


def make_vector_env(spec: GymRecordingSpec, num_envs: int, mode: Literal["sync", "async"]) -> Any:
    """The vector env a recording runs in; errors name the env id and what is missing."""
    gym = require_gymnasium()
    kwargs: dict[str, Any] = {"render_mode": "rgb_array"}
    if spec.max_episode_steps:
        kwargs["max_episode_steps"] = spec.max_episode_steps
    try:
        registered = gym.spec(spec.env_id)
    except gym.error.Error as error:
        raise ValueError(f"unknown gymnasium env id {spec.env_id!r}: {error}") from error
    try:
        probe = gym.make(spec.env_id, **kwargs)
    except gym.error.DependencyNotInstalled as error:
        extra = "mujoco" if "mujoco" in str(registered.entry_point).lower() else "classic-control"
        raise ImportError(f"{spec.env_id} needs extra packages: pip install 'gymnasium[{extra}]' ({error})") from error
    try:
        if "rgb_array" not in probe.metadata.get("render_modes", []):
            raise ValueError(f"{spec.env_id} cannot render rgb_array frames (render_modes {probe.metadata})")
    finally:
        probe.close()
    wrapper = partial(_frame_observation, image_size=spec.image_size, frame_skip=spec.frame_skip)
    return gym.make_vec(
        spec.env_id,
        num_envs=num_envs,
        vectorization_mode=mode,
        # We reset finished sub-envs ourselves, each with its episode's seed.
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED},
        wrappers=[wrapper],
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------- recording


@dataclass
class _Episode:
    index: int
    rng: np.random.Generator
    frames: list[np.ndarray] = field(default_factory=list)
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)

    def arrive(self, pixels: np.ndarray, state: np.ndarray, reward: float, terminated: bool, truncated: bool) -> None:
        # Copies: the vector env reuses its observation buffers on the next step.
        self.frames.append(np.array(pixels, dtype=np.uint8))
        self.observations.append(np.array(state, dtype=np.float32))
        self.rewards.append(reward)
        self.terminated.append(terminated)
        self.truncated.append(truncated)

    def arrays(self, action_dim: int) -> dict[str, np.ndarray]:
        actions = np.zeros((len(self.frames), action_dim), dtype=np.float32)
        if self.actions:
            actions[: len(self.actions)] = np.stack(self.actions)
        return {
            "frames": np.stack(self.frames),
            "actions": actions,
            "rewards": np.asarray(self.rewards, dtype=np.float32),
            "terminated": np.asarray(self.terminated, dtype=bool),
            "truncated": np.asarray(self.truncated, dtype=bool),
            "observations": np.stack(self.observations).astype(np.float32),
        }


def record(
    spec: GymRecordingSpec,
    out_dir: str | Path,
    *,
    num_envs: int = 4,
    vectorization: Literal["sync", "async"] = "sync",
    progress: Callable[[int], None] | None = None,
) -> "GymRecording":
    """Record `spec.episodes` episodes into `out_dir` (see the module docstring); returns the loaded recording.

    `progress(n)` is called with the number of newly finished episodes. The content does not depend on
    num_envs or vectorization (async: one worker process per env, rendering and resizing in parallel).
    """
    spec.validate()
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    num_envs = min(num_envs, spec.episodes)
    envs = make_vector_env(spec, num_envs, vectorization)
    writers: dict[str, NpyAppender] = {}
    try:
        codec = ActionCodec(envs.single_action_space)
        policy = _Policy(spec, codec)
        state_dim = int(envs.single_observation_space["state"].shape[0])
        writers = {
            "frames": NpyAppender(out_dir / "frames.npy", np.uint8, (spec.image_size, spec.image_size, 3)),
            "actions": NpyAppender(out_dir / "actions.npy", np.float32, (codec.dim,)),
            "rewards": NpyAppender(out_dir / "rewards.npy", np.float32, ()),
            "terminated": NpyAppender(out_dir / "terminated.npy", bool, ()),
            "truncated": NpyAppender(out_dir / "truncated.npy", bool, ()),
            "observations": NpyAppender(out_dir / "observations.npy", np.float32, (state_dim,)),
        }
        starts = _run_episodes(spec, envs, num_envs, codec, policy, writers, progress)
        for writer in writers.values():
            writer.close()
        write_npy(out_dir / "episode_starts.npy", np.asarray(starts, dtype=np.int64))
        meta = {
            "format": FORMAT,
            "spec": asdict(spec),
            "key": spec.key(),
            "action": codec.describe(),
            "action_dim": codec.dim,
            "state_dim": state_dim,
            "episodes": spec.episodes,
            "frames": int(starts[-1]),
            "render_fps": envs.metadata.get("render_fps"),
        }
        write_json(out_dir / "meta.json", meta)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        envs.close()
    return load_recording(out_dir)


def _run_episodes(
    spec: GymRecordingSpec,
    envs: Any,
    num_envs: int,
    codec: ActionCodec,
    policy: _Policy,
    writers: dict[str, NpyAppender],
    progress: Callable[[int], None] | None,
) -> list[int]:
    """Step the vector env until every episode is done; finished episodes are written in index order."""
    next_episode = 0
    slots: list[_Episode | None] = []
    seeds: list[int | None] = []
    for _ in range(num_envs):
        env_seed, rng = episode_rng(spec.seed, next_episode)
        slots.append(_Episode(next_episode, rng))
        seeds.append(env_seed)
        next_episode += 1
    obs, _ = envs.reset(seed=seeds)
    for slot, episode in enumerate(slots):
        episode.arrive(obs["pixels"][slot], obs["state"][slot], 0.0, False, False)

    finished: dict[int, _Episode] = {}
    starts, written = [0], 0
    idle_rng = np.random.default_rng(0)  # actions of sub-envs with no episode left (their output is dropped)
    while any(episode is not None for episode in slots):
        actions = [
            policy(episode.observations[-1], episode.rng) if episode is not None else codec.sample(idle_rng)
            for episode in slots
        ]
        obs, rewards, terminations, truncations, _ = envs.step(codec.batch(actions))
        reset_mask = np.zeros(num_envs, dtype=bool)
        reset_seeds: list[int | None] = [None] * num_envs
        for slot, episode in enumerate(slots):
            if episode is None:
                reset_mask[slot] = bool(terminations[slot] or truncations[slot])
                continue
            episode.actions.append(codec.encode(actions[slot]))
            episode.arrive(
                obs["pixels"][slot], obs["state"][slot], float(rewards[slot]),
                bool(terminations[slot]), bool(truncations[slot]),
            )
            if not (terminations[slot] or truncations[slot]):
                continue
            finished[episode.index] = episode
            reset_mask[slot] = True
            if next_episode < spec.episodes:
                reset_seeds[slot], rng = episode_rng(spec.seed, next_episode)
                slots[slot] = _Episode(next_episode, rng)
                next_episode += 1
            else:
                slots[slot] = None
        if reset_mask.any():
            obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": reset_mask})
            for slot in np.flatnonzero(reset_mask):
                episode = slots[slot]
                if episode is not None and not episode.frames:
                    episode.arrive(obs["pixels"][slot], obs["state"][slot], 0.0, False, False)
        while written in finished:
            arrays = finished.pop(written).arrays(codec.dim)
            for name in _ARRAYS:
                writers[name].append(arrays[name])
            starts.append(starts[-1] + len(arrays["frames"]))
            written += 1
            if progress is not None:
                progress(1)
    return starts


# --------------------------------------------------------------------------------------------------- reading


@dataclass
class GymRecording:
    """A recording on disk; arrays are read-only memmaps (see the module docstring for their layout)."""

    directory: Path
    meta: dict[str, Any]
    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    observations: np.ndarray
    episode_starts: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """(E,) frames per episode."""
        return np.diff(self.episode_starts)

    @property
    def action_dim(self) -> int:
        return int(self.meta["action_dim"])

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """All arrays of one episode."""
        lo, hi = int(self.episode_starts[index]), int(self.episode_starts[index + 1])
        return {name: getattr(self, name)[lo:hi] for name in _ARRAYS}


def load_recording(directory: str | Path) -> GymRecording:
    """Open a recording written by `record`; a missing or inconsistent file is named in the error."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a complete gym recording (no meta.json); record one with "
            f"`worldmodel data gym --env ENV --out {directory}`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{meta_path}: unreadable ({error})") from error
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: recording format {meta.get('format')!r}, this version reads {FORMAT}")
    arrays: dict[str, np.ndarray] = {}
    for name in (*_ARRAYS, "episode_starts"):
        path = directory / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable ({error}); re-record {directory}") from error
    total = int(meta["frames"])
    starts = arrays["episode_starts"]
    if starts.shape != (int(meta["episodes"]) + 1,) or int(starts[-1]) != total:
        raise ValueError(f"{directory / 'episode_starts.npy'}: does not match meta.json ({total} frames)")
    for name in _ARRAYS:
        if arrays[name].shape[0] != total:
            raise ValueError(f"{directory / (name + '.npy')}: {arrays[name].shape[0]} rows, expected {total}")
    return GymRecording(directory=directory, meta=meta, **arrays)


def load_or_record(
    cache_dir: str | Path,
    spec: GymRecordingSpec,
    *,
    num_envs: int = 4,
    vectorization: Literal["sync", "async"] = "sync",
    progress: Callable[[int], None] | None = None,
) -> GymRecording:
    """The recording of `spec` under `cache_dir/gym-<key>`, recorded first if it is missing or unreadable."""
    spec.validate()
    directory = Path(cache_dir) / f"gym-{spec.key()}"
    if (directory / "meta.json").is_file():
        try:
            return load_recording(directory)
        except ValueError:
            shutil.rmtree(directory, ignore_errors=True)  # derived data: recording again gives the same bits
    return record(spec, directory, num_envs=num_envs, vectorization=vectorization, progress=progress)


class RecordingStore:
    """ClipStore over a recording's episodes; opens the memmaps lazily in each process (workers included)."""

    def __init__(self, directory: str | Path, lengths: np.ndarray, starts: np.ndarray, with_actions: bool) -> None:
        self.directory = Path(directory)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.names = [f"episode {e} of {self.directory}" for e in range(len(self.lengths))]
        self.with_actions = with_actions
        self._recording: GymRecording | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_recording": None}  # memmaps are reopened, not pickled by value

    def read(self, clip: int, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._recording is None:
            self._recording = load_recording(self.directory)
        rec = self._recording
        lo, hi = int(self.starts[clip]) + start, int(self.starts[clip]) + stop
        out = {
            "frames": rec.frames[lo:hi].transpose(0, 3, 1, 2),  # (k, 3, S, S)
            "rewards": rec.rewards[lo:hi],
            "terminated": rec.terminated[lo:hi],
            "truncated": rec.truncated[lo:hi],
            "state/observation": rec.observations[lo:hi],
        }
        if self.with_actions:
            out["actions"] = rec.actions[lo:hi]
        return out


@dataclass
class GymSource:
    """Episodes of a gym recording as clips: an existing recording directory, or one recorded into the cache."""

    spec: GymRecordingSpec
    """What to record when `path` is empty."""
    path: str = ""
    """A recording directory from `worldmodel data gym` (empty: record `spec` into cache_dir)."""
    cache_dir: str | Path = DEFAULT_CACHE_DIR
    with_actions: bool = True
    """Put "actions" into the windows."""
    stride: int = 1
    num_envs: int = 4
    progress: bool = False
    """Show a progress bar while recording into the cache."""
    name: str = "gym"

    def recording(self) -> GymRecording:
        if self.path:
            return load_recording(self.path)
        bar = None
        cached = (Path(self.cache_dir) / f"gym-{self.spec.key()}" / "meta.json").is_file()
        if self.progress and not cached:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.spec.episodes, desc=f"record {self.spec.env_id}", unit="episode")
            except ImportError:
                bar = None
        try:
            return load_or_record(self.cache_dir, self.spec, num_envs=self.num_envs,
                                  progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()

    def load(self, *, window: int, val_fraction: float, seed: int) -> SourceData:
        rec = self.recording()
        size = rec.frames.shape[1]
        if size != self.spec.image_size:
            raise ValueError(
                f"{rec.directory}: frames are {size}x{size} but the model wants {self.spec.image_size}x"
                f"{self.spec.image_size}; record again with --size {self.spec.image_size}"
            )
        lengths = rec.lengths
        usable = np.flatnonzero(lengths >= window)
        short = len(lengths) - len(usable)
        env_id = rec.meta["spec"]["env_id"]
        train_pos, val_pos = split_clip_indices(len(usable), val_fraction, seed)
        store = RecordingStore(rec.directory, lengths, rec.episode_starts[:-1], self.with_actions)
        train = ClipWindows(store, usable[train_pos], window, self.stride)
        val = ClipWindows(store, usable[val_pos], window, self.stride)
        action_dim = rec.action_dim if self.with_actions else 0
        summary = (
            f"gym {env_id} ({rec.directory}): {len(lengths)} episodes, {int(lengths.sum())} frames; "
            f"{short} episodes shorter than the {window}-frame window dropped; "
            f"{len(train_pos)} train / {len(val_pos)} val episodes; actions {rec.meta['action']['space']} -> "
            f"{action_dim} floats"
        )
        stats = {"episodes": len(lengths), "frames": int(lengths.sum()), "dropped_short": short,
                 "train_clips": len(train_pos), "val_clips": len(val_pos)}
        return SourceData(train=train, val=val, action_dim=action_dim, summary=summary, stats=stats)
