"""Physics probes: what ground-truth state can be read out of a model's frozen representations.

For every frame t >= 1 of held-out simulator clips the probe input is the representation of frame t and its change
since frame t-1 (`pair_of`; velocity is not visible in one still frame), and the targets are the simulator's state at t:

    position, velocity, speed, radius          regression per ball, a ball being known by its colour (R2 over
                                                the balls present). velocity is the displacement from t-1 to t,
                                                the motion the two frames show; speed and direction are its norm
                                                and angle
    velocity_state                              the simulator's velocity at t, which after a bounce at t already
                                                points the new way: no pair of frames up to t shows it, so even the
                                                true positions stay below R2 = 1 on it (kept as a reference)
    direction (8 bins) per ball, colours present, count
                                                classification (balanced accuracy)
    contact_within_k                            a ball touches another ball within the next k frames
    hidden_position                             position of a ball completely behind a (wide) occluder

Feature sets, side by side: the trained encoder ("model"), the same architecture freshly initialised
("random_init") and downsampled pixels ("pixels"), plus a ceiling: the true positions themselves
("oracle_positions"); for the hidden ball also the causal predictor's state
("model_predictor" vs "random_predictor"), the only place a model can remember a ball it cannot see.
Splits are by clip (train / val / test, no frame of a test clip is ever fitted) plus an out-of-distribution test
set drawn with speeds and radii outside the training ranges.

Also here: probes applied to *predicted* representations (fitted on target-encoder features of real frames, read on
the model's deterministic rollout, per horizon), and a Physion-style contact readout (observe k frames, predict a
ball-ball contact in the next m, from the observed features only vs observed + the model's own rollout).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from envs.clips import generate_clips
from envs.physics import BallsConfig, sample_initial
from worldmodel.model import WorldModel

from . import inference
from .metrics import auroc, balanced_accuracy, r2_score
from .probe_models import Split, fit_probe, score

REGRESSION = ("position", "velocity", "velocity_state", "speed", "radius")
CLASSIFICATION = ("direction", "color", "count", "contact_within_k")
CONTACT_GAP = 1e-3
"""Two balls whose rims are closer than this (image sides) touch (the simulator separates colliding balls to
exactly touching)."""


@dataclass
class ProbeConfig:
    """Sizes and settings of the probe suite."""

    clips: int = 1024
    """In-distribution clips (split by clip into train / val / test). Frames of one clip are strongly correlated,
    so a probe learns from about as many independent samples as it has clips: with 256 (154 to train on) a ridge
    position probe of a 2,500-step small model scored R2 0.993 on its training clips and 0.916 on test ones, with
    1024 0.981 and 0.972 (velocity 0.812 -> 0.919), on the same representations."""
    ood_clips: int = 64
    """Out-of-distribution test clips (speeds and radii above the training ranges)."""
    hidden_clips: int = 512
    """Clips with a wide occluder, for the hidden-ball target (each colour's ball is hidden in a few frames of a
    few of them, and the probe is fitted per colour)."""
    contact_clips: int = 256
    """Clips with at least two balls for the Physion-style contact readout."""
    length: int = 16
    """Frames per probe clip; at least the model's context_frames + 2 (raised to that, with a message)."""
    contact_within: int = 4
    """k of contact_within_k."""
    readout_future: int = 6
    """m of the contact readout: predict a contact in the m frames after the observed ones."""
    direction_bins: int = 8
    """Classes of the direction target."""
    pixel_size: int = 16
    """Side of the downsampled pixel control."""
    probe_models: tuple[str, ...] = ("linear", "mlp")
    """Readouts fitted for every target: 'linear' (ridge / logistic) and 'mlp'."""
    mlp_epochs: int = 150
    """Epochs of the MLP probe."""
    predicted_horizon: int = 8
    """Rollout length for probes on predicted representations."""
    seed: int = 20_000
    """Root seed of every probe clip set (disjoint from training's seed 0 streams)."""


# --------------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One probe target over rows = (clip, frame t >= 1)."""

    kind: str
    """'regression' or 'classification'."""
    values: np.ndarray
    """(n, k) floats or (n, s) int labels."""
    mask: np.ndarray
    """(n, k) / (n, s) bool: which entries exist (present balls, frames with k future frames, ...)."""
    num_classes: int = 0
    """Classification only."""


