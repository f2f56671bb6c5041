"""Fixed-length bouncing-balls clips: batched generation and an on-disk cache.

`generate_clips` produces N clips of T frames plus the per-frame ground truth. Clip i is a function of
(config, seed, i) alone - its generator is seeded from `SeedSequence(seed, spawn_key=(i,))`, which is what
`SeedSequence(seed).spawn(N)[i]` gives - so the first 10 clips of a 20-clip set are the 10-clip set, and each clip
is bitwise the trajectory `BallsSim(config, that generator)` steps through (frame 0 is the reset state).

`load_or_generate` caches a clip set as `<prefix>.frames.npy` (memory-mapped on load, so datasets larger than RAM
work) next to `<prefix>.state.npz`, the prefix carrying a hash of everything that determines the content.
Both files are written to temporary names and moved into place with os.replace, the state file last, so a
crashed writer never leaves a cache that looks complete. A cache that exists but cannot be read (truncated,
corrupt, wrong shape) is regenerated with a warning naming the file: it is derived data, and regenerating it
gives the same bits.

numpy + stdlib only, so the data pipeline can build clips without torch or gymnasium.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.physics import BallsBatch, BallsConfig, Furniture, Renderer, draw_step_noise, sample_initial

CACHE_FORMAT = 2
"""Part of the cache key: bump whenever the simulator or renderer changes what a given seed produces."""

STATE_DTYPES: dict[str, np.dtype] = {
    "positions": np.dtype(np.float32),
    "velocities": np.dtype(np.float32),
    "radii": np.dtype(np.float32),
    "colors": np.dtype(np.uint8),
    "masses": np.dtype(np.float32),
    "contacts": np.dtype(bool),
    "kicked": np.dtype(bool),
    "occluded": np.dtype(bool),
    "present": np.dtype(bool),
    "wall": np.dtype(np.float32),
    "occluder": np.dtype(np.int16),
}
"""Stored ground-truth arrays; float32 because that is what models and probes consume (simulation runs in float64)."""

_CHUNK = 128
"""Clips stepped together: enough to amortise numpy call overhead in the physics, small enough to stay in cache."""


@dataclass
class ClipSet:
    """N clips of T frames with their ground truth."""

    frames: np.ndarray
    """(N, T, H, W, 3) uint8 RGB; a read-only memmap when loaded from the cache."""
    state: dict[str, np.ndarray]
    """Per-frame ground truth, each (N, T, max_balls, ...) with dtypes as in STATE_DTYPES (see BallsSim.state)."""
    num_balls: np.ndarray
    """(N,) int64 balls in each clip (constant over a clip)."""
    config: BallsConfig
    """The configuration the clips were drawn from."""
    seed: int
    """Root seed; clip i was drawn from SeedSequence(seed, spawn_key=(i,))."""

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _check_sizes(num_clips: object, clip_length: object, seed: object) -> None:
    for name, value, low in (("num_clips", num_clips, 1), ("clip_length", clip_length, 1), ("seed", seed, 0)):
        if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low):
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator clip `index` of a set with root `seed` is drawn from."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _empty_state(config: BallsConfig, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    m = config.max_balls
    tails = {"positions": (m, 2), "velocities": (m, 2), "colors": (m, 3), "wall": (2,), "occluder": (2,)}
    return {k: np.zeros(shape + tails.get(k, (m,)), dtype=dt) for k, dt in STATE_DTYPES.items()}


def _generate_into(
    config: BallsConfig,
    seed: int,
    first: int,
    clip_length: int,
    frames: np.ndarray,
    state: dict[str, np.ndarray],
    num_balls: np.ndarray,
) -> None:
    """Fill frames/state/num_balls (leading dim B) with clips first .. first+B-1."""
    batch_size, steps = frames.shape[0], clip_length - 1
    m = config.max_balls
    initial, kick_u, kick_dir = [], np.empty((batch_size, steps, m)), np.empty((batch_size, steps, m, 2))
    for b in range(batch_size):
        rng = clip_rng(seed, first + b)
        initial.append(sample_initial(config, rng))
        # Same draw order as BallsSim: reset placement first, then each step's noise in turn.
        for t in range(steps):
            kick_u[b, t], kick_dir[b, t] = draw_step_noise(config, rng)
    sim = BallsBatch(config, initial)
    # Simulate in float64 first: the renderer must see exactly the positions BallsSim would render.
    positions = np.empty((batch_size, clip_length, m, 2))
    for t in range(clip_length):
        if t > 0:
            sim.step(kick_u[:, t - 1], kick_dir[:, t - 1])
        s = sim.state()
        positions[:, t] = sim.positions
        for key in STATE_DTYPES:
            state[key][:, t] = s[key]
    num_balls[:] = sim.present.sum(-1)

    renderer = Renderer(config)
    for b in range(batch_size):
        # Balls neither appear nor vanish within a clip, so the present set, radii and colours are per-clip.
        keep = np.flatnonzero(sim.present[b])
        furniture = Furniture.from_state(sim.wall[b], sim.clip_occluder[b], config.image_size)
        renderer.draw_clip(frames[b], positions[b][:, keep], sim.radii[b, keep], sim.colors[b, keep], furniture)


def generate_clips(config: BallsConfig, num_clips: int, clip_length: int, seed: int) -> ClipSet:
    """Draw `num_clips` clips of `clip_length` frames.

    Bitwise reproducible from (config, num_clips, clip_length, seed); clip i depends only on (config, seed, i).
    """
    config.validate()
    _check_sizes(num_clips, clip_length, seed)
    side = config.image_size
    frames = np.empty((num_clips, clip_length, side, side, 3), dtype=np.uint8)
    state = _empty_state(config, (num_clips, clip_length))
    num_balls = np.empty(num_clips, dtype=np.int64)
    _fill(config, seed, clip_length, frames, state, num_balls)
    return ClipSet(frames=frames, state=state, num_balls=num_balls, config=config, seed=int(seed))


def _fill(
    config: BallsConfig,
    seed: int,
    clip_length: int,
    frames: np.ndarray,
    state: dict[str, np.ndarray],
    num_balls: np.ndarray,
) -> None:
    for start in range(0, frames.shape[0], _CHUNK):
        stop = min(start + _CHUNK, frames.shape[0])
        # Slices are views, so each chunk is written straight into the (possibly file-backed) outputs.
        chunk_state = {key: value[start:stop] for key, value in state.items()}
        _generate_into(config, seed, start, clip_length, frames[start:stop], chunk_state, num_balls[start:stop])


# --------------------------------------------------------------------------------------------------- cache


def cache_key(config: BallsConfig, num_clips: int, clip_length: int, seed: int) -> str:
    """Stable hex digest of everything that determines a clip set's content."""
    payload = {
        "format": CACHE_FORMAT,
        "config": config.to_dict(),
        "num_clips": int(num_clips),
        "clip_length": int(clip_length),
        "seed": int(seed),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def cache_paths(
    cache_dir: str | Path, config: BallsConfig, num_clips: int, clip_length: int, seed: int
) -> tuple[Path, Path]:
    """(frames .npy path, state .npz path) of the cache entry for these arguments."""
    prefix = Path(cache_dir) / f"balls-{cache_key(config, num_clips, clip_length, seed)}"
    return prefix.with_name(prefix.name + ".frames.npy"), prefix.with_name(prefix.name + ".state.npz")


def _load(
    frames_path: Path, state_path: Path, config: BallsConfig, num_clips: int, clip_length: int, seed: int, mmap: bool
) -> ClipSet:
    expected_key = cache_key(config, num_clips, clip_length, seed)
    side = config.image_size
    frames = np.load(frames_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if frames.dtype != np.uint8 or frames.shape != (num_clips, clip_length, side, side, 3):
        expected = (num_clips, clip_length, side, side, 3)
        raise ValueError(f"frames are {frames.dtype} {frames.shape}, expected uint8 {expected}")
    with np.load(state_path, allow_pickle=False) as archive:
        key = str(archive["cache_key"])
        if key != expected_key:
            raise ValueError(f"cache_key is {key}, expected {expected_key}")
        state = {name: archive[f"state/{name}"] for name in STATE_DTYPES}
        num_balls = archive["num_balls"]
    probe = _empty_state(config, (num_clips, clip_length))
    for name, value in state.items():
        if value.shape != probe[name].shape or value.dtype != probe[name].dtype:
            want = probe[name]
            raise ValueError(f"state/{name} is {value.dtype} {value.shape}, expected {want.dtype} {want.shape}")
    if num_balls.shape != (num_clips,):
        raise ValueError(f"num_balls has shape {num_balls.shape}, expected ({num_clips},)")
    return ClipSet(frames=frames, state=state, num_balls=num_balls, config=config, seed=int(seed))


def _temp_path(target: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    os.close(fd)
    return Path(name)


def load_or_generate(
    cache_dir: str | Path,
    config: BallsConfig,
    num_clips: int,
    clip_length: int,
    seed: int,
    mmap: bool = True,
) -> ClipSet:
    """The clip set for these arguments, read from `cache_dir` if cached there, else generated and cached.

    Frames come back as a read-only memmap when `mmap` (the default), else fully in memory. An unreadable cache
    entry is regenerated with a warning naming the file.
    """
    config.validate()
    _check_sizes(num_clips, clip_length, seed)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    frames_path, state_path = cache_paths(cache_dir, config, num_clips, clip_length, seed)
    if frames_path.exists() and state_path.exists():
        try:
            return _load(frames_path, state_path, config, num_clips, clip_length, seed, mmap)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warnings.warn(
                f"clip cache {frames_path.name} / {state_path.name} in {cache_dir} is unreadable ({exc}); regenerating",
                RuntimeWarning,
                stacklevel=2,
            )

    side = config.image_size
    tmp_frames = _temp_path(frames_path)
    tmp_state = _temp_path(state_path)
    try:
        # Generated straight into a file-backed array so a set larger than RAM can still be built.
        frames = np.lib.format.open_memmap(
            tmp_frames, mode="w+", dtype=np.uint8, shape=(num_clips, clip_length, side, side, 3)
        )
        state = _empty_state(config, (num_clips, clip_length))
        num_balls = np.empty(num_clips, dtype=np.int64)
        _fill(config, seed, clip_length, frames, state, num_balls)
        frames.flush()
        del frames
        with open(tmp_state, "wb") as fh:
            np.savez(
                fh,
                cache_key=np.array(cache_key(config, num_clips, clip_length, seed)),
                config_json=np.array(json.dumps(config.to_dict(), sort_keys=True)),
                num_balls=num_balls,
                **{f"state/{k}": v for k, v in state.items()},
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_frames, frames_path)
        # The state file lands last: its presence is what marks the entry complete.
        os.replace(tmp_state, state_path)
    finally:
        for tmp in (tmp_frames, tmp_state):
            if tmp.exists():
                tmp.unlink()
    return _load(frames_path, state_path, config, num_clips, clip_length, seed, mmap)
