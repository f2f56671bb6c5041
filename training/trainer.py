"""The training loop: `train(config)`, the same code on one CPU, one GPU, or many GPUs on many machines.

Per step: a batch (rendered on the GPU from ball state, or copied from pinned memory on a side stream), the loss
under autocast (bf16 on CUDA), backward (DDP averages gradients across ranks), gradient clipping, then a check for a
non-finite loss or gradient norm *before* the optimizer step, agreed on by all ranks in one tiny all-reduce that
also carries "a stop signal arrived". Then AdamW (fused on CUDA), the LR schedule and the EMA update of the target
encoder, which all ranks apply to identical weights, so their targets stay identical too.

GPU path: channels_last conv weights (and channels-last frames from the renderer), fused AdamW, TF32 matmuls for
the fp32 parts, cuDNN autotuning, and `torch.compile` of forward + backward (run.compile, on by default on CUDA;
steps that log telemetry run eagerly). Under torchrun (see training/distributed.py) only rank 0 logs to MLflow,
writes metrics.jsonl and checkpoints; every rank restores its own RNG state on resume.

Faults: checkpoints are atomic (training/checkpoint.py) and hold everything needed to continue bit for bit, so
`resume=True` after a crash or SIGKILL continues from the newest complete one. SIGTERM/SIGINT finish the current
step, write a checkpoint and return (a second signal aborts at once). A non-finite loss stops the run with
`NonFiniteLossError` (MLflow run FAILED, the last checkpoint untouched) or, with run.nonfinite=skip, drops the step.
Collapse telemetry (effective rank, smallest per-dim std) raises a `CollapseWarning` and tags the MLflow run when
it falls below run.collapse_min_rank / run.collapse_min_std.

Fault injection for tests, read from the environment (never from the config, so a resumed run does not inherit it):
    WORLDMODEL_FAULT_NAN_AT_STEP=N       the loss of step N is made NaN
    WORLDMODEL_FAULT_KILL_AFTER_STEP=N   the process SIGKILLs itself right after step N (and its checkpoint, if any)
    WORLDMODEL_FAULT_CHECKPOINT_SLEEP=S  training/checkpoint.py sleeps S seconds inside every checkpoint write
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worldmodel.model import WorldModel
from worldmodel.serialization import CheckpointError

from . import distributed
from .checkpoint import (
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    prune,
    rank_rng_state,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from .config import RunConfig, TrainConfig
from .config_io import load_yaml, save_yaml, to_dict
from .data import build_datasets, can_render_on_device, eval_batches, train_stream
from .distributed import DistContext
from .dynamics_stage import TRAINED as DYNAMICS_MODULES
from .dynamics_stage import train_dynamics
from .optim import build_optimizer, build_schedule
from .tracking import NullTracker, flatten_params, make_tracker

FAULT_NAN_AT_STEP = "WORLDMODEL_FAULT_NAN_AT_STEP"
FAULT_KILL_AFTER_STEP = "WORLDMODEL_FAULT_KILL_AFTER_STEP"
MAX_CONSECUTIVE_SKIPS = 20
"""run.nonfinite=skip gives up after this many non-finite steps in a row (the run is diverging, not hiccuping)."""
METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the step was not applied."""


class CollapseWarning(UserWarning):
    """The representations are collapsing (effective rank or per-dimension std below the run's thresholds)."""


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    """Every logged metrics dict (with a `step` entry), in order (rank 0 only)."""
    val_metrics: dict[str, float] = field(default_factory=dict)
    video: Path | None = None
    interrupted: str = ""
    """Name of the signal that stopped the run early ("SIGTERM"), or "" when it ran to run.steps. An interrupted
    run wrote a checkpoint at `steps` but no final model; continue it with resume=True."""
    checkpoint: Path | None = None
    """The newest checkpoint of this run (every rank knows where rank 0 wrote it)."""
    param_digest: str = ""
    """sha256 of this rank's final weights (training.distributed.state_digest); equal on all ranks."""
    rank: int = 0
    world_size: int = 1


# ------------------------------------------------------------------------------------------------ set-up pieces


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


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank `rank`'s training noise (z samples, dropout). Rank 0 keeps the run seed, so a one-process run
    is unchanged; other ranks get distinct streams (they must not draw the same noise for different data)."""
    return seed if rank == 0 else (seed * 1_000_003 + 7919 * rank) % 2**63


def resolve_precision(device: torch.device, precision: str) -> str:
    """"fp32", "bf16" or "fp16" for run.precision on this device (auto: bf16 on CUDA, fp32 on CPU)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("run.precision=fp16 needs a GPU; use fp32 or bf16 on a CPU")
    return precision


