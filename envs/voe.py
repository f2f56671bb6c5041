"""Violation-of-expectation (VoE) clip pairs for intuitive physics: a possible and an impossible clip, identical up
to the violation frame and different from it on.

Properties (each scene draws its own balls, speeds and event time; `variant` names the sub-case):

    permanence  a ball vanishes / appears, behind the occluder or in plain view
    continuity  a ball jumps (teleports) to another place and carries on: in view, or while hidden behind the
                occluder (it goes in at one height and comes out at another)
    shape       a ball turns into a square of the same area and colour
    color       a ball changes colour
    size        a ball grows or shrinks
    solidity    a ball passes through a solid wall instead of bouncing off it
    gravity     under gravity, a ball starts falling upward
    inertia     a ball changes speed / direction with nothing touching it (by more than any simulator kick)
    collision   two balls pass through each other instead of bouncing
    control     both clips possible: the same ball gets a simulator-sized kick in two different directions (a
                model should pick the "impossible" one half the time)

Worlds are run with the simulator's own dynamics (`BallsBatch`, kicks off) in interaction groups: balls in
different groups never collide, which is how pass-through is made. Where it can be done (permanence, continuity,
shape, color, size) a scene is two *possible* worlds spliced both ways at one frame, IntPhys-style: vanish and
appear come from the same trajectory, so the impossible clips of a scene show exactly the frames its possible
clips show, only joined impossibly. A model that merely reacts to how much moves is then at chance on the group
(`VoEPairs.group`). Elsewhere an edit between steps (change velocity, flip gravity, ignore a wall or a ball) makes
the impossible world. Both clips are painted with
`envs.raster.Painter` (ball-only frames are bitwise the simulator's renderer) and the violation frame is *measured*
as the first frame whose pixels differ, so "identical up to the violation frame" holds by construction and the
frame is exactly when the impossible event becomes visible (a ball vanishing behind the occluder is seen only
when it fails to come out).

numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from envs.physics import BallsBatch, BallsConfig, bar_columns
from envs.raster import Painter, Shape, Wall

PROPERTIES: tuple[str, ...] = (
    "permanence", "continuity", "shape", "color", "size", "solidity", "gravity", "inertia", "collision", "control",
)
"""Every property `generate_pairs` knows, in report order."""

_MAX_ATTEMPTS = 400
"""Draws tried per pair before the configuration is declared unable to produce that property."""


@dataclass
class VoEConfig:
    """Clip length, event timing and scene geometry of the VoE suite (lengths: fractions of the image side)."""

    length: int = 14
    """Frames per clip."""
    min_violation_frame: int = 6
    """Earliest violation frame; leave at least the model's context + 1 frames before it."""
    min_frames_after: int = 3
    """Frames from the violation frame to the end of the clip, at least."""
    radius_range: tuple[float, float] | None = None
    """Ball radii; None: the simulator's range, capped so that a ball fits fully behind the occluder."""
    speed_range: tuple[float, float] | None = None
    """Ball speeds (sides per step); None: the simulator's range, raised to at least 0.025 so events are visible."""
    occluder_x: float = 0.5
    """Centre of the occluder in the permanence-behind-occluder scenes."""
    occluder_width: float = 0.3
    """Width of that occluder: wide enough to hide a ball completely. An upper bound: for a simulator whose balls
    are small or slow, so that fewer than 1 in 10 of the suite's crossings would hide the ball for 1 to
    `max_hidden_frames` frames, the suite narrows it to the whole-pixel width where most do (`fitted_to`; the
    default simulator keeps 0.3)."""
    max_hidden_frames: int = 3
    """A ball may stay fully hidden at most this many frames (a model with a short context must still remember it)."""
    wall_width: float = 0.06
    """Width of the solid wall in the solidity scenes."""
    gravity: float = 0.004
    """Downward acceleration in the gravity scenes (sides per step**2) when the simulator has none; one with
    gravity (`BallsConfig.gravity`) keeps its own there, and in every other scene too."""
    control_kick: float = 0.04
    """Velocity change of the control's kicks (the simulator's default kick_strength)."""
    distractor_prob: float = 0.5
    """Probability that a scene gets a second, uninvolved ball (never touching the first)."""
    border_bounces: bool | None = None
    """Keep scenes in which a visible ball bounces off the box's border. None: only when the simulator's walls are
    smooth (`BallsConfig.bounce_kick_prob` = 0). Scenes run without randomness, so their border bounces are clean
    mirror bounces; under rough walls every training bounce scatters, so a clean one is itself an event no training
    clip shows, and a "possible" clip holding one would not be possible for the model under test."""

    def fitted_to(self, balls: BallsConfig) -> VoEConfig:
        """This config with the occluder narrowed, where needed, to one the simulator's balls can cross within
        `max_hidden_frames` (see `occluder_width`); unchanged while at least 1 in 10 of its crossings can."""
        size = balls.image_size
        radii = self.radius_range or balls.radius_range
        speeds = self.speed_range or _raised_speeds(balls.speed_range)
        odds = lambda width: _crossing_odds(self, width, size, radii, speeds)  # noqa: E731
        if odds(self.occluder_width) >= 0.1:
            return self
        widths = [n / size for n in range(2, int(self.occluder_width * size) + 1)]
        best = max(widths, key=lambda width: (odds(width), width))
        return replace(self, occluder_width=best) if odds(best) > 0 else self

    def validate(self) -> None:
        if self.length < 4:
            raise ValueError(f"VoEConfig.length must be >= 4, got {self.length}")
        if not 1 <= self.min_violation_frame <= self.length - self.min_frames_after:
            raise ValueError(
                f"VoEConfig.min_violation_frame={self.min_violation_frame} must be in [1, length - min_frames_after="
                f"{self.length - self.min_frames_after}]"
            )
        if self.min_frames_after < 1:
            raise ValueError(f"VoEConfig.min_frames_after must be >= 1, got {self.min_frames_after}")
        if not 0 < self.occluder_width < 1 or not 0 < self.wall_width < 0.5:
            raise ValueError("VoEConfig.occluder_width must be in (0, 1) and wall_width in (0, 0.5)")


