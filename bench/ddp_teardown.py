"""How often a 2-process gloo job dies at exit, with and without draining gloo's workers; one JSON object.

Each run is `torchrun --standalone --nproc-per-node 2` of a tiny DDP job (a few steps of a linear layer, then the
digest exchange the trainer does with `gather_objects`). Rank 0 lingers a moment, as it does while it evaluates and
saves the model, so rank 1 leaves first. Then `training.distributed.shutdown` (drain on) or the same without the
drain. Without the drain a gloo worker can still be releasing the last collective's tensors when rank 1's
interpreter finalises, and the process aborts ("terminate called without an active exception", SIGABRT; torchrun
then exits 1).

    runs, aborted   launches and those that did not exit 0 (a launch still running after 120 s counts, as -1)
    abort_rate      aborted / runs

    .venv/bin/python bench/ddp_teardown.py [--runs 40] [--modes drain no-drain]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(drain: bool, linger_s: float) -> None:
    import torch

    from training import distributed

    context, device = distributed.init_distributed("cpu")
    model = distributed.wrap_ddp(torch.nn.Linear(64, 64), context, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(8, 64)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    distributed.gather_objects(context, distributed.state_digest(model))
    if context.is_main:
        time.sleep(linger_s)
    distributed.shutdown(context, drain=drain)


def launch(drain: bool, linger_s: float) -> int:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
               "--worker", "--linger", str(linger_s), *([] if drain else ["--no-drain"])]
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    try:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120).returncode
    except subprocess.TimeoutExpired:
        return -1  # a hang counts as a failed exit too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="launches per mode")
    parser.add_argument("--modes", nargs="+", default=["drain", "no-drain"], choices=["drain", "no-drain"])
    parser.add_argument("--linger", type=float, default=0.5, help="seconds rank 0 stays after rank 1 is done")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-drain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(drain=not args.no_drain, linger_s=args.linger)
        return
    results = {}
    for mode in args.modes:
        started = time.perf_counter()
        codes = [launch(mode == "drain", args.linger) for _ in range(args.runs)]
        aborted = sum(code != 0 for code in codes)
        results[mode] = {"runs": args.runs, "aborted": aborted, "abort_rate": aborted / args.runs,
                         "exit_codes": sorted({code for code in codes if code != 0}),
                         "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