def autocast_context(device: torch.device, precision: str):
    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_flag(value: bool | str, device: torch.device) -> bool:
    """A run flag that is True, False or "auto" (= on for CUDA)."""
    return device.type == "cuda" if value == "auto" else bool(value)


class LossModule(nn.Module):
    """What DDP wraps and torch.compile compiles: a batch dict -> (loss, metrics) through `WorldModel.loss`."""

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], telemetry: bool) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(batch, telemetry=telemetry)


@dataclass
class TrainingSetup:
    """Everything one training step touches; built by `build_setup` (bench/train_throughput.py uses it too)."""

    config: TrainConfig
    context: DistContext
    device: torch.device
    precision: str
    """Resolved: fp32, bf16 or fp16."""
    model: WorldModel
    """The bare model (EMA target included): what is saved, evaluated and sampled."""
    module: nn.Module
    """LossModule, wrapped in DDP under torchrun and compiled when run.compile is on; what a step calls."""
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    compiled: bool
    parameters: list[nn.Parameter]
    clip_groups: tuple[list[nn.Parameter], list[nn.Parameter]] = ((), ())
    """(world model, pixel decoder) parameters, gradient-clipped separately: the decoder's reconstruction gradients
    are large early on and, in one global norm, would scale down every step of the world model they never touch."""


def build_setup(config: TrainConfig, context: DistContext, device: torch.device) -> TrainingSetup:
    """Model, optimizer, schedule, scaler and the (DDP, compiled) step module, for a config on a device.

    Builds the model from the current torch RNG state, so every rank must seed identically before calling it.
    """
    run = config.run
    precision = resolve_precision(device, run.precision)
    model = WorldModel(config.model).to(device)
    if device.type == "cuda":
        # Conv weights in NHWC make cuDNN pick its channels-last kernels (the tensor cores' native layout).
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
    schedule = build_schedule(optimizer, config.optim, run.steps)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    module = distributed.wrap_ddp(LossModule(model), context, device)
    compiled = resolve_flag(run.compile, device)
    if compiled:
        # Compiling the outermost module lets dynamo split the graph at DDP's bucket boundaries, so gradient
        # all-reduces still overlap the backward pass. Compilation itself happens lazily, on the first step.
        module.compile(mode=run.compile_mode)
    parameters = [p for p in model.parameters() if p.requires_grad]
    decoder = {id(p) for p in model.decoder.parameters()}
    clip_groups = ([p for p in parameters if id(p) not in decoder], [p for p in parameters if id(p) in decoder])
    return TrainingSetup(config, context, device, precision, model, module, optimizer, schedule, scaler, compiled,
                         parameters, clip_groups)


@dataclass
class StepResult:
    loss: torch.Tensor
    """The (detached) loss of this rank's batch."""
    metrics: dict[str, float]
    """Telemetry from WorldModel.loss (empty on steps that do not log)."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping."""
    nonfinite: bool
    """The loss (any rank) or the gradient norm was NaN/inf; nothing was applied."""
    stop: bool
    """Some rank asked to stop (a signal arrived)."""