@dataclass
class VoEPairs:
    """P matched pairs of one property."""

    property: str
    """Which property these pairs test (one of PROPERTIES)."""
    possible: np.ndarray
    """(P, T, H, W, 3) uint8."""
    impossible: np.ndarray
    """(P, T, H, W, 3) uint8; equal to `possible` before `violation_frame`."""
    violation_frame: np.ndarray
    """(P,) int64: first frame where the two clips differ."""
    variant: np.ndarray
    """(P,) str: the sub-case (e.g. 'vanish_occluder')."""
    group: np.ndarray
    """(P,) int64: the scene each pair comes from. Pairs of one scene are matched IntPhys-style (the impossible
    clips are splices of the possible ones), so summed over the group the frame content is balanced."""
    seed: int
    """Root seed; scene j was drawn from SeedSequence(seed, spawn_key=(property index, j, attempt)) (a slowed scene:
    (property index, j, attempt, 1 or 2)); pairs are the scenes' pairs in order, so a smaller set is a prefix of a
    larger one."""
    config: VoEConfig = field(default_factory=VoEConfig)
    """Suite settings used."""
    slowed: int = 0
    """Scenes drawn at the slower end of the speed range because none could be at the full range (see
    `generate_pairs`)."""

    def __len__(self) -> int:
        return int(self.possible.shape[0])


# --------------------------------------------------------------------------------------------------- worlds


@dataclass
class Ball:
    """One ball of a scripted world."""

    x: float
    y: float
    vx: float
    vy: float
    radius: float
    color: tuple[int, int, int]
    mass: float = 1.0
    kind: str = "disc"
    """'disc' or 'square' (drawing only; physics treats every object as a disc)."""
    visible: bool = True
    """Invisible balls are simulated but not drawn (a ball that 'does not exist yet' in the possible world)."""
    group: int = 0
    """Balls collide only with balls of the same group."""
    bounced: bool = False
    """Touched the box's border in the step into this frame (set by `World`)."""

    def shape(self) -> Shape:
        return Shape(self.x, self.y, self.radius, self.color, "square" if self.kind == "square" else "disc")


Edit = Callable[[list[Ball]], list[Ball]]