def ball_contacts(state: dict[str, np.ndarray]) -> np.ndarray:
    """(N, T) bool: some two present balls touch in that frame."""
    pos, rad, present = state["positions"], state["radii"], state["present"]
    m = pos.shape[2]
    touching = np.zeros(pos.shape[:2], bool)
    for i in range(m):
        for j in range(i + 1, m):
            gap = np.linalg.norm(pos[:, :, i] - pos[:, :, j], axis=-1) - rad[:, :, i] - rad[:, :, j]
            touching |= (gap < CONTACT_GAP) & present[:, :, i] & present[:, :, j]
    return touching


def fully_hidden(state: dict[str, np.ndarray], balls: BallsConfig) -> np.ndarray:
    """(N, T, M) bool: the ball, anti-aliased rim included, lies entirely behind an occluder: the simulator's fixed
    one (`balls.occluder`) or the clip's own (`state["occluder"]`, (N, T, 2) pixel columns, when clips have them)."""
    size, half_px = balls.image_size, 0.5 / balls.image_size
    x, r = state["positions"][..., 0], state["radii"]

    def behind(c0, c1):  # empty columns (c0 == c1 == 0: no occluder) hide nothing
        return (x - r - half_px >= c0 / size) & (x + r + half_px <= c1 / size)

    hidden = behind(*balls.occluder_columns())
    if "occluder" in state:
        hidden |= behind(state["occluder"][..., :1], state["occluder"][..., 1:])
    return state["present"] & hidden


def _rows(x: np.ndarray) -> np.ndarray:
    """(N, T, ...) -> (N * (T - 1), ...): frames 1..T-1 of every clip (frame 0 has no previous frame)."""
    return x[:, 1:].reshape(-1, *x.shape[2:])


