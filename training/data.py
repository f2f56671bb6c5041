"""Training data: clips from the configured source -> train/val window datasets -> batches in a resumable order.

The batch order is a pure function of (seed, global batch index): epoch e uses the permutation drawn from
seed + e, so a run resumed at step N draws exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from envs.sources import BouncingBallsSource, VideoSource
from envs.torch_render import TorchRenderer, to_bthw

from .config import TrainConfig


@dataclass
class Datasets:
    train: Dataset
    val: Dataset
    action_dim: int = 0
    """Width of the windows' "actions" (0: none)."""
    summary: str = ""
    """What the source loaded, dropped and skipped (one line)."""


def make_source(config: TrainConfig) -> VideoSource:
    """The `VideoSource` that `data.source` names, built from the data fields."""
    data = config.data
    if data.source == "bouncing_balls":
        return BouncingBallsSource(data.balls, data.num_clips, data.clip_length, data.seed, data.cache_dir)
    if data.source == "gym":
        from envs.gym_video import GymRecordingSpec, GymSource

        spec = GymRecordingSpec(
            env_id=data.env_id, episodes=data.episodes, seed=data.seed, image_size=config.model.image_size,
            policy=data.policy, frame_skip=data.frame_skip, max_episode_steps=data.max_episode_steps,
        )
        return GymSource(spec, path=data.path, cache_dir=data.cache_dir, with_actions=data.actions,
                         stride=data.window_stride, progress=config.run.progress)
    if data.source == "recorded":
        from envs.recorded import DecodeSettings, RecordedSource

        settings = DecodeSettings(image_size=config.model.image_size, fps=data.fps, crop=data.crop)
        return RecordedSource(
            data.path, settings, cache_dir=data.cache_dir, on_bad_file=data.on_bad_file,
            max_bad_fraction=data.max_bad_fraction, stride=data.window_stride, workers=data.num_workers,
            progress=config.run.progress,
        )
    raise ValueError(f"data.source={data.source!r} is not supported; expected bouncing_balls, gym or recorded")


def build_datasets(config: TrainConfig) -> Datasets:
    """Train/val windows of the configured source (split by clip). When the source has actions and data.actions
    is on, model.action_dim is set from it (or checked, when set already)."""
    loaded = make_source(config).load(
        window=config.window, val_fraction=config.data.val_fraction, seed=config.data.seed
    )
    _match_action_dim(config, loaded.action_dim)
    if loaded.summary and config.data.source != "bouncing_balls":
        print(f"data: {loaded.summary}")
    return Datasets(train=loaded.train, val=loaded.val, action_dim=loaded.action_dim, summary=loaded.summary)


def _match_action_dim(config: TrainConfig, source_dim: int) -> None:
    model_dim = getattr(config.model, "action_dim", None)
    if model_dim is None:  # a model without action conditioning: windows may still carry actions
        return
    if source_dim and not model_dim:
        config.model.action_dim = source_dim
    elif model_dim and model_dim != source_dim:
        what = f"{source_dim}-dim actions" if source_dim else "no actions"
        hint = " (or data.actions=false)" if source_dim else ""
        raise ValueError(
            f"model.action_dim={model_dim} but data.source={config.data.source} delivers {what}; set "
            f"model.action_dim={source_dim}{hint}"
        )


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches of shuffled indices starting at global batch `start` (see the module docstring).

    Under DDP each rank takes every world_size-th sample of the same global batch, so ranks never overlap. This is
    DistributedSampler + set_epoch(epoch) folded into one object: epoch e is the permutation seeded by (seed, e),
    and the epoch follows from the batch index, so a resumed run needs only that index to continue exactly.
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
        global_batch = self.batch_size * self.world_size
        order_epoch, order = -1, torch.empty(0, dtype=torch.int64)
        while True:
            epoch, position = divmod(index, self.batches_per_epoch)
            if epoch != order_epoch:  # one permutation per epoch (drawing it per batch costs ms on big sets)
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order, order_epoch = torch.randperm(self.size, generator=generator), epoch
            chunk = order[position * global_batch : (position + 1) * global_batch]
            yield chunk[self.rank :: self.world_size].tolist()
            index += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number for bookkeeping
        return 2**62


MODEL_KEYS = ("frames", "actions")
"""Batch entries the model consumes; the rest of a window (ground-truth state, clip ids) never leaves the host."""