class World:
    """Deterministic dynamics (no kicks) with interaction groups, solid internal walls and a gravity schedule."""

    def __init__(self, balls: BallsConfig, *, walls: tuple[Wall, ...] = (), solid_walls: bool = True) -> None:
        self.base = replace(balls.deterministic(), occluder=False, min_balls=1)
        self.walls, self.solid_walls = walls, solid_walls
        self._faces = [w.faces(balls.image_size) for w in walls]

    def run(self, balls: list[Ball], length: int, *, gravity: float | None = None,
            edits: dict[int, Edit] | None = None, gravity_from: dict[int, float] | None = None) -> list[list[Ball]]:
        """Frames 0..length-1 of ball states. edits[t] and gravity_from[t] act on the step into frame t. gravity:
        None is the simulator's own (`BallsConfig.gravity`), so that every possible clip follows the physics the
        model was trained on."""
        edits, gravity_from = edits or {}, gravity_from or {}
        gravity = self.base.gravity if gravity is None else gravity
        current = [replace(b) for b in balls]
        frames = [current]
        for t in range(1, length):
            gravity = gravity_from.get(t, gravity)
            if t in edits:
                current = edits[t]([replace(b) for b in current])
            current = self._step(current, gravity)
            frames.append(current)
        return frames

    def _step(self, balls: list[Ball], gravity: float) -> list[Ball]:
        out = [replace(b) for b in balls]
        for group in sorted({b.group for b in balls}):
            index = [i for i, b in enumerate(balls) if b.group == group]
            config = replace(self.base, gravity=gravity, max_balls=len(index),
                             radius_range=(self.base.radius_range[0], min(self.base.radius_range[1], 0.2)))
            state = {
                "positions": np.array([[balls[i].x, balls[i].y] for i in index]),
                "velocities": np.array([[balls[i].vx, balls[i].vy] for i in index]),
                "radii": np.array([balls[i].radius for i in index]),
                "colors": np.zeros((len(index), 3), np.uint8),
                "masses": np.array([balls[i].mass for i in index]),
                "present": np.ones(len(index), bool),
            }
            batch = BallsBatch(config, [state])
            batch.step(np.ones((1, len(index))), np.zeros((1, len(index), 2)))
            for k, i in enumerate(index):
                b = out[i]
                b.x, b.y = float(batch.positions[0, k, 0]), float(batch.positions[0, k, 1])
                b.vx, b.vy = float(batch.velocities[0, k, 0]), float(batch.velocities[0, k, 1])
                b.bounced = bool(batch.bounced[0, k].any())
                if self.solid_walls:
                    self._bounce_off_walls(balls[i], b)
        return out

    def _bounce_off_walls(self, before: Ball, after: Ball) -> None:
        """Mirror a ball whose leading face crossed a wall face during the step (elastic, like the border)."""
        r = after.radius
        for left, right in self._faces:
            if before.x + r <= left + 1e-9 and after.x + r > left:
                after.x, after.vx = 2 * (left - r) - after.x, -abs(after.vx)
            elif before.x - r >= right - 1e-9 and after.x - r < right:
                after.x, after.vx = 2 * (right + r) - after.x, abs(after.vx)


# --------------------------------------------------------------------------------------------------- building blocks


def _crossing_odds(voe: VoEConfig, width: float, size: int, radii: tuple[float, float],
                   speeds: tuple[float, float]) -> float:
    """The share of the suite's crossings (a ball of a radius and speed from these ranges, at a random phase) that
    an occluder of this width hides fully for 1..max_hidden_frames frames, on a 9 x 9 grid of radius and speed.

    A ball of radius r is fully hidden (rim included: half a pixel each side, see `_hidden`) while its centre is in
    a stretch of the bar's rounded columns L = bar - 2r - 1 pixel long; moving s per frame, it is seen there in
    floor(L / s) frames or one more, the latter with probability frac(L / s)."""
    c0, c1 = bar_columns(voe.occluder_x, width, size)
    hi = min(radii[1], 0.5 * width - 1.0 / size)  # the radius cap of `_Scene`
    if hi < radii[0]:
        return 0.0  # too narrow to hide even the smallest ball
    r = np.linspace(radii[0], hi, 9)[:, None]
    s = np.linspace(speeds[0], speeds[1], 9)[None, :]
    frames = np.clip((c1 - c0) / size - 2 * r - 1.0 / size, 0.0, None) / s
    low, extra = np.floor(frames), frames - np.floor(frames)
    allowed = lambda k: ((k >= 1) & (k <= voe.max_hidden_frames)).astype(float)  # noqa: E731
    return float(((1 - extra) * allowed(low) + extra * allowed(low + 1)).mean())


def _raised_speeds(speed_range: tuple[float, float]) -> tuple[float, float]:
    """The simulator's speeds raised to at least 0.025 sides per step, so that events are visible."""
    return max(speed_range[0], 0.025), max(speed_range[1], 0.025)