def by_color(values: np.ndarray, state: dict[str, np.ndarray], palette: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Per-ball values (N, T, M, ...) rearranged by ball colour: (N, T, P, ...) for the P palette colours, plus the
    (N, T, P) mask of the colours present. Colour is a ball's identity (a clip never repeats one), so "the red ball's
    position" is a well-defined target, unlike "ball slot 1's", whose meaning depends on how many balls there are."""
    colors = np.asarray(palette, np.int64)
    match = (state["colors"][..., None, :].astype(np.int64) == colors).all(-1) & state["present"][..., None]  # N,T,M,P
    present = match.any(2)
    slot = match.argmax(2)  # (N, T, P): which slot holds colour p (0 where absent; masked)
    gathered = np.take_along_axis(values, slot.reshape(*slot.shape, *([1] * (values.ndim - 3))), axis=2)
    return np.where(present.reshape(*present.shape, *([1] * (values.ndim - 3))), gathered, 0), present


def displacement(positions: np.ndarray) -> np.ndarray:
    """(N, T, P, 2) -> the displacement from frame t-1 to t (zero at frame 0, which no probe row uses). A ball's
    colour never changes in a clip, so a colour slot present at t was present at t-1."""
    return np.concatenate([np.zeros_like(positions[:, :1]), positions[:, 1:] - positions[:, :-1]], axis=1)


def state_targets(state: dict[str, np.ndarray], num_balls: np.ndarray, balls: BallsConfig,
                  config: ProbeConfig) -> dict[str, Target]:
    """Every frame-level target of a clip set, rows ordered like `_rows`; per-ball targets are per colour."""
    palette = balls.palette
    pos, present = by_color(state["positions"], state, palette)  # (N, T, P, 2), (N, T, P)
    vel_state, _ = by_color(state["velocities"], state, palette)
    radius, _ = by_color(state["radii"], state, palette)
    vel = displacement(pos)
    pos, vel, vel_state, radius, present = _rows(pos), _rows(vel), _rows(vel_state), _rows(radius), _rows(present)
    speed, bins = speed_and_direction(vel.reshape(len(vel), -1), config.direction_bins)  # (n, P) each
    two = np.repeat(present, 2, axis=1)
    length = state["present"].shape[1]
    contacts = ball_contacts(state)  # (N, T)
    k = config.contact_within
    upcoming = np.zeros_like(contacts)
    valid = np.zeros_like(contacts)
    for t in range(length):
        if t + k < length:
            upcoming[:, t] = contacts[:, t + 1 : t + 1 + k].any(1)
            valid[:, t] = True
    counts = np.repeat(num_balls[:, None], length, axis=1)
    everywhere = np.ones_like(present)
    return {
        "position": Target("regression", pos.reshape(len(pos), -1), two),
        "velocity": Target("regression", vel.reshape(len(vel), -1), two),
        "velocity_state": Target("regression", vel_state.reshape(len(vel_state), -1), two),
        "speed": Target("regression", speed, present),
        "radius": Target("regression", radius, present),
        "direction": Target("classification", bins, present & (speed > 1e-9), config.direction_bins),
        # Which colours are in the frame: one present / absent head per palette colour.
        "color": Target("classification", present.astype(np.int64), everywhere, 2),
        "count": Target("classification", _rows(counts)[:, None], np.ones((len(pos), 1), bool), balls.max_balls + 1),
        "contact_within_k": Target("classification", _rows(upcoming)[:, None].astype(np.int64),
                                   _rows(valid)[:, None], 2),
    }


def hidden_target(state: dict[str, np.ndarray], balls: BallsConfig) -> Target:
    """Position of each palette colour's ball on the rows where that ball is fully hidden after having been seen in
    the clip (it went behind the occluder: what the predictor has to remember): values (n, 2P), masked per colour.
    By colour, because colour is what a representation can know a ball by: "the first hidden slot's position"
    needs a readout that first finds which ball is hidden, which a linear probe cannot do (given the true
    positions of every slot, a ridge probe read it at R2 0.16). Balls hidden since the clip's first frame (most of
    them parked behind the occluder) are left out: nothing was seen to remember, and they made the target all but
    constant."""
    hidden_now = by_color(fully_hidden(state, balls), state, balls.palette)[0].astype(bool)  # (N, T, P)
    seen_before = np.cumsum(~hidden_now, axis=1) > 0  # visible in some frame <= t (so < t where hidden now)
    hidden = hidden_now & seen_before
    positions, _ = by_color(state["positions"], state, balls.palette)  # (N, T, P, 2)
    mask = np.repeat(_rows(hidden), 2, axis=1)  # (n, 2P)
    return Target("regression", _rows(positions.reshape(*positions.shape[:2], -1)), mask)


# --------------------------------------------------------------------------------------------------- features


def pair_of(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """(..., D) features of frames t-1 and t -> (..., 2D): frame t and its change since t-1.

    The same information as the two frames side by side, but a probe standardises each input, so the change (small
    next to where things are) gets its own scale: a regularised linear readout of motion then needs no huge weights
    on two nearly equal inputs."""
    return torch.cat([current, current - previous], dim=-1)


def pair_features(reps: torch.Tensor) -> np.ndarray:
    """(N, T, D) per-frame features -> (N * (T - 1), 2D) rows of `pair_of` for t = 1..T-1."""
    pairs = pair_of(reps[:, :-1], reps[:, 1:])
    return rearrange(pairs, "n t d -> (n t) d").cpu().double().numpy()


def pixel_features(clips: np.ndarray, size: int) -> torch.Tensor:
    """(N, T, H, W, 3) uint8 -> (N, T, 3 * size * size) area-downsampled pixels in [0, 1]."""
    frames = inference.as_frames(clips).float() / 255.0  # (N, T, 3, H, W)
    n, t = frames.shape[:2]
    small = F.adaptive_avg_pool2d(rearrange(frames, "n t c h w -> (n t) c h w"), size)
    return rearrange(small, "(n t) c h w -> n t (c h w)", n=n, t=t)


def oracle_features(state: dict[str, np.ndarray], balls: BallsConfig) -> torch.Tensor:
    """The true position of every ball (by colour) and which colours are present: (N, T, 3P). A representation that
    encoded positions perfectly could give a probe no more; it shows how far each target is readable at all (a
    simulator velocity after a bounce is not the displacement that led to it, so even this stays below R2 = 1 on
    velocity_state)."""
    positions, present = by_color(state["positions"], state, balls.palette)
    flat = positions.reshape(*positions.shape[:2], -1)
    return torch.as_tensor(np.concatenate([flat, present], axis=-1), dtype=torch.float32)


def random_model(model: WorldModel, seed: int) -> WorldModel:
    """A freshly initialised model of the same configuration (the untrained control)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return WorldModel(model.config).to(model.device).eval()


def split_indices(num_clips: int, seed: int, fractions: tuple[float, float] = (0.6, 0.15)) -> dict[str, np.ndarray]:
    """Clip indices for train / val / test, disjoint (grouping by clip keeps near-duplicate frames together)."""
    order = np.random.default_rng(seed).permutation(num_clips)
    n_train = max(1, int(round(fractions[0] * num_clips)))
    n_val = max(1, int(round(fractions[1] * num_clips)))
    if n_train + n_val >= num_clips:
        raise ValueError(f"{num_clips} clips are too few to split into train / val / test; use more --clips")
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train : n_train + n_val]),
            "test": np.sort(order[n_train + n_val :])}


def _row_mask(clips: np.ndarray, length: int, num_clips: int) -> np.ndarray:
    """Rows (clip, t >= 1) belonging to the given clips."""
    keep = np.zeros(num_clips, bool)
    keep[clips] = True
    return np.repeat(keep, length - 1)


def _subset(features: np.ndarray, target: Target, rows: np.ndarray) -> Split:
    return Split(features[rows], target.values[rows], target.mask[rows])


def ood_config(balls: BallsConfig) -> BallsConfig:
    """Speeds above the training range, and radii outside it: above it (1.1-1.35x the largest) where such balls
    still fit in the box, else the largest step above it that fits, else below it (0.6-0.85x the smallest) for a
    simulator whose balls already fill the box. The probe JSON records the settings used (`ood_balls`)."""
    s_lo, s_hi = balls.speed_range
    speed = (s_hi * 1.15, s_hi * 1.6)
    faster = replace(balls, speed_range=speed, max_speed=max(balls.max_speed, speed[1]))
    r_lo, r_hi = balls.radius_range
    area_cap = math.sqrt(0.45 / (math.pi * balls.max_balls)) - 1e-3  # all balls together cover <= 45% of the box
    for low, high in ((1.1, 1.35), (1.05, 1.2), (1.02, 1.08)):
        radius = (min(r_hi * low, area_cap - 0.01), min(r_hi * high, area_cap))
        if radius[0] > r_hi and radius[1] > radius[0] and _placeable(replace(faster, radius_range=radius)):
            return replace(faster, radius_range=radius)
    return replace(faster, radius_range=(r_lo * 0.6, r_lo * 0.85))


def _placeable(balls: BallsConfig, draws: int = 64) -> bool:
    """Whether the simulator lays out `draws` clips of these settings with their largest balls (a config whose
    balls only sometimes fit would fail somewhere in a long probe set)."""
    crowded = replace(balls, min_balls=balls.max_balls, radius_range=(balls.radius_range[1] * (1 - 1e-9),
                                                                      balls.radius_range[1]))
    rng = np.random.default_rng(0)
    try:
        for _ in range(draws):
            sample_initial(crowded, rng)
    except ValueError:
        return False
    return True


def hidden_config(balls: BallsConfig) -> BallsConfig:
    """The training settings plus an occluder wide enough to hide the largest ball completely."""
    width = min(0.9, 2 * balls.radius_range[1] + 4.0 / balls.image_size)
    return replace(balls, occluder=True, occluder_x=0.5, occluder_width=width)


# --------------------------------------------------------------------------------------------------- suite


Readout = Callable[[np.ndarray, Split], float]


def fit_and_score(features: dict[str, np.ndarray], target: Target, rows: dict[str, np.ndarray],
                  config: ProbeConfig, extra_tests: dict[str, tuple[dict[str, np.ndarray], Target]] | None = None,
                  derived: dict[str, Readout] | None = None,
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """results[feature][probe_model] = {"test": score, <extra test name>: score, ...}; for every entry of
    `derived`, also results[feature][probe_model][<derived name>] = {split: that function of the probe's
    predictions}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, x in features.items():
        train, val = _subset(x, target, rows["train"]), _subset(x, target, rows["val"])
        out[name] = {}
        for probe_model in config.probe_models:
            kwargs = {"epochs": config.mlp_epochs} if probe_model == "mlp" else {}
            probe = fit_probe(probe_model, target.kind, train, val, target.num_classes, **kwargs)
            splits = {"test": _subset(x, target, rows["test"])}
            for test_name, (test_features, test_target) in (extra_tests or {}).items():
                splits[test_name] = Split(test_features[name], test_target.values, test_target.mask)
            scores: dict[str, object] = {}
            for split_name, split in splits.items():
                prediction = probe.predict(split.features)
                scores[split_name] = score(target.kind, prediction, split)
                for derived_name, readout in (derived or {}).items():
                    scores.setdefault(derived_name, {})[split_name] = readout(prediction, split)
            out[name][probe_model] = scores
    return out


def speed_and_direction(velocity: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2P) per-colour displacements -> speeds (n, P) and direction bins (n, P)."""
    v = velocity.reshape(len(velocity), -1, 2)
    angle = np.mod(np.arctan2(v[..., 1], v[..., 0]), 2 * math.pi)
    return np.linalg.norm(v, axis=-1), np.minimum((angle / (2 * math.pi / bins)).astype(np.int64), bins - 1)


def motion_readouts(bins: int) -> dict[str, Readout]:
    """Speed R2 and direction balanced accuracy of a velocity probe's predictions: a linear probe cannot output a
    norm or an angle, and a probe fitted to speed or direction alone sees each ball's nearly constant value in
    only a few clips, so reading them through the velocity probe is the fair test of whether motion is encoded."""

    def present(split: Split) -> np.ndarray:
        return split.mask[:, ::2]

    def speed(prediction: np.ndarray, split: Split) -> float:
        return r2_score(speed_and_direction(prediction, bins)[0], speed_and_direction(split.values, bins)[0],
                        present(split))

    def direction(prediction: np.ndarray, split: Split) -> float:
        predicted = speed_and_direction(prediction, bins)[1]
        true_speed, truth = speed_and_direction(split.values, bins)
        moving = present(split) & (true_speed > 1e-9)
        scores = [balanced_accuracy(predicted[moving[:, j], j], truth[moving[:, j], j])
                  for j in range(truth.shape[1]) if moving[:, j].any()]
        return float(np.mean(scores)) if scores else float("nan")

    return {"speed_from_velocity": speed, "direction_from_velocity": direction}


def chance_level(target: Target) -> float:
    """R2 of predicting the mean (0), or balanced accuracy of guessing (1 / classes present)."""
    if target.kind == "regression":
        return 0.0
    classes = [len(np.unique(target.values[target.mask[:, j], j])) for j in range(target.values.shape[1])
               if target.mask[:, j].any()]
    return float(np.mean([1.0 / c for c in classes])) if classes else float("nan")


def run_probes(model: WorldModel, balls: BallsConfig, config: ProbeConfig | None = None, *,
               window: int | None = None, log=print) -> dict[str, object]:
    """The whole probe suite; returns a JSON-able dict (see the module docstring)."""
    config = config or ProbeConfig()
    model.eval()
    started = time.perf_counter()
    window = window or model.config.predictor.max_len
    control = random_model(model, config.seed)
    context = model.config.context_frames
    if config.length < context + 2:
        # The probes on predicted representations roll out from `context` frames and need a future to read.
        log(f"probe: clips of {config.length} frames leave this model (context {context}) nothing to predict; "
            f"using {context + 2}")
        config = replace(config, length=context + 2)
    length = config.length

    # In-distribution and OOD clips, their features and targets.
    clips = generate_clips(balls, config.clips, length, seed=config.seed)
    ood_balls = ood_config(balls)
    ood = generate_clips(ood_balls, config.ood_clips, length, seed=config.seed + 1)
    split = split_indices(config.clips, config.seed)
    rows = {name: _row_mask(idx, length, config.clips) for name, idx in split.items()}

    def features_of(data) -> dict[str, np.ndarray]:
        return {
            "model": pair_features(inference.encode(model, data.frames)),
            "random_init": pair_features(inference.encode(control, data.frames)),
            "pixels": pair_features(pixel_features(data.frames, config.pixel_size)),
            "oracle_positions": pair_features(oracle_features(data.state, balls)),
        }

    features, ood_features = features_of(clips), features_of(ood)
    targets = state_targets(clips.state, clips.num_balls, balls, config)
    ood_targets = state_targets(ood.state, ood.num_balls, balls, config)
    log(f"probe: encoded {config.clips} + {config.ood_clips} clips ({time.perf_counter() - started:.0f} s)")
    results: dict[str, object] = {}
    for name, target in targets.items():
        results[name] = {
            "kind": target.kind,
            "metric": "r2" if target.kind == "regression" else "balanced_accuracy",
            "chance": chance_level(target),
            "results": fit_and_score(features, target, rows, config, {"ood": (ood_features, ood_targets[name])},
                                     motion_readouts(config.direction_bins) if name == "velocity" else None),
        }
        log(f"probe: {name} done ({time.perf_counter() - started:.0f} s)")
    # Speed and direction as read through the velocity probe, as targets of their own.
    for derived, kind, metric, of in (("speed_from_velocity", "regression", "r2", "speed"),
                                      ("direction_from_velocity", "classification", "balanced_accuracy",
                                       "direction")):
        results[derived] = {
            "kind": kind, "metric": metric, "chance": results[of]["chance"],
            "results": {feature: {probe_model: scores.pop(derived) for probe_model, scores in by_model.items()}
                        for feature, by_model in results["velocity"]["results"].items()},
        }

    results["hidden_position"] = _hidden_probe(model, control, balls, config, window)
    log(f"probe: hidden_position done ({time.perf_counter() - started:.0f} s)")
    predicted = _predicted_probe(model, clips, split, balls, config, window)
    readout = contact_readout(model, control, balls, config, window)
    log(f"probe: predicted + contact readout done ({time.perf_counter() - started:.0f} s)")
    return {
        "targets": results,
        "predicted": predicted,
        "contact_readout": readout,
        "config": {**asdict(config), "window": window, "ood_balls": ood_balls.to_dict()},
        "seconds": time.perf_counter() - started,
    }


def _hidden_probe(model: WorldModel, control: WorldModel, balls: BallsConfig, config: ProbeConfig,
                  window: int) -> dict[str, object]:
    occluded = hidden_config(balls)
    clips = generate_clips(occluded, config.hidden_clips, config.length, seed=config.seed + 2)
    target = hidden_target(clips.state, occluded)
    split = split_indices(config.hidden_clips, config.seed + 2)
    rows = {name: _row_mask(idx, config.length, config.hidden_clips) for name, idx in split.items()}
    online, random_online = inference.encode(model, clips.frames), inference.encode(control, clips.frames)
    features = {
        "model": pair_features(online),
        "random_init": pair_features(random_online),
        "pixels": pair_features(pixel_features(clips.frames, config.pixel_size)),
        "model_predictor": _rows(inference.predictor_states(model, online, window).cpu().double().numpy()),
        "random_predictor": _rows(inference.predictor_states(control, random_online, window).cpu().double().numpy()),
    }
    counts = {name: int(target.mask[r].any(1).sum()) for name, r in rows.items()}
    if min(counts.values()) < 5:
        return {"kind": "regression", "metric": "r2", "chance": 0.0, "results": {}, "rows": counts,
                "note": "too few frames with a fully hidden ball; use more --hidden-clips"}
    return {"kind": "regression", "metric": "r2", "chance": 0.0, "rows": counts,
            "occluder_width": occluded.occluder_width, "results": fit_and_score(features, target, rows, config)}


def _predicted_probe(model: WorldModel, clips, split: dict[str, np.ndarray], balls: BallsConfig,
                     config: ProbeConfig, window: int) -> dict[str, object]:
    """Position / velocity probes fitted on target-encoder features of real frames, read on predicted ones."""
    length, context = config.length, model.config.context_frames
    horizon = min(config.predicted_horizon, length - context)
    target_reps = inference.encode(model, clips.frames, target=True)
    online = inference.encode(model, clips.frames)
    targets = state_targets(clips.state, clips.num_balls, balls, config)
    rows = {name: _row_mask(idx, length, config.clips) for name, idx in split.items()}
    features = pair_features(target_reps)
    test = split["test"]
    predicted, _ = inference.rollout(model, online[test, :context], target_reps[test, :context], horizon,
                                     window=window, deterministic=True)
    # Window features of predicted frames: (previous, current), the first 'previous' being the last real frame.
    sequence = torch.cat([target_reps[test, context - 1 : context], predicted], dim=1)  # (n, horizon + 1, D)
    out: dict[str, object] = {"horizons": list(range(1, horizon + 1)), "context": context}
    for name in ("position", "velocity"):
        target = targets[name]
        probe = fit_probe("linear", "regression", _subset(features, target, rows["train"]),
                          _subset(features, target, rows["val"]))
        per_horizon, copy_last = [], []
        values, present = by_color(clips.state["positions"], clips.state, balls.palette)
        if name == "velocity":  # as in `state_targets`
            values = displacement(values)
        state, present = values[test], np.repeat(present[test], 2, axis=-1)  # (n, T, P, 2), (n, T, 2P)
        # Baseline: the probe read on the last observed pair of frames, i.e. "the state stays as last seen".
        last_seen = probe.predict(
            pair_of(target_reps[test, context - 2], target_reps[test, context - 1]).cpu().double().numpy()
        ) if context >= 2 else None
        for h in range(1, horizon + 1):
            frame = context - 1 + h
            x = pair_of(sequence[:, h - 1], sequence[:, h]).cpu().double().numpy()
            truth = state[:, frame].reshape(len(test), -1)
            mask = present[:, frame]
            per_horizon.append(r2_score(probe.predict(x), truth, mask))
            if last_seen is not None:
                copy_last.append(r2_score(last_seen, truth, mask))
        out[name] = {"r2_by_horizon": per_horizon, "copy_last_r2_by_horizon": copy_last}
    return out


def contact_readout(model: WorldModel, control: WorldModel, balls: BallsConfig, config: ProbeConfig,
                    window: int) -> dict[str, object]:
    """Physion-style: observe k = context frames, predict whether two balls touch in the next m frames."""
    if balls.max_balls < 2:
        return {"note": "the simulator has at most one ball; no contacts to read out"}
    crowded = replace(balls, min_balls=max(2, balls.min_balls))
    k, m = model.config.context_frames, config.readout_future
    length = max(config.length, k + m)
    clips = generate_clips(crowded, config.contact_clips, length, seed=config.seed + 3)
    contacts = ball_contacts(clips.state)  # (N, T)
    starts = list(range(0, length - k - m + 1, max(1, m // 2)))
    labels = np.stack([contacts[:, s + k : s + k + m].any(1) for s in starts], axis=1)  # (N, S)
    split = split_indices(config.contact_clips, config.seed + 3)
    out: dict[str, object] = {"observe": k, "future": m, "positive_rate": float(labels.mean())}
    for tag, net in (("model", model), ("random_init", control)):
        online = inference.encode(net, clips.frames)
        target = inference.encode(net, clips.frames, target=True)
        observed, rolled = [], []
        for s in starts:
            ctx_online, ctx_target = online[:, s : s + k], target[:, s : s + k]
            predicted, _ = inference.rollout(net, ctx_online, ctx_target, m, window=window, deterministic=True)
            observed.append(rearrange(ctx_online, "n k d -> n (k d)"))
            rolled.append(rearrange(predicted, "n m d -> n (m d)"))
        observed_x = torch.stack(observed, 1).cpu().double().numpy()  # (N, S, kD)
        rollout_x = np.concatenate([observed_x, torch.stack(rolled, 1).cpu().double().numpy()], axis=-1)
        for name, x in (("observed", observed_x), ("observed+rollout", rollout_x)):
            data = {part: Split(x[idx].reshape(-1, x.shape[-1]), labels[idx].reshape(-1, 1).astype(np.int64),
                                np.ones((labels[idx].size, 1), bool)) for part, idx in split.items()}
            probe = fit_probe("linear", "classification", data["train"], data["val"], 2)
            test = data["test"]
            probability = probe.probabilities(test.features)[:, 0, 1]
            truth = test.values[:, 0].astype(bool)
            out[f"{tag}/{name}"] = {
                "balanced_accuracy": balanced_accuracy(probe.predict(test.features)[:, 0], test.values[:, 0]),
                "auroc": auroc(probability[truth], probability[~truth])
                if truth.any() and (~truth).any() else float("nan"),
            }
    return out
