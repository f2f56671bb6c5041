"""Sampled futures for people to look at: sample N futures from one context, rank them by energy, decode them, and
lay them out as a video grid next to the ground truth.

Grid rows (top to bottom):
    ground truth     the real context + future frames, with the energy the model gives the true future
    decoded truth    the decoder applied to the target representations of the real frames (the decoder's ceiling)
    #1 .. #N         context frames, then the decoded sampled future, lowest energy first
A red border marks predicted (not observed) frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from worldmodel.model import WorldModel


@dataclass
class FuturesPanel:
    """Everything a futures grid shows, as uint8 videos (T, H, W, 3) plus the energies."""

    truth: np.ndarray
    decoded_truth: np.ndarray
    samples: list[np.ndarray]
    """Decoded sampled futures with their context, lowest energy first."""
    sample_energies: list[float]
    truth_energy: float


def to_uint8_video(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] or uint8 -> (T, H, W, 3) uint8."""
    if frames.dtype != torch.uint8:
        frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return rearrange(frames.cpu(), "t c h w -> t h w c").numpy()


def mark_predicted(video: np.ndarray, start: int, color=(220, 40, 40)) -> np.ndarray:
    """Draw a 1-pixel border on frames [start:] so predicted frames are told apart from observed ones."""
    video = video.copy()
    for edge in (np.s_[start:, 0, :], np.s_[start:, -1, :], np.s_[start:, :, 0], np.s_[start:, :, -1]):
        video[edge] = color
    return video


@torch.no_grad()
def futures_panel(
    model: WorldModel, clip: torch.Tensor, *, context: int, num_samples: int, seed: int = 0,
    window: int | None = None,
    actions: torch.Tensor | None = None,
) -> FuturesPanel:
    """clip: (T, 3, H, W) frames (uint8 or float in [0, 1]); the first `context` are observed, the rest are the
    true future; horizon = T - context.

    window: feed the predictor at most this many recent inputs (its training length, see
    `analysis.inference.trained_window`); sample energies are then summed per frame, each judged from up to
    `window` frames before it. None: `WorldModel.sample_futures` over the whole sequence.

    actions: (T, A) actions of the clip for an action-conditioned model (actions[t] was taken after frame t); the
    sampled futures follow the recorded actions, so they differ only where the world itself is uncertain."""
    if clip.ndim != 4:
        raise ValueError(f"clip must be laid out (T, 3, H, W), got shape {tuple(clip.shape)}")
    horizon = clip.shape[0] - context
    if context < 1 or horizon < 1:
        raise ValueError(f"clip of {clip.shape[0]} frames cannot be split into context={context} + horizon >= 1")
    model.eval()
    frames = clip.unsqueeze(0)  # (1, T, 3, H, W)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    batch_actions = None if actions is None else actions.unsqueeze(0)[:, : clip.shape[0] - 1]  # (1, T-1, A)
    if window is None or batch_actions is not None:
        futures = model.sample_futures(
            frames[:, :context], num_samples, horizon, generator=generator, actions=batch_actions
        )
        representations, energies = futures.representations[0], futures.energies[0]
    else:
        representations, energies = _windowed_samples(model, frames[:, :context], num_samples, horizon, window,
                                                      generator)
    order = energies.argsort().tolist()
    decoded = model.decode(representations)  # (N, horizon, 3, H, W)
    observed = model.prepare_frames(frames)[0]  # (T, 3, H, W) float
    samples = [
        mark_predicted(to_uint8_video(torch.cat([observed[:context], decoded[i]], dim=0)), context) for i in order
    ]
    truth_energy = float(model.energy(frames[:, :context], frames[:, context:], actions=batch_actions)[0])
    decoded_truth = model.decode(model.encode_target(frames))[0]
    return FuturesPanel(
        truth=to_uint8_video(observed),
        decoded_truth=to_uint8_video(decoded_truth),
        samples=samples,
        sample_energies=[float(energies[i]) for i in order],
        truth_energy=truth_energy,
    )


def _windowed_samples(model: WorldModel, context_frames: torch.Tensor, num_samples: int, horizon: int, window: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, horizon, D) futures sampled from the prior with a limited predictor window, and their (N,) energies."""
    from . import inference

    context = context_frames.shape[1]
    online = model.encode(context_frames).repeat_interleave(num_samples, 0)  # (N, C, D)
    target = model.encode_target(context_frames).repeat_interleave(num_samples, 0)
    predicted, _ = inference.rollout(model, online, target, horizon, window=window, generator=generator)
    # Like sample_futures: each sample's energy is that of its own trajectory (predictions fed back as inputs).
    inputs, targets = torch.cat([online, predicted], 1), torch.cat([target, predicted], 1)
    energies = inference.sliding_energy(model, inputs, targets, context, memory=max(window, context))
    energies = energies[:, context:].sum(1)
    return predicted, energies


def panel_grid(panel: FuturesPanel, *, scale: int = 2) -> np.ndarray:
    from .video import make_grid

    rows = [panel.truth, panel.decoded_truth, *panel.samples]
    labels = [f"truth E={panel.truth_energy:.3f}", "decoded truth"] + [
        f"#{rank} E={energy:.3f}" for rank, energy in enumerate(panel.sample_energies, start=1)
    ]
    return make_grid(rows, labels=labels, scale=scale)


def write_futures_video(
    model: WorldModel,
    clip: torch.Tensor,
    *,
    context: int,
    num_samples: int,
    path: str | Path,
    seed: int = 0,
    fps: int = 4,
    window: int | None = None,
    actions: torch.Tensor | None = None,
) -> Path:
    """Write the futures grid as `path` (.mp4) and the same grid as a .gif beside it; returns the mp4 path."""
    from .video import write_video

    panel = futures_panel(
        model, clip, context=context, num_samples=num_samples, seed=seed, window=window, actions=actions
    )
    grid = panel_grid(panel)
    path = Path(path)
    write_video(grid, path.with_suffix(".mp4"), fps=fps)
    write_video(grid, path.with_suffix(".gif"), fps=fps)
    return path.with_suffix(".mp4")