def train_step(
    setup: TrainingSetup,
    batch: dict[str, torch.Tensor],
    *,
    telemetry: bool,
    stop_requested: bool = False,
    poison: bool = False,
) -> StepResult:
    """One optimizer step on `batch` (already on the device). Collective under DDP: every rank must call it.

    poison: make the loss NaN (the WORLDMODEL_FAULT_NAN_AT_STEP hook).
    """
    optimizer, scaler = setup.optimizer, setup.scaler
    # Telemetry reads values back to the host mid-graph; those steps run the eager forward (`.forward` bypasses
    # the compiled __call__) so the compiled graph stays whole for every other step.
    call = setup.module.forward if (telemetry and setup.compiled) else setup.module
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(setup.device, setup.precision):
        loss, metrics = call(batch, telemetry)
    if poison:
        loss = loss * float("nan")
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    clip = setup.config.optim.grad_clip
    limit = clip if clip > 0 else math.inf
    world, decoder = setup.clip_groups
    grad_norm = torch.nn.utils.clip_grad_norm_(world, limit)
    decoder_norm = torch.nn.utils.clip_grad_norm_(decoder, limit)
    grad_norm = torch.where(torch.isfinite(decoder_norm), grad_norm, decoder_norm)  # a bad decoder step is bad too

    # One host read per step decides for all ranks: [loss non-finite, grad norm non-finite, stop requested].
    # With fp16 an overflowing gradient is the scaler's business (it skips the step and lowers the scale).
    loss_bad = ~torch.isfinite(loss.detach())
    grad_bad = ~torch.isfinite(grad_norm) if scaler is None else torch.zeros_like(loss_bad)
    flags = torch.stack([loss_bad, grad_bad, torch.tensor(stop_requested, device=loss_bad.device)]).to(torch.int32)
    distributed.any_rank(setup.context, flags)
    loss_flag, grad_flag, stop_flag = (bool(x) for x in flags.tolist())

    if loss_flag or grad_flag:
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # it saw this step's unscale_; update() closes the iteration
        setup.schedule.step()  # a skipped step still uses up its data and its place in the schedule
        return StepResult(loss.detach(), metrics, grad_norm.detach(), nonfinite=True, stop=stop_flag)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    setup.schedule.step()
    setup.model.update_target()
    return StepResult(loss.detach(), metrics, grad_norm.detach(), nonfinite=False, stop=stop_flag)


@torch.no_grad()
def evaluate(model: WorldModel, dataset, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """Mean of the loss metrics over fixed validation batches, keys prefixed `val/`.

    Runs on a forked RNG with a fixed seed: the numbers are comparable between checkpoints, and evaluating never
    shifts the training RNG (which would break bitwise resume).
    """
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.run.seed + 1)
        for batch in eval_batches(dataset, config):
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            with autocast_context(device, config.run.precision):
                _, metrics = model.loss(batch)
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + value
            count += 1
    model.train(was_training)
    return {f"val/{name}": value / max(count, 1) for name, value in totals.items()}


# ------------------------------------------------------------------------------------------------ run-level helpers


@dataclass(frozen=True)
class Faults:
    """Test-only fault injection, from WORLDMODEL_FAULT_* environment variables (0: off)."""

    nan_at_step: int = 0
    kill_after_step: int = 0

    @classmethod
    def from_env(cls) -> Faults:
        values = {}
        for attribute, name in (("nan_at_step", FAULT_NAN_AT_STEP), ("kill_after_step", FAULT_KILL_AFTER_STEP)):
            text = os.environ.get(name, "")
            try:
                values[attribute] = int(text) if text else 0
            except ValueError:
                raise ValueError(f"environment variable {name}={text!r} must be a step number") from None
        return cls(**values)


