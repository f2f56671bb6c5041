"""Training data: clips from the configured source -> train/val window datasets -> batches in a resumable order.

The batch order is a pure function of (seed, global batch index): epoch e uses the permutation drawn from
seed + e, so a run resumed at step N draws exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from envs.clips import load_or_generate
from envs.dataset import WindowDataset, split_clips

from .config import TrainConfig


@dataclass
class Datasets:
    train: Dataset
    val: Dataset


def build_datasets(config: TrainConfig) -> Datasets:
    data = config.data
    if data.source != "bouncing_balls":
        raise ValueError(f"data.source={data.source!r} is not supported; expected 'bouncing_balls'")
    clips = load_or_generate(data.cache_dir, data.balls, data.num_clips, data.clip_length, data.seed)
    train_idx, val_idx = split_clips(data.num_clips, data.val_fraction, data.seed)
    window = config.window

    def windows(indices: np.ndarray) -> WindowDataset:
        state = {name: values[indices] for name, values in clips.state.items()}
        return WindowDataset(clips.frames[indices], window=window, state=state)

    return Datasets(train=windows(train_idx), val=windows(val_idx))


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches of shuffled indices starting at global batch `start` (see the module docstring).

    Under DDP each rank takes every world_size-th sample of the same global batch, so ranks never overlap.
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        global_batch = batch_size * world_size
        if size < global_batch:
            raise ValueError(
                f"only {size} training windows for a global batch of {global_batch}; "
                "use more clips (data.num_clips) or a smaller data.batch_size"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self.batches_per_epoch = size // global_batch

    def __iter__(self) -> Iterator[list[int]]:
        index = self.start
        while True:
            epoch, position = divmod(index, self.batches_per_epoch)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=generator)
            global_batch = self.batch_size * self.world_size
            chunk = order[position * global_batch : (position + 1) * global_batch]
            yield chunk[self.rank :: self.world_size].tolist()
            index += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number for bookkeeping
        return 2**62


def train_batches(
    dataset: Dataset, config: TrainConfig, *, start: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    sampler = ResumableBatchSampler(
        len(dataset), config.data.batch_size, seed=config.run.seed, start=start, rank=rank, world_size=world_size
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.data.num_workers,
        pin_memory=pin_memory,
        persistent_workers=config.data.num_workers > 0,
        # Its own generator: creating the loader iterator must not draw from the global torch RNG, or a resumed
        # run (which creates it after restoring the RNG) would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(config.run.seed),
    )
    return iter(loader)


def eval_batches(dataset: Dataset, config: TrainConfig) -> Iterator[dict[str, torch.Tensor]]:
    """A fixed, deterministic sequence of validation batches (same every call)."""
    generator = torch.Generator().manual_seed(12345)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    size = config.data.batch_size
    for batch_index in range(min(config.run.eval_batches, max(1, len(order) // size))):
        items = [dataset[i] for i in order[batch_index * size : (batch_index + 1) * size]]
        yield torch.utils.data.default_collate(items)
