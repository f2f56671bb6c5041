"""The second stage of a two-stage run: the dynamics trained on cached encodings of long windows.

Why: on a CPU the conv encoder is most of a training step's cost and grows with the window, but the things a world
model is judged on need long windows: a ball stays hidden behind an occluder for a median 9 frames of the training
data (p90 18), and an open-loop rollout is scored at h = 10. So after the end-to-end steps (short windows, which
shape the encoder), the encoder and its EMA target are frozen, `dynamics.frames` frames of whole clips are encoded
once, and the causal predictor, the latent and the transition train on random windows of context_frames +
dynamics.horizon frames cut from them, with the model's own predictive terms (`WorldModel.predictive_losses`), for
`dynamics.steps` cheap steps. Held-out clips are encoded too: the stage keeps the weights whose open-loop
predictions of them were best among its logged steps (on 1,800 clips, the held-out 16-step error rose to twice the
training one: docs/experiments/2026-12-07-mixture-two-stage.md).

Under DDP the stage runs on rank 0 (it takes minutes) and the trained weights are broadcast to the other ranks.
A run killed during the stage resumes from the end-to-end stage's last checkpoint and runs the stage again from its
start (it is seeded, so it ends where an uninterrupted run ends).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from worldmodel.model import WorldModel

from .config import TrainConfig
from .data import build_datasets, make_source
from .optim import build_optimizer, lr_factor

TRAINED = ("past", "latent", "transition")
"""The modules the stage trains; the encoder, its target and the pixel decoder stay as the first stage left them."""


def dynamics_parameters(model: WorldModel) -> list[torch.nn.Parameter]:
    return [p for name in TRAINED for p in getattr(model, name).parameters()]


def long_windows(config: TrainConfig):
    """Train/validation datasets of the stage's windows (context_frames + dynamics.horizon frames)."""
    return build_datasets(replace(config, data=replace(config.data, horizon=config.dynamics.horizon)))


VALIDATION_SHARE = 8
"""The stage also encodes dynamics.frames // VALIDATION_SHARE frames of held-out clips, to watch for overfitting and
to keep the weights that predict them best."""


