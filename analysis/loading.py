"""Finding and loading what a run wrote, from the files alone (analysis never touches trainer state).

`--checkpoint DIR` may be any of: a saved model directory (config.json + model.safetensors), a run's output
directory (uses <run>/model, else its newest complete checkpoint; the checkpoint also when it records a later
training step than model/, as after resuming a finished run and stopping it early), or one checkpoint folder
(<run>/checkpoints/step-N, uses its model/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from envs.physics import BallsConfig
from worldmodel.config_io import from_dict, load_yaml
from worldmodel.model import WorldModel
from worldmodel.serialization import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, read_training_step


def _is_model_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _complete(step_dir: Path) -> bool:
    try:
        manifest = json.loads((step_dir / "manifest.json").read_text())
        return all((step_dir / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def resolve_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist; expected a model, run or checkpoint directory")
    if _is_model_dir(path):
        return path
    steps = sorted(p for p in (path / "checkpoints").glob("step-*") if p.is_dir() and _complete(p))
    if _is_model_dir(path / "model"):
        final = path / "model"
        newest = steps[-1] / "model" if steps else None
        final_step = read_training_step(final)
        newest_step = read_training_step(newest) if newest is not None else None
        # A run resumed past its final model and stopped early: model/ is from the earlier finish, the newest
        # checkpoint is further on. Without recorded steps (older saves) model/ wins, as it always did.
        if final_step is not None and newest_step is not None and newest_step > final_step:
            print(f"{path}: using {newest.parent.name} (step {newest_step}), newer than model/ (step {final_step})",
                  file=sys.stderr)
            return newest
        return final
    if steps:
        return steps[-1] / "model"
    raise CheckpointError(
        f"{path}: no saved model found (looked for {CONFIG_FILE} + {WEIGHTS_FILE} in it, in model/, and for a "
        "complete checkpoints/step-*/)"
    )


def load_model(path: str | Path, *, device: str = "cpu") -> tuple[WorldModel, Path]:
    model_dir = resolve_model_dir(path)
    return WorldModel.load(model_dir, map_location=device), model_dir


def run_config(model_dir: Path) -> dict:
    """The resolved training config (as a dict) of the run a model directory belongs to: <run>/config.yaml next to
    <run>/model, or <run>/config.yaml above <run>/checkpoints/step-N/model. Empty when there is none."""
    for candidate in (model_dir.parent / "config.yaml", model_dir.parent.parent.parent / "config.yaml"):
        if candidate.is_file():
            config = load_yaml(candidate)
            return config if isinstance(config, dict) else {}
    return {}


def simulator_config(model_dir: Path, image_size: int) -> BallsConfig:
    """The simulator settings the model was trained with (from the run's config.yaml), else the defaults, without
    the random walls and occluders of training clips (`BallsConfig.open_scene`): the analyses place their own (the
    VoE suite its walls and occluders, the hidden-ball probe its occluder), and probes of positions are read where
    every ball can be seen."""
    data = run_config(model_dir).get("data", {})
    if isinstance(data, dict) and isinstance(data.get("balls"), dict):
        return from_dict(BallsConfig, data["balls"], path="data.balls").open_scene()
    return BallsConfig(image_size=image_size)


def refit_note(model_dir: Path) -> str | None:
    """For a model written by `bench/latent_refit.py --save` (a refit.json beside its model folder): what was
    refitted on which frozen encoder. None otherwise, or when the record cannot be read."""
    path = model_dir.parent / "refit.json"
    try:
        record = json.loads(path.read_text())
        return (f"predictor and latent ({', '.join(record['trained'])}) refitted for {record['steps']} steps at a "
                f"{record['horizon']}-frame horizon on {record['clips']} simulator clips, on the frozen encoder of "
                f"{record['base_checkpoint']} ({path.name})")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def foreign_data_note(model_dir: Path) -> str | None:
    """For a model that did not train on the bouncing-balls simulator (data.source recorded or gym, from the run's
    config.yaml): a sentence saying that the simulator-based analyses measure transfer, not its own data. None for
    simulator runs and for models without a run config."""
    data = run_config(model_dir).get("data", {})
    source = data.get("source", "bouncing_balls") if isinstance(data, dict) else "bouncing_balls"
    if source == "bouncing_balls":
        return None
    where = data.get("path") or data.get("env_id") or ""
    suites = ("futures and surprise suites (and the probe suite with --suite simulator; `worldmodel probe` reads "
              "the env's own recorded state)" if source == "gym" else "futures, probe and surprise suites")
    return (f"this model trained on data.source={source}{f' ({where})' if where else ''}; the {suites} run on the "
            "bouncing-balls simulator at its image size, so they measure how it transfers there, not how it models "
            "its own data (for that: `worldmodel sample --checkpoint ...`, which samples futures of the run's own "
            "validation clips)")
