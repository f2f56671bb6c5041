"""The second stage of a two-stage run: the dynamics trained on cached encodings of long windows.

Why: on a CPU the conv encoder is most of a training step's cost and grows with the window, but the things a world
model is judged on need long windows: a ball stays hidden behind an occluder for a median 9 frames of the training
data (p90 18), and an open-loop rollout is scored at h = 10. So after the end-to-end steps (short windows, which
shape the encoder), the encoder and its EMA target are frozen, `dynamics.windows` windows of context_frames +
dynamics.horizon frames are encoded once, and the causal predictor, the latent and the transition train on them
with the model's own predictive terms (`WorldModel.predictive_losses`) for `dynamics.steps` cheap steps.

Under DDP the stage runs on rank 0 (it takes minutes) and the trained weights are broadcast to the other ranks.
A run killed during the stage resumes from the end-to-end stage's last checkpoint and runs the stage again from its
start (it is seeded, so it ends where an uninterrupted run ends).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from torch.utils.data import default_collate

from worldmodel.model import WorldModel

from .config import TrainConfig
from .data import build_datasets
from .optim import build_optimizer, lr_factor

TRAINED = ("past", "latent", "transition")
"""The modules the stage trains; the encoder, its target and the pixel decoder stay as the first stage left them."""


def dynamics_parameters(model: WorldModel) -> list[torch.nn.Parameter]:
    return [p for name in TRAINED for p in getattr(model, name).parameters()]


def long_windows(config: TrainConfig):
    """Train/validation datasets of the stage's windows (context_frames + dynamics.horizon frames)."""
    return build_datasets(replace(config, data=replace(config.data, horizon=config.dynamics.horizon)))


VALIDATION_SHARE = 8
"""The stage also encodes windows // VALIDATION_SHARE windows of the validation split, to watch for overfitting."""


@torch.no_grad()
def encode_windows(model: WorldModel, config: TrainConfig, device: torch.device, *, batch_size: int = 64,
                   split: str = "train", datasets=None) -> dict[str, torch.Tensor]:
    """Online and target representations of random windows of the stage's length (`dynamics.windows` of the
    training split, or a VALIDATION_SHARE-th as many of the validation split): {"online", "target": (N, W, D)
    float32 on the device, "actions": (N, W - 1, A) when the source has them}. datasets: the stage's
    (`long_windows(config)`), built here when not given."""
    datasets = datasets or long_windows(config)
    dataset = datasets.train if split == "train" else datasets.val
    wanted = config.dynamics.windows if split == "train" else max(1, config.dynamics.windows // VALIDATION_SHARE)
    count = min(wanted, len(dataset))
    picked = np.random.default_rng(config.run.seed + 7).choice(len(dataset), size=count, replace=False)
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"online": [], "target": [], "actions": []}
    for first in range(0, count, batch_size):
        batch = default_collate([dataset[int(i)] for i in picked[first : first + batch_size]])
        frames = batch["frames"].to(device)
        out["online"].append(model.encode(frames).float())
        out["target"].append(model.encode_target(frames).float())
        if "actions" in batch and config.model.action_dim > 0:
            out["actions"].append(batch["actions"][:, :-1].to(device, torch.float32))
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in out.items() if parts}


def train_dynamics(model: WorldModel, config: TrainConfig, device: torch.device, *,
                   log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Run the stage on `model` in place; log(step, metrics) is called every dynamics.log_every steps (step counts
    on from run.steps). Returns the last logged metrics."""
    stage = config.dynamics
    if stage.trend_frames > 0:
        model.config.predictor.trend_frames = stage.trend_frames  # the transition continues the trend from here on
    started = time.perf_counter()
    datasets = long_windows(config)
    cache = encode_windows(model, config, device, datasets=datasets)
    held_out = encode_windows(model, config, device, split="val", datasets=datasets)
    encoded_s = time.perf_counter() - started
    parameters = dynamics_parameters(model)
    trained = {id(p) for p in parameters}
    frozen = [p for p in model.parameters() if id(p) not in trained and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = build_optimizer(torch.nn.ModuleList(getattr(model, name) for name in TRAINED),
                                replace(config.optim, lr=stage.lr), fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup_steps=stage.warmup_steps, total_steps=stage.steps, min_ratio=config.optim.min_lr_ratio))
    weights = model.loss_weights()
    generator = torch.Generator().manual_seed(config.run.seed + 11)
    count = cache["online"].shape[0]
    last: dict[str, float] = {}
    model.train()
    try:
        window_start = time.perf_counter()
        for step in range(stage.steps):
            done = step + 1
            log_now = done % stage.log_every == 0 or done == stage.steps
            index = torch.randint(count, (min(stage.batch_size, count),), generator=generator).to(device)
            losses, metrics = model.predictive_losses(
                cache["online"][index], cache["target"][index],
                cache["actions"][index] if "actions" in cache else None, telemetry=log_now,
            )
            total = sum(weights[name] * value for name, value in losses.items())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.optim.grad_clip or float("inf"))
            if not torch.isfinite(total) or not torch.isfinite(grad_norm):
                raise FloatingPointError(f"dynamics stage step {done}: non-finite loss ({float(total)}) or "
                                         f"gradient norm ({float(grad_norm)}); lower dynamics.lr")
            optimizer.step()
            schedule.step()
            if log_now:
                elapsed = time.perf_counter() - window_start
                last = {f"dynamics/{name}": value for name, value in metrics.items()}
                last.update({f"dynamics/loss/{name}": float(value.detach()) for name, value in losses.items()})
                last.update({"dynamics/loss/total": float(total.detach()), "dynamics/optim/grad_norm": float(grad_norm),
                             "dynamics/optim/lr": schedule.get_last_lr()[0],
                             "dynamics/speed/steps_per_s": min(stage.log_every, done) / max(elapsed, 1e-9),
                             "dynamics/encode_s": encoded_s, "dynamics/windows": float(count)})
                last.update(_validate(model, held_out))
                if log is not None:
                    log(config.run.steps + done, last)
                window_start = time.perf_counter()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return last


@torch.no_grad()
def _validate(model: WorldModel, held_out: dict[str, torch.Tensor], batch_size: int = 256) -> dict[str, float]:
    """The stage's telemetry on the encoded validation windows (means over windows), keys `dynamics/val/...`."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = held_out["online"].shape[0]
    for first in range(0, count, batch_size):
        rows = slice(first, first + batch_size)
        _, metrics = model.predictive_losses(held_out["online"][rows], held_out["target"][rows],
                                             held_out["actions"][rows] if "actions" in held_out else None,
                                             telemetry=True)
        share = held_out["online"][rows].shape[0] / count
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value * share
    model.train(was_training)
    return {f"dynamics/val/{name}": value for name, value in totals.items()}
