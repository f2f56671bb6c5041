"""Training throughput per preset, printed as one JSON object.

For each preset (default: small and base) it runs the trainer's own step (`training.trainer.train_step`: forward,
backward, non-finite check, clipping, AdamW, EMA update; bf16 + channels_last + fused AdamW + torch.compile on CUDA,
frames rendered on the device) and reports:

    samples_per_s, frames_per_s     training windows (and frames in them) per second
    step_time_ms                    wall time per optimizer step (mean over the timed steps)
    peak_memory_gb                  CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak RSS
    model_tflops_per_step           FLOPs of one step counted by torch.utils.flop_counter.FlopCounterMode on an eager
                                    forward + backward (matmuls, convolutions, attention; elementwise ops and the
                                    optimizer are not counted, as usual for MFU)
    mfu                             model FLOPs per second / matmul_peak_tflops
    data_wait_fraction              share of the timed wall time the loop spent waiting for its next batch

`matmul_peak_tflops` is measured in the same run on the same device: a large bf16 matmul on CUDA (the tensor-core
peak the model could reach), fp32 on CPU. On CPU the work is cut down (fewer steps, a smaller batch for `base`,
fewer clips) and the JSON says so in `notes`; CPU numbers on a shared machine are noisy, so `cpu_load_before` records
the 1-minute load average at the start.

    .venv/bin/python bench/train_throughput.py [--presets small base] [--steps N] [--warmup N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from training.config import preset  # noqa: E402
from training.config_io import apply_overrides  # noqa: E402
from training.data import build_datasets, can_render_on_device, train_stream  # noqa: E402
from training.distributed import DistContext  # noqa: E402
from training.trainer import (  # noqa: E402
    autocast_context,
    build_setup,
    resolve_flag,
    seed_everything,
    train_step,
)

GOAL_MFU_BASE_H100 = 0.35
"""Issue 5's target for `base` on an H100."""
CPU_BATCH_CAP = {"small": 32, "base": 16}
"""Per-step batch on CPU (the presets' GPU batches would make a CPU step take minutes)."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device) -> tuple[float, str]:
    """Best achieved TFLOP/s of a large square matmul: bf16 on CUDA, fp32 on CPU."""
    if device.type == "cuda":
        size, dtype, repeats = 8192, torch.bfloat16, 30
    else:
        size, dtype, repeats = 1024, torch.float32, 5
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best / 1e12, f"{str(dtype).removeprefix('torch.')} {size}x{size} matmul"


def count_step_flops(setup, batch) -> float:
    """FLOPs of one eager forward + backward (the step is not applied)."""
    with FlopCounterMode(display=False) as counter:
        with autocast_context(setup.device, setup.precision):
            loss, _ = setup.module.forward(batch, False)  # .forward: eager even when the module is compiled
        loss.backward()
    setup.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_preset(name: str, args, device: torch.device, peak_tflops: float) -> dict[str, object]:
    cpu = device.type == "cpu"
    config = preset(name)
    if args.batch_size:
        batch = args.batch_size
    else:
        batch = min(config.data.batch_size, CPU_BATCH_CAP.get(name, 32)) if cpu else config.data.batch_size
    overrides = [
        f"run.device={device.type}",
        f"data.batch_size={batch}",
        f"data.cache_dir={args.cache_dir}",
        f"data.num_clips={args.num_clips or (64 if cpu else 2048)}",
        "data.num_workers=0" if cpu else f"data.num_workers={config.data.num_workers}",
        f"run.compile={args.compile}",
        f"run.steps={args.warmup + args.steps + 1}",
    ]
    config = apply_overrides(config, overrides)
    seed_everything(config.run.seed)
    datasets = build_datasets(config)
    setup = build_setup(config, DistContext(), device)
    render = resolve_flag(config.run.render_on_device, device) and can_render_on_device(datasets.train)
    batches = train_stream(datasets.train, config, start=0, device=device, render_on_device=render)

    flops = count_step_flops(setup, next(batches))
    compile_started = time.perf_counter()
    for _ in range(args.warmup):  # includes torch.compile's compilation on the first call
        train_step(setup, next(batches), telemetry=False)
    synchronize(device)
    warmup_s = time.perf_counter() - compile_started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    wait = 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        waited = time.perf_counter()
        frames = next(batches)
        wait += time.perf_counter() - waited
        train_step(setup, frames, telemetry=False)
    synchronize(device)
    elapsed = time.perf_counter() - start
    step_s = elapsed / args.steps
    if device.type == "cuda":
        peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_memory_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    result: dict[str, object] = {
        "batch_size": batch,
        "window_frames": config.window,
        "image_size": config.model.image_size,
        "parameters_m": round(sum(p.numel() for p in setup.model.parameters()) / 1e6, 3),
        "precision": setup.precision,
        "compiled": setup.compiled,
        "render_on_device": render,
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "warmup_s": round(warmup_s, 2),
        "step_time_ms": round(step_s * 1e3, 2),
        "samples_per_s": round(batch / step_s, 2),
        "frames_per_s": round(batch * config.window / step_s, 1),
        "peak_memory_gb": round(peak_memory_gb, 3),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "model_tflops_per_step": round(flops / 1e12, 5),
        "achieved_tflops": round(flops / step_s / 1e12, 4),
        "mfu": round(flops / step_s / (peak_tflops * 1e12), 4),
        "data_wait_fraction": round(wait / elapsed, 4),
    }
    if name == "base" and device.type == "cuda":
        result["goal_mfu"] = GOAL_MFU_BASE_H100
        result["meets_goal_mfu"] = bool(result["mfu"] >= GOAL_MFU_BASE_H100)
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "base"], help="presets to measure")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 30 on CUDA, 6 on CPU)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (default: 10 on CUDA, 2 on CPU)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="per-step batch (default: the preset's; on CPU at most 32, 16 for base)")
    parser.add_argument("--num-clips", type=int, default=0, help="clips generated (default: 2048 CUDA, 64 CPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                        help="run.compile (auto: on for CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--cache-dir", default=".cache/bench", help="clip cache")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda"
                          else "cpu")
    cpu = device.type == "cpu"
    args.steps = args.steps or (6 if cpu else 30)
    args.warmup = args.warmup or (2 if cpu else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    peak, peak_kind = matmul_peak_tflops(device)
    report: dict[str, object] = {
        "bench": "train_throughput",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_load_before": load,
        "matmul_peak_tflops": round(peak, 4),
        "matmul_peak_kind": peak_kind,
        "presets": {},
    }
    if cpu:
        report["notes"] = (
            "CPU run: batch capped (32 small / 16 base), 64 clips, few steps; fp32 and no torch.compile. The machine "
            "may be shared with other jobs (see cpu_load_before), so treat these as rough figures."
        )
    for name in args.presets:
        report["presets"][name] = bench_preset(name, args, device, peak)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
