"""Sampling latency and throughput of futures, printed as one JSON object.

For each preset (default: small and base; weights freshly initialised, since speed does not depend on training):

    latency_100x10_ms           time for `WorldModel.sample_futures(context, num_samples=100, horizon=10)` from one
                                context (encode the context, roll 100 futures out 10 steps from the prior, score each
                                with its energy); median and best of the repeats
    latency_100x10_decoded_ms   the same plus decoding all 100 x 10 predicted representations to pixels
    batched_futures_per_s       futures (of 10 steps) per second when B contexts x 100 samples go in one call
    batched_steps_per_s         predicted future frames (representations) per second in that batched call

The goal on an H100 is < 50 ms for 100 x 10. CUDA runs use bf16 autocast and channels_last weights; CPU runs fp32.

    .venv/bin/python bench/sample_latency.py [--presets small base] [--repeats 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from envs.clips import generate_clips  # noqa: E402
from training.config import preset  # noqa: E402
from training.trainer import autocast_context  # noqa: E402
from worldmodel.model import WorldModel  # noqa: E402

NUM_SAMPLES, HORIZON = 100, 10
GOAL_MS_H100 = 50.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, repeats: int) -> list[float]:
    """Wall times in ms of `repeats` calls after one warm-up call."""
    function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def bench_preset(name: str, args, device: torch.device) -> dict[str, object]:
    config = preset(name)
    torch.manual_seed(0)
    model = WorldModel(config.model).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    context_len = config.model.context_frames
    if context_len + HORIZON > config.model.predictor.max_len:
        raise SystemExit(f"preset {name}: context {context_len} + horizon {HORIZON} exceeds max_len")
    clips = generate_clips(config.data.balls, args.batch, context_len, seed=1)
    contexts = torch.from_numpy(clips.frames).permute(0, 1, 4, 2, 3).to(device)  # (B, C, 3, H, W) uint8
    generator = torch.Generator(device=device).manual_seed(0)
    precision = "auto"

    def sample(batch: torch.Tensor):
        with torch.no_grad(), autocast_context(device, precision):
            return model.sample_futures(batch, NUM_SAMPLES, HORIZON, generator=generator)

    def sample_and_decode():
        futures = sample(contexts[:1])
        with torch.no_grad(), autocast_context(device, precision):
            return model.decode(futures.representations[0])  # (100, 10, 3, H, W)

    single = timed(lambda: sample(contexts[:1]), device, args.repeats)
    decoded = timed(sample_and_decode, device, args.repeats)
    batched = timed(lambda: sample(contexts), device, max(1, args.repeats // 2))
    batched_s = statistics.median(batched) / 1e3
    result: dict[str, object] = {
        "context_frames": context_len,
        "num_samples": NUM_SAMPLES,
        "horizon": HORIZON,
        "latency_100x10_ms": {"median": round(statistics.median(single), 2), "best": round(min(single), 2)},
        "latency_100x10_decoded_ms": {"median": round(statistics.median(decoded), 2), "best": round(min(decoded), 2)},
        "batched_contexts": args.batch,
        "batched_call_ms": round(batched_s * 1e3, 1),
        "batched_futures_per_s": round(args.batch * NUM_SAMPLES / batched_s, 1),
        "batched_steps_per_s": round(args.batch * NUM_SAMPLES * HORIZON / batched_s, 1),
    }
    if device.type == "cuda":
        result["goal_ms"] = GOAL_MS_H100
        result["meets_goal"] = bool(statistics.median(single) < GOAL_MS_H100)
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--batch", type=int, default=0, help="contexts in the batched call (default 64 CUDA, 8 CPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda"
                          else "cpu")
    args.batch = args.batch or (64 if device.type == "cuda" else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, object] = {
        "bench": "sample_latency",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "presets": {name: bench_preset(name, args, device) for name in args.presets},
    }
    if device.type == "cpu":
        report["notes"] = "CPU, untrained weights (speed does not depend on them); the machine may be shared."
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