class _Scene:
    """Shared sampling helpers for one pair: the generator, the simulator config and the suite config."""

    def __init__(self, balls: BallsConfig, voe: VoEConfig, rng: np.random.Generator) -> None:
        self.balls, self.voe, self.rng = balls, voe, rng
        lo, hi = voe.radius_range or balls.radius_range
        if voe.radius_range is None:
            # The ball must fit behind the occluder with a pixel to spare on each side.
            hi = min(hi, 0.5 * voe.occluder_width - 1.0 / balls.image_size)
            lo = min(lo, hi)
        self.radius_range = (lo, hi)
        self.speed_range = voe.speed_range or _raised_speeds(balls.speed_range)
        self.colors = [tuple(int(c) for c in color) for color in rng.permutation(np.asarray(balls.palette))]

    def t_event(self) -> int:
        v = self.voe
        return int(self.rng.integers(v.min_violation_frame, v.length - v.min_frames_after + 1))

    def radius(self) -> float:
        return float(self.rng.uniform(*self.radius_range))

    def speed(self) -> float:
        return float(self.rng.uniform(*self.speed_range))

    def mass(self, radius: float) -> float:
        if not self.balls.mass_from_radius:
            return 1.0
        return (radius / self.balls.radius_range[1]) ** 2

    def ball(self, x: float, y: float, vx: float, vy: float, radius: float, color_index: int = 0, **kw) -> Ball:
        return Ball(x, y, vx, vy, radius, self.colors[color_index], self.mass(radius), **kw)

    def free_ball(self, color_index: int = 0, **kw) -> Ball:
        """A ball anywhere inside the box, moving in a uniform direction."""
        r = self.radius()
        angle = self.rng.uniform(0, 2 * math.pi)
        s = self.speed()
        x, y = self.rng.uniform(r, 1 - r, size=2)
        return self.ball(float(x), float(y), s * math.cos(angle), s * math.sin(angle), r, color_index, **kw)

    def distractor(self, avoid: list[Ball]) -> list[Ball]:
        """With probability distractor_prob, an extra ball in its own group placed clear of `avoid`."""
        if self.rng.random() >= self.voe.distractor_prob:
            return []
        for _ in range(50):
            d = self.free_ball(color_index=len(self.colors) - 1, group=9)
            if all(math.hypot(d.x - b.x, d.y - b.y) > d.radius + b.radius + 0.05 for b in avoid):
                return [d]
        return []


def _apart(*worlds: list[list[Ball]], group: int = 9) -> bool:
    """True when balls of `group` never touch the others in any frame of any world (no hidden interaction)."""
    for frames in worlds:
        for balls in frames:
            ours = [b for b in balls if b.group == group]
            others = [b for b in balls if b.group != group and b.visible]
            for a in ours:
                for b in others:
                    if math.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius + 0.01:
                        return False
    return True


def _inside_margin(b: Ball, margin: float) -> bool:
    return margin + b.radius <= b.x <= 1 - margin - b.radius and margin + b.radius <= b.y <= 1 - margin - b.radius


def _set(index: int, **changes) -> Edit:
    def edit(balls: list[Ball]) -> list[Ball]:
        balls[index] = replace(balls[index], **changes)
        return balls

    return edit


def _hidden(b: Ball, columns: tuple[int, int], size: int) -> bool:
    """The ball is entirely behind the occluder columns [c0, c1) (anti-aliased rim included)."""
    c0, c1 = columns
    return b.x - b.radius - 0.5 / size >= c0 / size and b.x + b.radius + 0.5 / size <= c1 / size


# A pair: (possible frames, impossible frames, variant).
# A builder returns (pairs, walls, occluder on), or None to redraw the scene.
Pair = tuple[list[list[Ball]], list[list[Ball]], str]
Built = tuple[list[Pair], tuple[Wall, ...], bool]


def _swap(first: list[list[Ball]], second: list[list[Ball]], t: int, variants: tuple[str, str]) -> list[Pair]:
    """Two matched pairs from two possible worlds and a splice frame t (the IntPhys design):
    (first, first[:t] + second[t:]) and (second, second[:t] + first[t:]).

    Every frame of the two impossible clips is a frame of one of the two possible clips, so frame content (how much
    moves, how much is visible) is balanced across the pair of pairs: only the impossible transitions differ.
    """
    return [(first, first[:t] + second[t:], variants[0]), (second, second[:t] + first[t:], variants[1])]


def _invisible(frames: list[list[Ball]], index: int = 0) -> list[list[Ball]]:
    """The same world without ball `index` (simulated, never drawn): an empty scene with identical distractors."""
    return [[replace(b, visible=b.visible and i != index) for i, b in enumerate(f)] for f in frames]


