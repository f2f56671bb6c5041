"""Process-group plumbing for `torchrun`: who am I, which device is mine, and the few collectives the loop needs.

`torchrun` (and SLURM/k8s launchers built on it) starts one process per GPU with RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/MASTER_PORT in the environment. `init_distributed` reads them; with WORLD_SIZE > 1 it joins the process
group (NCCL for CUDA, gloo for CPU) and pins the process to GPU LOCAL_RANK. A plain `python`/`worldmodel` run has
none of these variables and is a world of one, where every helper here is a no-op, so the training loop has a
single code path.

Rules the trainer follows (see README "Several GPUs and machines"):
- every rank builds the same model from the same seed (DDP also broadcasts rank 0's weights at wrap time);
- each rank trains on its own slice of every global batch (`training.data.ResumableBatchSampler`);
- stop decisions (SIGTERM, non-finite loss) are all-reduced, so all ranks leave the loop at the same step;
- only rank 0 logs to MLflow and writes checkpoints; every rank reads the one it is told to resume from.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_ENV_INTS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank, 0 .. world_size-1 (RANK)."""
    local_rank: int = 0
    """Rank on this machine; also the GPU index this process uses (LOCAL_RANK)."""
    world_size: int = 1
    """Processes in the job (WORLD_SIZE)."""
    local_world_size: int = 1
    """Processes on this machine (LOCAL_WORLD_SIZE)."""
    backend: str | None = None
    """"nccl" or "gloo" when a process group was joined, None for a single process."""

    @property
    def enabled(self) -> bool:
        """True when there is more than one process (collectives do something)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, prints and writes checkpoints."""
        return self.rank == 0


def context_from_env(environ: dict[str, str] | None = None) -> DistContext:
    """Read torchrun's variables (all absent: a world of one). Raises ValueError naming a bad variable."""
    environ = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for name in _ENV_INTS:
        text = environ.get(name)
        if text is None:
            continue
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} must be an integer (set by torchrun)") from None
    world = values.get("WORLD_SIZE", 1)
    rank = values.get("RANK", 0)
    local_rank = values.get("LOCAL_RANK", rank)
    local_world = values.get("LOCAL_WORLD_SIZE", world)
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    if not 0 <= local_rank < max(local_world, 1):
        raise ValueError(f"LOCAL_RANK={local_rank} must be in [0, LOCAL_WORLD_SIZE={local_world})")
    if world > 1 and ("MASTER_ADDR" not in environ or "MASTER_PORT" not in environ):
        raise ValueError(
            f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set; launch with torchrun "
            "(e.g. torchrun --standalone --nproc-per-node 2 -m training.cli train ...)"
        )
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, local_world_size=local_world)


def init_distributed(device_name: str, *, timeout_s: float = 1800.0) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun set up (if any) and pick this process's device.

    device_name is `run.device` (auto/cpu/cuda). Under torchrun each process takes GPU LOCAL_RANK; a job with more
    processes on a machine than it has GPUs is refused with a clear message rather than left to oversubscribe.
    """
    context = context_from_env()
    wants_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if device_name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but CUDA is not available; use run.device=auto or cpu")
    if wants_cuda:
        count = torch.cuda.device_count()
        if context.local_rank >= count:
            raise RuntimeError(
                f"LOCAL_RANK={context.local_rank} but this machine has {count} GPU(s); start at most one process "
                "per GPU (torchrun --nproc-per-node <= GPUs)"
            )
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not context.enabled:
        return context, device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if device.type == "cuda":
            kwargs["device_id"] = device  # binds NCCL to this GPU up front (no lazy init on first collective)
        dist.init_process_group(**kwargs)
    return DistContext(
        rank=context.rank,
        local_rank=context.local_rank,
        world_size=context.world_size,
        local_world_size=context.local_world_size,
        backend=backend,
    ), device


def shutdown(context: DistContext, *, drain: bool = True) -> None:
    """Leave the process group (only if this process joined one).

    drain: every rank is here together (a normal end), so one last collective can make sure gloo's worker threads
    are idle first (`_drain_gloo`). Pass False when leaving on an error: another rank may never arrive.
    """
    if not (context.enabled and dist.is_initialized()):
        return
    if drain and dist.get_backend() == "gloo":
        _drain_gloo()
    dist.destroy_process_group()


def _drain_gloo(timeout_s: float = 10.0) -> None:
    """Wait until gloo's worker threads have let go of the tensors of the collectives that already finished.

    A gloo worker marks a collective done and only then drops its references to the tensors; that drop takes the
    GIL. If the interpreter is already finalising when it asks for the GIL, Python ends the thread inside a C++
    destructor and the process aborts ("terminate called without an active exception", SIGABRT) after training
    finished. While C++ holds a tensor its Python refcount is one higher, so: one last all-reduce on a tensor we
    hold, then sleep (which frees the GIL for the workers) until its refcount is back. Earlier collectives were
    released during that round trip.
    """
    marker = torch.zeros(1)
    baseline = sys.getrefcount(marker)
    dist.all_reduce(marker)
    deadline = time.monotonic() + timeout_s
    while sys.getrefcount(marker) > baseline and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.01)  # the other worker thread, should it still be finishing an earlier collective


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


@contextlib.contextmanager
def local_main_first(context: DistContext) -> Iterator[None]:
    """Local rank 0 runs the block first (e.g. generating the clip cache), the other ranks then reuse its result."""
    if context.enabled and context.local_rank != 0:
        dist.barrier()
    yield
    if context.enabled and context.local_rank == 0:
        dist.barrier()


def any_rank(context: DistContext, flags: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of an integer flag vector over all ranks (in place); a world of one returns it as is."""
    if context.enabled:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def mean_over_ranks(context: DistContext, values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of scalars over ranks (every rank must pass the same keys in the same order)."""
    if not context.enabled or not values:
        return values
    names = list(values)
    tensor = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= context.world_size
    return dict(zip(names, tensor.tolist()))


def gather_objects(context: DistContext, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (pickled: only for our own small plain objects)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(context: DistContext, value: Any, src: int = 0) -> Any:
    """Rank `src`'s value on every rank."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def wrap_ddp(module: nn.Module, context: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module` when there are several processes, else `module` itself.

    DDP broadcasts rank 0's parameters and buffers (the EMA target encoder included) at construction, so all ranks
    start identical even if their initialisation differed; gradients are then averaged in buckets during backward.
    """
    if not context.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # Every trainable parameter gets a gradient every step (the loss uses the whole model), so no unused-parameter
    # search; gradient_as_bucket_view saves a gradient-sized copy.
    return DistributedDataParallel(module, device_ids=device_ids, gradient_as_bucket_view=True)


def state_digest(module: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, bytes) in name order.

    Ranks of a healthy DDP job hold bitwise identical weights, so their digests must agree; the trainer compares
    them at the end of a run.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
