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
from envs.storage import DEFAULT_CACHE_DIR
from worldmodel.config import DecoderConfig, EncoderConfig, LatentConfig, ModelConfig, PredictorConfig


@dataclass
class DataConfig:
    """Where training windows come from and how they are batched."""

    source: Literal["bouncing_balls", "gym", "recorded"] = "bouncing_balls"
    """Video source. `bouncing_balls`: the stochastic 2D physics simulator in envs/. `gym`: episodes of a gymnasium
    env (data.env_id ...) recorded with its actions. `recorded`: a folder of video files (data.path)."""
    balls: BallsConfig = field(default_factory=BallsConfig)
    """bouncing_balls: simulator settings (its image_size must equal model.image_size)."""
    num_clips: int = 2000
    """bouncing_balls: clips generated for training + validation."""
    clip_length: int = 32
    """bouncing_balls: frames per clip (gym episodes and video files have their own lengths)."""
    path: str = ""
    """recorded: folder of videos (searched recursively) or one video file. gym: a recording directory written by
    `worldmodel data gym` (empty: record data.episodes episodes of data.env_id into data.cache_dir)."""
    fps: float = 0.0
    """recorded: resample every file to this frame rate by timestamps (0: keep every decoded frame)."""
    crop: bool = True
    """recorded: centre-crop frames to a square before resizing to model.image_size (False: squeeze the whole
    frame). gym frames are always squeezed whole."""
    on_bad_file: Literal["error", "skip"] = "error"
    """recorded: `error` stops at the first unusable file (named); `skip` leaves such files out with a warning."""
    max_bad_fraction: float = 0.1
    """recorded, on_bad_file=skip: fail anyway when more than this fraction of the files is unusable."""
    env_id: str = "CartPole-v1"
    """gym: environment id (any gymnasium env with an rgb_array render mode)."""
    episodes: int = 200
    """gym: episodes to record; each is one clip, so windows never span two episodes."""
    policy: Literal["random", "scripted"] = "random"
    """gym: `random` uniform actions, or `scripted` (a controller for CartPole/Pendulum/Acrobot/MountainCar that
    acts randomly 20% of the time)."""
    frame_skip: int = 1
    """gym: env steps per recorded frame, the action held (rewards summed)."""
    max_episode_steps: int = 0
    """gym: time limit in env steps (0: the env's own)."""
    actions: bool = True
    """gym: hand each window's actions to the model ("actions", (window, A) floats; discrete actions one-hot) and
    size model.action_dim from the env's action space. False: train without action conditioning."""
    window_stride: int = 1
    """gym, recorded: a training window starts every this many frames of a clip."""
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
    cache_dir: str = DEFAULT_CACHE_DIR
    """Where generated clips, gym recordings and decoded videos are cached (keyed by everything that determines
    their content; a video's key includes its path, size and mtime)."""

    def validate(self) -> None:
        """Checks of the data fields alone; raises ValueError naming the field."""
        if self.source == "recorded" and not self.path:
            raise ValueError("data.path must name a folder of video files when data.source=recorded")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if not self.fps >= 0.0:
            raise ValueError(f"data.fps must be >= 0 (0: every decoded frame), got {self.fps}")
        for name, low in (("episodes", 1), ("frame_skip", 1), ("max_episode_steps", 0), ("window_stride", 1),
                          ("num_workers", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"data.{name} must be >= {low}, got {getattr(self, name)}")
        if self.source == "gym" and not self.env_id:
            raise ValueError("data.env_id must name a gymnasium environment when data.source=gym")


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
class DynamicsConfig:
    """The second stage of a two-stage run (training/dynamics_stage.py): after the end-to-end steps, the encoder
    and its target are frozen, windows long enough to hold an occlusion are encoded once, and the predictor, the
    latent and the transition train on those cached windows for many cheap steps. On a CPU the encoder is most of a
    step's cost, so this is how long windows and long open-loop horizons fit in a CPU budget."""

    steps: int = 0
    """Optimizer steps of the stage (0: no second stage)."""
    horizon: int = 12
    """Open-loop steps per cached window after model.context_frames (window = context_frames + horizon; it must
    fit model.predictor.max_len and the clips)."""
    frames: int = 48000
    """Frames of whole clips encoded for the stage (and a VALIDATION_SHARE-th as many of held-out clips). With the
    simulator they are fresh clips drawn for the stage; with any other source, training clips in a random order
    (all of them if they hold fewer frames). Every window inside an encoded clip is a sample; encoding costs about
    a millisecond and a half a frame on 2 CPU cores for `small`."""
    batch_size: int = 64
    """Windows per step."""
    lr: float = 1e-3
    """Peak learning rate (warmup then cosine to lr * optim.min_lr_ratio), AdamW with optim.weight_decay."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    log_every: int = 100
    """Log the stage's metrics every this many steps."""
    trend_frames: int = 0
    """When > 0, the stage sets model.predictor.trend_frames to this before it trains (the saved model keeps it):
    the transition continues the last representations' trend from then on. The end-to-end stage trains without
    it: with it, the encoder came out reading positions worse (a probe on the true frames erred 0.038 against
    0.008; docs/experiments/2026-12-07-mixture-two-stage.md), while the dynamics, on the frozen encoder, gain
    from it."""

    def validate(self) -> None:
        for name, low in (("steps", 0), ("horizon", 1), ("frames", 1), ("batch_size", 1), ("warmup_steps", 0),
                          ("log_every", 1), ("trend_frames", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"dynamics.{name} must be >= {low}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"dynamics.lr must be > 0, got {self.lr}")


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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU. fp16: float16 autocast with a gradient scaler (for GPUs without
    bf16; the scaler's state is checkpointed, and overflowing steps are skipped by it rather than failing)."""
    compile: Literal["auto", True, False] = "auto"
    """torch.compile the training step (forward + backward, DDP included): auto = on for CUDA, off on CPU (compiling
    costs minutes on a CPU and buys little there). Steps that log telemetry run eagerly (their host reads of the
    metrics would split the compiled graph), so only every run.log_every-th step pays eager speed."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode when run.compile is on."""
    render_on_device: Literal["auto", True, False] = "auto"
    """Draw bouncing-balls frames on the training device from the clips' stored ball state (envs/torch_render.py)
    instead of copying cached frames from host memory: auto = on for CUDA with data.source=bouncing_balls. The
    frames are the cached ones, bit for bit; only where they are made changes."""
    deterministic: bool = False
    """Deterministic kernels only (torch.use_deterministic_algorithms; on CUDA also cuDNN autotuning off and
    CUBLAS_WORKSPACE_CONFIG): a run killed and resumed then matches an uninterrupted one bit for bit (same
    run.threads on CPU). Slower on GPUs; CPU kernels are deterministic already."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss or gradient norm is caught before the optimizer step, so the weights never see it. stop: the
    run fails with a message naming the step (MLflow run FAILED, last checkpoint intact). skip: the step is dropped
    and counted (optim/skipped_steps); 20 in a row stop the run as above."""
    collapse_min_rank: float = 0.1
    """Collapse alarm: a warning and the MLflow tag `collapse_alarm` when collapse/effective_rank (1 .. D) falls
    below this fraction of model.encoder.dim on a logged step."""
    collapse_min_std: float = 0.01
    """Collapse alarm: likewise when collapse/std_min, the smallest per-dimension std of the online
    representations, falls below this (healthy runs hold it near model.regularizer.target_std)."""
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

    def validate(self) -> None:
        """Checks of the run fields alone; raises ValueError naming the field."""
        for name in ("steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_batches", "threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"run.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.collapse_min_rank <= 1.0:
            raise ValueError(
                f"run.collapse_min_rank must be a fraction of model.encoder.dim in [0, 1], got {self.collapse_min_rank}"
            )
        if not self.collapse_min_std >= 0.0:
            raise ValueError(f"run.collapse_min_std must be >= 0, got {self.collapse_min_std}")
        if self.device == "cpu" and self.precision == "fp16":
            raise ValueError("run.precision=fp16 needs a GPU (run.device=cpu); use fp32 or bf16 on a CPU")


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
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    """The optional second stage: the dynamics trained on cached encodings of long windows."""

    @property
    def window(self) -> int:
        return self.model.context_frames + self.data.horizon

    @property
    def dynamics_window(self) -> int:
        return self.model.context_frames + self.dynamics.horizon

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        simulated = self.data.source == "bouncing_balls"
        self.data.balls.validate()
        if simulated and self.data.balls.image_size != self.model.image_size:
            raise ValueError(
                f"data.balls.image_size={self.data.balls.image_size} must equal model.image_size="
                f"{self.model.image_size} (set both)"
            )
        if self.data.horizon < 1:
            raise ValueError(f"data.horizon must be >= 1, got {self.data.horizon}")
        if simulated and self.window > self.data.clip_length:
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
        self.run.validate()
        self.dynamics.validate()
        if self.dynamics.steps > 0:
            if self.dynamics_window > self.model.predictor.max_len:
                raise ValueError(f"dynamics window model.context_frames + dynamics.horizon = {self.dynamics_window} "
                                 f"exceeds model.predictor.max_len={self.model.predictor.max_len}")
            if simulated and self.dynamics_window > self.data.clip_length:
                raise ValueError(f"dynamics window model.context_frames + dynamics.horizon = {self.dynamics_window} "
                                 f"is longer than data.clip_length={self.data.clip_length}")


def scene_balls(image_size: int) -> BallsConfig:
    """The simulator of the small and base presets: bouncing balls, and in some clips a solid wall or an occluder
    wide enough to hide a ball, so that what the VoE suite tests (solidity, object permanence) is in the data.
    Rough walls (every bounce off the border scatters one of two ways) give the latent variable forks whose time
    the past announces, the kind the multiple-futures targets are measured on."""
    return BallsConfig(image_size=image_size, wall_prob=0.3, occluder_prob=0.3, occluder_width=0.3, bounce_kick_prob=1.0)


def debug() -> TrainConfig:
    """Tiny model on 32x32 frames: trains in well under a minute on a laptop CPU."""
    return TrainConfig(
        model=ModelConfig(
            image_size=32,
            context_frames=3,
            encoder=EncoderConfig(channels=(16, 32, 32), dim=32, groups=8, keypoints=8),
            predictor=PredictorConfig(width=64, depth=2, heads=2, max_len=16),
            latent=LatentConfig(capacity="mixture", classes=4, dim=1, hidden=64),
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
    """The CPU recipe at 64x64, in two stages: 2,000 end-to-end steps on 8-frame windows shape the encoder, then
    3,000 steps of the dynamics on cached 20-frame windows (16 open-loop steps), about an hour on 2 cores."""
    return TrainConfig(
        model=ModelConfig(
            image_size=64,
            context_frames=4,
            encoder=EncoderConfig(channels=(16, 32, 64, 64), dim=64, groups=8, keypoints=16, keypoint_stage=0),
            predictor=PredictorConfig(width=96, depth=2, heads=4, max_len=20),
            latent=LatentConfig(capacity="mixture", classes=8, dim=1, hidden=96),
            decoder=DecoderConfig(channels=(64, 32, 32, 16)),
        ),
        data=DataConfig(balls=scene_balls(64), num_clips=2000, clip_length=24, horizon=4, batch_size=32),
        optim=OptimConfig(lr=1.5e-3, warmup_steps=50),
        run=RunConfig(out_dir="runs/small", steps=2000, log_every=20, checkpoint_every=250, threads=0),
        dynamics=DynamicsConfig(steps=3000, horizon=16, frames=96000, batch_size=64, lr=1e-3, trend_frames=4),
    )


def base() -> TrainConfig:
    """GPU configuration (bf16 autocast)."""
    return TrainConfig(
        model=ModelConfig(
            image_size=64,
            context_frames=8,
            encoder=EncoderConfig(channels=(64, 128, 256, 256), dim=256, groups=16),
            predictor=PredictorConfig(width=384, depth=6, heads=6, max_len=32),
            latent=LatentConfig(capacity="mixture", classes=16, dim=1, hidden=384),
            decoder=DecoderConfig(channels=(256, 128, 64, 32)),
        ),
        data=DataConfig(balls=scene_balls(64), num_clips=20000, clip_length=32, horizon=8,
                        batch_size=128, num_workers=4),
        optim=OptimConfig(lr=6e-4, warmup_steps=1000),
        run=RunConfig(out_dir="runs/base", steps=50000, log_every=100, checkpoint_every=2000),
        dynamics=DynamicsConfig(steps=10000, horizon=16, frames=400000, batch_size=256, lr=1e-3, trend_frames=4),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {"debug": debug, "small": small, "base": base}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
