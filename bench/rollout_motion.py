"""How far a model's open-loop rollout moves the balls, and where its 10-step futures of bounce forks land. Prints JSON.

    python bench/rollout_motion.py --checkpoint runs/occ05 --threads 2

Mode coverage counts a sample as a hit only when the frozen position probe puts the forked ball within half the
smallest distance between the ways and the clean bounce (about 0.1 of the image side at h = 10). This bench says
whether the samples miss for lack of z or for lack of motion, with everything read by the same kind of probe:

- `motion`: clips of the run's simulator without kicks or scatters (`BallsConfig.deterministic`), so the future is
  a function of the past. Per horizon, the probed position error of every ball for the deterministic rollout
  (z = prior mean), for the probe on the true future frames (the readout's own floor), for copy-last, and for a
  ridge map fitted on other quiet clips' target representations (next change from the last change and the state,
  rolled out: linear dynamics in representation space, the simplest rival). `displacement_gain`: regression
  coefficient of the probed displacement since the last context frame on the true one (1 = moves as far as the
  balls do, 0 = stands still), for the rollout and for the true future; `step_length`: mean probed distance per
  step against the true one. `straight`: the same errors for the balls that move in a straight line through the
  whole clip (no bounce, no collision), beside a straight-line fit through the probe's readings of the context
  frames, extrapolated (`probe_extrapolation`): what the past alone says about them, read by the same probe.
  `change_autocorrelation`: the lag-1 correlation of frame-to-frame changes, of the true positions and of the
  target representation (median over its dimensions). A one-step predictor fitted by squared error that cannot
  tell a ball about to bounce from one that is not scales the last velocity by about this much, and a rollout
  compounds it: a factor a per step leaves sum_k a^k / h of the displacement after h steps (a = 0.8: 0.36 at
  h = 10).
- `bounce_landing`: the futures family the targets are read on. For the deterministic rollout, for a rollout whose
  z at each step is the posterior's code given the rollout's own past and the true next frame (what the closed-loop
  training rollout does: the best z can do with this transition), and for prior samples: the share that lands on
  the way that happened, on the other way, on the clean bounce, or on none of them, per horizon. If the posterior's
  rollout itself rarely lands on the way, no prior can reach the coverage target with this transition.

The encodings, probe and scenes are those of `worldmodel futures` at the same seeds (fewer scenes by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run, model or checkpoint directory")
    parser.add_argument("--clips", type=int, default=128, help="quiet clips the motion is measured on")
    parser.add_argument("--scenes", type=int, default=64, help="bounce fork scenes")
    parser.add_argument("--samples", type=int, default=20, help="prior samples per scene")
    parser.add_argument("--probe-clips", type=int, default=640, help="clips the frozen position probe is fitted on")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch

    from analysis import inference
    from analysis.loading import load_model, simulator_config
    from analysis.metrics import assign_modes
    from analysis.multifuture import FuturesConfig, fit_position_probe, fork_configs, palette_index, probe_positions
    from analysis.probes import by_color
    from analysis.report import check_model
    from envs.clips import generate_clips
    from envs.scenes import generate_fork_scenes

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, model_dir = load_model(args.checkpoint)
    try:
        check_model(model)
    except ValueError as error:
        parser.error(str(error))
    model.eval()
    balls = simulator_config(model_dir, model.config.image_size)
    window = inference.trained_window(model, model_dir)
    context = model.config.context_frames
    if context < 2:
        parser.error("the bench extrapolates from the last two context frames: it needs model.context_frames >= 2")
    futures = FuturesConfig(scenes=args.scenes, samples=args.samples, probe_clips=args.probe_clips)
    horizon = futures.horizon
    probe = fit_position_probe(model, balls, futures.probe_clips, futures.seed + 7)
    palette_size = len(probe.intercept) // 2

    def read_all(reps: torch.Tensor) -> np.ndarray:
        """(..., D) -> (..., P, 2) probed position of every palette colour."""
        flat = reps.reshape(-1, reps.shape[-1]).cpu().double().numpy()
        return probe.predict(flat).reshape(*reps.shape[:-1], palette_size, 2)

    # ---------------------------------------------------------------- motion on clips without randomness
    quiet = balls.deterministic()
    clips = generate_clips(quiet, args.clips, context + horizon, seed=futures.seed + 900)
    positions, present = by_color(clips.state["positions"], clips.state, balls.palette)  # (N, T, P, 2), (N, T, P)
    velocities, _ = by_color(clips.state["velocities"], clips.state, balls.palette)
    online = inference.encode(model, clips.frames)  # (N, T, D)
    target = inference.encode(model, clips.frames, target=True)
    rolled, _ = inference.rollout(model, online[:, :context], target[:, :context], horizon, window=window,
                                  deterministic=True)  # (N, H, D)
    ridge = _fit_linear_dynamics(model, quiet, args.clips, context + horizon, futures.seed + 901)
    linear = _roll_linear(ridge, target[:, context - 2].double(), target[:, context - 1].double(), horizon)

    truth, shown = positions[:, context:], present[:, context:]  # (N, H, P, 2), (N, H, P)
    last_true = positions[:, context - 1 : context]  # (N, 1, P, 2)
    probed_last = read_all(target[:, context - 1 : context])
    readings = {
        "deterministic_rollout": read_all(rolled),
        "true_future_frames": read_all(target[:, context:]),
        "copy_last": np.repeat(probed_last, horizon, axis=1),
        "linear_dynamics": read_all(linear.float()),
    }

    def position_error(read: np.ndarray, balls: np.ndarray = shown) -> list[float]:
        """Mean distance of read positions (N, H, P, 2) from the true ones per horizon, over the (N, H, P) mask."""
        error = np.linalg.norm(read - truth, axis=-1)  # (N, H, P)
        return [round(float(error[:, h][balls[:, h]].mean()), 4) if balls[:, h].any() else float("nan")
                for h in range(horizon)]

    errors = {name: position_error(read) for name, read in readings.items()}
    true_move = truth - last_true  # (N, H, P, 2)

    def gain(read: np.ndarray) -> list[float]:
        moved = ((read - probed_last) * true_move).sum(-1)  # (N, H, P)
        scale = (true_move ** 2).sum(-1)
        return [round(float(moved[:, h][shown[:, h]].sum() / scale[:, h][shown[:, h]].sum()), 3)
                for h in range(horizon)]

    both = shown[:, 1:] & shown[:, :-1]

    def step_length(read: np.ndarray) -> float:
        return round(float(np.linalg.norm(np.diff(read, axis=1), axis=-1)[both].mean()), 4)

    straight = _straight(velocities, present)[:, context:] & shown  # (N, H, P)
    probe_extrapolation = _extrapolate(read_all(target[:, :context]), horizon)

    representation = target.double().cpu().numpy()
    motion = {
        "clips": args.clips,
        "position_error": errors,
        "displacement_gain": {"deterministic_rollout": gain(readings["deterministic_rollout"]),
                              "true_future_frames": gain(readings["true_future_frames"])},
        "step_length": {"deterministic_rollout": step_length(readings["deterministic_rollout"]),
                        "true_future_frames": step_length(readings["true_future_frames"]),
                        "true_positions": step_length(truth)},
        "straight": {
            "share": [round(float(straight[:, h].sum() / max(shown[:, h].sum(), 1)), 3) for h in range(horizon)],
            "position_error": {
                "deterministic_rollout": position_error(readings["deterministic_rollout"], straight),
                "copy_last": position_error(readings["copy_last"], straight),
                "probe_extrapolation": position_error(probe_extrapolation, straight),
                "true_positions_extrapolation": position_error(_extrapolate(positions[:, :context], horizon),
                                                               straight)},
        },
        "change_autocorrelation": {
            "true_positions": round(float(np.nanmedian(_change_autocorrelation(
                positions.reshape(*positions.shape[:2], -1), np.repeat(present, 2, axis=-1)))), 3),
            "target_representation": round(float(np.nanmedian(_change_autocorrelation(
                representation, np.ones(representation.shape, dtype=bool)))), 3),
        },
    }

    # ---------------------------------------------------------------- where the bounce futures land
    forks = fork_configs(balls, futures, context)
    # The seed `worldmodel futures` draws this family with (its place among the families).
    scenes = generate_fork_scenes(balls, forks["bounce"], args.scenes,
                                  seed=futures.seed + 100 * list(forks).index("bounce"))
    s, n = len(scenes), args.samples
    context_online = inference.encode(model, scenes.context)
    context_target = inference.encode(model, scenes.context, target=True)
    happened = scenes.futures[np.arange(s), scenes.realized]  # (S, H, h, w, 3)
    future_target = inference.encode(model, happened, target=True)  # (S, H, D)
    deterministic, _ = inference.rollout(model, context_online, context_target, horizon, window=window,
                                         deterministic=True)
    guided = _posterior_rollout(model, context_online, context_target, future_target, window)
    generator = torch.Generator(device=model.device).manual_seed(futures.seed)
    sampled, _ = inference.rollout(model, context_online.repeat_interleave(n, 0),
                                   context_target.repeat_interleave(n, 0), horizon, window=window,
                                   generator=generator)
    sampled = sampled.reshape(s, n, horizon, -1)

    color = palette_index(scenes.context_state["colors"][:, 0, 0], balls.palette)
    modes = scenes.mode_positions()  # (S, K, H, 2)
    realized = modes[np.arange(s), scenes.realized]  # (S, H, 2)
    other = modes[np.arange(s), 1 - scenes.realized]
    clean = scenes.null_positions()  # (S, H, 2)

    def landing(points: np.ndarray) -> dict[str, dict[str, float]]:
        """points (S, R, H, 2) -> per horizon (from 2: at 1 the ways have not parted), share on each candidate."""
        out = {}
        for h in range(1, horizon):
            # The clean bounce as a third mode (not assign_modes' null), so that landing there is told from none.
            candidates = np.stack([realized[:, h], other[:, h], clean[:, h]], axis=1)  # (S, 3, 2)
            assigned = assign_modes(points[:, :, h], candidates)  # (S, R): 0, 1, 2, or -1 for none
            out[str(h + 1)] = {
                "way_that_happened": round(float((assigned == 0).mean()), 3),
                "other_way": round(float((assigned == 1).mean()), 3),
                "clean_bounce": round(float((assigned == 2).mean()), 3),
                "none": round(float((assigned == -1).mean()), 3),
                "distance_to_way_that_happened": round(
                    float(np.linalg.norm(points[:, :, h] - realized[:, None, h], axis=-1).mean()), 4),
            }
        return out

    bounce = {
        "scenes": s,
        "ways_apart": [round(float(np.linalg.norm(realized[:, h] - other[:, h], axis=-1).mean()), 4)
                       for h in range(horizon)],
        "true_future_frames": landing(probe_positions(probe, future_target[:, None], color)),
        "posterior_rollout": landing(probe_positions(probe, guided[:, None], color)),
        "deterministic_rollout": landing(probe_positions(probe, deterministic[:, None], color)),
        "prior_samples": landing(probe_positions(probe, sampled, color)),
    }
    print(json.dumps({"checkpoint": str(args.checkpoint), "horizon": horizon, "window": window, "motion": motion,
                      "bounce_landing": bounce, "seconds": round(time.perf_counter() - started, 1)}, indent=1))
    return 0


def _straight(velocities, present):
    """(N, T, P, 2) velocities, (N, T, P) presence -> (N, T, P): True where a ball present since frame 0 has kept
    frame 0's velocity through frame t (no bounce, collision or kick so far)."""
    import numpy as np

    first = velocities[:, :1]
    same = np.isclose(velocities, first, atol=1e-6).all(-1) & present  # (N, T, P)
    return np.cumprod(same, axis=1).astype(bool)