class StopSignals:
    """SIGTERM / SIGINT ask the loop to finish its step, checkpoint and return; a second signal aborts at once.

    Installed only in the main thread (Python delivers signals there); elsewhere it is inert.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second stop signal ({name}): aborting without a checkpoint")
        self.requested = name
        print(f"\n{name} received: finishing this step, writing a checkpoint, then stopping "
              "(send it again to abort at once)", file=sys.stderr, flush=True)


class CollapseMonitor:
    """Turns collapse telemetry into an alarm: a CollapseWarning plus MLflow tags, once per episode of collapse."""

    def __init__(self, run: RunConfig, dim: int, tracker) -> None:
        self.min_rank = run.collapse_min_rank * dim
        self.min_std = run.collapse_min_std
        self.rank_fraction, self.dim = run.collapse_min_rank, dim
        self.tracker = tracker
        self.active = False
        self.first_step: int | None = None

    def check(self, step: int, metrics: dict[str, float]) -> str | None:
        """Adds `collapse/alarm` (0/1) to metrics; returns the alarm message while collapsed."""
        rank, std = metrics.get("collapse/effective_rank"), metrics.get("collapse/std_min")
        if rank is None or std is None:
            return None
        reasons = []
        if rank < self.min_rank:
            reasons.append(f"effective rank {rank:.2f} < {self.min_rank:.2f} "
                           f"(run.collapse_min_rank={self.rank_fraction} x D={self.dim})")
        if std < self.min_std:
            reasons.append(f"smallest per-dimension std {std:.3g} < run.collapse_min_std={self.min_std}")
        metrics["collapse/alarm"] = float(bool(reasons))
        if not reasons:
            self.active = False
            return None
        message = (f"representation collapse at step {step}: {'; '.join(reasons)}. Check "
                   "model.regularizer.variance_weight / covariance_weight and model.target / model.ema_decay.")
        if not self.active:
            warnings.warn(message, CollapseWarning, stacklevel=2)
            self.tracker.set_tag("collapse_alarm", message)
            if self.first_step is None:
                self.first_step = step
                self.tracker.set_tag("collapse_alarm_step", step)
        self.active = True
        return message


class MetricsLog:
    """`<out_dir>/metrics.jsonl`: every logged metrics dict as one JSON line, flushed as written (rank 0).

    It survives kills, needs no tracking backend, and on resume is cut back to the checkpoint's step, so after
    any number of crashes it reads as one uninterrupted run.
    """

    def __init__(self, path: Path, *, keep_through: int) -> None:
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if _line_step(line) <= keep_through]
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text("".join(line + "\n" for line in kept))
            os.replace(temporary, path)
        self._handle = open(path, "a")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self._handle.write(json.dumps({"step": step, **metrics}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _line_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a line cut short by a kill is dropped


class _NoMetricsLog:
    def write(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def read_metrics_log(out_dir: str | Path) -> list[dict[str, float]]:
    """The records of `<out_dir>/metrics.jsonl` (see MetricsLog), in order."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _configure_threads(run: RunConfig, context: DistContext, device: torch.device) -> None:
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    elif context.enabled and device.type == "cpu":
        # Several CPU ranks on one machine would each grab every core and thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.local_world_size))


def _configure_kernels(deterministic: bool, device: torch.device) -> Callable[[], None]:
    """Deterministic or fast kernel settings for the run; returns a function restoring the previous ones."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.get_float32_matmul_precision(),
    )
    if deterministic:
        if device.type == "cuda":
            # cuBLAS needs a fixed workspace to be deterministic; must be set before its first handle exists.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
        torch.set_float32_matmul_precision("high")  # TF32 for whatever runs outside autocast

    def restore() -> None:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[1], previous[2]
        torch.set_float32_matmul_precision(previous[3])

    return restore


@dataclass
class _ResumePoint:
    step: int = 0
    batch_index: int = 0
    run_id: str | None = None
    path: Path | None = None


def _resume(setup: TrainingSetup, out_dir: Path) -> _ResumePoint:
    """Load the newest complete checkpoint (rank 0 picks it, every rank loads it) into the setup in place."""
    context, config = setup.context, setup.config
    chosen = None
    if context.is_main:
        found = latest_checkpoint(out_dir)
        chosen = str(found) if found is not None else None
    chosen = distributed.broadcast_object(context, chosen)
    if chosen is None:
        if context.is_main:
            print(f"resume: no complete checkpoint under {out_dir / 'checkpoints'}, starting from step 0")
        return _ResumePoint()
    path = Path(chosen)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: rank {context.rank} cannot see the checkpoint rank 0 resumes from; run.out_dir must be on a "
            "filesystem shared by every node"
        )
    state = load_checkpoint(path, model=setup.model, optimizer=setup.optimizer, schedule=setup.schedule,
                            scaler=setup.scaler, restore_rng=False)
    step = int(state["step"])
    saved_ranks = len(state["rng"]) if isinstance(state["rng"], list) else 1
    global_batch = config.data.batch_size * context.world_size
    data = state.get("data") or {}
    batch_index = int(data.get("batch_index", step))
    if saved_ranks == context.world_size and data.get("global_batch_size", global_batch) == global_batch:
        restore_rng_state(rank_rng_state(state, context.rank, path), setup.device)
    else:
        # Another world size: the same data cannot be re-split into the same per-rank batches, nor can RNG
        # streams be re-assigned; continue from the same number of samples seen, with fresh per-rank streams.
        samples = int(data.get("samples_seen", step * config.data.batch_size * saved_ranks))
        batch_index = samples // global_batch
        seed_everything(rank_seed(config.run.seed + step, context.rank))
        if context.is_main:
            warnings.warn(
                f"resume: {path} was written by {saved_ranks} process(es) with a global batch of "
                f"{data.get('global_batch_size', '?')}; now {context.world_size} with {global_batch}. Continuing "
                f"after {samples} samples with fresh RNG streams (not bitwise an uninterrupted run).",
                stacklevel=3,
            )
    if context.is_main:
        # A kill between publishing a checkpoint and deleting the oldest leaves keep + 1; the newest (this one)
        # always stays.
        prune(checkpoint_root(out_dir), keep=config.run.keep_checkpoints)
        _warn_config_changes(path / "config.yaml", config)
        print(f"resume: loaded {path} (step {step})")
    return _ResumePoint(step=step, batch_index=batch_index, run_id=state["extra"].get("tracking_run_id") or None,
                        path=path)


def _warn_config_changes(saved_path: Path, config: TrainConfig) -> None:
    try:
        saved = flatten_params(load_yaml(saved_path))
    except Exception:  # the checkpoint's copy is informational; a bad one must not block a resume
        return
    current = flatten_params(to_dict(config))
    changed = sorted(key for key in current.keys() | saved.keys() if str(current.get(key)) != str(saved.get(key)))
    if changed:
        def was(key: str) -> str:  # a field added after the checkpoint was written is absent, not None
            return repr(saved[key]) if key in saved else "(absent: older checkpoint)"

        def now(key: str) -> str:
            return repr(current[key]) if key in current else "(absent: field removed)"

        details = ", ".join(f"{key}: {was(key)} -> {now(key)}" for key in changed[:8])
        more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
        warnings.warn(f"resume: config differs from the checkpoint's: {details}{more}", stacklevel=5)


def _progress_bar(run: RunConfig, start_step: int, enabled: bool):
    if not (enabled and run.progress):
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a declared dependency; without it training still runs, silently
        return _NoProgress()
    return tqdm(total=run.steps, initial=start_step, desc="train", dynamic_ncols=True)


class _NoProgress:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kwargs) -> None: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------ the loop


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train per `config`; under torchrun each process calls this and they cooperate (see the module docstring).

    resume: continue from the newest complete checkpoint in run.out_dir (a fresh start when there is none).
    Returns early with `interrupted` set after SIGTERM/SIGINT; raises NonFiniteLossError on a non-finite loss.
    """
    config.validate()
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    context, device = distributed.init_distributed(config.run.device)
    try:
        result = _train(config, resume, context, device)
    except BaseException:
        if owns_group:
            distributed.shutdown(context, drain=False)  # the other ranks may not come to a last collective
        raise
    if owns_group:
        distributed.shutdown(context)
    return result


