"""Multi-modal test scenes whose future distribution is known exactly: a ball forks one of K ways at a known step.

Each scene draws its balls like the simulator does (`sample_initial`), runs the simulator's own dynamics without
random kicks for the context frames, and then, at the fork step, gives ball 0 (the largest, see `sample_initial`)
one simulator kick in one of K directions (or, for bounce forks, one rough-wall scatter). The K continuations are simulated in full, so a scene holds every
possible future and its probability, not just the one that happened: that is what best-of-N error, mode coverage
and calibration are measured against.

Under rough walls every bounce off the box's border is a fork, so bounce scenes where any other bounce happens in
the observed or future frames are redrawn (`ForkConfig.single_fork`): the fork listed is then the only randomness
of the scene, and its ways are exactly the futures the training simulator could produce.

The kick is the simulator's own (`BallsBatch.step` with a kick schedule: kick_prob = 1 and a uniform of 0 where a
kick is scheduled, 1 elsewhere), so its size, direction handling and speed cap are exactly those of training data.

    K = 2, directions at 0 and 180 degrees: "kicked right or left" (probabilities (0.5, 0.5) by default)
    K = 3 with probabilities (0.5, 0.3, 0.2): a three-way fork with known, unequal odds
    event = "bounce": the context ends as ball 0 reaches the border, and a rough wall scatters it along the wall
                      one way or the other (the training simulator's own fork when bounce_kick_prob > 0: the past
                      shows when it comes, not which way)

numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from envs.physics import BallsBatch, BallsConfig, Renderer, sample_initial

_MAX_ATTEMPTS = 200
"""Scene draws tried per scene before giving up (rejections: modes too close together at the last frame)."""


@dataclass
class ForkConfig:
    """A family of fork scenes (lengths are fractions of the image side, speeds in sides per step)."""

    directions: int = 2
    """K, the number of ways ball 0 can go at the fork."""
    probabilities: tuple[float, ...] = ()
    """Probability of each way, K entries summing to 1 (empty: uniform)."""
    kick: float = 0.06
    """Size of the velocity change at the fork (the simulator caps the resulting speed at max_speed)."""
    base_angle: float | None = 0.0
    """Direction of way 0 in degrees (0 = +x, right; 90 = +y, down); ways are spaced 360/K apart. None: a random
    rotation per scene."""
    context: int = 4
    """Observed frames before the fork; the kick acts on the step into the first future frame."""
    horizon: int = 10
    """Future frames simulated for every way."""
    event: str = "kick"
    """What forks: 'kick' (ball 0 is kicked one of K ways on the step after the context, a kick the past gives no
    hint of) or 'bounce' (the context ends as ball 0 reaches the box's border and a rough wall scatters it along the
    wall, one of 2 ways with equal odds: the training data's own fork when `BallsConfig.bounce_kick_prob` > 0;
    `kick` is then the scatter's size)."""
    search_steps: int = 60
    """'bounce': steps ball 0 may run freely, after the context, before the scene is redrawn for lack of a bounce."""
    min_separation: float = 0.15
    """Every pair of ways, and every way and the unkicked continuation, must leave ball 0 at least this far apart at
    the last frame (else the scene is redrawn), so that each mode is identifiable from ball 0's position."""
    single_fork: bool = True
    """'bounce' with rough walls (`BallsConfig.bounce_kick_prob` > 0): redraw a scene in which any ball other than
    ball 0 touches the box's border in the observed or future frames (ball 0 may bounce only at the fork). Under
    rough walls every such bounce is a fork of its own: the scene would list only ball 0's ways and simulate the
    other bounce clean, a future the training data never shows, so no listed way would be a true future. False
    keeps those scenes (how scenes were drawn before this field existed); with smooth walls bounces are
    deterministic and nothing is redrawn. Kick forks are never redrawn for it: a kicked ball nearly always reaches
    a side within the horizon, so under rough walls they keep unlisted forks (they are the headline family only
    with smooth walls)."""

    def validate(self) -> None:
        if not (isinstance(self.directions, int) and self.directions >= 2):
            raise ValueError(f"ForkConfig.directions must be an int >= 2, got {self.directions!r}")
        probs = self.resolved_probabilities()
        if probs.shape != (self.directions,) or np.any(probs < 0) or not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(
                f"ForkConfig.probabilities must be {self.directions} non-negative numbers summing to 1, "
                f"got {self.probabilities!r}"
            )
        if not self.kick > 0:
            raise ValueError(f"ForkConfig.kick must be > 0, got {self.kick!r}")
        if self.context < 1 or self.horizon < 1:
            raise ValueError(f"ForkConfig.context and horizon must be >= 1, got {self.context}, {self.horizon}")
        if self.event not in ("kick", "bounce"):
            raise ValueError(f"ForkConfig.event must be 'kick' or 'bounce', got {self.event!r}")
        if self.event == "bounce" and (self.directions != 2 or not np.allclose(probs, 0.5)):
            raise ValueError("ForkConfig.event='bounce' forks 2 ways with equal odds (the rough wall's fair coin); "
                             f"got directions={self.directions}, probabilities={self.probabilities!r}")
        if self.min_separation < 0:
            raise ValueError(f"ForkConfig.min_separation must be >= 0, got {self.min_separation!r}")

    def resolved_probabilities(self) -> np.ndarray:
        if len(self.probabilities) == 0:
            return np.full(self.directions, 1.0 / self.directions)
        return np.asarray(self.probabilities, dtype=np.float64)


@dataclass
class ForkScenes:
    """S scenes, each with K simulated ways of continuing and the one that (randomly) happened."""

    context: np.ndarray
    """(S, C, H, W, 3) uint8 observed frames (identical for every way)."""
    futures: np.ndarray
    """(S, K, F, H, W, 3) uint8 future frames of every way."""
    context_state: dict[str, np.ndarray]
    """Ground truth of the context frames, each (S, C, max_balls, ...) as in `BallsSim.state`."""
    future_state: dict[str, np.ndarray]
    """Ground truth of every way's future frames, each (S, K, F, max_balls, ...)."""
    probabilities: np.ndarray
    """(K,) probability of each way."""
    angles: np.ndarray
    """(S, K) kick direction of each way, radians."""
    realized: np.ndarray
    """(S,) int64: the way that happened, drawn with `probabilities`."""
    unkicked: np.ndarray
    """(S, F, max_balls, 2) positions of every ball had the fork's kick not happened (the continuation a model that
    expects no kick predicts): not one of the ways, so a sample landing there hits no mode."""
    balls: BallsConfig
    """Simulator settings the scenes were drawn from (kicks off except the fork)."""
    fork: ForkConfig = field(default_factory=ForkConfig)
    """The scene family."""

    def __len__(self) -> int:
        return int(self.context.shape[0])

    def realized_clips(self) -> np.ndarray:
        """(S, C + F, H, W, 3) uint8: context followed by the future that happened."""
        chosen = self.futures[np.arange(len(self)), self.realized]
        return np.concatenate([self.context, chosen], axis=1)

    def mode_positions(self, ball: int = 0) -> np.ndarray:
        """(S, K, F, 2) position of `ball` in every way's future (ball 0 is the one that forks)."""
        return self.future_state["positions"][:, :, :, ball]

    def null_positions(self, ball: int = 0) -> np.ndarray:
        """(S, F, 2) position of `ball` had the fork not happened."""
        return self.unkicked[:, :, ball]


def _simulate(config: BallsConfig, initial: list[dict[str, np.ndarray]], kicks: np.ndarray, angles: np.ndarray,
              steps: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Run B simulations `steps` steps with a kick schedule; returns per-frame states (frame 0 = initial) and
    positions (B, steps + 1, M, 2). kicks: (B, steps, M) bool; angles: (B, steps, M) radians."""
    batch = BallsBatch(config, initial)
    states, positions = [batch.state()], [batch.positions.copy()]
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    for t in range(steps):
        # kick_prob is 1 in `config`: a uniform of 0 kicks, 1 does not (the comparison is strict).
        batch.step(np.where(kicks[:, t], 0.0, 1.0), directions[:, t])
        states.append(batch.state())
        positions.append(batch.positions.copy())
    return states, np.stack(positions, axis=1)


def _unlisted_forks(balls: BallsConfig, fork: ForkConfig) -> bool:
    """Whether a border bounce other than the fork's own makes a scene unusable (see ForkConfig.single_fork)."""
    return fork.single_fork and balls.rough_walls


def _stack_states(states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-frame (B, M, ...) dicts -> (B, T, M, ...)."""
    return {key: np.stack([s[key] for s in states], axis=1) for key in states[0]}


def initial_from(state: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """The BallsBatch initial dict of simulation `index` in a (B, M, ...) state."""
    return {
        "positions": state["positions"][index],
        "velocities": state["velocities"][index],
        "radii": state["radii"][index],
        "colors": state["colors"][index],
        "masses": np.where(state["present"][index], state["masses"][index], 1.0),
        "present": state["present"][index],
    }


Drawn = tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], np.ndarray, np.ndarray]
"""(context states, K + 1 future states (every way, then unkicked), their positions (K + 1, F + 1, M, 2), angles
(K,)), or None to redraw."""


def _draw_kick(balls: BallsConfig, fork: ForkConfig, rng: np.random.Generator) -> Drawn | None:
    """Context from the drawn balls with no kicks, then ball 0 kicked one of K ways on the step into the future."""
    k, c, f, m = fork.directions, fork.context, fork.horizon, balls.max_balls
    # The fork is the only kick: kick_prob = 1 lets a schedule of uniforms decide exactly where kicks happen.
    kicking = replace(balls.deterministic(), kick_prob=1.0, kick_strength=fork.kick)
    initial = sample_initial(balls, rng)
    base = math.radians(fork.base_angle) if fork.base_angle is not None else rng.uniform(0, 2 * math.pi)
    angles = base + 2 * math.pi * np.arange(k) / k
    ctx_states, _ = _simulate(kicking, [initial], np.zeros((1, c - 1, m), bool), np.zeros((1, c - 1, m)), c - 1)
    last = initial_from(ctx_states[-1], 0)
    # K kicked copies plus one unkicked (the last), which is no way of the fork but must be told apart.
    kicks = np.zeros((k + 1, f, m), bool)
    kicks[:k, 0, 0] = True
    kick_angles = np.zeros((k + 1, f, m))
    kick_angles[:k, 0, 0] = angles
    fut_states, fut_positions = _simulate(kicking, [last] * (k + 1), kicks, kick_angles, f)
    return ctx_states, fut_states, fut_positions, angles


def bounce_search_steps(balls: BallsConfig, fork: ForkConfig) -> int:
    """Steps a 'bounce' scene's ball may run before it is redrawn: fork.search_steps, or the time a ball of the
    simulator's mean speed takes to cross the box when that is longer (slow balls need a while to reach a side)."""
    mean_speed = 0.5 * (balls.speed_range[0] + balls.speed_range[1])
    return max(fork.search_steps, math.ceil(1.0 / max(mean_speed, 1e-3)))


def _draw_bounce(balls: BallsConfig, fork: ForkConfig, rng: np.random.Generator) -> Drawn | None:
    """The drawn balls run freely until ball 0 bounces off one side of the box; the context is the C frames before
    that bounce and the two ways are the rough wall's scatter along that side (`BallsConfig.bounce_kick_prob`),
    the unkicked continuation a clean mirror bounce. None when ball 0 bounces off a corner, not within
    `search_steps`, or again within the horizon (the scene would then have a second, unlisted fork), and under rough
    walls when another ball touches the border (see ForkConfig.single_fork)."""
    c, f, m = fork.context, fork.horizon, balls.max_balls
    free = BallsBatch(balls.deterministic(), [sample_initial(balls, rng)])
    states, fork_step, bounced = [free.state()], None, []
    for step in range(c - 1 + bounce_search_steps(balls, fork)):
        free.step(np.zeros((1, m)), np.zeros((1, m, 2)))
        states.append(free.state())
        bounced.append(free.bounced[0].any(-1))  # (M,): which balls touched the border in this step
        if step >= c - 1 and free.bounced[0, 0].sum() == 1:
            fork_step = step  # the step from frame `step` (the last context frame) into the first future frame
            break
    if fork_step is None:
        return None
    # Steps between context frames (fork_step - c + 1 .. fork_step - 1), and the other balls at the fork step itself.
    if _unlisted_forks(balls, fork) and (np.any(bounced[fork_step - c + 1 : fork_step]) or bounced[fork_step][1:].any()):
        return None
    ctx_states = states[fork_step + 1 - c : fork_step + 1]
    last = initial_from(ctx_states[-1], 0)
    # Scatter on with certainty, decided per ball and step by the uniforms: 1 scatters (if bouncing), 0 never.
    scattering = replace(balls.deterministic(), bounce_kick_prob=1.0, bounce_kick=fork.kick)
    batch = BallsBatch(scattering, [last] * 3)
    u = np.zeros((3, m))
    u[:2, 0] = 1.0
    signs = np.zeros((3, m, 2))
    signs[0, 0], signs[1, 0] = 1.0, -1.0  # way 0 scatters towards +x / +y along the wall, way 1 the other way
    positions = [batch.positions.copy()]
    fut_states = [batch.state()]
    batch.step(u, signs)
    tangent = 1 if batch.bounced[0, 0, 0] else 0  # an x bounce scatters along y
    for step in range(f):
        if step:
            batch.step(np.zeros((3, m)), np.zeros((3, m, 2)))
            # Ball 0 bouncing again is a second fork; so is any other ball's bounce under rough walls.
            if batch.bounced[:, 0].any() or (_unlisted_forks(balls, fork) and batch.bounced.any()):
                return None
        fut_states.append(batch.state())
        positions.append(batch.positions.copy())
    angles = np.array([math.pi / 2, -math.pi / 2]) if tangent == 1 else np.array([0.0, math.pi])
    return ctx_states, fut_states, np.stack(positions, axis=1), angles


def generate_fork_scenes(balls: BallsConfig, fork: ForkConfig, num_scenes: int, seed: int) -> ForkScenes:
    """Draw `num_scenes` fork scenes; scene i depends only on (balls, fork, seed, i)."""
    balls.validate()
    fork.validate()
    if not (isinstance(num_scenes, int) and num_scenes >= 1):
        raise ValueError(f"num_scenes must be an int >= 1, got {num_scenes!r}")
    k, c, f = fork.directions, fork.context, fork.horizon
    probs = fork.resolved_probabilities()
    draw = _draw_bounce if fork.event == "bounce" else _draw_kick

    kept_context, kept_future, kept_angles, kept_realized, kept_unkicked = [], [], [], [], []
    for index in range(num_scenes):
        undrawn = 0  # attempts whose draw itself failed (see _draw_bounce / _draw_kick), not the separation
        for attempt in range(_MAX_ATTEMPTS):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, attempt)))
            drawn = draw(balls, fork, rng)
            if drawn is None:
                undrawn += 1
                continue
            ctx_states, fut_states, fut_positions, angles = drawn
            realized = int(rng.choice(k, p=probs))
            end = fut_positions[:, -1, 0]  # (K + 1, 2) ball 0 at the last frame of each way and unkicked
            gaps = np.hypot(*(end[:, None] - end[None]).transpose(2, 0, 1))[np.triu_indices(k + 1, 1)]
            if gaps.min() >= fork.min_separation:
                break
        else:
            if undrawn == _MAX_ATTEMPTS and fork.event == "bounce":
                raise ValueError(
                    f"could not draw bounce fork scene {index} in {_MAX_ATTEMPTS} tries: ball 0 never bounced once "
                    f"off one side within {bounce_search_steps(balls, fork)} steps without a second bounce (or, "
                    "under rough walls, another ball's) in the context or horizon; shorten the horizon or raise "
                    "ForkConfig.search_steps"
                )
            raise ValueError(
                f"could not draw {fork.event} fork scene {index} with ways at least ForkConfig.min_separation="
                f"{fork.min_separation} apart after {_MAX_ATTEMPTS} tries ({undrawn} of them drew no scene); "
                "lower min_separation or raise kick"
            )
        kept_context.append(_stack_states(ctx_states))  # (1, C, M, ...)
        future = _stack_states(fut_states[1:])  # (K + 1, F, M, ...)
        kept_future.append({key: value[:k] for key, value in future.items()})
        kept_unkicked.append(future["positions"][k])  # (F, M, 2)
        kept_angles.append(angles)
        kept_realized.append(realized)

    context_state = {key: np.concatenate([s[key] for s in kept_context]) for key in kept_context[0]}
    future_state = {key: np.stack([s[key] for s in kept_future]) for key in kept_future[0]}
    renderer = Renderer(balls)
    side = balls.image_size
    context = np.empty((num_scenes, c, side, side, 3), np.uint8)
    futures = np.empty((num_scenes, k, f, side, side, 3), np.uint8)
    for s in range(num_scenes):
        keep = np.flatnonzero(context_state["present"][s, 0])
        radii, colors = context_state["radii"][s, 0, keep], context_state["colors"][s, 0, keep]
        renderer.draw_clip(context[s], context_state["positions"][s][:, keep], radii, colors)
        for way in range(k):
            renderer.draw_clip(futures[s, way], future_state["positions"][s, way][:, keep], radii, colors)
    return ForkScenes(
        context=context,
        futures=futures,
        context_state=context_state,
        future_state=future_state,
        probabilities=probs,
        angles=np.stack(kept_angles),
        realized=np.asarray(kept_realized, dtype=np.int64),
        unkicked=np.stack(kept_unkicked),
        balls=balls.deterministic(),
        fork=fork,
    )
