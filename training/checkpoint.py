"""Training checkpoints: atomic, complete-or-absent, resumable.

Layout of `<out_dir>/checkpoints/step-000001000/`:
    model/config.json, model/model.safetensors   the WorldModel (loadable alone with WorldModel.load)
    training_state.pt                            optimizer, schedule, step, RNG states (tensors and plain types
                                                 only: read back with torch.load(weights_only=True))
    config.yaml                                  the resolved TrainConfig
    manifest.json                                written last: the step and every file's size
Everything is written into `step-N.tmp/` and renamed when complete, so a run killed mid-write leaves a `.tmp`
folder that is ignored (and cleaned) rather than a checkpoint that looks whole. Only the newest K are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.model import WorldModel
from worldmodel.serialization import CheckpointError, load_state_strict, read_weights, write_model_files

from .config import TrainConfig
from .config_io import save_yaml

MANIFEST = "manifest.json"
STATE_FILE = "training_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and ints (so weights_only loading accepts it)."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt_state.tolist()), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(
    out_dir: str | Path,
    *,
    step: int,
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    temporary = root / f"step-{step:09d}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    (temporary / "model").mkdir(parents=True)

    write_model_files(model, temporary / "model")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rng_state(),
            "extra": extra or {},
        },
        temporary / STATE_FILE,
    )
    save_yaml(config, temporary / "config.yaml")
    files = {}
    for path in sorted(temporary.rglob("*")):
        if path.is_file():
            _fsync_file(path)
            files[str(path.relative_to(temporary))] = path.stat().st_size
    manifest = temporary / MANIFEST
    manifest.write_text(json.dumps({"step": step, "files": files}, indent=2))
    _fsync_file(manifest)

    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    prune(root, keep=config.run.keep_checkpoints)
    return final


def is_complete(directory: Path) -> bool:
    """A checkpoint is complete when its manifest exists and every file it lists has the recorded size."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return all((directory / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            if is_complete(path):
                found.append((int(match.group(1)), path))
            else:
                warnings.warn(f"ignoring incomplete checkpoint {path} (no valid manifest)", stacklevel=2)
    return [path for _, path in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def prune(root: Path, *, keep: int) -> None:
    for path in root.glob("step-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
    complete = list_checkpoints(root.parent)
    for path in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    directory: str | Path,
    *,
    model: WorldModel,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimizer/schedule/RNG state when given) in place; returns the training state dict."""
    directory = Path(directory)
    if not is_complete(directory):
        raise CheckpointError(f"{directory}: not a complete checkpoint (missing or inconsistent {MANIFEST})")
    weights = directory / "model" / "model.safetensors"
    load_state_strict(model, read_weights(weights), weights)
    state_path = directory / STATE_FILE
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files; all mean the same to the user
        raise CheckpointError(f"{state_path}: unreadable training state ({type(error).__name__}: {error})") from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    if restore_rng:
        restore_rng_state(state["rng"])
    return state