def _train(config: TrainConfig, resume: bool, context: DistContext, device: torch.device) -> TrainResult:
    run = config.run
    out_dir = Path(run.out_dir)
    main = context.is_main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    faults = Faults.from_env()
    _configure_threads(run, context, device)
    restore_kernels = _configure_kernels(run.deterministic, device)
    try:
        seed_everything(run.seed)
        with distributed.local_main_first(context):  # one process per machine generates the clip cache
            datasets = build_datasets(config)
        setup = build_setup(config, context, device)  # same seed on every rank: identical initial weights
        if context.rank > 0:  # rank 0 continues the seeded stream, exactly as a one-process run does
            seed_everything(rank_seed(run.seed, context.rank))
        point = _resume(setup, out_dir) if resume else _ResumePoint()
        return _loop(setup, datasets, point, out_dir, faults)
    finally:
        restore_kernels()


def _loop(setup: TrainingSetup, datasets, point: _ResumePoint, out_dir: Path, faults: Faults) -> TrainResult:
    config, context, device, model = setup.config, setup.context, setup.device, setup.model
    run, main = config.run, setup.context.is_main
    if main:
        save_yaml(config, out_dir / "config.yaml")
        tracker = make_tracker(run.tracking, out_dir, run.experiment, run.run_name or out_dir.name,
                               resume_run_id=point.run_id)
        metrics_log: MetricsLog | _NoMetricsLog = MetricsLog(out_dir / METRICS_FILE, keep_through=point.step)
    else:
        tracker, metrics_log = NullTracker(), _NoMetricsLog()
    if point.step == 0:
        tracker.log_params(to_dict(config))
        tracker.log_artifact(out_dir / "config.yaml")
    render = resolve_flag(run.render_on_device, device) and can_render_on_device(datasets.train)
    if run.render_on_device is True and not render:
        raise ValueError("run.render_on_device=true needs data.source=bouncing_balls (windows with ball state)")
    for key, value in (("world_size", context.world_size), ("device", device.type), ("precision", setup.precision),
                       ("compiled", setup.compiled), ("render_on_device", render)):
        tracker.set_tag(f"runtime.{key}", value)

    batches = train_stream(datasets.train, config, start=point.batch_index, device=device, rank=context.rank,
                           world_size=context.world_size, render_on_device=render)
    result = TrainResult(out_dir=out_dir, model_dir=out_dir / "model", steps=point.step, rank=context.rank,
                         world_size=context.world_size, checkpoint=point.path)
    progress = _progress_bar(run, point.step, main)
    monitor = CollapseMonitor(run, config.model.encoder.dim, tracker)
    signals = StopSignals()
    global_batch = config.data.batch_size * context.world_size
    window_start, window_samples, window_wait = time.perf_counter(), 0, 0.0
    consecutive_skips = skipped = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    signals.install()
    try:
        for step in range(point.step, run.steps):
            done = step + 1
            log_now = done % run.log_every == 0 or done == run.steps
            waited = time.perf_counter()
            batch = next(batches)
            window_wait += time.perf_counter() - waited
            out = train_step(setup, batch, telemetry=log_now, stop_requested=signals.requested is not None,
                             poison=faults.nan_at_step == done)
            window_samples += global_batch
            if out.nonfinite:
                consecutive_skips, skipped = consecutive_skips + 1, skipped + 1
                message = (f"step {done}: non-finite loss ({float(out.loss)}) or gradient norm "
                           f"({float(out.grad_norm)}); the step was not applied")
                if run.nonfinite == "stop" or consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    where = f"the newest checkpoint {result.checkpoint} is intact" if result.checkpoint else (
                        "no checkpoint was written yet")
                    streak = f" ({consecutive_skips} steps in a row)" if consecutive_skips > 1 else ""
                    raise NonFiniteLossError(
                        f"{message}{streak}; {where}. Lower optim.lr, raise optim.warmup_steps or check the data, "
                        "then continue with --resume."
                    )
                if main:
                    warnings.warn(f"{message} (run.nonfinite=skip)", RuntimeWarning, stacklevel=2)
            else:
                consecutive_skips = 0

            if log_now:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                metrics = distributed.mean_over_ranks(context, out.metrics, device)
                metrics.update({
                    "optim/lr": setup.schedule.get_last_lr()[0],
                    "optim/grad_norm": float(out.grad_norm),
                    "optim/skipped_steps": float(skipped),
                    "speed/samples_per_s": window_samples / elapsed,
                    "speed/frames_per_s": window_samples * config.window / elapsed,
                    "speed/data_wait_fraction": window_wait / elapsed,
                })
                if device.type == "cuda":
                    metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                if main:
                    monitor.check(done, metrics)
                    tracker.log_metrics(metrics, step=done)
                    metrics_log.write(done, metrics)
                    result.history.append({"step": done, **metrics})
                    if "loss/total" in metrics:
                        progress.set_postfix(loss=f"{metrics['loss/total']:.4f}",
                                             pred=f"{metrics.get('error/prediction', math.nan):.4f}")
                window_start, window_samples, window_wait = time.perf_counter(), 0, 0.0
            progress.update(1)

            # Under DDP the stop is agreed through the step's all-reduce (so one more step may run); a single
            # process can stop right after the step during which the signal arrived.
            stop = out.stop or (not context.enabled and signals.requested is not None)
            if done % run.checkpoint_every == 0 or done == run.steps or stop:
                result.checkpoint = _checkpoint(setup, datasets, done, out_dir, tracker, metrics_log)
            result.steps = done
            if faults.kill_after_step == done:
                os.kill(os.getpid(), signal.SIGKILL)
            if stop:
                result.interrupted = signals.requested or "a stop signal on another rank"
                break
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException as error:
        if main:
            with contextlib.suppress(Exception):
                tracker.set_tag("failure", f"{type(error).__name__}: {error}")
        tracker.finish("FAILED")
        raise
    finally:
        signals.restore()
        progress.close()
        metrics_log.close()

    if result.interrupted:
        if main:
            tracker.set_tag("interrupted", f"{result.interrupted} at step {result.steps}")
            print(f"stopped by {result.interrupted} at step {result.steps}; checkpoint {result.checkpoint}. "
                  "Continue with --resume.", flush=True)
        tracker.finish("KILLED")
        return result
    if config.dynamics.steps > 0:
        _dynamics_stage(setup, out_dir, tracker, result)
    return _finish(setup, datasets, result, tracker)


