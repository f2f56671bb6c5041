"""Multiple futures, measured: best-of-N error, diversity, mode coverage, calibration, energy ranking, z-leak check
and the capacity point of a model, on fork scenes whose future distribution is known (`envs.scenes`).

    best-of-N    for N in (1, 5, 10, 20), the smallest representation error among the first N prior samples at each
                 horizon, against the future that happened; the deterministic predictor is the same model with z at
                 the prior's mean; its error is split into the drift from the ways' mean (the best a predictor that
                 knows all but the way can do) and what the fork costs that mean
    coverage     a frozen ridge probe (fitted on target-encoder representations of ordinary simulator frames) reads
                 the forked ball's position from every predicted representation; a sample hits a mode when it is
                 nearer that mode's true position than half the distance between the two closest modes
    calibration  how often samples land in each mode, against the true probabilities
    ranking      energy of the true future among futures taken from other scenes (lower is better)
    reveal step  at the first frame where the ways differ: how much of the way the posterior's z takes in, against
                 what a free search over z achieves, and how far from the prior such a z lies
    ceiling      the same coverage and best-of-N for the training simulator itself, sampled from the true state
                 with its own kick process: no model of that data can do better
    z-leak       how much of the error the posterior z removes for the true next frame, against how much it removes
                 for a shuffled one (another clip's frame): a z that only carries the unpredictable kick cannot
                 reach an arbitrary frame, a z that leaks the target can
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from envs.clips import generate_clips
from envs.physics import BallsBatch, BallsConfig
from envs.scenes import ForkConfig, ForkScenes, generate_fork_scenes, initial_from
from worldmodel.model import WorldModel, distance

from . import inference
from .metrics import (
    assign_modes, best_of_n_error, calibration, mode_coverage, pairwise_diversity, rank_statistics,
)
from .probe_models import RidgeProbe, Split


@dataclass
class FuturesConfig:
    """Sizes and settings of the multiple-futures evaluation."""

    scenes: int = 128
    """Fork scenes per family."""
    families: tuple[tuple[float, ...], ...] = ((0.5, 0.5), (0.5, 0.3, 0.2))
    """One fork family per entry: the probabilities of its ways (2-way left/right, 3-way with unequal odds)."""
    bounce: bool = True
    """Also a 'bounce' family: ball 0 reaches the border and a rough wall scatters it one of two ways (the
    training simulator's own fork when its bounce_kick_prob > 0; see envs.scenes). It is then the headline family,
    as the only fork the training data announces."""
    samples: int = 20
    """Prior samples per scene (>= the largest N)."""
    ns: tuple[int, ...] = (1, 5, 10, 20)
    """N of best-of-N and of mode coverage."""
    horizon: int = 10
    """Future frames; the targets are read at the last one."""
    kick: float = 0.0
    """Velocity change at the fork; 0: the simulator's kick_strength (an in-distribution kick)."""
    probe_clips: int = 640
    """Ordinary simulator clips the frozen position probe is fitted on. Its readout decides every hit: with 160
    clips it put the true futures of bounce scenes in the right way 91% of the time, with 640 98%."""
    wrong_futures: int = 15
    """Futures from other scenes that the true one is ranked against."""
    seed: int = 30_000
    """Root seed of the scenes, probe clips and samples."""


def family_name(probabilities: tuple[float, ...]) -> str:
    return f"{len(probabilities)}way"


def fork_configs(balls: BallsConfig, config: FuturesConfig, context: int, horizon: int | None = None
                 ) -> dict[str, ForkConfig]:
    """The fork families of `config` by name (kick families, then 'bounce'), for a model reading `context` frames,
    simulated `horizon` frames (default config.horizon)."""
    horizon = horizon or config.horizon
    # Ways drift apart about linearly in time: a short horizon asks for proportionally less separation.
    separation = ForkConfig.min_separation * min(1.0, horizon / 10)
    forks = {
        family_name(probabilities): ForkConfig(directions=len(probabilities), probabilities=tuple(probabilities),
                                               kick=config.kick or balls.kick_strength, context=context,
                                               horizon=horizon, min_separation=separation)
        for probabilities in config.families
    }
    if config.bounce:
        # A scatter only turns the velocity (the speed is restored), so the two ways part at most about
        # 2 * speed * horizon: slow simulators get a separation they can reach, half of that at the mean speed.
        reach = 0.5 * (balls.speed_range[0] + balls.speed_range[1]) * horizon
        forks["bounce"] = ForkConfig(event="bounce", kick=config.kick or balls.bounce_kick, context=context,
                                     horizon=horizon, min_separation=min(separation, reach))
    return forks


def headline_family(balls: BallsConfig, config: FuturesConfig) -> str:
    """The family the targets are read on: 'bounce' when the training simulator has rough walls (the only fork its
    data announces), else the first kick family."""
    if config.bounce and (balls.rough_walls or not config.families):
        return "bounce"
    return family_name(config.families[0])


# --------------------------------------------------------------------------------------------------- probe


def fit_position_probe(model: WorldModel, balls: BallsConfig, clips: int, seed: int) -> RidgeProbe:
    """Ridge probe from one target-encoder representation to every ball's position, a ball being known by its
    colour (palette order, 2 outputs per colour); it reads predictions, which live in target space. Fitted on
    ordinary clips, split by clip for the penalty."""
    from .probes import by_color

    data = generate_clips(balls, clips, 8, seed=seed)
    reps = inference.encode(model, data.frames, target=True).cpu().double().numpy()  # (N, T, D)
    positions, present = by_color(data.state["positions"], data.state, balls.palette)  # (N, T, P, 2), (N, T, P)
    flat_positions = positions.reshape(*positions.shape[:2], -1)
    mask = np.repeat(present, 2, axis=-1)
    order = np.random.default_rng(seed).permutation(clips)
    val, train = order[: max(1, clips // 5)], order[max(1, clips // 5) :]

    def split(idx: np.ndarray) -> Split:
        rows = len(idx) * positions.shape[1]
        return Split(reps[idx].reshape(rows, -1), flat_positions[idx].reshape(rows, -1), mask[idx].reshape(rows, -1))

    return RidgeProbe(split(train), split(val))


def probe_positions(probe: RidgeProbe, reps: torch.Tensor, color: np.ndarray) -> np.ndarray:
    """(B, ..., D) representations -> (B, ..., 2) probed position of the ball of palette colour color[b]."""
    batch = reps.shape[0]
    flat = reps.reshape(-1, reps.shape[-1]).cpu().double().numpy()
    out = probe.predict(flat).reshape(batch, -1, len(probe.intercept) // 2, 2)  # (B, R, P, 2)
    rows = np.arange(out.shape[1])
    picked = out[np.arange(batch)[:, None], rows[None, :], np.asarray(color)[:, None]]  # (B, R, 2)
    return picked.reshape(*reps.shape[:-1], 2)


def palette_index(colors: np.ndarray, palette: tuple) -> np.ndarray:
    """(B, 3) RGB -> (B,) index into the palette."""
    return (np.asarray(colors, np.int64)[:, None] == np.asarray(palette, np.int64)[None]).all(-1).argmax(-1)


# --------------------------------------------------------------------------------------------------- forks


@torch.no_grad()
def evaluate_family(model: WorldModel, scenes: ForkScenes, probe: RidgeProbe, config: FuturesConfig, *,
                    window: int, generator: torch.Generator) -> dict[str, object]:
    """Every multiple-futures metric on one family of fork scenes."""
    s, k = len(scenes), scenes.fork.directions
    n, horizon = config.samples, scenes.fork.horizon
    context_online = inference.encode(model, scenes.context)  # (S, C, D)
    context_target = inference.encode(model, scenes.context, target=True)
    flat_futures = scenes.futures.reshape(s * k, *scenes.futures.shape[2:])
    futures_target = inference.encode(model, flat_futures, target=True).reshape(s, k, horizon, -1)  # (S, K, H, D)
    futures_online = inference.encode(model, flat_futures).reshape(s, k, horizon, -1)
    truth = futures_target[torch.arange(s), torch.as_tensor(scenes.realized)]  # (S, H, D)

    sampled, _ = inference.rollout(
        model, context_online.repeat_interleave(n, 0), context_target.repeat_interleave(n, 0), horizon,
        window=window, generator=generator,
    )
    sampled = sampled.reshape(s, n, horizon, -1)
    mean, _ = inference.rollout(model, context_online, context_target, horizon, window=window, deterministic=True)

    sampled_np, truth_np = sampled.cpu().double().numpy(), truth.cpu().double().numpy()
    ns = [m for m in config.ns if m <= n]
    best = best_of_n_error(sampled_np, truth_np, ns)  # (len(ns), H)
    deterministic = best_of_n_error(mean[:, None].cpu().double().numpy(), truth_np, [1])[0]  # (H,)
    # Copy-last: the future is the last observed frame (nothing moves) - the floor any model should beat.
    copy_last = best_of_n_error(context_target[:, -1:, None].expand(-1, 1, horizon, -1).cpu().double().numpy(),
                                truth_np, [1])[0]
    # Split the deterministic error: how far the rollout drifts from the mean of the ways (what a predictor that
    # knows all but the way would say), against what the fork itself costs that predictor.
    ways_mean = futures_target.mean(1)  # (S, H, D)
    drift = distance(mean, ways_mean).mean(0).cpu().double().numpy()  # (H,)
    fork_cost = distance(ways_mean, truth).mean(0).cpu().double().numpy()
    h_eval = horizon - 1

    modes = scenes.mode_positions()[:, :, h_eval]  # (S, K, 2)
    null = scenes.null_positions()[:, h_eval]  # (S, 2): no kick at the fork, which is no mode
    color = palette_index(scenes.context_state["colors"][:, 0, 0], scenes.balls.palette)  # the forked ball's
    sample_points = probe_positions(probe, sampled[:, :, h_eval], color)  # (S, N, 2)
    assigned = assign_modes(sample_points, modes, null=null)
    mean_points = probe_positions(probe, mean[:, None, h_eval], color)
    mean_assigned = assign_modes(mean_points, modes, null=null)
    truth_points = probe_positions(probe, futures_target[:, :, h_eval], color)  # (S, K, 2)
    truth_assigned = assign_modes(truth_points, modes, null=null)
    probe_accuracy = float((truth_assigned == np.arange(k)[None]).mean())
    position_error = float(np.linalg.norm(truth_points - modes, axis=-1).mean())

    ranking = _energy_ranking(model, context_online, context_target, futures_online, futures_target, scenes.realized,
                              config)
    reveal = reveal_step(model, context_online, context_target, futures_online, futures_target, scenes.futures,
                         window=window)
    index = {m: i for i, m in enumerate(ns)}
    ratio = {f"best_of_{m}_over_deterministic": float(best[index[m], h_eval] / deterministic[h_eval]) for m in ns}
    return {
        "probabilities": scenes.probabilities.tolist(),
        "scenes": s,
        "horizon": horizon,
        "ns": ns,
        "best_of_n": {str(m): best[i].tolist() for i, m in enumerate(ns)},
        "deterministic": deterministic.tolist(),
        "copy_last": copy_last.tolist(),
        "deterministic_vs_ways_mean": drift.tolist(),
        "ways_mean": fork_cost.tolist(),
        "at_horizon": {
            "horizon": horizon,
            **ratio,
            "deterministic": float(deterministic[h_eval]),
            "copy_last": float(copy_last[h_eval]),
            "deterministic_vs_ways_mean": float(drift[h_eval]),
            "ways_mean": float(fork_cost[h_eval]),
        },
        "diversity": {
            "samples": pairwise_diversity(sampled_np).tolist(),
            "true_modes": pairwise_diversity(futures_target.cpu().double().numpy()).tolist(),
            "probed_position_spread": float(np.linalg.norm(sample_points - sample_points.mean(1, keepdims=True),
                                                           axis=-1).mean()),
        },
        "mode_coverage": {str(m): float(c) for m, c in zip(ns, mode_coverage(assigned, k, ns))},
        "deterministic_mode_coverage": float(mode_coverage(mean_assigned, k, [1])[0]),
        "calibration": calibration(assigned, scenes.probabilities),
        "probe": {"true_way_accuracy": probe_accuracy, "position_error": position_error},
        "energy_ranking": ranking,
        "reveal_step": reveal,
    }


@torch.no_grad()
def reveal_step(model: WorldModel, context_online: torch.Tensor, context_target: torch.Tensor,
                futures_online: torch.Tensor, futures_target: torch.Tensor, futures: np.ndarray, *, window: int,
                search_steps: int = 200) -> dict[str, object]:
    """How much of a fork's way z takes in, at the step where the way first shows.

    The reveal frame r is the first future frame in which a scene's ways differ (the first for a kick; the second
    for a rough wall's scatter, which turns the velocity after the bounce's move). Frame r is predicted teacher-
    forced from the frames before it, which every way shares, once per way. Errors are averaged over scenes and
    ways:
        prior_mean_error      z at the prior's mean
        posterior_error       z at the posterior's code for that way (the z training uses)
        ways_mean_error       the mean of the ways' target representations: a predictor that knows all but the way
        best_z_error          z searched freely (Adam on the prediction error, from the posterior's code): what the
                              transition can render at all
        share_captured        (prior_mean - posterior) / (prior_mean - best_z): 1 when the posterior's z is as good
                              as any z
        posterior_separation  distance between the posterior's codes of two ways, in prior standard deviations
        best_z_distance       distance of the searched z from the prior's mean, in prior standard deviations: how
                              unlikely under the prior a z that renders the way is
    context_*: (S, C, D); futures_*: (S, K, F, D); futures: (S, K, F, H, W, 3) the frames (to find r)."""
    s, k, f = futures.shape[:3]
    differs = (futures != futures[:, :1]).reshape(s, k, f, -1).any(-1).any(1)  # (S, F)
    if not differs.any(1).all():
        return {"scenes": 0}
    reveal = differs.argmax(1)  # (S,)
    out: dict[str, list] = {key: [] for key in (
        "prior_mean_error", "posterior_error", "ways_mean_error", "best_z_error", "posterior_separation",
        "best_z_distance")}
    for r in np.unique(reveal):
        rows = torch.as_tensor(np.flatnonzero(reveal == r))
        # (n, C + r, D): the shared frames, way 0's copy of the future before r
        inputs = torch.cat([context_online[rows], futures_online[rows, 0, :r]], 1)[:, -window:]
        history = torch.cat([context_target[rows], futures_target[rows, 0, :r]], 1)  # (n, C + r, D) target space
        last = model.bases(history)[:, -1]  # where the transition starts from (the last frame, moved on by its trend)
        summary = model.past(inputs)[:, -1]
        prior = model.latent.prior(summary)
        expected = model.transition(summary, prior.code, last)
        targets = futures_target[rows, :, r]  # (n, K, D)
        codes = torch.stack([model.posterior(inputs, targets[:, w], last_target=history).code for w in range(k)], 1)
        repeat = lambda x: x.unsqueeze(1).expand(-1, k, *x.shape[1:])  # noqa: E731  (n, ...) -> (n, K, ...)
        posterior_prediction = model.transition(repeat(summary), codes, repeat(last))
        out["prior_mean_error"].append(distance(repeat(expected), targets).mean(1))
        out["posterior_error"].append(distance(posterior_prediction, targets).mean(1))
        out["ways_mean_error"].append(distance(repeat(targets.mean(1)), targets).mean(1))
        spread = (codes[:, :, None] - codes[:, None]) / repeat(prior.std).unsqueeze(2)  # (n, K, K, Z)
        pairs = torch.triu_indices(k, k, 1)
        out["posterior_separation"].append(spread.norm(dim=-1)[:, pairs[0], pairs[1]].mean(1))
        z, best = codes.detach().clone(), codes.detach().clone()
        best_error = distance(posterior_prediction, targets)  # (n, K): the search keeps the best z it has seen
        with torch.enable_grad():
            z.requires_grad_(True)
            search = torch.optim.Adam([z], lr=0.05)
            for _ in range(search_steps):
                error = distance(model.transition(repeat(summary), z, repeat(last)), targets)  # (n, K)
                with torch.no_grad():
                    better = error < best_error
                    best[better], best_error[better] = z[better], error[better]
                (z.grad,) = torch.autograd.grad(error.sum(), z)  # z only: the model's own gradients stay untouched
                search.step()
        out["best_z_error"].append(best_error.mean(1))
        z = best
        out["best_z_distance"].append(((z - repeat(prior.mean)) / repeat(prior.std)).norm(dim=-1).mean(1))
    result: dict[str, object] = {key: float(torch.cat(values).mean()) for key, values in out.items()}
    removable = result["prior_mean_error"] - result["best_z_error"]
    result["share_captured"] = ((result["prior_mean_error"] - result["posterior_error"]) / removable
                                if removable > 0 else float("nan"))
    result["reveal_frame"] = {str(int(r)): int((reveal == r).sum()) for r in np.unique(reveal)}
    result["scenes"] = int(s)
    return result


@torch.no_grad()
def _energy_ranking(model: WorldModel, online: torch.Tensor, target: torch.Tensor, futures_online: torch.Tensor,
                    futures_target: torch.Tensor, realized: np.ndarray, config: FuturesConfig) -> dict[str, object]:
    """Energy (summed over the future, each frame given the `context` frames before it, as `WorldModel.energy` does
    it: online representations in, target representations compared) of the true future against futures from other
    scenes, against its own frames shuffled in time, and against the scene's other (equally possible) ways."""
    s, k = futures_target.shape[:2]
    context = online.shape[1]

    def total_energy(scene: np.ndarray, way: np.ndarray, order: np.ndarray | None = None) -> torch.Tensor:
        scene_t, way_t = torch.as_tensor(scene), torch.as_tensor(way)
        future_online, future_target = futures_online[scene_t, way_t], futures_target[scene_t, way_t]
        if order is not None:
            future_online, future_target = future_online[:, order], future_target[:, order]
        sequence_online = torch.cat([online, future_online], 1)
        sequence_target = torch.cat([target, future_target], 1)
        return inference.sliding_energy(model, sequence_online, sequence_target, context)[:, context:].sum(1)

    rows = np.arange(s)
    true_energy = total_energy(rows, realized)
    m = min(config.wrong_futures, s - 1)
    wrong = torch.stack([total_energy((rows + j) % s, realized[(rows + j) % s]) for j in range(1, m + 1)], 1)  # (S, M)
    others = [total_energy(rows, (realized + j) % k) for j in range(1, k)]
    # Harder negatives: the true future's own frames in a wrong order (same objects and places, wrong dynamics).
    horizon = futures_target.shape[2]
    generator = np.random.default_rng(config.seed)
    orders = [generator.permutation(horizon) for _ in range(min(config.wrong_futures, 8))]
    orders = [o for o in orders if not np.array_equal(o, np.arange(horizon))]
    shuffled = [total_energy(rows, realized, o) for o in orders]
    result: dict[str, object] = {"vs_other_scenes": rank_statistics(true_energy.cpu().numpy(), wrong.cpu().numpy())}
    if shuffled:
        result["vs_shuffled_time"] = rank_statistics(true_energy.cpu().numpy(), torch.stack(shuffled, 1).cpu().numpy())
    if others:
        result["vs_other_ways"] = rank_statistics(true_energy.cpu().numpy(), torch.stack(others, 1).cpu().numpy())
    return result


# --------------------------------------------------------------------------------------------------- ceiling


def simulator_ceiling(scenes: ForkScenes, balls: BallsConfig, config: FuturesConfig) -> dict[str, object]:
    """What the training simulator itself would score: N futures per scene run from the true state at the last
    context frame with the training data's own kick process (`balls.kick_prob`, `balls.kick_strength`), ball 0 read
    at the last horizon step from the true positions (no probe, no model).

    A model can at best learn the distribution of its training data, so this is the ceiling of mode coverage and of
    best-of-N (in position space: squared distance of ball 0 to the way that happened, against the no-kick
    continuation, which is the simulator's deterministic prediction) for any model trained on `balls`. When the
    training kicks are rare, most samples do not kick at the fork at all, and the ceiling is far below what a fork
    that always happens would need.
    """
    s, k, n = len(scenes), scenes.fork.directions, config.samples
    last = {key: np.repeat(value[:, -1], n, axis=0) for key, value in scenes.context_state.items()}  # (S*N, M, ...)
    initial = [initial_from(last, i) for i in range(s * n)]
    rng = np.random.default_rng(config.seed + 77)
    sampled = BallsBatch(balls, initial)
    still = BallsBatch(balls.deterministic(), initial)
    m = balls.max_balls
    for _ in range(scenes.fork.horizon):
        sampled.step(rng.random((s * n, m)), rng.standard_normal((s * n, m, 2)))
        still.step(np.ones((s * n, m)), np.zeros((s * n, m, 2)))
    points = sampled.positions[:, 0].reshape(s, n, 2)  # ball 0 at the last horizon step
    deterministic = still.positions[::n, 0]  # (S, 2)
    modes = scenes.mode_positions()[:, :, -1]  # (S, K, 2)
    truth = modes[np.arange(s), scenes.realized]  # (S, 2)
    assigned = assign_modes(points, modes, null=scenes.null_positions()[:, -1])
    ns = [m_ for m_ in config.ns if m_ <= n]
    errors = ((points - truth[:, None]) ** 2).sum(-1)  # (S, N)
    deterministic_error = float(((deterministic - truth) ** 2).sum(-1).mean())
    kicked = float(sampled.kicked.mean())
    return {
        "kick_prob": balls.kick_prob,
        "kick_strength": balls.kick_strength,
        "bounce_kick_prob": balls.bounce_kick_prob,
        "mode_coverage": {str(m_): float(c) for m_, c in zip(ns, mode_coverage(assigned, k, ns))},
        "calibration": calibration(assigned, scenes.probabilities),
        "position_best_of_n_over_deterministic": {
            str(m_): float(errors[:, :m_].min(1).mean() / max(deterministic_error, 1e-12)) for m_ in ns
        },
        "last_step_kick_rate": kicked,
    }


# --------------------------------------------------------------------------------------------------- z leak


LEAK_MIN_REDUCTION = 0.002
"""z_leak's ratio is None when the posterior removes less than this share of the prior mean's error for the true
next frame: z is not used there, and a ratio of two near-zero reductions means nothing."""


@torch.no_grad()
def z_leak(model: WorldModel, online: torch.Tensor, target: torch.Tensor, step: int, *,
           window: int, seed: int = 0) -> dict[str, float]:
    """Error reduction that the posterior z buys at frame `step`, for the true next frame and for a shuffled one.

    online, target: (B, T, D) with T > step >= 1. reduction = 1 - error(posterior z) / error(prior mean z), each
    against the frame the posterior was shown. leak_ratio = shuffled reduction / true reduction: near 0 means z
    cannot be steered to an arbitrary frame (no leak), near 1 means it copies whatever it is shown; None when the
    true reduction is below LEAK_MIN_REDUCTION.
    """
    inputs = online[:, max(0, step - window) : step]
    last = target[:, max(0, step - window) : step]  # the targets the transition's base and trend come from
    true_next = target[:, step]
    order = torch.randperm(online.shape[0], generator=torch.Generator().manual_seed(seed))
    # A derangement would be cleaner; a clip paired with itself only dilutes the shuffled case toward the true one.
    shuffled_next = target[order, step]
    prior_mean, _ = model.rollout(inputs, last, 1, deterministic=True)
    out = {}
    for name, next_frame in (("true", true_next), ("shuffled", shuffled_next)):
        z = inference.posterior_code(model, inputs, last, next_frame)
        posterior, _ = model.rollout(inputs, last, 1, latents=z[:, None])
        prior_error = float(distance(prior_mean[:, 0], next_frame).mean())
        posterior_error = float(distance(posterior[:, 0], next_frame).mean())
        out[f"{name}/prior_error"] = prior_error
        out[f"{name}/posterior_error"] = posterior_error
        out[f"{name}/reduction"] = 1.0 - posterior_error / max(prior_error, 1e-12)
    out["leak_ratio"] = leak_ratio(out["true/reduction"], out["shuffled/reduction"])
    return out


def leak_ratio(true_reduction: float, shuffled_reduction: float) -> float | None:
    """shuffled / true reduction; None below LEAK_MIN_REDUCTION, where it would be noise over noise (an untrained z
    that buys 10^-9 of the error read 10^7)."""
    return shuffled_reduction / true_reduction if true_reduction >= LEAK_MIN_REDUCTION else None


# --------------------------------------------------------------------------------------------------- capacity


@torch.no_grad()
def capacity_point(model: WorldModel, balls: BallsConfig, *, window: int, clips: int = 64,
                   seed: int = 31_000) -> dict[str, float]:
    """Where this model sits on the capacity trade-off: its capacity settings, the capacity it uses (nats of KL or
    |z|_1, on held-out windows) and the one-step errors with the posterior z and with the prior mean."""
    latent = model.config.latent
    length = min(window + 1, model.config.predictor.max_len)
    data = generate_clips(balls, clips, length, seed=seed)
    model.eval()
    _, metrics = model.loss({"frames": inference.as_frames(data.frames).to(model.device)})
    return {
        "capacity": latent.capacity,
        "free_bits": latent.free_bits,
        "free_bits_scope": latent.free_bits_scope if latent.capacity == "kl" else None,
        "kl_weight": latent.kl_weight,
        "l1_weight": latent.l1_weight,
        "latent_dim": latent.dim,
        "distribution": latent.distribution if latent.capacity == "kl" else None,
        "best_of_weight": model.config.best_of_weight,
        "capacity_used": metrics["latent/capacity"],
        "posterior_error": metrics["error/prediction"],
        "prior_mean_error": metrics["error/prior_mean_prediction"],
        "copy_last_error": metrics["error/copy_last"],
    }


def step_events(velocities: np.ndarray, kicked: np.ndarray) -> dict[str, np.ndarray]:
    """What each step t -> t+1 of simulator clips asks of z: (N, T, M, 2) velocities and (N, T, M) kicked flags
    (a ball kicked or scattered in the step that made frame t; present balls only) -> masks (N, T - 1).

        fork    frame t+1 shows which way a rough wall scattered a ball: the scatter happened in the step that made
                frame t (kicked, and its velocity reversed: it bounced), but it turns the velocity after that step's
                move, so frame t shows a clean bounce and only frame t+1 the way (BallsBatch.step). This is the one
                step where z can carry the fork's way; the past cannot.
        kick    frame t+1 shows a random kick (applied before the move, so seen in the frame it happens in)
        quiet   neither: the past determines the step (a bounce's own frame, and bounces without a kick, included)

    A scatter at the clip's first frame cannot be told from a kick (no earlier velocity) and is left out of forks;
    a random kick that meets a bounce counts as a scatter (rare)."""
    reversed_ = np.zeros(kicked.shape, dtype=bool)  # (N, T, M): velocity reversed on some axis into frame t
    reversed_[:, 1:] = ((np.sign(velocities[:, 1:]) != np.sign(velocities[:, :-1]))
                        & (np.abs(velocities[:, :-1]) > 0)).any(-1)
    scattered = (kicked & reversed_).any(-1)  # (N, T): a scatter in the step that made frame t
    fork = scattered[:, :-1]
    kick = (kicked & ~reversed_).any(-1)[:, 1:] & ~fork
    return {"fork": fork, "kick": kick, "quiet": ~fork & ~kick}


@torch.no_grad()
def capacity_by_event(model: WorldModel, balls: BallsConfig, *, window: int, clips: int = 256,
                      seed: int = 32_000) -> dict[str, object]:
    """Where z spends its capacity: per step of held-out simulator windows, the capacity the posterior uses (nats of
    KL, or |z|_1), grouped by what the step's next frame shows that the past could not (`step_events`: a rough
    wall's way, a random kick, or nothing). A z that carries what the past cannot determine "and nothing more"
    spends at the forks and kicks and little elsewhere.

    Per event: steps, mean capacity, and its share of all the capacity used; fork_over_quiet = mean at forks / mean
    at quiet steps (1.0: z is spread evenly, not aimed at what is uncertain)."""
    length = min(window + 1, model.config.predictor.max_len)
    data = generate_clips(balls, clips, length, seed=seed)
    online, target = inference.encode(model, data.frames), inference.encode(model, data.frames, target=True)
    used = model.capacity_per_step(online, target).double().cpu().numpy()  # (N, T-1)
    events = step_events(data.state["velocities"], data.state["kicked"])
    total = max(float(used.sum()), 1e-12)
    out: dict[str, object] = {
        name: {"steps": int(rows.sum()), "capacity_mean": float(used[rows].mean()) if rows.any() else float("nan"),
               "share": float(used[rows].sum()) / total}
        for name, rows in events.items()
    }
    quiet = out["quiet"]["capacity_mean"]
    out["fork_over_quiet"] = out["fork"]["capacity_mean"] / quiet if quiet > 0 else float("nan")
    return out


# --------------------------------------------------------------------------------------------------- suite


def run_futures(model: WorldModel, balls: BallsConfig, config: FuturesConfig | None = None, *,
                window: int | None = None, log=print) -> dict[str, object]:
    """The multiple-futures evaluation of one model; JSON-able."""
    config = config or FuturesConfig()
    if max(config.ns) > config.samples:
        raise ValueError(f"samples ({config.samples}) must be >= the largest N ({max(config.ns)})")
    model.eval()
    started = time.perf_counter()
    window = window or model.config.predictor.max_len
    context = model.config.context_frames
    probe = fit_position_probe(model, balls, config.probe_clips, config.seed + 7)
    generator = torch.Generator(device=model.device).manual_seed(config.seed)
    families, leak = {}, {}
    forks = fork_configs(balls, config, context)
    for i, (name, fork) in enumerate(forks.items()):
        scenes = generate_fork_scenes(balls, fork, config.scenes, seed=config.seed + 100 * i)
        families[name] = evaluate_family(model, scenes, probe, config, window=window, generator=generator)
        families[name]["simulator_ceiling"] = simulator_ceiling(scenes, balls, config)
        clips = scenes.realized_clips()
        online, target = inference.encode(model, clips), inference.encode(model, clips, target=True)
        # At the fork, z has a real job (which way the kick went); that is where a leak would matter most.
        leak[name] = z_leak(model, online, target, context, window=window, seed=config.seed + i)
        log(f"futures: {name} done ({time.perf_counter() - started:.0f} s)")
    ordinary = generate_clips(balls, config.scenes, context + 1, seed=config.seed + 50)
    online, target = inference.encode(model, ordinary.frames), inference.encode(model, ordinary.frames, target=True)
    leak["ordinary_clips"] = z_leak(model, online, target, context, window=window, seed=config.seed)
    headline_name = headline_family(balls, config)
    headline = families[headline_name]
    targets = {
        "headline_family": headline_name,
        "best_of_10_over_deterministic_at_h10": headline["at_horizon"].get("best_of_10_over_deterministic"),
        "mode_coverage_at_n10": headline["mode_coverage"].get("10"),
        "simulator_ceiling_mode_coverage_at_n10": headline["simulator_ceiling"]["mode_coverage"].get("10"),
        "target_best_of_10_ratio": 0.5,
        "target_mode_coverage": 0.9,
    }
    return {
        "families": families,
        "z_leak": leak,
        "capacity": capacity_point(model, balls, window=window),
        "capacity_by_event": capacity_by_event(model, balls, window=window, seed=config.seed + 60),
        "targets": targets,
        "config": {**asdict(config), "window": window, "context": context,
                   "forks": {name: asdict(fork) for name, fork in forks.items()}},  # as drawn (envs.scenes.ForkConfig)
        "seconds": time.perf_counter() - started,
    }