def model_inputs(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """DataLoader collate that keeps only MODEL_KEYS, so ground-truth state is neither stacked nor copied."""
    return default_collate([{key: item[key] for key in MODEL_KEYS if key in item} for item in items])


def can_render_on_device(dataset: Dataset) -> bool:
    """True when windows come from bouncing-balls clips with their ball state, which `RenderedBatches` can draw."""
    from envs.dataset import WindowDataset

    return isinstance(dataset, WindowDataset) and all(key in dataset.state for key in RenderedBatches.STATE_KEYS)


def train_stream(
    dataset: Dataset,
    config: TrainConfig,
    *,
    start: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    render_on_device: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches on `device`, starting at global batch `start` (the run's data position).

    render_on_device: draw bouncing-balls frames on the device from the clips' ball state (`RenderedBatches`);
    otherwise cached frames go through a DataLoader, pinned and copied asynchronously on CUDA (`LoaderBatches`).
    Either way batch k holds the same windows, so the choice never changes what a run trains on.
    """
    sampler = ResumableBatchSampler(
        len(dataset), config.data.batch_size, seed=config.run.seed, start=start, rank=rank, world_size=world_size
    )
    if render_on_device:
        if not can_render_on_device(dataset):
            raise ValueError(
                "run.render_on_device=true needs data.source=bouncing_balls (windows with ball state); "
                f"got {type(dataset).__name__} from data.source={config.data.source}"
            )
        return RenderedBatches(dataset, config.data.balls, sampler, device)
    return LoaderBatches(dataset, sampler, device, num_workers=config.data.num_workers, seed=config.run.seed)


def train_batches(
    dataset: Dataset, config: TrainConfig, *, start: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Host-side batches (every window entry, collated) in the resumable order; see `train_stream` for training."""
    sampler = ResumableBatchSampler(
        len(dataset), config.data.batch_size, seed=config.run.seed, start=start, rank=rank, world_size=world_size
    )
    return iter(_loader(dataset, sampler, num_workers=config.data.num_workers, pin_memory=pin_memory,
                        seed=config.run.seed, collate=default_collate))


def _loader(
    dataset: Dataset, sampler: Sampler, *, num_workers: int, pin_memory: bool, seed: int, collate
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        collate_fn=collate,
        # Its own generator: creating the loader iterator must not draw from the global torch RNG, or a resumed
        # run (which creates it after restoring the RNG) would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


class LoaderBatches:
    """DataLoader batches moved to the device. On CUDA: pinned host memory, and the copy of batch k+1 is issued
    on a side stream while batch k computes, so the GPU never waits on a host-to-device transfer."""

    def __init__(
        self, dataset: Dataset, sampler: ResumableBatchSampler, device: torch.device, *, num_workers: int, seed: int
    ) -> None:
        self.device = device
        cuda = device.type == "cuda"
        self._batches = iter(_loader(dataset, sampler, num_workers=num_workers, pin_memory=cuda, seed=seed,
                                     collate=model_inputs))
        self._stream = torch.cuda.Stream(device) if cuda else None
        self._next = self._fetch() if cuda else None

    def _fetch(self) -> dict[str, torch.Tensor]:
        batch = next(self._batches)
        if self._stream is None:
            return {key: value.to(self.device) for key, value in batch.items()}
        with torch.cuda.stream(self._stream):
            return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def __iter__(self) -> LoaderBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._stream is None:
            return self._fetch()
        batch = self._next
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        for value in batch.values():
            # The tensors were allocated on the side stream; tell the caching allocator they are used on this one.
            value.record_stream(current)
        self._next = self._fetch()
        return batch


class RenderedBatches:
    """Bouncing-balls batches drawn on the device: the train clips' ball state lives there (a few MB), each batch
    gathers its windows' state by index and `envs.torch_render.TorchRenderer` draws the frames. No frame crosses
    the host-device link and no worker process is needed; the frames equal the cached ones (tests check this).

    Frames come out (B, T, 3, H, W) uint8 as a view of channels-last memory (the fast conv layout on GPUs).
    """

    STATE_KEYS = ("positions", "radii", "colors", "present", "wall", "occluder")

    def __init__(self, dataset, balls, sampler: ResumableBatchSampler, device: torch.device) -> None:
        self.device = device
        self.renderer = TorchRenderer(balls)
        # (N, T, M, ...) per clip and frame; ball state is constant-size, so the whole train set fits on a GPU.
        self.state = {key: torch.as_tensor(np.asarray(dataset.state[key])).to(device) for key in self.STATE_KEYS}
        self.starts_per_clip, self.stride = dataset.starts_per_clip, dataset.stride
        self.offsets = torch.arange(dataset.window, device=device)
        self._indices = iter(sampler)

    def __iter__(self) -> RenderedBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        index = torch.tensor(next(self._indices), dtype=torch.int64).to(self.device, non_blocking=True)  # (B,)
        clip = index // self.starts_per_clip
        frame = (index % self.starts_per_clip * self.stride)[:, None] + self.offsets  # (B, T)
        state = {key: value[clip[:, None], frame] for key, value in self.state.items()}  # (B, T, M, ...)
        frames = self.renderer.render(state["positions"], state["radii"], state["colors"], state["present"],
                                      wall=state["wall"], occluder=state["occluder"])
        return {"frames": to_bthw(frames)}  # (B, T, 3, H, W)


def eval_batches(dataset: Dataset, config: TrainConfig) -> Iterator[dict[str, torch.Tensor]]:
    """A fixed, deterministic sequence of validation batches (same every call)."""
    generator = torch.Generator().manual_seed(12345)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    size = config.data.batch_size
    for batch_index in range(min(config.run.eval_batches, max(1, len(order) // size))):
        items = [dataset[i] for i in order[batch_index * size : (batch_index + 1) * size]]
        yield model_inputs(items)
