"""Several processes: torchrun's environment is read with clear errors, and `worldmodel train` runs unchanged under
`torchrun --standalone --nproc-per-node 2` on CPU (gloo): both ranks finish with bitwise identical weights, one
MLflow run, one checkpoint folder, and a resumed 2-rank run continues the same MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import list_checkpoints, read_training_state
from training.distributed import DistContext, context_from_env, gather_objects, mean_over_ranks, state_digest
from training.trainer import rank_seed, read_metrics_log
from worldmodel import WorldModel

ROOT = Path(__file__).resolve().parents[1]


def test_single_process_is_a_world_of_one():
    context = context_from_env({})
    assert context == DistContext() and context.is_main and not context.enabled
    assert gather_objects(context, {"a": 1}) == [{"a": 1}]
    assert mean_over_ranks(context, {"x": 2.0}, torch.device("cpu")) == {"x": 2.0}


def test_torchrun_environment_is_read_and_checked():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node0",
           "MASTER_PORT": "29500"}
    context = context_from_env(env)
    assert (context.rank, context.local_rank, context.world_size, context.local_world_size) == (3, 1, 4, 2)
    assert context.enabled and not context.is_main
    with pytest.raises(ValueError, match="RANK=4 must be in"):
        context_from_env({**env, "RANK": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two' must be an integer"):
        context_from_env({**env, "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="MASTER_ADDR/MASTER_PORT are not set"):
        context_from_env({key: value for key, value in env.items() if not key.startswith("MASTER")})


def test_state_digest_sees_every_bit_and_ranks_get_their_own_noise():
    from training.config import debug

    torch.manual_seed(0)
    model = WorldModel(debug().model)
    torch.manual_seed(0)
    twin = WorldModel(debug().model)
    assert state_digest(model) == state_digest(twin)
    with torch.no_grad():
        weight = twin.target_encoder.to_representation.weight  # the EMA target counts too
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(1.0))
    assert state_digest(model) != state_digest(twin)
    assert rank_seed(5, 0) == 5 and len({rank_seed(5, rank) for rank in range(8)}) == 8


def test_gloo_drain_returns_once_the_workers_let_go_of_finished_collectives(tmp_path):
    # A gloo worker drops its references to a finished collective's tensors (taking the GIL) after Python has seen
    # the collective done; at interpreter exit that drop aborts the process. While it holds them, their refcount is
    # one higher, which is what the drain waits out.
    import torch.distributed as dist

    from training.distributed import _drain_gloo

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        tensors = [torch.ones(1024) for _ in range(16)]
        baselines = [sys.getrefcount(tensor) for tensor in tensors]
        works = [dist.all_reduce(tensor, async_op=True) for tensor in tensors]
        assert all(sys.getrefcount(tensor) > base for tensor, base in zip(tensors, baselines))  # gloo holds them
        for work in works:
            work.wait()
        del works, work
        _drain_gloo()
        assert [sys.getrefcount(tensor) for tensor in tensors] == baselines
    finally:
        dist.destroy_process_group()


def torchrun(tmp_path: Path, *args: str, steps: int, resume: bool = False) -> subprocess.CompletedProcess:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "training.cli", "train", "--preset", "debug", *(["--resume"] if resume else []),
        f"run.out_dir={out}", f"data.cache_dir={tmp_path / 'cache'}", f"run.steps={steps}", "run.log_every=2",
        "run.checkpoint_every=2", "run.threads=1", "run.progress=false", "run.sample_video=false",
        "run.eval_batches=1", "data.num_clips=24", "data.batch_size=6", *args,
    ]
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_train_identically_with_one_run_and_one_checkpoint_folder(tmp_path):
    done = torchrun(tmp_path, steps=4)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "run"
    assert done.stdout.count("model saved to") == 1  # rank 0 reports for the job

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1  # only rank 0 tracks
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.tags["runtime.world_size"] == "2"
    # Each rank hashed its own weights (EMA target included) after the last step; all agree, and equal the model
    # rank 0 saved. They also moved away from the initialisation: the ranks trained, in lock-step.
    digests = json.loads(run.data.tags["ddp.param_digests"])
    assert len(digests) == 2 and digests[0] == digests[1]
    final = WorldModel.load(out / "model")
    assert state_digest(final) == digests[0]
    torch.manual_seed(0)
    assert state_digest(WorldModel(final.config)) != digests[0]

    # One checkpoint folder, written by rank 0 only, holding each rank's own RNG state.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoints")) == ["checkpoints"]
    assert [p.name for p in list_checkpoints(out)] == ["step-000000002", "step-000000004"]
    state = read_training_state(list_checkpoints(out)[-1])
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert state["data"] == {"batch_index": 4, "global_batch_size": 12, "samples_seen": 48}
    logged = [r for r in read_metrics_log(out) if "loss/total" in r]
    assert [r["step"] for r in logged] == [2, 4] and logged[-1]["speed/samples_per_s"] > 0

    # Resume the 2-rank job: it continues the same MLflow run from step 4, and stays in lock-step.
    done = torchrun(tmp_path, steps=6, resume=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resume: loaded {out / 'checkpoints' / 'step-000000004'} (step 4)" in done.stdout
    (run,) = client.search_runs([e.experiment_id for e in experiments])
    assert run.info.status == "FINISHED"
    digests = json.loads(run.data.tags["ddp.param_digests"])
    assert digests[0] == digests[1] == state_digest(WorldModel.load(out / "model"))
    assert [r["step"] for r in read_metrics_log(out) if "loss/total" in r] == [2, 4, 6]
