"""Do the analyses run on other simulator settings? Trains a tiny model per setting (debug preset, 30 steps; the
small and base presets, 3 steps) and runs `worldmodel report` on it at small sizes. Prints JSON: per setting "ok",
or the last lines of the failing command. About a minute per setting on one core.

    python bench/analysis_settings_sweep.py [--only gravity,tiny] [--out /tmp/sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (preset, training overrides): gravity either way, 1 to 8 balls, radii 0.02 to 0.26, speeds 0 to 0.1, every
# clip with walls and occluders, kicks at every step, rough walls, 16 to 64 px, contexts of 1 to 10 frames.
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "gravity": ("debug", ["data.balls.gravity=0.002"]),
    "gravity_up": ("debug", ["data.balls.gravity=-0.003"]),
    "gravity_strong": ("debug", ["data.balls.gravity=0.01"]),
    "one_ball": ("debug", ["data.balls.min_balls=1", "data.balls.max_balls=1"]),
    "many_balls": ("debug", ["data.balls.min_balls=4", "data.balls.max_balls=6",
                             "data.balls.radius_range=[0.04,0.07]"]),
    "big": ("debug", ["data.balls.radius_range=[0.15,0.22]"]),
    "huge": ("debug", ["data.balls.min_balls=2", "data.balls.max_balls=2", "data.balls.radius_range=[0.2,0.26]"]),
    "tiny": ("debug", ["data.balls.radius_range=[0.02,0.04]"]),
    "fast": ("debug", ["data.balls.speed_range=[0.06,0.09]", "data.balls.max_speed=0.12"]),
    "slow": ("debug", ["data.balls.speed_range=[0.0,0.01]"]),
    "slow_rough": ("debug", ["data.balls.speed_range=[0.005,0.015]", "data.balls.bounce_kick_prob=1.0"]),
    "background": ("debug", ["data.balls.background=[40,60,200]"]),
    "walls_and_occluders": ("debug", ["data.balls.occluder_prob=1.0", "data.balls.wall_prob=1.0"]),
    "wide_occluder": ("debug", ["data.balls.occluder_prob=1.0", "data.balls.occluder_width=0.45"]),
    "walls_small_balls": ("debug", ["data.balls.wall_prob=1.0", "data.balls.radius_range=[0.05,0.09]"]),
    "walls_big_balls": ("debug", ["data.balls.wall_prob=1.0", "data.balls.radius_range=[0.1,0.12]",
                                  "data.balls.wall_x_range=[0.45,0.55]"]),
    "no_kicks": ("debug", ["data.balls.kick_prob=0.0"]),
    "kicks_every_step": ("debug", ["data.balls.kick_prob=1.0", "data.balls.kick_strength=0.08"]),
    "rough": ("debug", ["data.balls.bounce_kick_prob=1.0"]),
    "one_ball_rough": ("debug", ["data.balls.min_balls=1", "data.balls.max_balls=1", "data.balls.bounce_kick_prob=1.0",
                                 "data.balls.bounce_kick=0.08"]),
    "equal_mass_gravity_rough": ("debug", ["data.balls.mass_from_radius=false", "data.balls.gravity=0.001",
                                           "data.balls.bounce_kick_prob=0.5"]),
    "equal_mass_fast": ("debug", ["data.balls.mass_from_radius=false", "data.balls.speed_range=[0.05,0.1]",
                                  "data.balls.max_speed=0.1"]),
    "two_colours": ("debug", ["data.balls.palette=[[255,0,0],[0,255,0]]"]),
    "px16": ("debug", ["model.image_size=16", "data.balls.image_size=16", "model.encoder.channels=[16,32]",
                       "model.decoder.channels=[32,16]"]),
    "px40_crowded": ("debug", ["model.image_size=40", "data.balls.image_size=40", "data.balls.min_balls=5",
                               "data.balls.max_balls=8", "data.balls.radius_range=[0.03,0.06]"]),
    "px64": ("debug", ["model.image_size=64", "data.balls.image_size=64"]),
    "context10": ("debug", ["model.context_frames=10", "data.clip_length=16", "model.predictor.max_len=16"]),
    "context1": ("debug", ["model.context_frames=1", "data.horizon=2"]),
    "small_preset": ("small", ["run.eval_batches=1"]),
    "base_preset": ("base", ["run.eval_batches=1", "data.batch_size=4"]),
}

REPORT = ["--no-mlflow", "--scenes", "4", "--samples", "5", "--horizon", "4", "--probe-clips", "8", "--clips", "12",
          "--ood-clips", "4", "--hidden-clips", "12", "--contact-clips", "8", "--length", "8", "--mlp-epochs", "2",
          "--pairs", "2", "--controls", "1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    parser.add_argument("--out", default="/tmp/analysis-settings-sweep", help="where the runs go")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SETTINGS)
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; expected some of {', '.join(SETTINGS)}")
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    cli = [sys.executable, "-m", "training.cli"]
    results, started = {}, time.perf_counter()
    for name in names:
        preset, overrides = SETTINGS[name]
        run = Path(args.out) / name
        steps = 30 if preset == "debug" else 3
        train = [*cli, "train", "--preset", preset, f"run.steps={steps}", f"run.out_dir={run}",
                 f"run.threads={args.threads}", "run.progress=false", "data.num_clips=64", *overrides]
        report = [*cli, "report", "--checkpoint", str(run), "--out", str(run / "report"), "--threads",
                  str(args.threads), *REPORT]
        for stage, command in (("train", train), ("report", report)):
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
            if done.returncode != 0:
                results[name] = {"failed": stage, "tail": (done.stdout + done.stderr).strip().splitlines()[-5:]}
                break
        else:
            results[name] = "ok"
        print(f"{name}: {results[name] if results[name] == 'ok' else 'FAILED'}", file=sys.stderr)
    print(json.dumps({"settings": results, "ok": sum(r == "ok" for r in results.values()), "of": len(results),
                      "seconds": round(time.perf_counter() - started)}, indent=1))
    return 0 if all(r == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
