"""Run configuration: model + data + optimiser + run settings, with presets.

Presets are functions returning a `TrainConfig`; a YAML file and dotted CLI overrides (`optim.lr=1e-3`) are applied
on top (see `training.config_io`). Unknown keys are rejected with the dotted path named. The resolved config is saved
with every run and every checkpoint.

    debug  seconds on a CPU; the tests use it.
    small  a CPU demo in minutes at 64x64.
    base   the GPU configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from envs.physics import BallsConfig
from worldmodel.config import DecoderConfig, EncoderConfig, LatentConfig, ModelConfig, PredictorConfig


@dataclass
class DataConfig:
    """Where training windows come from and how they are batched."""

    source: Literal["bouncing_balls"] = "bouncing_balls"
    """Video source. `bouncing_balls`: the stochastic 2D physics simulator in envs/."""
    balls: BallsConfig = field(default_factory=BallsConfig)
    """Simulator settings (its image_size must equal model.image_size)."""
    num_clips: int = 2000
    """Clips generated for training + validation."""
    clip_length: int = 32
    """Frames per clip."""
    val_fraction: float = 0.1
    """Fraction of clips held out for validation (split by clip, never by frame)."""
    horizon: int = 4
    """Future frames per training window after model.context_frames (window = context_frames + horizon)."""
    batch_size: int = 64
    """Windows per optimizer step (per process under DDP)."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process; the cached clips are in memory anyway)."""
    seed: int = 0
    """Seed of clip generation (the clip set is a pure function of it and the simulator settings)."""
    cache_dir: str = ".cache/worldmodel"
    """Where generated clips are cached (a file per distinct simulator config/seed/size)."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay."""

    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 0.05
    """AdamW weight decay (not applied to norms, biases and the positional embedding)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    warmup_steps: int = 500
    """Linear warmup from 0 to lr over these steps."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""


@dataclass
class RunConfig:
    """Length, logging, checkpointing and hardware of a run."""

    out_dir: str = "runs/default"
    """Everything the run writes goes here: checkpoints, the final model, mlflow.db, samples."""
    steps: int = 20000
    """Optimizer steps."""
    log_every: int = 50
    """Log metrics every this many steps."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and always at the end)."""
    keep_checkpoints: int = 3
    """Keep only the newest this many checkpoints."""
    eval_batches: int = 8
    """Validation batches evaluated at the end of the run (and at each checkpoint)."""
    sample_video: bool = True
    """Write a video of sampled futures at the end and log it as an artifact."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA if available, else CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU."""
    seed: int = 0
    """Seed of model init, batch order and sampling."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    tracking: Literal["mlflow", "none"] = "mlflow"
    """Experiment tracking backend; mlflow stores into <out_dir>/mlflow.db (sqlite)."""
    experiment: str = "worldmodel"
    """MLflow experiment name."""
    run_name: str = ""
    """MLflow run name (empty: derived from out_dir)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The world model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run length, logging, hardware."""

    @property
    def window(self) -> int:
        return self.model.context_frames + self.data.horizon

    def validate(self) -> None:
        self.model.validate()
        self.data.balls.validate()
        if self.data.balls.image_size != self.model.image_size:
            raise ValueError(
                f"data.balls.image_size={self.data.balls.image_size} must equal model.image_size="
                f"{self.model.image_size} (set both)"
            )
        if self.data.horizon < 1:
            raise ValueError(f"data.horizon must be >= 1, got {self.data.horizon}")
        if self.window > self.data.clip_length:
            raise ValueError(
                f"window model.context_frames + data.horizon = {self.window} is longer than data.clip_length="
                f"{self.data.clip_length}"
            )
        if self.window > self.model.predictor.max_len:
            raise ValueError(
                f"window {self.window} exceeds model.predictor.max_len={self.model.predictor.max_len}"
            )
        if not 0.0 < self.data.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        for name in ("batch_size", "num_clips"):
            if getattr(self.data, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self.data, name)}")
        for name in ("steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self.run, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self.run, name)}")


def debug() -> TrainConfig:
    """Tiny model on 32x32 frames: trains in well under a minute on a laptop CPU."""
    return TrainConfig(
        model=ModelConfig(
            image_size=32,
            context_frames=3,
            encoder=EncoderConfig(channels=(16, 32, 32), dim=32, groups=8),
            predictor=PredictorConfig(width=64, depth=2, heads=2, max_len=16),
            latent=LatentConfig(dim=4, hidden=64),
            decoder=DecoderConfig(channels=(32, 32, 16)),
        ),
        data=DataConfig(
            balls=BallsConfig(image_size=32, max_balls=2), num_clips=96, clip_length=12, horizon=3, batch_size=32
        ),
        optim=OptimConfig(lr=2e-3, warmup_steps=20),
        run=RunConfig(
            out_dir="runs/debug", steps=200, log_every=10, checkpoint_every=100, eval_batches=4, threads=2
        ),
    )


def small() -> TrainConfig:
    """CPU demo at 64x64: a few minutes on 2 cores."""
    return TrainConfig(
        model=ModelConfig(
            image_size=64,
            context_frames=4,
            encoder=EncoderConfig(channels=(16, 32, 64, 64), dim=64, groups=8),
            predictor=PredictorConfig(width=96, depth=2, heads=4, max_len=16),
            latent=LatentConfig(dim=6, hidden=96),
            decoder=DecoderConfig(channels=(64, 32, 32, 16)),
        ),
        data=DataConfig(balls=BallsConfig(image_size=64), num_clips=256, clip_length=16, horizon=4, batch_size=32),
        optim=OptimConfig(lr=1.5e-3, warmup_steps=50),
        run=RunConfig(out_dir="runs/small", steps=600, log_every=20, checkpoint_every=200, threads=0),
    )


def base() -> TrainConfig:
    """GPU configuration (bf16 autocast)."""
    return TrainConfig(
        model=ModelConfig(
            image_size=64,
            context_frames=8,
            encoder=EncoderConfig(channels=(64, 128, 256, 256), dim=256, groups=16),
            predictor=PredictorConfig(width=384, depth=6, heads=6, max_len=32),
            latent=LatentConfig(dim=16, hidden=384),
            decoder=DecoderConfig(channels=(256, 128, 64, 32)),
        ),
        data=DataConfig(balls=BallsConfig(image_size=64), num_clips=20000, clip_length=32, horizon=8,
                        batch_size=128, num_workers=4),
        optim=OptimConfig(lr=6e-4, warmup_steps=1000),
        run=RunConfig(out_dir="runs/base", steps=50000, log_every=100, checkpoint_every=2000),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {"debug": debug, "small": small, "base": base}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
