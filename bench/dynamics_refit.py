"""Run (or re-run) the dynamics stage on a trained encoder: another dynamics setting in minutes, not a training run.

    python bench/dynamics_refit.py --checkpoint runs/x/checkpoints/step-000002000 --out runs/x-k16 \
        model.latent.classes=16 dynamics.steps=3000

The run's config.yaml (next to the checkpoint or model) is the starting point; `key=value` overrides go on top
(model.latent.*, model.predictor.*, model.rollout_weight, dynamics.*). The encoder, its EMA target and the pixel
decoder are loaded as trained; the predictor, the latent and the transition are loaded too where their shapes still
match and built fresh otherwise (or always, with --fresh). Then `training.dynamics_stage.train_dynamics` runs as
it does at the end of a two-stage run, and the model and a config.yaml are written to OUT, so every analysis
command takes `--checkpoint OUT`. Prints JSON: the stage's last metrics, its wall time and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from analysis.loading import resolve_model_dir
from training.config import TrainConfig
from training.dynamics_stage import TRAINED, train_dynamics
from worldmodel import WorldModel
from worldmodel.config_io import apply_overrides, from_dict, load_yaml, save_yaml
from worldmodel.serialization import fit_row_tables, read_weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run, model or checkpoint directory")
    parser.add_argument("--out", required=True, help="where the refitted model and its config.yaml go")
    parser.add_argument("--fresh", action="store_true", help="start the dynamics modules from fresh weights")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = resolve_model_dir(args.checkpoint)
    candidates = (model_dir.parent / "config.yaml", model_dir.parent.parent.parent / "config.yaml")
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        parser.error(f"no config.yaml next to {model_dir} (looked at {', '.join(map(str, candidates))})")
    saved = load_yaml(found)
    saved.get("dynamics", {}).pop("windows", None)  # runs from before dynamics.frames replaced it
    config = apply_overrides(from_dict(TrainConfig, saved), args.overrides)
    if config.dynamics.steps < 1:
        config = apply_overrides(config, ["dynamics.steps=3000"])
    config.validate()
    torch.manual_seed(config.run.seed)
    model = WorldModel(config.model)
    own = model.state_dict()
    state = fit_row_tables(model, read_weights(model_dir / "model.safetensors"))
    kept = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape
            and not (args.fresh and key.split(".")[0] in TRAINED)}
    missing = sorted({key.split(".")[0] for key in own if key not in kept})
    if any(name not in TRAINED for name in missing):
        parser.error(f"the checkpoint does not fit the encoder/decoder of this config (modules {missing})")
    model.load_state_dict(kept, strict=False)

    started, load = time.perf_counter(), os.getloadavg()[0]
    def progress(step: int, logged: dict[str, float]) -> None:
        print(f"step {step - config.run.steps}/{config.dynamics.steps}: open-loop error "
              f"{logged.get('dynamics/error/rollout', float('nan')):.4f}, validation "
              f"{logged.get('dynamics/val/error/rollout', float('nan')):.4f}", file=sys.stderr, flush=True)

    metrics = train_dynamics(model, config, torch.device("cpu"), log=progress)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    model.save(out / "model", step=config.run.steps + config.dynamics.steps)
    save_yaml(config, out / "config.yaml")
    print(json.dumps({"checkpoint": str(model_dir), "out": str(out), "overrides": args.overrides,
                      "rebuilt": missing, "seconds": round(seconds, 1), "load_average_start": load,
                      "load_average_end": os.getloadavg()[0], "metrics": metrics}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