@dataclass
class EncodedClips:
    """Whole clips encoded once, laid end to end: every window of `window` frames inside one clip is a sample.

    online, target: (F, D) float32; actions: (F, A) (the action taken after each frame) or None; starts: (S,) int64,
    the first frame of every window that lies inside one clip."""

    online: torch.Tensor
    target: torch.Tensor
    actions: torch.Tensor | None
    starts: torch.Tensor
    window: int

    @property
    def frames(self) -> int:
        return self.online.shape[0]

    def take(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B,) window starts -> online, target (B, window, D) and actions (B, window - 1, A) or None."""
        rows = starts[:, None] + torch.arange(self.window, device=starts.device)  # (B, window) frame numbers
        actions = None if self.actions is None else self.actions[rows[:, :-1]]
        return self.online[rows], self.target[rows], actions


@torch.no_grad()
def encode_clips(model: WorldModel, config: TrainConfig, device: torch.device, *, split: str = "train",
                 datasets=None, batch_size: int = 32) -> EncodedClips:
    """Encode whole clips for the stage, up to dynamics.frames frames (a VALIDATION_SHARE-th of it for split="val").

    The simulator (data.source bouncing_balls) draws fresh clips for the stage (seeded, never stored), so the
    dynamics see more distinct motion than the end-to-end stage's cache holds; it takes about a millisecond a clip.
    Any other source encodes its own clips of that split, whole, in a random (seeded) order. Each frame is encoded
    once however many windows it is part of, and every window of every encoded clip is then a training sample (the
    windows of one clip overlap, so what keeps the dynamics from overfitting is the number of distinct clips)."""
    stage = config.dynamics
    budget = stage.frames if split == "train" else max(config.dynamics_window, stage.frames // VALIDATION_SHARE)
    seed = config.run.seed + (7 if split == "train" else 8)
    if config.data.source == "bouncing_balls":
        pieces = _fresh_clips(config, budget, seed + 1000 * config.data.seed)
    else:
        datasets = datasets or long_windows(config)
        pieces = _dataset_clips(datasets.train if split == "train" else datasets.val, budget, seed)
    was_training = model.training
    model.eval()
    online, target, actions, starts, frames = [], [], [], [], 0
    window = config.dynamics_window
    for clip_frames, clip_actions in _batched(pieces, batch_size):
        frames_in = clip_frames.to(device)  # (N, L, 3, H, W) uint8, clips of one length L
        count, length = frames_in.shape[:2]
        online.append(model.encode(frames_in).float().flatten(0, 1))  # (N * L, D)
        target.append(model.encode_target(frames_in).float().flatten(0, 1))
        if clip_actions is not None and config.model.action_dim > 0:
            actions.append(clip_actions.to(device, torch.float32).flatten(0, 1))
        first = frames + torch.arange(count)[:, None] * length  # (N, 1): each clip's first frame
        starts.append((first + torch.arange(length - window + 1)).flatten())
        frames += count * length
    model.train(was_training)
    if not online:
        raise ValueError(f"the dynamics stage found no {split} clip of at least {window} frames "
                         f"(model.context_frames + dynamics.horizon)")
    return EncodedClips(torch.cat(online), torch.cat(target), torch.cat(actions) if actions else None,
                        torch.cat(starts).to(device), window)


def _fresh_clips(config: TrainConfig, budget: int, seed: int):
    """Fresh simulator clips of data.clip_length frames, about `budget` frames in all: yields (frames (L, 3, H, W)
    uint8, None) per clip."""
    from envs.clips import generate_clips  # the simulator, only when the run's data come from it

    balls, length = make_source(config).config, config.data.clip_length
    wanted, chunk = max(1, budget // length), 256
    for index, first in enumerate(range(0, wanted, chunk)):
        clips = generate_clips(balls, min(chunk, wanted - first), length, seed=seed * 7919 + index)
        for frames in clips.frames:  # (L, H, W, 3)
            yield torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))), None


def _dataset_clips(dataset, budget: int, seed: int):
    """Whole clips read through a window dataset (any source: it only needs `index_of` and `window`), in a random
    order, until `budget` frames: yields (frames (L, 3, H, W) uint8, actions (L, A) or None) per stretch of a clip
    its windows cover without a gap. Each stretch is read as windows that tile it (the last one overlapping)."""
    window = dataset.window
    by_clip: dict[int, dict[int, int]] = {}
    for item in range(len(dataset)):
        clip, start = dataset.index_of(item)
        by_clip.setdefault(clip, {})[start] = item
    order = np.random.default_rng(seed).permutation(sorted(by_clip))
    left = budget
    for clip in order:
        if left <= 0:
            return
        starts = sorted(by_clip[int(clip)])
        for stretch in _stretches(starts, window):
            tiles = [dataset[by_clip[int(clip)][start]] for start in stretch]
            length = stretch[-1] + window - stretch[0]
            frames = torch.empty((length, *tiles[0]["frames"].shape[1:]), dtype=torch.uint8)
            actions = None
            if "actions" in tiles[0]:
                actions = torch.empty((length, tiles[0]["actions"].shape[-1]), dtype=tiles[0]["actions"].dtype)
            for start, tile in zip(stretch, tiles):
                at = slice(start - stretch[0], start - stretch[0] + window)
                frames[at] = tile["frames"]
                if actions is not None:
                    actions[at] = tile["actions"]
            yield frames, actions
            left -= length


def _stretches(starts: list[int], window: int) -> list[list[int]]:
    """Sorted window starts of one clip -> runs of starts whose windows cover a stretch without a gap, each run the
    fewest windows that do (every window start of the stretch is then a start of the stage)."""
    out: list[list[int]] = []
    for start in starts:
        if out and start <= out[-1][-1] + window:
            run = out[-1]
            if len(run) > 1 and start <= run[-2] + window:
                run[-1] = start  # the previous window is not needed to reach this far
            else:
                run.append(start)
        else:
            out.append([start])
    return out


def _batched(pieces, batch_size: int):
    """(frames, actions) per clip -> stacked batches of up to batch_size clips of equal length."""
    pending: dict[int, list] = {}
    for frames, actions in pieces:
        group = pending.setdefault(frames.shape[0], [])
        group.append((frames, actions))
        if len(group) == batch_size:
            yield _stack(pending.pop(frames.shape[0]))
    for group in pending.values():
        yield _stack(group)


def _stack(group):
    frames = torch.stack([frames for frames, _ in group])
    actions = None if group[0][1] is None else torch.stack([actions for _, actions in group])
    return frames, actions


def train_dynamics(model: WorldModel, config: TrainConfig, device: torch.device, *,
                   log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Run the stage on `model` in place; log(step, metrics) is called every dynamics.log_every steps (step counts
    on from run.steps). Returns the last logged metrics."""
    stage = config.dynamics
    if stage.trend_frames > 0:
        model.config.predictor.trend_frames = stage.trend_frames  # the transition continues the trend from here on
    started = time.perf_counter()
    datasets = None if config.data.source == "bouncing_balls" else long_windows(config)
    cache = encode_clips(model, config, device, datasets=datasets)
    held_out = encode_clips(model, config, device, split="val", datasets=datasets)
    # Validation reads fixed windows, one every `window` frames (the windows of one clip overlap).
    held_out_starts = held_out.starts[:: held_out.window]
    encoded_s = time.perf_counter() - started
    parameters = dynamics_parameters(model)
    trained = {id(p) for p in parameters}
    frozen = [p for p in model.parameters() if id(p) not in trained and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    modules = torch.nn.ModuleList(getattr(model, name) for name in TRAINED)
    optimizer = build_optimizer(modules, replace(config.optim, lr=stage.lr), fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup_steps=stage.warmup_steps, total_steps=stage.steps, min_ratio=config.optim.min_lr_ratio))
    weights = model.loss_weights()
    generator = torch.Generator().manual_seed(config.run.seed + 11)
    count = cache.starts.shape[0]
    last: dict[str, float] = {}
    best = (float("inf"), 0, None)  # (validation open-loop error, step, weights) of the best logged step
    model.train()
    try:
        window_start = time.perf_counter()
        for step in range(stage.steps):
            done = step + 1
            log_now = done % stage.log_every == 0 or done == stage.steps
            index = torch.randint(count, (stage.batch_size,), generator=generator).to(device)
            losses, metrics = model.predictive_losses(*cache.take(cache.starts[index]), telemetry=log_now)
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
                             "dynamics/encode_s": encoded_s, "dynamics/frames": float(cache.frames),
                             "dynamics/val/frames": float(held_out.frames)})
                last.update(_validate(model, held_out, held_out_starts))
                score = last["dynamics/val/error/rollout"]
                if score < best[0]:
                    best = (score, done, {k: v.detach().clone() for k, v in modules.state_dict().items()})
                last["dynamics/val/best_step"] = float(config.run.steps + best[1])
                if log is not None:
                    log(config.run.steps + done, last)
                window_start = time.perf_counter()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if best[2] is not None:
        modules.load_state_dict(best[2])  # the weights whose open-loop predictions of held-out clips were best
    return last


@torch.no_grad()
def _validate(model: WorldModel, held_out: EncodedClips, starts: torch.Tensor, batch_size: int = 256
              ) -> dict[str, float]:
    """The stage's telemetry on held-out windows (means over windows), keys `dynamics/val/...`."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = starts.shape[0]
    for first in range(0, count, batch_size):
        rows = starts[first : first + batch_size]
        _, metrics = model.predictive_losses(*held_out.take(rows), telemetry=True)
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value * rows.shape[0] / count
    model.train(was_training)
    return {f"dynamics/val/{name}": value for name, value in totals.items()}