def _dynamics_stage(setup: TrainingSetup, out_dir: Path, tracker, result: TrainResult) -> None:
    """The second stage (training/dynamics_stage.py) on rank 0, its weights then broadcast to every rank."""
    config, context = setup.config, setup.context
    if context.is_main:
        metrics_log = MetricsLog(out_dir / METRICS_FILE, keep_through=config.run.steps)

        def log(step: int, metrics: dict[str, float]) -> None:
            tracker.log_metrics(metrics, step=step)
            metrics_log.write(step, metrics)
            result.history.append({"step": step, **metrics})
            if config.run.progress:
                print(f"dynamics step {step - config.run.steps}/{config.dynamics.steps}: nll/dim "
                      f"{metrics.get('dynamics/likelihood/nll_per_dim', math.nan):.3f}, rollout error "
                      f"{metrics.get('dynamics/error/rollout', math.nan):.4f} (validation "
                      f"{metrics.get('dynamics/val/error/rollout', math.nan):.4f})", flush=True)

        try:
            train_dynamics(setup.model, config, setup.device, log=log)
        except BaseException:
            tracker.finish("FAILED")
            raise
        finally:
            metrics_log.close()
    if context.enabled:
        modules = [getattr(setup.model, name) for name in DYNAMICS_MODULES]
        states = distributed.broadcast_object(context, [m.state_dict() for m in modules] if context.is_main else None)
        for module, state in zip(modules, states):
            module.load_state_dict(state)