def _crossing(scene: _Scene, world: World, *, dy: float = 0.0) -> tuple[list[list[Ball]], list[int]] | None:
    """A ball that crosses the occluder horizontally and comes out on the far side at about a random event frame
    (plus maybe a distractor): its trajectory and the frames it is fully hidden in. dy: a second world of the same
    scene with the ball (and only it) moved down by dy; both must hide it in the same frames. None: redraw."""
    rng, v, size = scene.rng, scene.voe, scene.balls.image_size
    t = scene.t_event()
    columns = replace(scene.balls, occluder=True, occluder_x=v.occluder_x,
                      occluder_width=v.occluder_width).occluder_columns()
    r, s = scene.radius(), scene.speed()
    direction = 1.0 if rng.random() < 0.5 else -1.0
    vy = float(rng.uniform(-0.25, 0.25)) * s
    face = columns[1] / size if direction > 0 else columns[0] / size
    # Emerging starts when the leading rim passes the far face; aim for that half a step before frame t.
    x_emerge = face - direction * (r + 0.5 / size)
    x0 = x_emerge - direction * s * (t - 0.5)
    y0 = float(rng.uniform(r + 0.05, 1 - r - 0.05)) - vy * t / 2
    if not (r <= x0 <= 1 - r and r <= y0 <= 1 - r):
        return None
    main = scene.ball(x0, y0, direction * s, vy, r)
    others = scene.distractor([main])
    trajectory = world.run([main, *others], v.length)
    hidden = [k for k, balls in enumerate(trajectory) if _hidden(balls[0], columns, size)]
    if not hidden or hidden[0] == 0 or len(hidden) > v.max_hidden_frames or hidden[-1] + 1 >= v.length:
        return None
    if dy:
        # The shifted world must not bounce off the top or bottom (that would change its x motion too).
        if not all(r + 0.01 <= b[0].y + dy <= 1 - r - 0.01 for b in trajectory):
            return None
        shifted = world.run([replace(main, y=main.y + dy), *others], v.length)
        if not _apart(trajectory, shifted):
            return None
        return [trajectory, shifted], hidden
    if not _apart(trajectory):
        return None
    return [trajectory], hidden


def _permanence(scene: _Scene, index: int) -> Built | None:
    """Vanish + appear, both from one trajectory (ball world vs the same scene without the ball), behind the
    occluder (even scenes) or in view (odd scenes)."""
    v = scene.voe
    world = World(scene.balls)
    if index % 2 == 1:
        t = scene.t_event()
        main = scene.free_ball()
        trajectory = world.run([main, *scene.distractor([main])], v.length)
        if not _apart(trajectory):
            return None
        return _swap(trajectory, _invisible(trajectory), t, ("vanish_view", "appear_view")), (), False

    crossing = _crossing(scene, world)
    if crossing is None:
        return None
    (trajectory,), hidden = crossing
    # Spliced while the ball is out of sight: nobody sees it vanish or appear, only that it fails to come out / comes
    # out of nowhere.
    return _swap(trajectory, _invisible(trajectory), hidden[0], ("vanish_occluder", "appear_occluder")), (), True


def _event_ball(scene: _Scene, t: int, margin: float = 0.0) -> tuple[Ball, list[Ball], World, list[list[Ball]]] | None:
    """A free ball (+ maybe a distractor) and its undisturbed trajectory, the ball clear of the border by `margin`
    around frame t (so an event there is not confused with a bounce)."""
    world = World(scene.balls)
    main = scene.free_ball()
    others = scene.distractor([main])
    possible = world.run([main, *others], scene.voe.length)
    if margin > 0 and not all(_inside_margin(possible[k][0], margin) for k in range(t - 1, min(t + 2, len(possible)))):
        return None
    return main, others, world, possible


def _continuity(scene: _Scene, index: int) -> Built | None:
    """Two possible worlds: the ball, and the ball shifted; spliced, it jumps (both ways). Even scenes: the ball
    crosses the occluder and the worlds differ in height by 0.2-0.35, spliced while it is hidden, so it goes in at
    one height and comes out at another (IntPhys' occluded continuity: no frame shows the jump). Odd scenes: in
    view, shifted by 0.25-0.45 of the image in a random direction."""
    if index % 2 == 0:
        dy = float(scene.rng.uniform(0.2, 0.35)) * (1.0 if scene.rng.random() < 0.5 else -1.0)
        crossing = _crossing(scene, World(scene.balls), dy=dy)
        if crossing is None:
            return None
        (first, second), hidden = crossing
        return _swap(first, second, hidden[0], ("teleport_occluder", "teleport_back_occluder")), (), True
    t = scene.t_event()
    world = World(scene.balls)
    main = scene.free_ball()
    others = scene.distractor([main])
    first = world.run([main, *others], scene.voe.length)
    before = first[t - 1][0]
    for _ in range(20):
        angle = scene.rng.uniform(0, 2 * math.pi)
        jump = scene.rng.uniform(0.25, 0.45)
        dx, dy = jump * math.cos(angle), jump * math.sin(angle)
        margin = before.radius + 0.02
        if margin <= before.x + dx <= 1 - margin and margin <= before.y + dy <= 1 - margin \
                and margin <= main.x + dx <= 1 - margin and margin <= main.y + dy <= 1 - margin:
            break
    else:
        return None
    second = world.run([replace(main, x=main.x + dx, y=main.y + dy), *others], scene.voe.length)
    if not _apart(first, second):
        return None
    return _swap(first, second, t, ("teleport_view", "teleport_back_view")), (), False


