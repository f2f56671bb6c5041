"""Probes of a gym run's own physics: the env's recorded state read out of the frozen encoder.

A model trained on gymnasium episodes (data.source=gym) has ground truth of its own: every recorded frame comes with
the env's observation vector (CartPole: cart position and velocity, pole angle and angular velocity; Pendulum: the
angle's cosine and sine and the angular velocity; ...). The bouncing-balls probe suite can only measure how such a
model transfers to the simulator (and refuses an action-conditioned one), so for these runs `worldmodel probe`
probes the env's own state instead:

- held-out episodes: the run's recording spec (env, policy, frame skip, image size) under another seed, so no frame
  was trained on (`StateProbeConfig.seed_offset`), recorded once into the run's data.cache_dir;
- features of frame t, as in the simulator suite (`probes.pair_of`): the representation of frame t and its change
  since t-1 (a velocity needs two frames), for the trained encoder ("model"), the same architecture freshly
  initialised ("random_init") and downsampled pixels ("pixels"), beside a ceiling for the named envs: the true
  configuration (the state without its velocities) of the same two frames ("oracle_positions");
- one regression target per state dimension (the observation at t), ridge and MLP probes, splits by episode
  (train / val / test: no frame of a test episode is ever fitted), test R2 per dimension and their mean.

Also, as in the simulator suite, linear probes fitted on target-encoder features of real frames read on the model's
own deterministic rollout per horizon (`predicted`), from context_frames real frames of a test episode and, for an
action-conditioned model, the actions the episode recorded; beside them the same probe on the last observed pair
of frames ("the state stays as last seen").
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.model import WorldModel

from . import inference
from .metrics import r2_score
from .probe_models import Split, fit_probe
from .probes import ProbeConfig, Target, fit_and_score, pair_of, pixel_features, random_model, split_indices

STATE_NAMES: dict[str, tuple[str, ...]] = {
    "CartPole": ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"),
    "Pendulum": ("cos_angle", "sin_angle", "angular_velocity"),
    "Acrobot": ("cos_angle_1", "sin_angle_1", "cos_angle_2", "sin_angle_2", "angular_velocity_1",
                "angular_velocity_2"),
    "MountainCar": ("position", "velocity"),
    "MountainCarContinuous": ("position", "velocity"),
}
"""Names of the observation entries of the classic-control envs (gymnasium's documented layouts); other envs get
state_0, state_1, ..."""

FEATURES = ("model", "random_init", "pixels", "oracle_positions")
"""Feature sets: the trained encoder, its random-init control, downsampled pixels, and a ceiling for named envs:
the state's own configuration entries (all but the velocities) of frames t-1 and t, which is all that two frames
can show (a push between them makes the velocity at t differ from the displacement that led to it)."""


@dataclass
class StateProbeConfig:
    """Sizes and settings of the gym state probes."""

    episodes: int = 96
    """Held-out episodes recorded for the probes (split by episode 60 / 15 / 25%)."""
    pairs_per_episode: int = 64
    """At most this many frames of an episode are probed, evenly spaced over it: a balanced CartPole episode has
    hundreds of nearly alike frames, and the probe learns from episodes more than from frames."""
    seed_offset: int = 50_000
    """Added to the run's recording seed: episode e of the probe set is drawn from SeedSequence(seed + offset, e),
    so it is none of the training episodes."""
    pixel_size: int = 16
    """Side of the downsampled pixel control."""
    probe_models: tuple[str, ...] = ("linear", "mlp")
    """Readouts fitted for every state dimension: 'linear' (ridge) and 'mlp'."""
    mlp_epochs: int = 150
    """Epochs of the MLP probe."""
    predicted_horizon: int = 8
    """Rollout length for the probes read on predicted representations."""
    rollouts_per_episode: int = 8
    """Rollouts started per test episode, evenly spaced over it (each from context_frames real frames, with the
    episode's recorded actions for an action-conditioned model)."""
    seed: int = 20_000
    """Seed of the episode split and of the random-init control."""


SUITES = ("auto", "simulator", "state")
"""Which probes `worldmodel probe` and the report run (see `reads_own_state`)."""

SPEC_FIELDS = ("env_id", "policy", "frame_skip", "max_episode_steps", "seed")
"""The recording settings a held-out probe set takes over from the run (image size comes from the model)."""


def reads_own_state(run: dict[str, Any], suite: str) -> bool:
    """Whether the probes read the run's own recorded state: `suite` 'state', or 'auto' for a run trained on gym
    episodes (`run` is its config.yaml as a dict); else the bouncing-balls suite runs ('simulator')."""
    if suite not in SUITES:
        raise ValueError(f"probe suite must be one of {', '.join(SUITES)}, got {suite!r}")
    data = run.get("data")
    return suite == "state" or (suite == "auto" and isinstance(data, dict) and data.get("source") == "gym")


def state_names(env_id: str, width: int) -> list[str]:
    """Names of the `width` observation entries of `env_id` ("CartPole-v1" -> cart_position, ...)."""
    base = env_id.split("/")[-1].split("-v")[0]
    names = STATE_NAMES.get(base)
    if names is not None and len(names) == width:
        return list(names)
    return [f"state_{j}" for j in range(width)]


def recording_spec(run: dict[str, Any], image_size: int, offset: int):
    """The held-out recording spec of a gym run (its config.yaml as a dict): the spec it trained on (from the
    recording's meta.json when data.path names one, else from the data fields), another seed, image_size."""
    from envs.gym_video import GymRecordingSpec

    data = run.get("data") if isinstance(run.get("data"), dict) else {}
    if data.get("source") != "gym":
        raise ValueError(f"data.source={data.get('source', 'bouncing_balls')!r}: the state probes need a run "
                         "trained on gym episodes, whose recordings carry the env's state")
    fields = {name: data[name] for name in SPEC_FIELDS if data.get(name) not in (None, "")}
    if data.get("path"):
        meta_path = Path(data["path"]) / "meta.json"
        if meta_path.is_file():
            try:
                recorded = json.loads(meta_path.read_text(encoding="utf-8"))["spec"]
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(f"{meta_path}: unreadable recording spec ({error})") from error
            fields.update({k: recorded[k] for k in SPEC_FIELDS if k in recorded})
    if not fields.get("env_id"):
        raise ValueError("the run's config.yaml names no gym env (data.env_id is empty and data.path has no readable "
                         "meta.json); the state probes record held-out episodes of that env")
    spec = GymRecordingSpec(**fields, image_size=image_size)
    return replace(spec, seed=spec.seed + offset)


def episode_pairs(episode_starts: np.ndarray, per_episode: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (frame t-1, frame t) pairs inside one episode, at most `per_episode` of each, evenly spaced:
    (index of frame t (n,), its episode (n,)). An episode's first frame has no predecessor there, so it is no row."""
    starts = np.asarray(episode_starts, np.int64)
    frames, episodes = [], []
    for e in range(len(starts) - 1):
        candidates = np.arange(starts[e] + 1, starts[e + 1])
        if len(candidates) > per_episode:
            candidates = candidates[np.linspace(0, len(candidates) - 1, per_episode).round().astype(np.int64)]
        frames.append(candidates)
        episodes.append(np.full(len(candidates), e))
    return np.concatenate(frames), np.concatenate(episodes)


def run_state_probes(model: WorldModel, frames: np.ndarray, observations: np.ndarray, episode_starts: np.ndarray,
                     names: list[str], config: StateProbeConfig | None = None, *, actions: np.ndarray | None = None,
                     window: int | None = None, log=print) -> dict[str, Any]:
    """Probes of recorded state. frames (F, S, S, 3) uint8 of episodes laid end to end, observations (F, O), episode
    e = frames episode_starts[e]:episode_starts[e+1]; actions (F, A): the action after each frame (needed for the
    rollouts of an action-conditioned model); window: inputs the predictor reads per rollout step. Returns a
    JSON-able dict laid out as the simulator suite's `targets` (one regression target per state dimension) plus the
    mean over dimensions and the probes read on predicted representations."""
    config = config or StateProbeConfig()
    started = time.perf_counter()
    model.eval()
    observations = np.asarray(observations, np.float64)
    if observations.ndim != 2 or observations.shape[1] != len(names) or observations.shape[0] != len(frames):
        raise ValueError(f"observations must be (frames={len(frames)}, {len(names)}), got {observations.shape}")
    current, episode = episode_pairs(episode_starts, config.pairs_per_episode)
    num_episodes = len(episode_starts) - 1
    split = split_indices(num_episodes, config.seed)
    counts = {name: int(np.isin(episode, idx).sum()) for name, idx in split.items()}
    if min(counts.values()) < 10:
        raise ValueError(f"{num_episodes} episodes give too few probe frames per split ({counts}); record more "
                         "episodes (--state-episodes)")
    rows = {name: np.isin(episode, idx) for name, idx in split.items()}
    control = random_model(model, config.seed)
    needed = np.stack([current - 1, current], axis=1)  # (n, 2): frames t-1 and t of every row
    per_pair = np.asarray(frames)[needed]  # (n, 2, S, S, 3): a two-frame clip per row

    def pairs(reps: torch.Tensor) -> np.ndarray:
        return pair_of(reps[:, 0], reps[:, 1]).cpu().double().numpy()  # reps: (n, 2, D)

    with torch.no_grad():
        features = {"model": pairs(inference.encode(model, per_pair)),
                    "random_init": pairs(inference.encode(control, per_pair)),
                    "pixels": pairs(pixel_features(per_pair, config.pixel_size))}
    configuration = [j for j, name in enumerate(names) if "velocity" not in name and not name.startswith("state_")]
    probed = [j for j in range(len(names)) if _varies(observations[current[rows["train"]], j])]
    if configuration:
        where = torch.as_tensor(observations[:, configuration])  # (F, c)
        features["oracle_positions"] = pair_of(where[current - 1], where[current]).double().numpy()
    log(f"probe: encoded {len(current)} frame pairs of {num_episodes} held-out episodes "
        f"({time.perf_counter() - started:.0f} s)")
    fit = ProbeConfig(probe_models=config.probe_models, mlp_epochs=config.mlp_epochs)
    targets: dict[str, Any] = {}
    for j, name in enumerate(names):
        if j not in probed:
            targets[name] = {"kind": "regression", "metric": "r2", "chance": 0.0, "results": {},
                             "note": "constant over the training episodes: nothing to probe"}
            continue
        values = observations[current, j : j + 1]  # (n, 1)
        target = Target("regression", values, np.ones_like(values, dtype=bool))
        targets[name] = {"kind": "regression", "metric": "r2", "chance": 0.0,
                         "results": fit_and_score(features, target, rows, fit)}
        log(f"probe: {name} done ({time.perf_counter() - started:.0f} s)")
    predicted = _predicted_state_probe(model, np.asarray(frames), observations, np.asarray(episode_starts),
                                       {names[j]: j for j in probed}, split, rows, per_pair, current, config,
                                       actions=actions, window=window)
    log(f"probe: predicted representations done ({time.perf_counter() - started:.0f} s)")
    scored = [t["results"] for t in targets.values() if t["results"]]
    mean = {feature: {probe_model: {"test": float(np.mean([r[feature][probe_model]["test"] for r in scored]))}
                      for probe_model in config.probe_models}
            for feature in features} if scored else {}
    return {
        "suite": "gym_state",
        "targets": targets,
        "mean_over_state": mean,
        "predicted": predicted,
        "rows": counts,
        "config": asdict(config),
        "seconds": time.perf_counter() - started,
    }


def _varies(values: np.ndarray) -> bool:
    """A state entry worth probing: not constant (to rounding) over the training rows."""
    return bool(values.std() > 1e-9 * max(1.0, float(np.abs(values).max(initial=0.0))))


def _predicted_state_probe(model: WorldModel, frames: np.ndarray, observations: np.ndarray,
                           episode_starts: np.ndarray, entries: dict[str, int], split: dict[str, np.ndarray],
                           rows: dict[str, np.ndarray], per_pair: np.ndarray, current: np.ndarray,
                           config: StateProbeConfig, *, actions: np.ndarray | None, window: int | None
                           ) -> dict[str, Any]:
    """Per state entry (name -> column), a ridge probe fitted on target-encoder pair features of the probe rows'
    real frames (per_pair (n, 2, S, S, 3), frame t of each at `current`; train / val episodes), read on the
    deterministic rollout of test episodes per horizon, and on their last observed pair of frames."""
    context = model.config.context_frames
    horizon = min(config.predicted_horizon, model.config.predictor.max_len - context)
    length = context + horizon
    starts = []  # first frame of every rollout window (C observed + horizon future frames, inside one episode)
    for e in split["test"]:
        lo, hi = int(episode_starts[e]), int(episode_starts[e + 1])
        if hi - lo >= length:
            picks = np.linspace(lo, hi - length, min(config.rollouts_per_episode, hi - lo - length + 1))
            starts.extend(np.unique(picks.round().astype(np.int64)).tolist())
    if not starts or context < 2:
        return {"note": f"no test episode holds {length} frames (context {context} + horizon {horizon})" if not starts
                else "the last-seen baseline needs a context of at least 2 frames", "horizons": []}
    frame_index = np.asarray(starts)[:, None] + np.arange(length)[None]  # (n, C + H)
    acts = None
    if getattr(model.config, "action_dim", 0):
        if actions is None:
            raise ValueError("this model is action-conditioned: the predicted-state probes need the recorded actions")
        acts = model.prepare_actions(torch.as_tensor(np.asarray(actions)[frame_index[:, :-1]]), len(starts),
                                     length - 1)
    with torch.no_grad():
        fit_reps = inference.encode(model, per_pair, target=True)  # (rows, 2, D)
        fit_features = pair_of(fit_reps[:, 0], fit_reps[:, 1]).cpu().double().numpy()
        clips = np.asarray(frames)[frame_index]  # (n, C + H, S, S, 3)
        online, target = inference.encode(model, clips[:, :context]), inference.encode(model, clips, target=True)
        rolled, _ = model.rollout(online, target[:, :context], horizon, actions=acts, window=window,
                                  deterministic=True)
    # Pairs of predicted frames (previous, current), the first 'previous' being the last real frame.
    sequence = torch.cat([target[:, context - 1 : context], rolled], dim=1)  # (n, horizon + 1, D)
    last_seen = pair_of(target[:, context - 2], target[:, context - 1]).cpu().double().numpy()
    out: dict[str, Any] = {"horizons": list(range(1, horizon + 1)), "context": context, "rollouts": len(starts),
                           "by_state": {}}
    for name, j in entries.items():
        values = observations[current, j : j + 1]
        ones = np.ones_like(values, dtype=bool)
        probe = fit_probe("linear", "regression", Split(fit_features[rows["train"]], values[rows["train"]],
                                                        ones[rows["train"]]),
                          Split(fit_features[rows["val"]], values[rows["val"]], ones[rows["val"]]))
        per_horizon, copy_last = [], []
        for h in range(1, horizon + 1):
            truth = observations[frame_index[:, context - 1 + h], j : j + 1]
            x = pair_of(sequence[:, h - 1], sequence[:, h]).cpu().double().numpy()
            per_horizon.append(r2_score(probe.predict(x), truth))
            copy_last.append(r2_score(probe.predict(last_seen), truth))
        out["by_state"][name] = {"r2_by_horizon": per_horizon, "copy_last_r2_by_horizon": copy_last}
    return out


def probe_run_state(model: WorldModel, run: dict[str, Any], config: StateProbeConfig | None = None, *,
                    window: int | None = None, log=print) -> dict[str, Any]:
    """Record (or reuse) the held-out episodes of a gym run and probe them (see the module docstring)."""
    try:
        from envs.gym_video import load_or_record, require_gymnasium

        require_gymnasium()
    except ImportError as error:  # one line, as for any other unusable input
        raise ValueError(f"the state probes record held-out episodes of the run's env: {error}") from error
    config = config or StateProbeConfig()
    spec = replace(recording_spec(run, model.config.image_size, config.seed_offset), episodes=config.episodes)
    data = run.get("data") if isinstance(run.get("data"), dict) else {}
    from training.config import DataConfig  # for a partial config.yaml: the cache training would have used

    cache_dir = data.get("cache_dir") or DataConfig().cache_dir
    log(f"probe: {spec.episodes} held-out episodes of {spec.env_id} (seed {spec.seed}, {spec.policy} policy, "
        f"frame skip {spec.frame_skip}) from {cache_dir}")
    recording = load_or_record(cache_dir, spec)
    names = state_names(spec.env_id, recording.observations.shape[1])
    if recording.observations.shape[1] == 0:
        raise ValueError(f"{recording.directory}: {spec.env_id}'s observations are not kept as state (pixel "
                         "observations); there is nothing to probe")
    result = run_state_probes(model, recording.frames, np.asarray(recording.observations),
                              np.asarray(recording.episode_starts), names, config, actions=recording.actions,
                              window=window, log=log)
    result["recording"] = {"directory": str(recording.directory), **asdict(spec),
                           "frames": int(recording.frames.shape[0])}
    return result