def _checkpoint(setup: TrainingSetup, datasets, done: int, out_dir: Path, tracker, metrics_log) -> Path:
    """Every rank hands rank 0 its RNG state; rank 0 writes the checkpoint and evaluates on validation."""
    config, context = setup.config, setup.context
    rngs = distributed.gather_objects(context, rng_state(setup.device))
    if not context.is_main:
        return checkpoint_root(out_dir) / f"step-{done:09d}"  # where rank 0 writes it (for messages)
    global_batch = config.data.batch_size * context.world_size
    path = save_checkpoint(
        out_dir, step=done, model=setup.model, optimizer=setup.optimizer, schedule=setup.schedule, config=config,
        scaler=setup.scaler, rng=rngs,
        data={"batch_index": done, "global_batch_size": global_batch, "samples_seen": done * global_batch},
        extra={"tracking_run_id": tracker.run_id or "", "world_size": context.world_size},
    )
    if config.run.eval_batches > 0:
        val = evaluate(setup.model, datasets.val, config, setup.device)
        tracker.log_metrics(val, step=done)
        metrics_log.write(done, val)
    return path


def _finish(setup: TrainingSetup, datasets, result: TrainResult, tracker) -> TrainResult:
    """Cross-rank weight check, then (rank 0) validation, final model, sample video, tracker closed."""
    context, config, model = setup.context, setup.config, setup.model
    digests = distributed.gather_objects(context, distributed.state_digest(model))
    result.param_digest = digests[context.rank]
    if context.enabled and context.is_main:
        tracker.set_tag("ddp.param_digests", json.dumps(digests))
    if len(set(digests)) > 1:
        tracker.finish("FAILED")
        raise RuntimeError(f"weights differ across ranks after {result.steps} steps (digests {digests}); "
                           "DDP ranks must stay bitwise identical")
    if not context.is_main:
        return result
    try:
        if config.run.eval_batches > 0:
            result.val_metrics = evaluate(model, datasets.val, config, setup.device)
            tracker.log_metrics(result.val_metrics, step=result.steps)
        model.save(result.model_dir, step=result.steps)
        tracker.log_artifact(result.model_dir, artifact_path="model")
        if config.run.sample_video:
            result.video = _sample_video(model, datasets.val, config, result.out_dir / "samples")
            if result.video is not None:
                tracker.log_artifact(result.video, artifact_path="samples")
                tracker.log_artifact(result.video.with_suffix(".gif"), artifact_path="samples")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return result


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
            actions=item.get("actions") if config.model.action_dim > 0 else None,
        )
    except ImportError as error:
        warnings.warn(f"sample video skipped: {error}", stacklevel=2)
        return None