def _extrapolate(points, horizon: int):
    """Least-squares straight line through each track of (N, C, P, 2) points, continued: (N, horizon, P, 2)."""
    import numpy as np

    c = points.shape[1]
    steps = np.arange(c, dtype=np.float64) - (c - 1)  # the last point at 0
    centred = steps - steps.mean()
    spread = max(float((centred ** 2).sum()), 1e-12)
    slope = np.einsum("c,ncpx->npx", centred, points - points.mean(1, keepdims=True)) / spread  # (N, P, 2)
    at_last = points.mean(1) - slope * steps.mean()  # (N, P, 2): the fitted line at the last point
    ahead = np.arange(1, horizon + 1, dtype=np.float64)
    return at_last[:, None] + ahead[None, :, None, None] * slope[:, None]


def _change_autocorrelation(values, valid):
    """(N, T, F) series and their (N, T, F) validity -> (F,) lag-1 correlation of the changes per frame, pooled
    over clips and uncentred (changes average about 0); pairs that touch an invalid frame are left out."""
    import numpy as np

    change = np.diff(values, axis=1)
    ok = valid[:, 1:] & valid[:, :-1]  # (N, T-1, F)
    pair = ok[:, 1:] & ok[:, :-1]
    later, earlier = np.where(pair, change[:, 1:], 0.0), np.where(pair, change[:, :-1], 0.0)
    norm = np.sqrt((later ** 2).sum((0, 1)) * (earlier ** 2).sum((0, 1)))
    return np.where(norm > 0, (later * earlier).sum((0, 1)) / np.maximum(norm, 1e-30), np.nan)


