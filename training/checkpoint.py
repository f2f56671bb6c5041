"""Training checkpoints: atomic, complete-or-absent, resumable bit for bit.

Layout of `<out_dir>/checkpoints/step-000001000/`:
    model/config.json, model/model.safetensors   the WorldModel, EMA target encoder included (loadable alone with
                                                 WorldModel.load)
    training_state.pt                            optimizer, LR schedule, grad scaler, step, data position and every
                                                 RNG of every rank (tensors and plain types only: read back with
                                                 torch.load(weights_only=True), so nothing is unpickled)
    config.yaml                                  the resolved TrainConfig
    manifest.json                                written last: the step and every file's size
Everything is written into `step-N.tmp/`, fsynced, and renamed when complete (then the folder entry itself is
fsynced), so a run killed at any instant leaves either a whole checkpoint or a `.tmp` folder that is ignored (and
cleaned up by the next save; old checkpoints are likewise renamed before they are deleted). A checkpoint counts as
complete only when its manifest exists and every file it lists has the recorded size. Only the newest
`run.keep_checkpoints` are kept.

Fault injection for tests: with WORLDMODEL_FAULT_CHECKPOINT_SLEEP=<seconds> in the environment, `save_checkpoint`
sleeps that long after writing the files and before the manifest, which widens the window in which a kill lands
mid-write (tests/test_faults.py SIGKILLs runs there).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.model import WorldModel
from worldmodel.serialization import (
    CheckpointError,
    load_state_strict,
    read_weights,
    replace_directory,
    write_model_files,
)

from .config import TrainConfig
from .config_io import save_yaml

MANIFEST = "manifest.json"
STATE_FILE = "training_state.pt"
STATE_FORMAT = 2
"""training_state.pt layout version (2: per-rank RNG list, data position, grad scaler)."""
FAULT_CHECKPOINT_SLEEP = "WORLDMODEL_FAULT_CHECKPOINT_SLEEP"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^step-\d+\.(tmp|deleting|old-\d+)$")
"""Folders of interrupted writes (.tmp), deletions (.deleting) and replacements (.old-<pid>)."""


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG this process draws from, as tensors and plain types (so weights_only loading accepts it).

    python `random`, numpy's global generator, torch's CPU generator and, on CUDA, the generator of `device` (the
    one GPU this process trains on). The simulator needs no entry: training clips are a pure function of
    data.seed, generated before training, and nothing draws simulator randomness during the loop.
    """
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device is None and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt_state.tolist()), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_state = state["cuda"]
        if isinstance(cuda_state, (list, tuple)):  # format 1 stored every visible GPU's state
            torch.cuda.set_rng_state_all(cuda_state)
        else:
            torch.cuda.set_rng_state(cuda_state, device if device is not None and device.type == "cuda" else None)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    """Persist a rename: the directory entry, not just the file data, must reach the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows) persist renames differently
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fault_sleep() -> float:
    text = os.environ.get(FAULT_CHECKPOINT_SLEEP, "")
    if not text:
        return 0.0
    try:
        return max(0.0, float(text))
    except ValueError:
        raise ValueError(f"{FAULT_CHECKPOINT_SLEEP}={text!r} must be a number of seconds") from None


def save_checkpoint(
    out_dir: str | Path,
    *,
    step: int,
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    scaler: torch.amp.GradScaler | None = None,
    rng: list[dict[str, Any]] | None = None,
    data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `step-N/` atomically (see the module docstring) and prune old ones; returns the checkpoint folder.

    rng: one `rng_state()` per rank, in rank order (default: this process's). data: the data position
    (`batch_index`, `global_batch_size`, `samples_seen`). extra: small plain values (e.g. the MLflow run id).
    """
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    temporary = root / f"step-{step:09d}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    (temporary / "model").mkdir(parents=True)

    write_model_files(model, temporary / "model", step=step)
    torch.save(
        {
            "format": STATE_FORMAT,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng if rng is not None else [rng_state()],
            "data": data or {},
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
    pause = _fault_sleep()
    if pause:
        time.sleep(pause)
    manifest = temporary / MANIFEST
    manifest.write_text(json.dumps({"step": step, "format": STATE_FORMAT, "files": files}, indent=2))
    _fsync_file(manifest)
    _fsync_directory(temporary)

    replace_directory(temporary, final)
    _fsync_directory(root)
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
    """Complete checkpoints, oldest first (incomplete `step-N` folders are skipped with a warning)."""
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
    """Delete what interrupted writes and deletions left behind, and all but the newest `keep` checkpoints.

    A checkpoint is renamed to `step-N.deleting` before its files go, so a kill in the middle of a deletion leaves
    a folder that is cleaned up next time, never a half-deleted `step-N/` that looks like a damaged checkpoint.
    """
    for path in root.iterdir():
        if _LEFTOVER.match(path.name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    complete = list_checkpoints(root.parent)
    for path in complete[:-keep] if keep > 0 else []:
        doomed = path.with_name(path.name + ".deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def read_training_state(directory: str | Path) -> dict[str, Any]:
    """training_state.pt of a complete checkpoint (weights_only: tensors and plain types, never arbitrary pickles)."""
    directory = Path(directory)
    if not is_complete(directory):
        raise CheckpointError(f"{directory}: not a complete checkpoint (missing or inconsistent {MANIFEST})")
    state_path = directory / STATE_FILE
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files; all mean the same to the user
        raise CheckpointError(f"{state_path}: unreadable training state ({type(error).__name__}: {error})") from None


def load_checkpoint(
    directory: str | Path,
    *,
    model: WorldModel,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
    rank: int = 0,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer/schedule/scaler/RNG state when given) in place; returns the training state.

    restore_rng restores rank `rank`'s saved RNG states into this process (a checkpoint written by a job with
    fewer ranks has no entry for it: a CheckpointError says so; the trainer handles that case itself).
    """
    directory = Path(directory)
    state = read_training_state(directory)
    weights = directory / "model" / "model.safetensors"
    load_state_strict(model, read_weights(weights), weights)
    try:
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{directory / STATE_FILE}: optimizer/schedule state does not fit this model and config ({error})"
        ) from None
    if restore_rng:
        restore_rng_state(rank_rng_state(state, rank, directory), device)
    return state


def rank_rng_state(state: dict[str, Any], rank: int, directory: str | Path = "") -> dict[str, Any]:
    """The RNG entry of `rank` in a training state (format 1 held a single process's dict)."""
    rngs = state["rng"]
    if isinstance(rngs, dict):
        rngs = [rngs]
    if rank >= len(rngs):
        raise CheckpointError(f"{directory}: holds RNG states for {len(rngs)} rank(s), none for rank {rank}")
    return rngs[rank]
