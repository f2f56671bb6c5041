"""Model-facing helpers the analyses share, written on the public `WorldModel` API: batched encoding, rollouts and
energies over sliding windows of a fixed length, and the posterior code of z.

Why sliding windows: the predictor has learned positional embeddings and is trained on windows of
`context_frames + data.horizon` frames, so positions beyond `window - 1` inputs never received a gradient. Long
rollouts and per-frame surprise therefore feed the predictor only the most recent frames (`window` of them at
most), exactly the lengths it was trained on; `trained_window` reads that length from the run's config.yaml.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from worldmodel.model import WorldModel, distance

from .loading import run_config


def as_frames(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 numpy clips (the on-disk layout) -> (B, T, 3, H, W) uint8 tensor; tensors pass through."""
    if isinstance(clips, torch.Tensor):
        return clips
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
        raise ValueError(f"clips must be uint8 (B, T, H, W, 3), got {clips.dtype} {clips.shape}")
    return rearrange(torch.from_numpy(np.ascontiguousarray(clips)), "b t h w c -> b t c h w")


@torch.no_grad()
def encode(model: WorldModel, clips: np.ndarray | torch.Tensor, *, target: bool = False,
           batch_size: int = 64) -> torch.Tensor:
    """Representations (B, T, D) float32 on the model's device: online encoder, or the target encoder."""
    frames = as_frames(clips)
    encoder = model.encode_target if target else model.encode
    out = [encoder(frames[i : i + batch_size]).float() for i in range(0, frames.shape[0], batch_size)]
    return torch.cat(out)


def trained_window(model: WorldModel, model_dir: Path | None = None) -> int:
    """Longest input sequence the predictor saw in training: context_frames + horizon - 1 from the run's
    config.yaml (found next to the model or its checkpoint), the horizon being dynamics.horizon when the run had a
    dynamics stage (training/dynamics_stage.py) and data.horizon otherwise; else the positional table's size."""
    config = run_config(Path(model_dir)) if model_dir is not None else {}
    data, dynamics = config.get("data", {}), config.get("dynamics", {})
    horizon = data.get("horizon") if isinstance(data, dict) else None
    if isinstance(dynamics, dict) and isinstance(dynamics.get("steps"), int) and dynamics["steps"] > 0:
        horizon = dynamics.get("horizon")
    if isinstance(horizon, int) and horizon >= 1:
        return min(model.config.context_frames + horizon - 1, model.config.predictor.max_len)
    return model.config.predictor.max_len


@torch.no_grad()
def rollout(
    model: WorldModel,
    online: torch.Tensor,
    target: torch.Tensor,
    horizon: int,
    *,
    window: int,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
    latents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Open-loop rollout feeding the predictor at most `window` most recent inputs at each step.

    online, target: (B, C, D) observed representations. latents: optional (B, horizon, Z). Returns predictions
    (B, horizon, D) and the z's used (B, horizon, Z). With window >= C + horizon - 1 this is `model.rollout`.
    """
    return model.rollout(online, target, horizon, window=window, generator=generator,
                         deterministic=deterministic, latents=latents)


def _windows(x: torch.Tensor, context: int) -> torch.Tensor:
    """(B, T, D) -> (B * (T - context), context + 1, D): every run of context + 1 consecutive frames."""
    windows = x.unfold(1, context + 1, 1)  # (B, T - context, D, context + 1)
    return rearrange(windows, "b n d w -> (b n) w d")


@torch.no_grad()
def sliding_energy(model: WorldModel, online: torch.Tensor, target: torch.Tensor, context: int, *,
                   memory: int | None = None, batch_size: int = 512) -> torch.Tensor:
    """Energy of each frame t >= context given the frames before it: all of them up to `memory` (default
    `context`: a sliding window of fixed length), so a model with memory can use what it saw long ago. See
    WorldModel.energy_of_representations (a mixture model's energy is the NLL; others minimise over z).

    online, target: (B, T, D). Returns (B, T) with nan for the first `context` frames.
    """
    batch, length, _ = online.shape
    if not 1 <= context < length:
        raise ValueError(f"context must be in [1, {length - 1}] for clips of {length} frames, got {context}")
    memory = memory or context
    if memory == context:  # every frame from exactly `context` frames: one batch of equal windows
        inputs, targets = _windows(online, context), _windows(target, context)
        energies = torch.cat([
            model.energy_of_representations(inputs[i : i + batch_size], targets[i : i + batch_size], context)[:, 0]
            for i in range(0, inputs.shape[0], batch_size)
        ]).reshape(batch, length - context)
    else:
        rows = max(1, batch_size // length)
        energies = torch.cat([
            model.energy_of_representations(online[i : i + rows], target[i : i + rows], context, window=memory)
            for i in range(0, batch, rows)
        ])
    out = torch.full((batch, length), float("nan"), device=online.device)
    out[:, context:] = energies
    return out


@torch.no_grad()
def sliding_prior_error(model: WorldModel, online: torch.Tensor, target: torch.Tensor, context: int, *,
                        memory: int | None = None) -> torch.Tensor:
    """Prediction error of each frame t >= context from the frames before it (up to `memory`, default `context`)
    with z at the prior's most likely value (no z fitted to the frame itself). (B, T, D) -> (B, T), nan for the
    first `context` frames."""
    batch, length, _ = online.shape
    if not 1 <= context < length:
        raise ValueError(f"context must be in [1, {length - 1}] for clips of {length} frames, got {context}")
    memory = memory or context
    out = torch.full((batch, length), float("nan"), device=online.device)
    for t in range(context, length):
        first = max(0, t - memory)
        prediction, _ = model.rollout(online[:, first:t], target[:, first:t], 1, deterministic=True, window=memory)
        out[:, t] = distance(prediction[:, 0], target[:, t])
    return out


@torch.no_grad()
def posterior_code(model: WorldModel, inputs: torch.Tensor, last_target: torch.Tensor,
                   next_target: torch.Tensor) -> torch.Tensor:
    """The posterior's code for z (its most likely value: the mean, or a one-hot mode) given past inputs (B, C, D),
    the target representation of the last input frame (B, D) or of the last few (B, C', D: their trend moves the
    transition's base on, model.predictor.trend_frames), and that of the next frame (B, D)."""
    return model.posterior(inputs, next_target, last_target=last_target).code


@torch.no_grad()
def predictor_states(model: WorldModel, online: torch.Tensor, window: int) -> torch.Tensor:
    """The causal predictor's summary h_t of frames max(0, t - window + 1)..t for every t: (B, T, D) -> (B, T, W)."""
    states = [model.past(online[:, max(0, t - window + 1) : t + 1])[:, -1] for t in range(online.shape[1])]
    return torch.stack(states, dim=1)