def _appearance(scene: _Scene, index: int, what: str) -> Built | None:
    """Two possible worlds differing in one feature of the ball (shape, colour or size); spliced, it changes."""
    t = scene.t_event()
    world = World(scene.balls)
    main = scene.free_ball()
    others = scene.distractor([main])
    if what == "shape":
        other, variants = replace(main, kind="square"), ("disc_to_square", "square_to_disc")
    elif what == "color":
        other, variants = replace(main, color=scene.colors[1]), ("recolor", "recolor_back")
    else:
        radius = min(main.radius * 1.6, 0.2)
        x, y = min(max(main.x, radius), 1 - radius), min(max(main.y, radius), 1 - radius)
        other, variants = replace(main, radius=radius, x=x, y=y), ("grow", "shrink")
    first = world.run([main, *others], scene.voe.length)
    second = world.run([other, *others], scene.voe.length)
    if not _apart(first, second):
        return None
    return _swap(first, second, t, variants), (), False


def _solidity(scene: _Scene, index: int) -> Built | None:
    rng, v, size = scene.rng, scene.voe, scene.balls.image_size
    t = scene.t_event()
    wall = Wall(x=float(rng.uniform(0.4, 0.6)), width=v.wall_width)
    left, right = wall.faces(size)
    r, s = scene.radius(), scene.speed()
    direction = 1.0 if rng.random() < 0.5 else -1.0
    vy = float(rng.uniform(-0.3, 0.3)) * s
    face = left if direction > 0 else right
    # The leading rim reaches the wall face half a step before frame t.
    x0 = face - direction * r - direction * s * (t - 0.5)
    y0 = float(rng.uniform(r + 0.05, 1 - r - 0.05)) - vy * t / 2
    if not (r <= x0 <= 1 - r and r <= y0 <= 1 - r):
        return None
    main = scene.ball(x0, y0, direction * s, vy, r)
    possible = World(scene.balls, walls=(wall,), solid_walls=True).run([main], v.length)
    impossible = World(scene.balls, walls=(wall,), solid_walls=False).run([main], v.length)
    # The impossible ball must really be seen inside the wall, not merely touching it.
    if not any(left + 0.5 / size < b[0].x < right - 0.5 / size or abs(b[0].x - wall.x) < r for b in impossible[t:]):
        return None
    return [(possible, impossible, "pass_through_wall")], (wall,), False


def _gravity(scene: _Scene, index: int) -> Built | None:
    rng, v = scene.rng, scene.voe
    t = scene.t_event()
    r = scene.radius()
    g = scene.balls.gravity or v.gravity  # a simulator with gravity keeps its own (its sign included)
    # Thrown so that it is in mid-air around t: start low-ish with an upward velocity, drifting sideways.
    main = scene.ball(float(rng.uniform(r, 1 - r)), float(rng.uniform(0.35, 0.8)), float(rng.uniform(-0.03, 0.03)),
                      float(rng.uniform(-0.05, 0.0)), r)
    world = World(scene.balls)
    possible = world.run([main], v.length, gravity=g)
    impossible = world.run([main], v.length, gravity=g, gravity_from={t: -g})
    for frames in (possible, impossible):
        if not all(_inside_margin(frames[k][0], 0.04) for k in range(t - 1, min(t + 3, v.length))):
            return None
    return [(possible, impossible, "falls_upward")], (), False


def _inertia(scene: _Scene, index: int) -> Built | None:
    variant = ("reverse", "turn", "speed_up", "slow_down")[index % 4]
    t = scene.t_event()
    made = _event_ball(scene, t, margin=0.1)
    if made is None:
        return None
    main, others, world, possible = made
    b = possible[t - 1][0]
    if variant == "reverse":
        vx, vy = -b.vx, -b.vy
    elif variant == "turn":
        sign = 1.0 if scene.rng.random() < 0.5 else -1.0
        vx, vy = -sign * b.vy, sign * b.vx
    elif variant == "speed_up":
        speed = math.hypot(b.vx, b.vy)
        factor = min(2.5, scene.balls.max_speed / max(speed, 1e-9))
        vx, vy = b.vx * factor, b.vy * factor
    else:
        vx, vy = 0.1 * b.vx, 0.1 * b.vy
    # Bigger than a simulator kick could make it, so "it was just kicked" does not explain it.
    if math.hypot(vx - b.vx, vy - b.vy) < 0.03:
        return None
    impossible = world.run([main, *others], scene.voe.length, edits={t: _set(0, vx=vx, vy=vy)})
    if not all(_inside_margin(impossible[k][0], 0.02) for k in range(t - 1, min(t + 2, scene.voe.length))):
        return None
    if not _apart(possible, impossible):
        return None
    return [(possible, impossible, variant)], (), False


