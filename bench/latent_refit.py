"""Refit the latent of a trained model on its frozen encoder: what another latent setting does, in minutes instead of
a training run. Prints JSON.

    python bench/latent_refit.py --checkpoint runs/inno/train                    # the control: the model's own setting
    python bench/latent_refit.py --checkpoint runs/inno/train model.latent.free_bits=0 model.latent.kl_weight=0.002
    python bench/latent_refit.py --checkpoint runs/inno/train model.latent.posterior_input=scaled_innovation
    python bench/latent_refit.py --checkpoint runs/inno/train --horizon 10 --steps 1500 model.rollout_latent=closed_loop

    python bench/latent_refit.py --checkpoint runs/def2 --fresh --steps 4000              # the control for ...
    python bench/latent_refit.py --checkpoint runs/def2 --fresh --steps 4000 model.predictor.width=192 \
        model.predictor.depth=3 model.latent.hidden=256                                     # ... a larger predictor

The encoder and its EMA target stay as trained. The posterior is built afresh (so its input may change), and so is
every weight whose shape the setting changes (`rebuilt` names their modules; with --fresh, every module the refit
trains starts from fresh weights, so that a resized predictor has a control that starts as it does); the causal
predictor, prior, posterior and transition are then trained for --steps on the predictive terms of the loss
(prediction, rollout, capacity, prior fit, best-of-prior when its weight is set), with the run's optimiser settings,
over windows of clips drawn from the run's own simulator (without its kicks and scatters with --deterministic) and
encoded once. Then, on held-out material: the capacity used and the one-step errors per kind
of step (`analysis.multifuture.step_events`: forks, kicks, quiet), the bounce family's futures metrics (the targets'
headline) with its reveal step, the z-leak check, and the deterministic rollout's error per horizon on held-out
clips of the simulator without its random kicks and scatters (`rollout_drift`: what is left there is the model's own
drift). Every setting starts from the same weights, data and seed, so run the control beside it: the differences
are the setting's. It does not replace training from scratch (the
encoder was shaped by the old latent), but it tells in 3 minutes whether a setting is worth the 30.

The predictor's memory of a hidden ball (`bench/hidden_ball_expectation.py`) is refitted the same way:

    python bench/latent_refit.py --checkpoint runs/x --occluder-prob 1 --save /tmp/control
    python bench/latent_refit.py --checkpoint runs/x --occluder-prob 1 --emergence-share 0.5 --save /tmp/oversampled

`--emergence-share` fills that share of each batch with windows in which a ball fully behind the occluder comes out
in a predicted frame; `--save` writes the refitted model (and the run's config.yaml) for `worldmodel surprise` and
the bench.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRAINED = ("past.", "latent.", "transition.")  # the modules a refit trains; the encoders stay frozen
REFITTABLE = ("latent.", "predictor.", "rollout_latent", "prediction_weight", "rollout_weight", "best_of_weight",
              "best_of_samples")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run, model or checkpoint directory")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--clips", type=int, default=600, help="training clips (from the run's simulator settings)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--scenes", type=int, default=64, help="bounce fork scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizon", type=int, default=0,
                        help="future frames per training window (default: the run's data.horizon)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--occluder-prob", type=float, default=None,
                        help="share of training clips with an occluder (default: the run's data.balls.occluder_prob)")
    parser.add_argument("--deterministic", action="store_true",
                        help="train on the run's simulator without its random kicks and rough-wall scatters: what "
                             "the transition learns when the past determines every step")
    parser.add_argument("--emergence-share", type=float, default=0.0,
                        help="share of each batch drawn from windows in which a ball fully hidden behind the "
                             "occluder comes out in a predicted frame (0: windows drawn uniformly)")
    parser.add_argument("--fresh", action="store_true",
                        help="start the causal predictor, prior, posterior and transition from fresh weights (not the "
                             "trained ones): the control for a setting that rebuilds them, such as a larger "
                             "model.predictor.width")
    parser.add_argument("--save", default="",
                        help="write the refitted model to DIR/model (+ the run's config.yaml), for the analysis "
                             "commands")
    parser.add_argument("overrides", nargs="*", metavar="model.key=value",
                        help="latent settings (model.latent.*) and predictive loss weights to refit with")
    args = parser.parse_args()

    import numpy as np
    import torch

    from analysis import inference
    from analysis.loading import load_model, run_config, simulator_config
    from analysis.multifuture import FuturesConfig, run_futures, step_events
    from envs.clips import generate_clips
    from envs.physics import BallsConfig
    from training.config import OptimConfig
    from worldmodel.config_io import apply_overrides, from_dict
    from worldmodel.model import WorldModel, distance

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    trained, model_dir = load_model(args.checkpoint)
    stripped = []
    for item in args.overrides:
        key = item.split("=", 1)[0]
        if not key.startswith("model.") or not key[len("model."):].startswith(REFITTABLE):
            parser.error(f"{item}: only model.latent.*, model.predictor.* and the predictive loss weights "
                         f"(model.{', model.'.join(REFITTABLE[1:])}) can be refitted on a frozen encoder")
        stripped.append(item[len("model."):])
    config = apply_overrides(trained.config, stripped)
    run = run_config(model_dir)
    data_section = run.get("data", {})
    if not isinstance(data_section.get("balls"), dict):
        parser.error(f"{model_dir}: no simulator settings in the run's config.yaml (data.balls); the refit trains on "
                     "the run's own simulator")
    train_balls = from_dict(BallsConfig, data_section["balls"], path="data.balls")
    if args.occluder_prob is not None:
        if not 0.0 <= args.occluder_prob <= 1.0:
            parser.error(f"--occluder-prob must be in [0, 1], got {args.occluder_prob}")
        train_balls = replace(train_balls, occluder_prob=args.occluder_prob)
    if args.deterministic:
        train_balls = train_balls.deterministic()
    if not 0.0 <= args.emergence_share <= 1.0:
        parser.error(f"--emergence-share must be in [0, 1], got {args.emergence_share}")
    optim = from_dict(OptimConfig, run.get("optim", {}), path="optim")
    if args.horizon < 0:
        parser.error(f"--horizon must be >= 1 (or 0 for the run's data.horizon), got {args.horizon}")
    window = config.context_frames + (args.horizon or int(data_section.get("horizon", 4)))
    if window > config.predictor.max_len:
        parser.error(f"--horizon {args.horizon}: window {window} exceeds model.predictor.max_len="
                     f"{config.predictor.max_len}")

    torch.manual_seed(args.seed)
    model = WorldModel(config)
    old_state = trained.state_dict()
    refitted = TRAINED if args.fresh else ("latent.posterior.",)
    if args.fresh:
        fresh = sorted(prefix.rstrip(".") for prefix in TRAINED)
    else:
        fresh = sorted({name.split(".")[1] if name.startswith("latent.") else name.split(".")[0]
                        for name, value in model.state_dict().items()
                        if name.startswith("latent.posterior.") or name not in old_state
                        or old_state[name].shape != value.shape})
    keep = {name: value for name, value in old_state.items()
            if not name.startswith(refitted) and name in model.state_dict()
            and model.state_dict()[name].shape == value.shape}
    model.load_state_dict(keep, strict=False)
    model.requires_grad_(False)
    trainable = [p for name, p in model.named_parameters() if name.startswith(TRAINED)]
    for p in trainable:
        p.requires_grad_(True)

    clips = generate_clips(train_balls, args.clips, max(window, int(data_section.get("clip_length", window))),
                           seed=args.seed + 123)
    online = inference.encode(model, clips.frames)  # (N, L, D): the frozen encoder, computed once
    target = inference.encode(model, clips.frames, target=True)
    optimizer = torch.optim.AdamW(trainable, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    weights = model.loss_weights()
    rng = np.random.default_rng(args.seed)
    emerging = emergence_windows(clips.state, train_balls, config.context_frames, window)  # (E, 2)
    oversampled = int(round(args.emergence_share * args.batch_size))
    if oversampled and len(emerging) == 0:
        parser.error("--emergence-share: no training window shows a hidden ball coming out (raise --occluder-prob)")
    model.train()
    history = []
    for step in range(args.steps):
        rows = torch.as_tensor(rng.integers(0, online.shape[0], args.batch_size))
        starts = torch.as_tensor(rng.integers(0, online.shape[1] - window + 1, args.batch_size))
        if oversampled:
            picked = torch.as_tensor(emerging[rng.integers(0, len(emerging), oversampled)])  # (k, 2)
            rows[:oversampled], starts[:oversampled] = picked[:, 0], picked[:, 1]
        frames = starts[:, None] + torch.arange(window)[None]  # (B, window) frame indices
        logged = step % 100 == 0 or step == args.steps - 1
        losses, metrics = model.predictive_losses(online[rows[:, None], frames], target[rows[:, None], frames],
                                                  telemetry=logged)
        total = sum(weights[name] * value for name, value in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, optim.grad_clip)
        optimizer.step()
        if logged:
            history.append({"step": step, **metrics})
    model.eval()
    if args.save:
        save_refit(model, Path(args.save), run, window - config.context_frames, {
            "base_checkpoint": str(model_dir), "steps": args.steps, "clips": args.clips,
            "batch_size": args.batch_size, "seed": args.seed, "fresh": args.fresh, "overrides": args.overrides,
            "occluder_prob": train_balls.occluder_prob, "deterministic": args.deterministic,
            "emergence_share": args.emergence_share, "trained": [prefix.rstrip(".") for prefix in TRAINED],
            "final_metrics": history[-1],
        })

    balls = simulator_config(model_dir, config.image_size)
    held_out = generate_clips(balls, 256, window, seed=args.seed + 32_000)
    with torch.no_grad():
        o, t = inference.encode(model, held_out.frames), inference.encode(model, held_out.frames, target=True)
        summary, prior, posterior = model._teacher_forced(o, t, None)
        used = model.latent.cost(posterior.mean, posterior.std, prior).double().cpu().numpy()
        with_posterior = distance(model.transition(summary, posterior.code, t[:, :-1]), t[:, 1:]).double().cpu().numpy()
        with_prior = distance(model.transition(summary, prior.code, t[:, :-1]), t[:, 1:]).double().cpu().numpy()
    events = {}
    for name, rows in step_events(held_out.state["velocities"], held_out.state["kicked"]).items():
        events[name] = {"steps": int(rows.sum()), "capacity": float(used[rows].mean()),
                        "prior_mean_error": float(with_prior[rows].mean()),
                        "posterior_error": float(with_posterior[rows].mean()),
                        "error_removed": float(1 - with_posterior[rows].mean() / with_prior[rows].mean())}
    drift_horizon = 10
    quiet = generate_clips(balls.deterministic(), 128, config.context_frames + drift_horizon, seed=args.seed + 33_000)
    with torch.no_grad():
        o, t = inference.encode(model, quiet.frames), inference.encode(model, quiet.frames, target=True)
        c = config.context_frames
        rolled, _ = inference.rollout(model, o[:, :c], t[:, :c], drift_horizon, window=window - 1, deterministic=True)
        drift = distance(rolled, t[:, c:]).mean(0).tolist()
        copy_last = distance(t[:, c - 1 : c].expand(-1, drift_horizon, -1), t[:, c:]).mean(0).tolist()
    futures = run_futures(model, balls, FuturesConfig(scenes=args.scenes, families=(), probe_clips=320),
                          window=window - 1, log=lambda *_: None)
    bounce = futures["families"]["bounce"]
    print(json.dumps({
        "checkpoint": str(model_dir),
        "overrides": args.overrides,
        "rebuilt": fresh,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "steps": args.steps,
        "window": window,
        "occluder_prob": train_balls.occluder_prob,
        "trained_on_deterministic_simulator": args.deterministic,
        "training_kicks_and_scatters": int(clips.state["kicked"].sum()),
        "emergence_windows": {"available": int(len(emerging)),
                              "of": int(online.shape[0] * (online.shape[1] - window + 1)),
                              "share_of_batch": oversampled / args.batch_size},
        "train_last": history[-1],
        "events": events,
        "fork_over_quiet": futures["capacity_by_event"]["fork_over_quiet"],
        "bounce": {
            "best_of_10_over_deterministic": bounce["at_horizon"].get("best_of_10_over_deterministic"),
            "deterministic": bounce["at_horizon"]["deterministic"],
            "copy_last": bounce["at_horizon"]["copy_last"],
            "mode_coverage": bounce["mode_coverage"],
            "reveal_step": bounce["reveal_step"],
        },
        "z_leak_ratio_bounce": futures["z_leak"]["bounce"]["leak_ratio"],
        "rollout_drift": {"deterministic": [round(x, 5) for x in drift],
                          "copy_last": [round(x, 5) for x in copy_last]},
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))
    return 0


def save_refit(model, out: Path, run: dict, horizon: int, record: dict) -> None:
    """out/model (weights + config), out/config.yaml (the run's, with the refitted model's settings and data.horizon
    set to the refit's: the analyses read the predictor's training window from it, and the simulator settings),
    out/refit.json (how it was made; written last)."""
    import copy

    import yaml

    from worldmodel.config_io import atomic_write_text, to_dict

    model.save(out / "model")
    if run:
        config = copy.deepcopy(run)
        config["model"] = to_dict(model.config)
        config.setdefault("data", {})["horizon"] = horizon
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    atomic_write_text(out / "refit.json", json.dumps({**record, "horizon": horizon}, indent=1) + "\n")


def emergence_windows(state: dict, balls, context: int, window: int):
    """(E, 2) int64 (clip, start) of the training windows in which a ball that was fully behind its clip's
    occluder (`analysis.probes.fully_hidden`) comes out in one of the predicted frames (after the context)."""
    import numpy as np

    from analysis.probes import fully_hidden

    hidden = fully_hidden(state, balls)  # (N, T, M)
    out = np.zeros(hidden.shape[:2], bool)  # (N, T): a ball comes out in frame t
    out[:, 1:] = (hidden[:, :-1] & ~hidden[:, 1:]).any(-1)
    starts = np.arange(out.shape[1] - window + 1)
    predicted = starts[:, None] + np.arange(context, window)[None]  # (S, window - context) predicted frame indices
    shows = out[:, predicted].any(-1)  # (N, S)
    return np.argwhere(shows).astype(np.int64)


if __name__ == "__main__":
    raise SystemExit(main())
