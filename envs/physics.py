"""Stochastic 2D bouncing-balls simulator and its numpy renderer.

Balls move in the unit square (positions, radii and velocities are fractions of the image side, +x right,
+y down), bounce elastically off the walls and off each other (mass-weighted), optionally fall under gravity
and pass behind a vertical occluder bar. Each step, each ball is kicked with probability `kick_prob` in a
random direction, and a bounce off the border may scatter it along the wall (`bounce_kick_prob`, rough walls):
those are the part of the future that no amount of looking at the past can predict, which is exactly what the
world model's latent variable has to carry. A kick comes at a random time; a scatter comes at a time the past
shows (the bounce), with only its way unknown: a fork.

The dynamics live in `BallsBatch`, vectorised over many independent simulations, because clip generation
steps hundreds of clips in lock-step; `BallsSim` is the one-simulation, rng-owning view used by the gym env.
All randomness a step consumes is drawn by `draw_step_noise` in a fixed layout, so a clip generated in a
batch is bitwise the trajectory `BallsSim` produces from the same generator.

numpy + stdlib only: `envs.clips` builds on this module and must import without torch or gymnasium.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 40, 40),  # red
    (40, 220, 40),  # green
    (50, 110, 255),  # blue
    (255, 225, 0),  # yellow
    (255, 0, 255),  # magenta
    (0, 230, 230),  # cyan
    (255, 140, 0),  # orange
    (160, 60, 255),  # purple
)
"""Distinct saturated colours; none is gray, so a ball can never be mistaken for the occluder."""

_MAX_PLACEMENT_TRIES = 2000
"""Rejection-sampling attempts per ball before its layout is drawn again (`_place`)."""
_MAX_LAYOUTS = 20
"""Whole layouts drawn before declaring the config too crowded to place without overlap."""


def _is_int(value: object) -> bool:
    # bool is a subclass of int, but `max_balls=True` is a bug, not a count.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_pair(name: str, value: object, low: float, high: float, open_low: bool) -> None:
    """A (lo, hi) range of numbers with low <(=) lo <= hi < high."""
    if not (isinstance(value, tuple) and len(value) == 2 and all(_is_real(v) for v in value)):
        raise ValueError(f"{name} must be a pair (lo, hi) of numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    lo_ok = lo > low if open_low else lo >= low
    if not (lo_ok and lo <= hi < high):
        bound = "<" if open_low else "<="
        raise ValueError(f"{name} must satisfy {low} {bound} lo <= hi < {high}, got {value!r}")


def _check_rgb(name: str, value: object) -> None:
    if not (isinstance(value, tuple) and len(value) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in value)):
        raise ValueError(f"{name} must be an (r, g, b) tuple of ints in [0, 255], got {value!r}")


@dataclass
class BallsConfig:
    """Everything that defines the distribution of bouncing-balls videos (all lengths are fractions of the side)."""

    image_size: int = 64
    """H = W of the rendered frames, in pixels."""
    min_balls: int = 1
    """Fewest balls in a clip; each clip draws its count uniformly from [min_balls, max_balls]."""
    max_balls: int = 3
    """Most balls in a clip; every per-ball state array is padded to this length."""
    radius_range: tuple[float, float] = (0.08, 0.14)
    """Ball radii are drawn uniformly from this range, as a fraction of the image side."""
    speed_range: tuple[float, float] = (0.02, 0.05)
    """Initial speeds are drawn uniformly from this range, in image sides per step (direction uniform)."""
    mass_from_radius: bool = True
    """Mass proportional to radius**2 (so big balls shove small ones); False gives every ball mass 1."""
    gravity: float = 0.0
    """Downward (+y) acceleration in image sides per step**2; 0 disables it."""
    occluder: bool = False
    """Draw a full-height vertical bar on top of the balls, which therefore pass behind it."""
    occluder_x: float = 0.5
    """Horizontal centre of the occluder bar, as a fraction of the image width."""
    occluder_width: float = 0.15
    """Width of the occluder bar, as a fraction of the image width."""
    occluder_color: tuple[int, int, int] = (128, 128, 128)
    """RGB of the occluder bar (gray, so it is unlike every palette colour)."""
    occluder_prob: float = 0.0
    """Probability that a clip gets an occluder bar of `occluder_width` at a random place (centre uniform in
    `occluder_x_range`), on top of the fixed `occluder` if that is on. With a bar wide enough to hide a ball whole,
    balls go out of sight and come back, which is what object permanence is learned from."""
    occluder_x_range: tuple[float, float] = (0.3, 0.7)
    """Range of the centre of a clip's random occluder, as a fraction of the image width."""
    wall_prob: float = 0.0
    """Probability that a clip has a solid full-height vertical wall of `wall_width` (centre uniform in
    `wall_x_range`) that balls bounce off exactly like the box's sides; it splits the box into two chambers. Balls
    never overlap it, so a ball seen inside a wall is something no training clip shows."""
    wall_x_range: tuple[float, float] = (0.4, 0.6)
    """Range of the centre of a clip's wall, as a fraction of the image width."""
    wall_width: float = 0.06
    """Width of the wall, as a fraction of the image width."""
    wall_color: tuple[int, int, int] = (235, 235, 235)
    """RGB of the wall (light gray: unlike every palette colour and the occluder; `envs.raster.Wall`'s colour)."""
    kick_prob: float = 0.05
    """Probability, per step and per ball, of a random kick: the unpredictable part of the dynamics."""
    kick_strength: float = 0.04
    """Magnitude of a kick's velocity change, in image sides per step (direction uniform)."""
    bounce_kick_prob: float = 0.0
    """Probability that a bounce off the box's border scatters the ball (rough walls): its outgoing velocity is
    turned towards one of the two directions along the wall (a fair coin), keeping its speed. Unlike a kick, the
    past tells exactly when this fork comes (the ball is seen heading for the wall), only not which way it goes:
    the kind of uncertainty the latent variable is for. Corner bounces (both axes at once) never scatter."""
    bounce_kick: float = 0.04
    """Size of the scatter: the tangential velocity (sides per step) added before the speed is restored."""
    max_speed: float = 0.1
    """A kick never leaves a ball faster than this (it is rescaled), so repeated kicks cannot pump energy
    without bound and make balls tunnel through each other; collisions and gravity are not capped, which keeps
    the deterministic dynamics exactly energy conserving."""
    background: tuple[int, int, int] = (0, 0, 0)
    """RGB of the empty canvas."""
    palette: tuple[tuple[int, int, int], ...] = DEFAULT_PALETTE
    """Colours balls are drawn from, without replacement within a clip (so needs >= max_balls distinct entries)."""

    def __post_init__(self) -> None:
        # Configs arrive from JSON/YAML with lists where tuples are declared; normalise so that equality, hashing
        # of the cache key and validation all see one representation.
        for name in ("radius_range", "speed_range", "occluder_color", "background", "occluder_x_range", "wall_x_range",
                     "wall_color"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        if isinstance(self.palette, list) or (
            isinstance(self.palette, tuple) and any(isinstance(c, list) for c in self.palette)
        ):
            self.palette = tuple(tuple(c) if isinstance(c, list) else c for c in self.palette)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        if not (_is_int(self.image_size) and self.image_size >= 8):
            raise ValueError(f"image_size must be an int >= 8, got {self.image_size!r}")
        if not (_is_int(self.min_balls) and self.min_balls >= 1):
            raise ValueError(f"min_balls must be an int >= 1, got {self.min_balls!r}")
        if not (_is_int(self.max_balls) and self.max_balls >= self.min_balls):
            raise ValueError(f"max_balls must be an int >= min_balls ({self.min_balls}), got {self.max_balls!r}")
        _check_pair("radius_range", self.radius_range, 0.0, 0.5, open_low=True)
        _check_pair("speed_range", self.speed_range, 0.0, math.inf, open_low=False)
        if not isinstance(self.mass_from_radius, (bool, np.bool_)):
            raise ValueError(f"mass_from_radius must be a bool, got {self.mass_from_radius!r}")
        if not (_is_real(self.gravity) and math.isfinite(self.gravity)):
            raise ValueError(f"gravity must be a finite number, got {self.gravity!r}")
        if not isinstance(self.occluder, (bool, np.bool_)):
            raise ValueError(f"occluder must be a bool, got {self.occluder!r}")
        if not (_is_real(self.occluder_x) and 0.0 <= self.occluder_x <= 1.0):
            raise ValueError(f"occluder_x must be a number in [0, 1], got {self.occluder_x!r}")
        if not (_is_real(self.occluder_width) and 0.0 < self.occluder_width <= 1.0):
            raise ValueError(f"occluder_width must be a number in (0, 1], got {self.occluder_width!r}")
        _check_rgb("occluder_color", self.occluder_color)
        _check_rgb("wall_color", self.wall_color)
        for name in ("occluder_prob", "wall_prob"):
            value = getattr(self, name)
            if not (_is_real(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        _check_pair("occluder_x_range", self.occluder_x_range, 0.0, 1.0 + 1e-12, open_low=False)
        _check_pair("wall_x_range", self.wall_x_range, 0.0, 1.0, open_low=True)
        if not (_is_real(self.wall_width) and 0.0 < self.wall_width < 0.5):
            raise ValueError(f"wall_width must be a number in (0, 0.5), got {self.wall_width!r}")
        if self.wall_prob > 0:
            # Each chamber must hold the largest ball with room to move.
            room = min(self.wall_x_range[0] - 0.5 * self.wall_width, 1.0 - self.wall_x_range[1] - 0.5 * self.wall_width)
            if room < 2.0 * self.radius_range[1] + 0.05:
                raise ValueError(
                    f"wall_x_range {self.wall_x_range} with wall_width {self.wall_width} leaves a chamber of "
                    f"{room:.3f}; expected >= 2 * radius_range[1] + 0.05 = {2 * self.radius_range[1] + 0.05:.3f}"
                )
        if not (_is_real(self.kick_prob) and 0.0 <= self.kick_prob <= 1.0):
            raise ValueError(f"kick_prob must be a probability in [0, 1], got {self.kick_prob!r}")
        if not (_is_real(self.kick_strength) and 0.0 <= self.kick_strength < math.inf):
            raise ValueError(f"kick_strength must be a finite number >= 0, got {self.kick_strength!r}")
        if not (_is_real(self.bounce_kick_prob) and 0.0 <= self.bounce_kick_prob <= 1.0):
            raise ValueError(f"bounce_kick_prob must be a probability in [0, 1], got {self.bounce_kick_prob!r}")
        if not (_is_real(self.bounce_kick) and 0.0 <= self.bounce_kick < math.inf):
            raise ValueError(f"bounce_kick must be a finite number >= 0, got {self.bounce_kick!r}")
        if not (_is_real(self.max_speed) and 0.0 < self.max_speed < math.inf):
            raise ValueError(f"max_speed must be a finite number > 0, got {self.max_speed!r}")
        if self.speed_range[1] > self.max_speed:
            raise ValueError(
                f"speed_range upper bound ({self.speed_range[1]}) must be <= max_speed ({self.max_speed})"
            )
        _check_rgb("background", self.background)
        if not (isinstance(self.palette, tuple) and len(self.palette) >= self.max_balls):
            raise ValueError(
                f"palette must be a tuple of at least max_balls ({self.max_balls}) colours, got {self.palette!r}"
            )
        for i, color in enumerate(self.palette):
            _check_rgb(f"palette[{i}]", color)
        if len(set(self.palette)) != len(self.palette):
            raise ValueError("palette must not repeat a colour (balls are told apart by colour)")
        # Rejection sampling needs room; a crowded box would make reset() spin and then fail at a random clip.
        crowd = self.max_balls * math.pi * self.radius_range[1] ** 2
        if crowd > 0.45:
            raise ValueError(
                f"max_balls ({self.max_balls}) balls of radius up to radius_range[1] ({self.radius_range[1]}) "
                f"cover {crowd:.2f} of the image; expected <= 0.45 so they can be placed without overlap"
            )

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able field values (tuples become lists), e.g. for a cache key or a run record."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @property
    def rough_walls(self) -> bool:
        """Border bounces may scatter (`bounce_kick_prob` > 0): every bounce is then a fork of the data."""
        return self.bounce_kick_prob > 0.0

    def deterministic(self) -> "BallsConfig":
        """The same settings with no randomness in the dynamics (no kicks, no rough-wall scatter)."""
        return replace(self, kick_prob=0.0, bounce_kick_prob=0.0)

    def open_scene(self) -> "BallsConfig":
        """The same settings without random occluders and walls (for analyses that draw their own scenes)."""
        return replace(self, occluder_prob=0.0, wall_prob=0.0)

    def bar_columns(self, x: float, width: float) -> tuple[int, int]:
        """Pixel columns [c0, c1) of a full-height bar centred at x (fractions of the width); see `bar_columns`."""
        return bar_columns(x, width, self.image_size)

    def occluder_columns(self) -> tuple[int, int]:
        """Pixel columns [c0, c1) covered by the occluder bar (empty when the occluder is off)."""
        if not self.occluder:
            return 0, 0
        return self.bar_columns(self.occluder_x, self.occluder_width)


# --------------------------------------------------------------------------------------------------- sampling


def bar_columns(x: float, width: float, side: int) -> tuple[int, int]:
    """Pixel columns [c0, c1) of a full-height bar centred at x, width wide (fractions of the side), at least one
    column and inside the image: the one rounding every wall and occluder (simulator and VoE painter) shares."""
    c0 = int(round((x - 0.5 * width) * side))
    c1 = int(round((x + 0.5 * width) * side))
    return max(c0, 0), min(max(c1, c0 + 1), side)


def _place(positions: np.ndarray, radii: np.ndarray, wall: np.ndarray, rng: np.random.Generator) -> bool:
    """Rejection-sample non-overlapping centres for balls of the given radii (largest first) into positions[:n],
    clear of the wall; False when one ball finds no room. Big balls can fill the box so that the last one has no
    room wherever it goes (two balls of radius 0.25 with the first in the middle): then the whole layout is drawn
    again rather than that ball alone."""
    for i, r in enumerate(radii):
        for _ in range(_MAX_PLACEMENT_TRIES):
            p = rng.uniform(r, 1.0 - r, size=2)
            gaps = np.hypot(*(positions[:i] - p).T) - (radii[:i] + r)
            clear_of_wall = wall[1] <= wall[0] or p[0] + r <= wall[0] or p[0] - r >= wall[1]
            if (i == 0 or gaps.min() > 0.0) and clear_of_wall:
                positions[i] = p
                break
        else:
            return False
    return True


def sample_initial(config: BallsConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw one clip's initial balls: count, radii, colours, non-overlapping positions and velocities.

    Returns per-ball arrays padded to `max_balls` (absent slots: zeros, mass 1 so divisions stay finite).
    """
    m = config.max_balls
    wall = np.zeros(2)  # faces [x0, x1] in image fractions; x0 == x1 == 0: no wall
    occluder = np.zeros(2, dtype=np.int64)  # pixel columns [c0, c1) of the clip's random occluder; empty: none
    if config.wall_prob > 0 and rng.random() < config.wall_prob:
        c0, c1 = config.bar_columns(rng.uniform(*config.wall_x_range), config.wall_width)
        wall[:] = c0 / config.image_size, c1 / config.image_size
    if config.occluder_prob > 0 and rng.random() < config.occluder_prob:
        occluder[:] = config.bar_columns(rng.uniform(*config.occluder_x_range), config.occluder_width)
    n = int(rng.integers(config.min_balls, config.max_balls + 1))
    radii = np.zeros(m)
    radii[:n] = rng.uniform(config.radius_range[0], config.radius_range[1], size=n)
    # Largest first: big balls are the hard ones to fit, so placing them while the box is empty keeps rejection
    # sampling short. (Slot order carries no meaning; colours are shuffled independently.)
    radii[:n] = np.sort(radii[:n])[::-1]
    color_idx = rng.choice(len(config.palette), size=n, replace=False)
    colors = np.zeros((m, 3), dtype=np.uint8)
    colors[:n] = np.asarray(config.palette, dtype=np.uint8)[color_idx]
    masses = np.ones(m)
    if config.mass_from_radius:
        # Normalised by the largest possible radius so masses stay O(1) whatever the radius scale.
        masses[:n] = (radii[:n] / config.radius_range[1]) ** 2
    positions = np.zeros((m, 2))
    for _ in range(_MAX_LAYOUTS):
        if _place(positions, radii[:n], wall, rng):
            break
    else:
        raise ValueError(
            f"could not place {n} balls of radius up to {radii[0]:.3f} without overlap ({_MAX_LAYOUTS} layouts of "
            f"{_MAX_PLACEMENT_TRIES} tries per ball); reduce max_balls or radius_range"
        )
    velocities = np.zeros((m, 2))
    speeds = rng.uniform(config.speed_range[0], config.speed_range[1], size=n)
    velocities[:n] = _unit(rng.standard_normal((n, 2))) * speeds[:, None]
    present = np.zeros(m, dtype=bool)
    present[:n] = True
    return {
        "positions": positions,
        "velocities": velocities,
        "radii": radii,
        "colors": colors,
        "masses": masses,
        "present": present,
        "wall": wall,
        "occluder": occluder,
    }


def draw_step_noise(config: BallsConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The randomness one step consumes: kick uniforms (max_balls,) and kick directions (max_balls, 2).

    Drawn for every slot, present or not, so the stream layout does not depend on the ball count.
    """
    u = rng.random(config.max_balls)
    directions = rng.standard_normal((config.max_balls, 2))
    return u, directions


def _unit(v: np.ndarray) -> np.ndarray:
    """Rows of v scaled to unit length (Gaussian rows give uniform directions without sin/cos)."""
    norm = np.sqrt((v * v).sum(-1, keepdims=True))
    # A zero Gaussian draw has probability 0, but a direction must never be NaN.
    return np.where(norm > 0.0, v / np.where(norm > 0.0, norm, 1.0), np.array([1.0, 0.0]))


# --------------------------------------------------------------------------------------------------- dynamics


class BallsBatch:
    """B independent simulations advanced in lock-step, every per-ball array shaped (B, max_balls, ...)."""

    def __init__(self, config: BallsConfig, initial: list[dict[str, np.ndarray]]) -> None:
        config.validate()
        if not initial:
            raise ValueError("initial must hold at least one simulation's initial state")
        self.config = config
        self.positions = np.stack([s["positions"] for s in initial]).astype(np.float64)
        self.velocities = np.stack([s["velocities"] for s in initial]).astype(np.float64)
        self.radii = np.stack([s["radii"] for s in initial]).astype(np.float64)
        self.colors = np.stack([s["colors"] for s in initial]).astype(np.uint8)
        self.present = np.stack([s["present"] for s in initial]).astype(bool)
        masses = np.stack([s["masses"] for s in initial]).astype(np.float64)
        # Absent slots get mass 1 internally so impulse formulas never divide by zero.
        self.masses = np.where(self.present, masses, 1.0)
        if np.any(self.masses <= 0.0):
            raise ValueError("masses of present balls must be > 0")
        self.contacts = np.zeros_like(self.present)
        self.kicked = np.zeros_like(self.present)
        self.bounced = np.zeros((*self.present.shape, 2), bool)  # (B, M, axis): bounced off the box's border
        # Furniture per simulation (initial dicts without it, e.g. hand-made scenes, have none).
        self.wall = np.stack([np.asarray(s.get("wall", np.zeros(2)), np.float64) for s in initial])  # (B, 2)
        self.clip_occluder = np.stack([np.asarray(s.get("occluder", np.zeros(2)), np.int64) for s in initial])
        self.has_wall = self.wall[:, 1] > self.wall[:, 0]
        # Which side of its wall each ball lives on (-1 left, +1 right); balls never cross a wall.
        centre = 0.5 * (self.wall[:, :1] + self.wall[:, 1:])
        self.wall_side = np.where(self.positions[..., 0] < centre, -1.0, 1.0)
        m = config.max_balls
        self._pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        self._c0, self._c1 = config.occluder_columns()

    @property
    def batch_size(self) -> int:
        """B, the number of simulations."""
        return self.positions.shape[0]

    def step(self, kick_u: np.ndarray, kick_dir: np.ndarray) -> None:
        """Advance every simulation one step, given kick uniforms (B, M) and kick directions (B, M, 2).

        A ball is kicked when its uniform is below kick_prob; a ball that bounces off the border is scattered when
        its uniform is above 1 - bounce_kick_prob, the way chosen by the sign of its direction's component along
        the wall. One draw serves both, so enabling scatter leaves every random stream as it was.
        """
        cfg = self.config
        pos, vel, present = self.positions, self.velocities, self.present
        self.contacts = np.zeros_like(present)
        if cfg.gravity != 0.0:
            vel[..., 1] += np.where(present, cfg.gravity, 0.0)
        kicked = (kick_u < cfg.kick_prob) & present
        self.kicked = kicked
        if kicked.any():
            b, k = np.nonzero(kicked)
            v = vel[b, k] + cfg.kick_strength * _unit(kick_dir[b, k])
            speed = np.sqrt((v * v).sum(-1, keepdims=True))
            vel[b, k] = v * np.minimum(1.0, cfg.max_speed / np.maximum(speed, 1e-300))
        pos += vel
        self._collide_balls()
        self._collide_walls()
        if cfg.rough_walls:
            self._scatter_bounces(kick_u, kick_dir)

    def _scatter_bounces(self, kick_u: np.ndarray, kick_dir: np.ndarray) -> None:
        """Rough walls: turn the outgoing velocity of a ball that bounced off one side of the box along that side."""
        one_axis = self.bounced.sum(-1) == 1
        scatter = one_axis & (kick_u > 1.0 - self.config.bounce_kick_prob) & self.present
        if not scatter.any():
            return
        b, k = np.nonzero(scatter)
        v = self.velocities[b, k]
        tangent_axis = np.where(self.bounced[b, k, 0], 1, 0)  # an x bounce scatters along y and vice versa
        sign = np.where(kick_dir[b, k][np.arange(len(b)), tangent_axis] >= 0.0, 1.0, -1.0)
        turned = v.copy()
        turned[np.arange(len(b)), tangent_axis] += sign * self.config.bounce_kick
        speed = np.sqrt((v * v).sum(-1, keepdims=True))
        # Only the direction changes: the normal component keeps its sign (the ball still leaves the wall).
        self.velocities[b, k] = _unit(turned) * speed
        self.kicked[b, k] = True

    def _collide_balls(self) -> None:
        pos, vel, rad, mass, present = self.positions, self.velocities, self.radii, self.masses, self.present
        # Sequential pairwise resolution: each impulse is an exact 2-body elastic collision, so momentum and
        # energy are conserved even in the rare three-ball pile-up (a simultaneous solve would not conserve).
        for i, j in self._pairs:
            d = pos[:, j] - pos[:, i]
            dist2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
            rsum = rad[:, i] + rad[:, j]
            hit = (dist2 < rsum * rsum) & present[:, i] & present[:, j]
            if not hit.any():
                continue
            rows = np.flatnonzero(hit)
            d = d[rows]
            dist = np.sqrt(dist2[rows])
            # Coincident centres have no normal; any fixed direction separates them.
            safe = dist > 1e-12
            n = np.where(safe[:, None], d / np.where(safe, dist, 1.0)[:, None], np.array([1.0, 0.0]))
            mi, mj = mass[rows, i], mass[rows, j]
            vi, vj = vel[rows, i], vel[rows, j]
            closing = ((vi - vj) * n).sum(-1)
            # Only approaching pairs get an impulse; receding overlapping pairs are merely pushed apart.
            impulse = np.where(closing > 0.0, 2.0 * mi * mj / (mi + mj) * closing, 0.0)
            vel[rows, i] = vi - (impulse / mi)[:, None] * n
            vel[rows, j] = vj + (impulse / mj)[:, None] * n
            # Mass-weighted separation keeps the pair's centre of mass where it was.
            overlap = rsum[rows] - dist
            pos[rows, i] -= (overlap * mj / (mi + mj))[:, None] * n
            pos[rows, j] += (overlap * mi / (mi + mj))[:, None] * n
            self.contacts[rows, i] = True
            self.contacts[rows, j] = True

    def _collide_walls(self) -> None:
        if self.has_wall.any():
            self._collide_interior_wall()
        self._collide_box()
        if self.has_wall.any():
            # A box bounce in a narrow chamber must not leave a ball overlapping the wall.
            self._clamp_to_chamber()

    def _collide_interior_wall(self) -> None:
        """Mirror balls off the face of their own chamber's wall, like the box's sides."""
        pos, vel, rad = self.positions, self.velocities, self.radii
        lo, hi = self.wall[:, :1], self.wall[:, 1:]  # (B, 1) left and right faces
        live = self.present & self.has_wall[:, None]
        left, right = live & (self.wall_side < 0), live & (self.wall_side > 0)
        x = pos[..., 0]
        into_left = left & (x + rad > lo)  # a left-chamber ball pushing into the wall's left face
        into_right = right & (x - rad < hi)
        if into_left.any() or into_right.any():
            pos[..., 0] = np.where(into_left, 2.0 * (lo - rad) - x, np.where(into_right, 2.0 * (hi + rad) - x, x))
            vel[..., 0] = np.where(into_left, -np.abs(vel[..., 0]), np.where(into_right, np.abs(vel[..., 0]),
                                                                             vel[..., 0]))
            self.contacts |= into_left | into_right

    def _clamp_to_chamber(self) -> None:
        pos, rad = self.positions, self.radii
        lo, hi = self.wall[:, :1], self.wall[:, 1:]
        live = self.present & self.has_wall[:, None]
        x = pos[..., 0]
        x = np.where(live & (self.wall_side < 0), np.minimum(x, lo - rad), x)
        pos[..., 0] = np.where(live & (self.wall_side > 0), np.maximum(x, hi + rad), x)

    def _collide_box(self) -> None:
        pos, vel, rad, present = self.positions, self.velocities, self.radii, self.present
        self.bounced = np.zeros_like(self.bounced)
        lo = rad[..., None]
        hi = 1.0 - lo
        below = (pos < lo) & present[..., None]
        above = (pos > hi) & present[..., None]
        if below.any() or above.any():
            # Mirror the overshoot back inside (rather than clamping) so a bounce loses no distance travelled.
            pos[:] = np.where(below, 2.0 * lo - pos, np.where(above, 2.0 * hi - pos, pos))
            self.bounced = below | above
            vel[:] = np.where(below, np.abs(vel), np.where(above, -np.abs(vel), vel))
            # A ball faster than the box is wide could mirror past the far wall; clamp as a last resort.
            np.clip(pos, lo, hi, out=pos)
            self.contacts |= below.any(-1) | above.any(-1)

    def occluded(self) -> np.ndarray:
        """(B, M) bool: the ball's centre lies in a pixel column an occluder (fixed or the clip's own) covers."""
        x = self.positions[..., 0] * self.config.image_size
        hidden = np.zeros_like(self.present)
        if self._c1 > self._c0:
            hidden |= (x >= self._c0) & (x < self._c1)
        c0, c1 = self.clip_occluder[:, :1], self.clip_occluder[:, 1:]
        hidden |= (x >= c0) & (x < c1)
        return hidden & self.present

    def state(self) -> dict[str, np.ndarray]:
        """Ground truth, every array (B, M, ...), zeroed in absent slots, plus num_balls (B,)."""
        p = self.present
        return {
            "positions": np.where(p[..., None], self.positions, 0.0),
            "velocities": np.where(p[..., None], self.velocities, 0.0),
            "radii": np.where(p, self.radii, 0.0),
            "colors": np.where(p[..., None], self.colors, 0).astype(np.uint8),
            "masses": np.where(p, self.masses, 0.0),
            "contacts": self.contacts & p,
            "kicked": self.kicked & p,
            "occluded": self.occluded(),
            "present": p.copy(),
            "num_balls": p.sum(-1).astype(np.int64),
            "wall": self.wall.copy(),  # (B, 2) faces, zeros: none
            "occluder": self.clip_occluder.copy(),  # (B, 2) pixel columns of the clip's random occluder
        }


# --------------------------------------------------------------------------------------------------- rendering


class Renderer:
    """Draws balls (soft 1-pixel anti-aliased edge) and then the occluder into uint8 (H, W, 3) frames.

    Two paths with bitwise identical output: `draw` renders one frame touching only each ball's bounding box
    (the gym env's path); `draw_clip` renders all frames of a clip at once, one ball at a time, gathering every
    frame's box through a strided window view so numpy call overhead is paid per ball rather than per ball-frame.
    Both compute coverage and blend with the same float32 operations in the same order, which is what makes them
    agree to the bit (tests check this).
    """

    def __init__(self, config: BallsConfig) -> None:
        config.validate()
        self.size = config.image_size
        # Pixel j covers [j, j+1) in pixel units; its centre is where coverage is measured.
        self._centers = np.arange(self.size, dtype=np.float32) + np.float32(0.5)
        # Whole-row templates: broadcasting a (3,) colour over an image runs numpy's inner loop 3 bytes at a
        # time, which costs more than drawing the balls; copying long rows does not.
        self._c0, self._c1 = config.occluder_columns()
        self._background_row = np.tile(np.asarray(config.background, dtype=np.uint8), self.size)
        self._occluder_block = np.tile(
            np.asarray(config.occluder_color, dtype=np.uint8), (self.size, self._c1 - self._c0, 1)
        )
        self._wall_color = np.asarray(config.wall_color, dtype=np.uint8)
        self._occluder_color = np.asarray(config.occluder_color, dtype=np.uint8)
        # Widest box draw_clip needs; the clip canvas is padded by it so no box ever needs clipping.
        self._pad = _box_side(config.radius_range[1] * self.size)

    def draw(
        self,
        out: np.ndarray,
        positions: list[list[float]],
        radii: list[float],
        colors: list[np.ndarray],
        furniture: "Furniture | None" = None,
    ) -> np.ndarray:
        """Render one frame from Python lists (scalar numpy indexing would dominate the cost).

        `positions[k] = [x, y]` and `radii[k]` are image fractions, `colors[k]` a float32 (3,) RGB; later balls
        are drawn over earlier ones. `furniture`: the clip's own wall (under the balls) and occluder (on top).
        """
        size = self.size
        centers = self._centers
        if out.flags.c_contiguous:
            out.reshape(size, size * 3)[...] = self._background_row
        else:  # a reshape would copy, and the fill would be lost
            out[...] = self._background_row[:3]
        if furniture is not None and furniture.wall[1] > furniture.wall[0]:
            out[:, furniture.wall[0] : furniture.wall[1]] = self._wall_color
        for (px, py), pr, color in zip(positions, radii, colors):
            cx, cy, r = px * size, py * size, pr * size
            # Pixels whose centre is within r + 0.5 of the ball centre get nonzero coverage.
            x0 = max(int(cx - r - 1.0), 0)
            x1 = min(int(cx + r + 1.0) + 1, size)
            y0 = max(int(cy - r - 1.0), 0)
            y1 = min(int(cy + r + 1.0) + 1, size)
            if x0 >= x1 or y0 >= y1:
                continue
            dx = centers[x0:x1] - np.float32(cx)
            dy = centers[y0:y1] - np.float32(cy)
            alpha = dy[:, None] * dy[:, None] + dx * dx
            region = out[y0:y1, x0:x1]
            region[...] = _blend(region, _coverage(alpha, r), np.asarray(color, dtype=np.float32))
        self._draw_occluder(out, furniture)
        return out

    def draw_clip(
        self,
        out: np.ndarray,
        positions: np.ndarray,
        radii: np.ndarray,
        colors: np.ndarray,
        furniture: "Furniture | None" = None,
    ) -> np.ndarray:
        """Render T frames of n balls: `positions` (T, n, 2) and `radii` (n,) image fractions, `colors` (n, 3);
        `furniture`: the clip's own wall and occluder.

        Equal, bit for bit, to calling `draw` on each frame.
        """
        size, pad = self.size, self._pad
        frames = positions.shape[0]
        side = size + 2 * pad
        canvas = np.empty((frames, side, side, 3), dtype=np.uint8)
        canvas.reshape(frames, side, side * 3)[...] = np.tile(self._background_row[:3], side)
        if furniture is not None and furniture.wall[1] > furniture.wall[0]:
            canvas[:, pad : pad + size, pad + furniture.wall[0] : pad + furniture.wall[1]] = self._wall_color
        stride_t, stride_y, stride_x, _ = canvas.strides
        every_frame = np.arange(frames)
        for k in range(positions.shape[1]):
            r = float(radii[k]) * size
            box = _box_side(r)
            cx = positions[:, k, 0] * size
            cy = positions[:, k, 1] * size
            # Top-left pixel of each frame's box, the same pixels `draw` visits (plus a margin of zero coverage).
            x0 = np.floor(cx - r - 1.0).astype(np.intp)
            y0 = np.floor(cy - r - 1.0).astype(np.intp)
            offsets = np.arange(box, dtype=np.float32) + np.float32(0.5)
            dx = (x0.astype(np.float32)[:, None] + offsets) - cx.astype(np.float32)[:, None]
            dy = (y0.astype(np.float32)[:, None] + offsets) - cy.astype(np.float32)[:, None]
            alpha = (dy * dy)[:, :, None] + (dx * dx)[:, None, :]
            alpha = np.repeat(_coverage(alpha, r), 3, axis=2)  # one weight per byte of the (box, box*3) window
            # windows[t, y, x] is the (box, box*3) byte block whose top-left pixel is (y, x) in frame t.
            windows = np.lib.stride_tricks.as_strided(
                canvas,
                shape=(frames, side - box + 1, side - box + 1, box, box * 3),
                strides=(stride_t, stride_y, stride_x, stride_y, 1),
                writeable=True,
            )
            index = (every_frame, np.clip(y0 + pad, 0, side - box), np.clip(x0 + pad, 0, side - box))
            color = np.tile(np.asarray(colors[k], dtype=np.float32), box)
            windows[index] = _blend(windows[index], alpha, color)
        out[...] = canvas[:, pad : pad + size, pad : pad + size]
        self._draw_occluder(out, furniture)
        return out

    def _draw_occluder(self, out: np.ndarray, furniture: "Furniture | None" = None) -> None:
        if self._c1 > self._c0:
            out[..., self._c0 : self._c1, :] = self._occluder_block
        if furniture is not None and furniture.occluder[1] > furniture.occluder[0]:
            out[..., furniture.occluder[0] : furniture.occluder[1], :] = self._occluder_color

    def render_state(
        self,
        positions: np.ndarray,
        radii: np.ndarray,
        colors: np.ndarray,
        present: np.ndarray,
        out: np.ndarray | None = None,
        furniture: "Furniture | None" = None,
    ) -> np.ndarray:
        """Render one frame from (M, 2) positions, (M,) radii, (M, 3) colours and (M,) present mask."""
        if out is None:
            out = np.empty((self.size, self.size, 3), dtype=np.uint8)
        keep = np.flatnonzero(present)
        return self.draw(
            out,
            positions[keep].tolist(),
            radii[keep].tolist(),
            list(np.asarray(colors, dtype=np.float32)[keep]),
            furniture,
        )


@dataclass(frozen=True)
class Furniture:
    """A clip's own wall and occluder as pixel columns [c0, c1) (c0 == c1: none)."""

    wall: tuple[int, int] = (0, 0)
    occluder: tuple[int, int] = (0, 0)

    @classmethod
    def from_state(cls, wall: np.ndarray, occluder: np.ndarray, size: int) -> "Furniture":
        """From a state's `wall` faces (image fractions, pixel aligned) and `occluder` columns."""
        faces = np.rint(np.asarray(wall, np.float64) * size).astype(np.int64)
        return cls((int(faces[0]), int(faces[1])), (int(occluder[0]), int(occluder[1])))


def _box_side(radius_px: float) -> int:
    """Side of a square box that holds every pixel a ball of this pixel radius covers, wherever its centre."""
    return int(2.0 * radius_px) + 4


def _coverage(dist2: np.ndarray, radius_px: float) -> np.ndarray:
    """Turn squared pixel-centre distances into coverage in [0, 1], in place.

    Coverage ramps 1 -> 0 across the pixel straddling the rim: a cheap, smooth anti-aliased edge.
    """
    np.sqrt(dist2, out=dist2)
    np.subtract(np.float32(radius_px + 0.5), dist2, out=dist2)
    np.maximum(dist2, np.float32(0.0), out=dist2)
    np.minimum(dist2, np.float32(1.0), out=dist2)
    return dist2


def _blend(under: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> np.ndarray:
    """float32 `under + alpha * (color - under) + 0.5`, ready for a truncating store into uint8.

    The 0.5 is added up front (and to the colour) so that truncation rounds to nearest without another pass.
    """
    if alpha.ndim == under.ndim - 1:
        alpha = alpha[..., None]
    base = under + np.float32(0.5)
    delta = (color + np.float32(0.5)) - base
    delta *= alpha
    base += delta
    return base


# --------------------------------------------------------------------------------------------------- one sim


class BallsSim:
    """One simulation that owns its random generator: `reset()`, `step()`, `state()`, `render()`.

    Every random draw comes from `rng` (placement at reset, kicks at each step), so a seeded generator
    reproduces the whole trajectory.
    """

    def __init__(self, config: BallsConfig, rng: np.random.Generator) -> None:
        config.validate()
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.config = config
        self.rng = rng
        self.renderer = Renderer(config)
        self._batch: BallsBatch
        self.reset()

    def reset(self) -> dict[str, np.ndarray]:
        """Draw fresh balls from the generator and return the initial state."""
        self._batch = BallsBatch(self.config, [sample_initial(self.config, self.rng)])
        return self.state()

    def set_balls(
        self,
        positions: np.ndarray,
        velocities: np.ndarray,
        radii: np.ndarray,
        masses: np.ndarray | None = None,
        colors: np.ndarray | None = None,
    ) -> None:
        """Replace the balls with a hand-made configuration of n <= max_balls balls (for tests and probes).

        `masses` defaults to the config's rule (radius**2 or 1), `colors` to the palette in order.
        """
        cfg = self.config
        positions = np.asarray(positions, dtype=np.float64)
        n = positions.shape[0]
        if positions.shape != (n, 2) or not 1 <= n <= cfg.max_balls:
            raise ValueError(
                f"positions must be (n, 2) with 1 <= n <= max_balls ({cfg.max_balls}), got {positions.shape}"
            )
        velocities = np.asarray(velocities, dtype=np.float64)
        radii = np.asarray(radii, dtype=np.float64)
        if velocities.shape != (n, 2):
            raise ValueError(f"velocities must be ({n}, 2) like positions, got {velocities.shape}")
        if radii.shape != (n,) or np.any(radii <= 0.0):
            raise ValueError(f"radii must be ({n},) positive values, got {radii!r}")
        if masses is None:
            masses = (radii / cfg.radius_range[1]) ** 2 if cfg.mass_from_radius else np.ones(n)
        masses = np.asarray(masses, dtype=np.float64)
        if masses.shape != (n,) or np.any(masses <= 0.0):
            raise ValueError(f"masses must be ({n},) positive values, got {masses!r}")
        if colors is None:
            colors = np.asarray(cfg.palette[:n], dtype=np.uint8)
        colors = np.asarray(colors, dtype=np.uint8)
        if colors.shape != (n, 3):
            raise ValueError(f"colors must be ({n}, 3), got {colors.shape}")
        m = cfg.max_balls
        state = {
            "positions": np.zeros((m, 2)),
            "velocities": np.zeros((m, 2)),
            "radii": np.zeros(m),
            "colors": np.zeros((m, 3), dtype=np.uint8),
            "masses": np.ones(m),
            "present": np.arange(m) < n,
        }
        for key, value in (
            ("positions", positions),
            ("velocities", velocities),
            ("radii", radii),
            ("colors", colors),
            ("masses", masses),
        ):
            state[key][:n] = value
        self._batch = BallsBatch(cfg, [state])

    def step(self) -> dict[str, np.ndarray]:
        """Advance one step (drawing this step's kicks from the generator) and return the new state."""
        u, directions = draw_step_noise(self.config, self.rng)
        self._batch.step(u[None], directions[None])
        return self.state()

    def state(self) -> dict[str, np.ndarray]:
        """Ground truth padded to max_balls: positions, velocities (M, 2); radii, masses (M,); colors (M, 3)
        uint8; contacts, kicked, occluded, present (M,) bool; num_balls (0-d int64)."""
        return {k: v[0] for k, v in self._batch.state().items()}

    def render(self, out: np.ndarray | None = None) -> np.ndarray:
        """The current frame, uint8 (H, W, 3)."""
        b = self._batch
        furniture = Furniture.from_state(b.wall[0], b.clip_occluder[0], self.config.image_size)
        return self.renderer.render_state(b.positions[0], b.radii[0], b.colors[0], b.present[0], out=out,
                                          furniture=furniture)