def _collision(scene: _Scene, index: int) -> Built | None:
    rng, v, size = scene.rng, scene.voe, scene.balls.image_size
    t = scene.t_event()
    ra, rb = scene.radius(), scene.radius()
    normal = rng.uniform(0, 2 * math.pi)
    n = np.array([math.cos(normal), math.sin(normal)])
    contact = rng.uniform(0.35, 0.65, size=2)
    pa, pb = contact - n * ra, contact + n * rb
    va = scene.speed() * _rotate(n, rng.uniform(-0.4, 0.4))
    vb = -scene.speed() * _rotate(n, rng.uniform(-0.4, 0.4))
    # Touching half a step before frame t.
    a0, b0 = pa - va * (t - 0.5), pb - vb * (t - 0.5)
    a = scene.ball(float(a0[0]), float(a0[1]), float(va[0]), float(va[1]), ra, 0, group=0)
    b = scene.ball(float(b0[0]), float(b0[1]), float(vb[0]), float(vb[1]), rb, 1, group=0)
    if not all(x.radius <= c <= 1 - x.radius for x in (a, b) for c in (x.x, x.y)):
        return None
    if math.hypot(a.x - b.x, a.y - b.y) < ra + rb + 2.0 / size:
        return None
    world = World(scene.balls)
    possible = world.run([a, b], v.length)
    impossible = world.run([a, replace(b, group=1)], v.length)
    # The pass-through must be visible: the balls overlap in some frame of the impossible clip.
    if not any(math.hypot(f[0].x - f[1].x, f[0].y - f[1].y) < 0.8 * (ra + rb) for f in impossible):
        return None
    return [(possible, impossible, "pass_through_ball")], (), False


def _control(scene: _Scene, index: int) -> Built | None:
    t = scene.t_event()
    made = _event_ball(scene, t, margin=0.05)
    if made is None:
        return None
    main, others, world, _ = made
    b0 = scene.rng.uniform(0, 2 * math.pi)
    b1 = b0 + scene.rng.uniform(0.5 * math.pi, 1.5 * math.pi)
    worlds = []
    for angle in (b0, b1):
        def kick(balls: list[Ball], angle: float = angle) -> list[Ball]:
            b = balls[0]
            vx = b.vx + scene.voe.control_kick * math.cos(angle)
            vy = b.vy + scene.voe.control_kick * math.sin(angle)
            speed = math.hypot(vx, vy)
            cap = min(1.0, scene.balls.max_speed / max(speed, 1e-12))  # the simulator's kick cap
            balls[0] = replace(b, vx=vx * cap, vy=vy * cap)
            return balls
        worlds.append(world.run([main, *others], scene.voe.length, edits={t: kick}))
    if not _apart(*worlds):
        return None
    return [(worlds[0], worlds[1], "two_kicks")], (), False


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


_BUILDERS: dict[str, Callable[[_Scene, int], Built | None]] = {
    "permanence": _permanence,
    "continuity": _continuity,
    "shape": lambda scene, i: _appearance(scene, i, "shape"),
    "color": lambda scene, i: _appearance(scene, i, "color"),
    "size": lambda scene, i: _appearance(scene, i, "size"),
    "solidity": _solidity,
    "gravity": _gravity,
    "inertia": _inertia,
    "collision": _collision,
    "control": _control,
}


# --------------------------------------------------------------------------------------------------- generation


