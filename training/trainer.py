"""The training loop, top to bottom in one function: `train(config)`.

AdamW + warmup/cosine, EMA target update after each step, gradient clipping, bf16 autocast on CUDA, a check for
non-finite loss/gradients before the optimizer step, MLflow tracking, atomic checkpoints and `resume=True`.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldmodel.model import WorldModel

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .config_io import save_yaml, to_dict
from .data import build_datasets, eval_batches, train_batches
from .optim import build_optimizer, build_schedule
from .tracking import make_tracker


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the step was not applied."""


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    """Every logged metrics dict (with a `step` entry), in order."""
    val_metrics: dict[str, float] = field(default_factory=dict)
    video: Path | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but CUDA is not available; use run.device=auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, precision: str):
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(model: WorldModel, dataset, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """Mean of the loss metrics over fixed validation batches, keys prefixed `val/`."""
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for batch in eval_batches(dataset, config):
        with autocast_context(device, config.run.precision):
            _, metrics = model.loss(batch["frames"].to(device))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value
        count += 1
    model.train()
    return {f"val/{name}": value / max(count, 1) for name, value in totals.items()}


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    config.validate()
    run = config.run
    out_dir = Path(run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(run.device)
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    seed_everything(run.seed)

    datasets = build_datasets(config)
    model = WorldModel(config.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
    schedule = build_schedule(optimizer, config.optim, run.steps)

    start_step, run_id = 0, None
    if resume:
        checkpoint = latest_checkpoint(out_dir)
        if checkpoint is None:
            print(f"resume: no complete checkpoint under {out_dir}/checkpoints, starting from step 0")
        else:
            state = load_checkpoint(checkpoint, model=model, optimizer=optimizer, schedule=schedule)
            start_step, run_id = state["step"], state["extra"].get("tracking_run_id")
            print(f"resume: loaded {checkpoint} (step {start_step})")

    save_yaml(config, out_dir / "config.yaml")
    tracker = make_tracker(
        run.tracking, out_dir, run.experiment, run.run_name or out_dir.name, resume_run_id=run_id
    )
    if start_step == 0:
        tracker.log_params(to_dict(config))
        tracker.log_artifact(out_dir / "config.yaml")

    batches = train_batches(datasets.train, config, start=start_step, pin_memory=device.type == "cuda")
    result = TrainResult(out_dir=out_dir, model_dir=out_dir / "model", steps=start_step)
    progress = _progress_bar(run, start_step)
    window_start, window_samples = time.perf_counter(), 0
    model.train()
    try:
        for step in range(start_step, run.steps):
            done = step + 1
            log_now = done % run.log_every == 0 or done == run.steps
            frames = next(batches)["frames"].to(device, non_blocking=True)

            with autocast_context(device, run.precision):
                loss, metrics = model.loss(frames, telemetry=log_now)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
            )
            # Checked before the update, so the weights (and the last checkpoint) never see a NaN step.
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                raise NonFiniteLossError(
                    f"step {done}: non-finite loss ({float(loss)}) or gradient norm ({float(grad_norm)}); "
                    "the step was not applied. Lower optim.lr or check the data."
                )
            optimizer.step()
            schedule.step()
            model.update_target()
            window_samples += frames.shape[0]

            if log_now:
                elapsed = time.perf_counter() - window_start
                metrics.update(
                    {
                        "optim/lr": schedule.get_last_lr()[0],
                        "optim/grad_norm": float(grad_norm),
                        "speed/samples_per_s": window_samples / max(elapsed, 1e-9),
                        "speed/frames_per_s": window_samples * config.window / max(elapsed, 1e-9),
                    }
                )
                tracker.log_metrics(metrics, step=done)
                result.history.append({"step": done, **metrics})
                progress.set_postfix(loss=f"{metrics['loss/total']:.4f}", pred=f"{metrics['error/prediction']:.4f}")
                window_start, window_samples = time.perf_counter(), 0
            progress.update(1)

            if done % run.checkpoint_every == 0 or done == run.steps:
                save_checkpoint(
                    out_dir, step=done, model=model, optimizer=optimizer, schedule=schedule, config=config,
                    extra={"tracking_run_id": tracker.run_id or ""},
                )
            result.steps = done
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        progress.close()

    result.val_metrics = evaluate(model, datasets.val, config, device)
    tracker.log_metrics(result.val_metrics, step=result.steps)
    model.save(result.model_dir)
    tracker.log_artifact(result.model_dir, artifact_path="model")
    if run.sample_video:
        result.video = _sample_video(model, datasets.val, config, out_dir / "samples")
        if result.video is not None:
            tracker.log_artifact(result.video, artifact_path="samples")
            tracker.log_artifact(result.video.with_suffix(".gif"), artifact_path="samples")
    tracker.finish("FINISHED")
    return result


def _progress_bar(run, start_step: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a declared dependency; without it training still runs, silently
        run.progress = False
    if not run.progress:
        return _NoProgress()
    return tqdm(total=run.steps, initial=start_step, desc="train", dynamic_ncols=True)


class _NoProgress:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kwargs) -> None: ...
    def close(self) -> None: ...


def _sample_video(model: WorldModel, dataset, config: TrainConfig, directory: Path) -> Path | None:
    """Futures grid of one validation clip; skipped with a warning when the video packages are missing."""
    try:
        from analysis.futures import write_futures_video
    except ImportError as error:
        warnings.warn(f"sample video skipped: {error}", stacklevel=2)
        return None
    item = dataset[0]
    try:
        return write_futures_video(
            model,
            item["frames"],
            context=config.model.context_frames,
            num_samples=8,
            path=directory / "futures.mp4",
            seed=config.run.seed,
        )
    except ImportError as error:
        warnings.warn(f"sample video skipped: {error}", stacklevel=2)
        return None
