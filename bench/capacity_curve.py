"""The capacity trade-off curve: train one model per capacity setting and measure what z buys at each. Prints JSON.

    python bench/capacity_curve.py                                  # debug preset, free bits 0 / 0.1 / 0.5 / 2
    python bench/capacity_curve.py --free-bits 0.5 --sparse-l1 0.001,0.01   # plus two sparse (L1) settings
    python bench/capacity_curve.py --free-bits 0,1 --steps 100      # quicker
    python bench/capacity_curve.py --free-bits "" --kl-weight 0.05,0.005,0.0005   # the KL's price instead of its floor
    python bench/capacity_curve.py --preset small --steps 2500 --free-bits 0.1,0.5,2   # the real thing (hours on CPU)

Every run trains on rough walls (`data.balls.bounce_kick_prob=1`, unless overridden): every bounce off the border
forks two ways, so z has a job whose size is known (one fair coin per bounce). Per setting: the capacity used
(nats of KL per step, or |z|_1), the one-step error with the posterior z and with the prior mean (the
deterministic predictor), and on the bounce fork scenes best-of-10 / deterministic at the last horizon and mode
coverage at N = 10. A z with too little capacity cannot say which way the ball went (best-of-10 ~ deterministic);
with more, the error falls until z starts carrying what the past already shows. The plot is written next to the
JSON (`capacity.png`).
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
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--free-bits", default="0,0.1,0.5,2", help="comma-separated model.latent.free_bits values")
    parser.add_argument("--kl-weight", default="", help="comma-separated model.latent.kl_weight values of kl runs "
                        "(at the preset's free bits)")
    parser.add_argument("--sparse-l1", default="", help="comma-separated model.latent.l1_weight values of sparse runs")
    parser.add_argument("--scenes", type=int, default=64, help="bounce fork scenes per setting")
    parser.add_argument("--out", default="runs/capacity-curve")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides for every run")
    args = parser.parse_args()

    import torch

    from analysis import inference, plots
    from analysis.multifuture import FuturesConfig, run_futures
    from training.cli import build_config
    from training.trainer import train
    from worldmodel.model import WorldModel

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    settings = []  # (run name, overrides) per point of the curve
    for flag, values, name, keys in (("--free-bits", args.free_bits, "free_bits", ("model.latent.capacity=kl",
                                                                                 "model.latent.free_bits")),
                                     ("--kl-weight", args.kl_weight, "kl_weight", ("model.latent.capacity=kl",
                                                                                "model.latent.kl_weight")),
                                     ("--sparse-l1", args.sparse_l1, "sparse_l1", ("model.latent.capacity=sparse",
                                                                                "model.latent.l1_weight"))):
        try:
            numbers = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            parser.error(f"{flag} must be comma-separated numbers, got {values!r}")
        settings += [(f"{name}_{v:g}", [keys[0], f"{keys[1]}={v}"]) for v in numbers]
    if not settings:
        parser.error("--free-bits, --kl-weight and --sparse-l1 are all empty")
    out = Path(args.out)
    overrides = ["data.balls.bounce_kick_prob=1.0", *args.overrides]
    points = []
    for name, setting in settings:
        run_dir = out / name
        config = build_config(args.preset, None, [f"run.out_dir={run_dir}", f"run.steps={args.steps}",
                                                  "run.progress=false", "run.sample_video=false",
                                                  *overrides, *setting])
        started = time.perf_counter()
        result = train(config)
        seconds = time.perf_counter() - started
        model = WorldModel.load(result.out_dir / "model").eval()
        window = inference.trained_window(model, result.out_dir)
        futures = run_futures(model, config.data.balls.open_scene(),
                              FuturesConfig(scenes=args.scenes, families=(), bounce=True), window=window,
                              log=lambda line: print(line, file=sys.stderr))
        bounce = futures["families"]["bounce"]
        points.append({
            **futures["capacity"],
            "best_of_10": bounce["best_of_n"]["10"][-1],
            "deterministic": bounce["deterministic"][-1],
            "best_of_10_over_deterministic": bounce["at_horizon"].get("best_of_10_over_deterministic"),
            "mode_coverage_at_n10": bounce["mode_coverage"].get("10"),
            "simulator_ceiling_mode_coverage_at_n10": bounce["simulator_ceiling"]["mode_coverage"].get("10"),
            "z_leak_ratio": futures["z_leak"]["ordinary_clips"].get("leak_ratio"),
            "capacity_fork_over_quiet": futures["capacity_by_event"]["fork_over_quiet"],
            "train_seconds": seconds,
            "checkpoint": str(result.out_dir),
        })
        print(f"{name}: capacity used {points[-1]['capacity_used']:.3f}, best-of-10 / deterministic "
              f"{points[-1]['best_of_10_over_deterministic']:.3f}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    plot = plots.capacity_curve(points, out / "capacity.png")
    summary = {"preset": args.preset, "steps": args.steps, "overrides": overrides, "points": points,
               "plot": str(plot)}
    (out / "capacity_curve.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