def generate_pairs(
    balls: BallsConfig, property: str, num_pairs: int, seed: int, voe: VoEConfig | None = None
) -> VoEPairs:
    """`num_pairs` matched pairs of `property`, drawn with the simulator settings `balls` (size, colours, speeds).

    Scene j depends only on (balls, property, voe, seed, j); permanence, continuity, shape, color and size scenes
    give two matched pairs each (see `_swap`), the others one. Raises ValueError naming the property when the
    settings cannot produce it (e.g. clips too short for the event window).
    """
    voe = voe or VoEConfig()
    voe.validate()
    balls.validate()
    voe = voe.fitted_to(balls)
    if property not in _BUILDERS:
        raise ValueError(f"unknown VoE property {property!r}; expected one of {', '.join(PROPERTIES)}")
    if not (isinstance(num_pairs, int) and num_pairs >= 1):
        raise ValueError(f"num_pairs must be an int >= 1, got {num_pairs!r}")
    prop_index = PROPERTIES.index(property)
    side, length = balls.image_size, voe.length
    possible = np.empty((num_pairs, length, side, side, 3), np.uint8)
    impossible = np.empty_like(possible)
    frames_at = np.empty(num_pairs, np.int64)
    groups = np.empty(num_pairs, np.int64)
    variants: list[str] = []
    occluded = replace(balls, occluder=True, occluder_x=voe.occluder_x, occluder_width=voe.occluder_width)
    painters = {False: Painter(replace(balls, occluder=False)), True: Painter(occluded)}
    keep_bounces = voe.border_bounces if voe.border_bounces is not None else not balls.rough_walls
    # A model with a long context needs a late violation, and a scene whose balls must travel to it from inside the
    # box (a collision, a crossing) may then fit only for slower balls: when no attempt at the full speed range
    # draws a scene, it is drawn again at the range's slower half, then its slowest quarter.
    low, high = voe.speed_range or _raised_speeds(balls.speed_range)
    speeds = [None, (low, low + 0.5 * (high - low)), (low, low + 0.25 * (high - low))]
    filled, scene, slowed = 0, 0, 0
    while filled < num_pairs:
        drawn = None
        for level, speed_range in enumerate(speeds):
            scene_voe = voe if speed_range is None else replace(voe, speed_range=speed_range)
            for attempt in range(_MAX_ATTEMPTS):
                key = (prop_index, scene, attempt) if level == 0 else (prop_index, scene, attempt, level)
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
                built = _BUILDERS[property](_Scene(balls, scene_voe, rng), scene)
                if built is None:
                    continue
                pairs, walls, occluder = built
                if not keep_bounces and _bounces(pairs):
                    continue
                painted = [_paint_pair(painters[occluder], walls, pair, voe) for pair in pairs]
                if all(p is not None for p in painted):
                    drawn = pairs, painted
                    break
            if drawn is not None:
                slowed += level > 0
                break
        if drawn is None:
            raise ValueError(
                f"could not draw VoE scene {scene} of property {property!r} in {_MAX_ATTEMPTS} tries (nor at the "
                f"slower half or quarter of the speed range) with length={voe.length}, min_violation_frame="
                f"{voe.min_violation_frame}, image_size={side}; use longer clips or a smaller min_violation_frame"
            )
        pairs, painted = drawn
        for (clip_p, clip_i, t), (_, _, variant) in zip(painted, pairs):
            if filled == num_pairs:
                break
            possible[filled], impossible[filled], frames_at[filled], groups[filled] = clip_p, clip_i, t, scene
            variants.append(variant)
            filled += 1
        scene += 1
    return VoEPairs(property=property, possible=possible, impossible=impossible, violation_frame=frames_at,
                    variant=np.asarray(variants), group=groups, seed=int(seed), config=voe, slowed=slowed)


def _bounces(pairs: list[Pair]) -> bool:
    """Whether a visible ball of any clip of `pairs` touches the box's border."""
    return any(b.bounced and b.visible for world_p, world_i, _ in pairs for f in (*world_p, *world_i) for b in f)


def _paint_pair(painter: Painter, walls: tuple[Wall, ...], pair: Pair, voe: VoEConfig
                ) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(possible clip, impossible clip, violation frame), or None when the first difference falls outside the
    allowed window (or there is none)."""
    world_p, world_i, _ = pair
    clip_p = painter.paint_clip([[b.shape() for b in f if b.visible] for f in world_p], walls)
    clip_i = painter.paint_clip([[b.shape() for b in f if b.visible] for f in world_i], walls)
    differs = np.flatnonzero((clip_p != clip_i).reshape(voe.length, -1).any(-1))
    if differs.size == 0:
        return None
    t = int(differs[0])
    if not voe.min_violation_frame <= t <= voe.length - voe.min_frames_after:
        return None
    return clip_p, clip_i, t


MAX_HIDDEN_FRAMES = 8
"""The longest a ball stays fully hidden in a suite drawn for a model with a long memory (the training data's
occlusions: median 9 frames from the last clear view to the re-emergence)."""


def voe_config_for(context: int, *, frames_after: int = 6, memory: int | None = None, **overrides) -> VoEConfig:
    """A suite config for a model whose surprise is scored from frame `context` on, each frame judged from up to
    `memory` frames before it (default `context`). A ball is surely hidden (rim included) for at most memory - 2
    frames (at most MAX_HIDDEN_FRAMES), and violations come no earlier than context + 2 nor before the ball has
    been in view for 4 frames more than it can hide, so the judge sees it clearly, going in, before it is due
    out. A rim so faint that it rounds to nothing can hide it one frame more."""
    memory = memory or context
    hidden = max(1, min(memory - 2, MAX_HIDDEN_FRAMES)) if memory > context else max(1, context - 2)
    start = max(context + 2, hidden + 4) if memory > context else context + 2
    overrides.setdefault("max_hidden_frames", hidden)
    return VoEConfig(length=start + frames_after + 1, min_violation_frame=start, min_frames_after=3, **overrides)
