"""Saving and loading a WorldModel: `config.json` + `model.safetensors` in one directory.

Weights go through safetensors only, so loading a model never unpickles anything. Writes are atomic: files are
written into a temporary sibling directory which is then renamed into place, so a crash leaves either the old model
or the new one, never half of one. Every failure to load names the file and says what was expected.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import ModelConfig
from .config_io import ConfigError, from_dict, to_dict

if TYPE_CHECKING:
    from .model import WorldModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = "1"


class CheckpointError(RuntimeError):
    """A saved model or checkpoint is missing, incomplete, corrupt or does not match the config."""


def replace_directory(temporary: Path, final: Path) -> None:
    """Move a fully written `temporary` directory to `final`, replacing an existing one (rename is atomic)."""
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temporary, final)


def write_model_files(model: "WorldModel", directory: Path, *, step: int | None = None) -> None:
    """Write config + weights into an existing directory (no atomicity; callers rename the directory). step: the
    optimizer steps the weights have had, recorded in config.json as `training_step` (see `read_training_step`)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "worldmodel", "version": FORMAT_VERSION})
    payload: dict[str, object] = {"format_version": FORMAT_VERSION, "model": to_dict(model.config)}
    if step is not None:
        payload["training_step"] = int(step)
    with open(directory / CONFIG_FILE, "w") as handle:
        json.dump(payload, handle, indent=2)


def save_model(model: "WorldModel", directory: str | Path, *, step: int | None = None) -> Path:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    write_model_files(model, temporary, step=step)
    replace_directory(temporary, directory)
    return directory


def read_training_step(directory: Path) -> int | None:
    """The `training_step` a saved model records, or None (saved without one, or unreadable: the caller decides)."""
    try:
        step = json.loads((Path(directory) / CONFIG_FILE).read_text()).get("training_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def read_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a saved model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path}: expected a JSON object with a 'model' entry")
    model = payload["model"]
    encoder = model.get("encoder") if isinstance(model, dict) else None
    if isinstance(encoder, dict):
        # Saved before these fields existed: those models read keypoints from the last stage and projected them.
        encoder.setdefault("keypoint_stage", -1)
        encoder.setdefault("keypoint_passthrough", False)
    if isinstance(model, dict):
        model.setdefault("rollout_latent", "teacher_forced")  # saved before the field existed
    for section, key, old in (("predictor", "change_inputs", False), ("latent", "posterior_input", "target"),
                              ("latent", "keypoint_mixture", False)):
        part = model.get(section) if isinstance(model, dict) else None
        if isinstance(part, dict):
            # Saved before this field existed: built the old way.
            part.setdefault(key, old)
    try:
        return from_dict(ModelConfig, model, path="model")
    except (ConfigError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid model config: {error}") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a saved model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        return upgrade_state(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") from None


_OLD_CONV = re.compile(r"^((?:target_)?encoder)\.convs\.(\d+)\.(.+)$")
"""Encoders saved before the conv stages became a ModuleList held one flat Sequential of 6 layers per stage."""


def upgrade_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename weights of older saved models to the current layout (same tensors, new names)."""
    upgraded = {}
    for name, tensor in state.items():
        match = _OLD_CONV.match(name)
        if match:
            prefix, layer, rest = match.group(1), int(match.group(2)), match.group(3)
            name = f"{prefix}.stages.{layer // 6}.{layer % 6}.{rest}"
        if name == "latent.scale.raw" and tensor.ndim == 1:
            # Saved when one (D,) scale, without LikelihoodScale.SPEED, judged one step and every rollout step.
            from .likelihood import LikelihoodScale

            tensor = (tensor / LikelihoodScale.SPEED).unsqueeze(0)
            upgraded.setdefault("latent.rollout_scale.raw", tensor)
        upgraded[name] = tensor
    return upgraded


def fit_row_tables(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An upgraded rollout scale holds one row (the old shared scale): repeat it for every step the model has."""
    expected = module.state_dict()
    name = "latent.rollout_scale.raw"
    if name in state and name in expected and state[name].shape[0] == 1 != expected[name].shape[0]:
        state = {**state, name: state[name].expand_as(expected[name]).clone()}
    return state


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict with errors that name the file and the offending keys/shapes."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the config expects "
                f"{tuple(expected[name].shape)}"
            )
    module.load_state_dict(state)


def load_model(cls: type["WorldModel"], directory: str | Path, *, map_location="cpu") -> "WorldModel":
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory; expected a saved model ({CONFIG_FILE}, {WEIGHTS_FILE})")
    config = read_config(directory)
    model = cls(config)
    state = fit_row_tables(model, read_weights(directory / WEIGHTS_FILE))
    load_state_strict(model, state, directory / WEIGHTS_FILE)
    return model.to(map_location)