def _fit_linear_dynamics(model, balls, clips: int, length: int, seed: int):
    """Ridge map [s_t - s_{t-1}, s_t, 1] -> s_{t+1} - s_t on target representations of quiet clips: (2D + 1, D)."""
    import torch

    from analysis import inference
    from envs.clips import generate_clips

    data = generate_clips(balls, clips, length, seed=seed)
    target = inference.encode(model, data.frames, target=True).double()  # (N, T, D)
    change = target[:, 1:] - target[:, :-1]  # (N, T-1, D)
    inputs = _linear_inputs(change[:, :-1], target[:, 1:-1]).reshape(-1, 2 * target.shape[-1] + 1)
    outputs = change[:, 1:].reshape(-1, target.shape[-1])
    gram = inputs.T @ inputs + 1e-2 * torch.eye(inputs.shape[1], dtype=inputs.dtype)
    return torch.linalg.solve(gram, inputs.T @ outputs)


def _linear_inputs(change, state):
    import torch

    return torch.cat([change, state, torch.ones(*state.shape[:-1], 1, dtype=state.dtype)], dim=-1)


def _roll_linear(weights, before, last, horizon: int):
    """Roll the ridge dynamics from the last two target representations (B, D): (B, horizon, D)."""
    import torch

    out = []
    for _ in range(horizon):
        before, last = last, last + _linear_inputs(last - before, last) @ weights
        out.append(last)
    return torch.stack(out, dim=1)


def _posterior_rollout(model, context_online, context_target, future_target, window: int):
    """Open loop whose z at each step is the posterior's code given the rollout's own past and the true next frame:
    context_online (B, C, D), context_target (B, C, D), future_target (B, H, D) -> predictions (B, H, D)."""
    import torch

    from analysis import inference

    sequence, history, out = context_online, context_target, []
    with torch.no_grad():
        for k in range(future_target.shape[1]):
            inputs = sequence[:, -window:]
            z = inference.posterior_code(model, inputs, history, future_target[:, k])
            step, _ = model.rollout(inputs, history, 1, latents=z[:, None])
            out.append(step[:, 0])
            history = torch.cat([history, step.to(history.dtype)], dim=1)
            sequence = torch.cat([sequence, step.to(sequence.dtype)], dim=1)
    return torch.stack(out, dim=1)


if __name__ == "__main__":
    raise SystemExit(main())
