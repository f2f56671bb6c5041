"""Faults: SIGKILL at random points (also inside checkpoint writes) then --resume, bitwise-exact resume mid-epoch and
at an epoch boundary, SIGTERM, non-finite losses, and the collapse alarm.

Training subprocesses are forked from a forkserver that has torch and the trainer imported already, so each one
starts in milliseconds instead of paying the ~3 s import (20 kills would otherwise take minutes); they are real
processes, killed with real signals.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from training.checkpoint import (
    FAULT_CHECKPOINT_SLEEP,
    checkpoint_root,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_training_state,
    rng_state,
    save_checkpoint,
)
from training.config import debug
from training.config_io import apply_overrides, to_dict
from training.data import ResumableBatchSampler, build_datasets
from training.trainer import (
    FAULT_KILL_AFTER_STEP,
    FAULT_NAN_AT_STEP,
    CollapseMonitor,
    CollapseWarning,
    _warn_config_changes,
    read_metrics_log,
    train,
)
from worldmodel import WorldModel

# Small and quick: 10 clips of the debug preset, one thread (two threads thrash on a busy 2-core machine).
FAST = ["run.progress=false", "run.sample_video=false", "run.threads=1", "data.num_clips=10", "data.batch_size=15",
        "run.eval_batches=1", "run.log_every=1"]


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [f"run.out_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path.parent / 'cache'}", *FAST, *extra]


def config_for(tmp_path: Path, *extra: str):
    return apply_overrides(debug(), overrides(tmp_path, *extra))


def _child(argv: list[str], log_path: str, env: dict[str, str]) -> None:
    """Body of a training subprocess: `worldmodel <argv>` with output to a line-buffered log (kept on SIGKILL)."""
    os.environ.update(env)
    log = open(log_path, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    from training.cli import main

    sys.exit(main(argv))


@pytest.fixture(scope="module")
def spawn():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "numpy", "mlflow", "training.cli", "training.trainer", __name__])

    def start(argv: list[str], log: Path, env: dict[str, str] | None = None):
        process = context.Process(target=_child, args=(argv, str(log), env or {}))
        process.start()
        return process

    return start


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def losses(out_dir: Path) -> dict[int, dict[str, float]]:
    """Per logged step, the loss terms and validation metrics from metrics.jsonl (several records per step merge)."""
    merged: dict[int, dict[str, float]] = {}
    for record in read_metrics_log(out_dir):
        merged.setdefault(record["step"], {}).update(
            {key: value for key, value in record.items() if key.startswith(("loss/", "val/"))}
        )
    return merged


@pytest.mark.slow
@pytest.mark.filterwarnings("error:ignoring incomplete checkpoint")  # a kill must never leave a damaged step-N/
def test_sigkill_at_random_points_resume_loads_newest_complete_checkpoint(tmp_path, spawn):
    """20 kills: half while a checkpoint is being written (a `step-N.tmp/` exists), a quarter at a random moment,
    a quarter at a random moment after a new checkpoint completed (which guarantees the run gets somewhere)."""
    out = tmp_path / "run"
    argv = ["train", "--preset", "debug", "--resume", *overrides(tmp_path, "run.steps=100000", "run.tracking=none",
            "run.checkpoint_every=2", "run.keep_checkpoints=2", "run.eval_batches=0", "data.batch_size=4")]
    env = {FAULT_CHECKPOINT_SLEEP: "0.25"}
    rng = random.Random(0)
    root = checkpoint_root(out)
    mid_write = 0
    steps_seen = []
    for attempt in range(20):
        expected = latest_checkpoint(out)  # the newest complete checkpoint before this process starts
        log = tmp_path / f"attempt-{attempt:02d}.log"
        process = spawn(argv, log, env)
        wait_for(lambda: "resume:" in log.read_text() if log.exists() else False, 60, "the resume line")
        if attempt % 2 == 0:
            wait_for(lambda: any(root.glob("step-*.tmp")), 60, "a checkpoint write")
            time.sleep(rng.uniform(0.0, 0.2))  # somewhere inside the 0.25 s pause before the manifest
        elif attempt % 4 == 1:
            time.sleep(rng.uniform(0.0, 0.6))  # anywhere: start-up, a step, a write
        else:  # after the next checkpoint completes, anywhere in the steps that follow (so the run progresses)
            wait_for(lambda: latest_checkpoint(out) != expected, 60, "a new checkpoint")
            time.sleep(rng.uniform(0.0, 0.6))
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        assert process.exitcode == -signal.SIGKILL
        mid_write += any(root.glob("step-*.tmp"))

        text = log.read_text()
        if expected is None:
            assert "resume: no complete checkpoint" in text, text
        else:
            assert f"resume: loaded {expected} (step {int(expected.name.split('-')[1])})" in text, text
        newest = latest_checkpoint(out)
        if newest is not None:
            # Whatever the kill interrupted, the newest complete checkpoint loads fully.
            state = read_training_state(newest)
            load_checkpoint(newest, model=WorldModel(debug().model), restore_rng=False)
            steps_seen.append(state["step"])
            # keep_checkpoints=2, plus one when the kill fell between publishing a checkpoint and deleting the
            # oldest (the next resume deletes it)
            assert len(list_checkpoints(out)) <= 3
    assert mid_write >= 8, f"only {mid_write} kills landed inside a checkpoint write"
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] >= 10, steps_seen

    # A last, undisturbed resume finishes two steps later from the newest checkpoint, and the metrics log reads as
    # one clean run: every step exactly once, in order, despite 20 kills.
    final_step = steps_seen[-1] + 2
    config = config_for(tmp_path, "run.tracking=none", "data.batch_size=4", "run.checkpoint_every=2",
                        "run.keep_checkpoints=2", "run.eval_batches=0", f"run.steps={final_step}")
    with pytest.warns(UserWarning, match=r"config differs from the checkpoint's: run.steps: 100000 -> "):
        final = train(config, resume=True)
    assert final.steps == final_step and (final.model_dir / "model.safetensors").is_file()
    assert [record["step"] for record in read_metrics_log(out)] == list(range(1, final_step + 1))
    # Only whole checkpoints remain: leftovers of interrupted writes and deletions were cleaned up.
    assert sorted(p.name for p in root.iterdir()) == [f"step-{final_step - 2:09d}", f"step-{final_step:09d}"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [3, 4], ids=["mid-epoch", "epoch-boundary"])
def test_killed_then_resumed_run_is_bitwise_an_uninterrupted_one(tmp_path, spawn, kill_at):
    """Deterministic CPU mode: SIGKILL right after step N's checkpoint, resume to 2N, compare with 2N straight."""
    total = 2 * kill_at
    common = ["run.tracking=none", "run.deterministic=true", f"run.steps={total}", f"run.checkpoint_every={kill_at}"]
    straight_config = config_for(tmp_path / "straight", *common)
    batches_per_epoch = ResumableBatchSampler(len(build_datasets(straight_config).train), 15, seed=0).batches_per_epoch
    assert batches_per_epoch == 4  # so kill_at=4 is an epoch boundary and kill_at=3 is mid-epoch (resume crosses one)
    straight = train(straight_config)

    killed_dir = tmp_path / "killed"
    log = tmp_path / "killed.log"
    process = spawn(["train", "--preset", "debug", *overrides(killed_dir, *common)], log,
                    {FAULT_KILL_AFTER_STEP: str(kill_at)})
    process.join(300)
    assert process.exitcode == -signal.SIGKILL, log.read_text()
    assert latest_checkpoint(killed_dir / "run").name == f"step-{kill_at:09d}"
    assert max(losses(killed_dir / "run")) == kill_at  # it really died after step N
    resumed = train(config_for(killed_dir, *common), resume=True)

    expected, got = losses(straight.out_dir), losses(resumed.out_dir)
    assert sorted(got) == list(range(1, total + 1))
    assert got == expected  # every loss term and validation metric of every step, bit for bit
    a, b = WorldModel.load(straight.model_dir).state_dict(), WorldModel.load(resumed.model_dir).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)  # EMA target included
    opt_a = read_training_state(latest_checkpoint(straight.out_dir))["optimizer"]["state"]
    opt_b = read_training_state(latest_checkpoint(resumed.out_dir))["optimizer"]["state"]
    assert all(torch.equal(opt_a[k][m], opt_b[k][m]) for k in opt_a for m in ("exp_avg", "exp_avg_sq", "step"))


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, spawn):
    out = tmp_path / "run"
    log = tmp_path / "term.log"
    process = spawn(["train", "--preset", "debug", *overrides(tmp_path, "run.steps=100000",
                                                              "run.checkpoint_every=1000")], log)
    wait_for(lambda: len(read_metrics_log(out)) >= 3, 120, "three logged steps")
    os.kill(process.pid, signal.SIGTERM)
    process.join(60)
    text = log.read_text()
    assert process.exitcode == 0, text
    assert "SIGTERM received" in text and "Traceback" not in text
    step = max(record["step"] for record in read_metrics_log(out))
    assert f"stopped by SIGTERM at step {step}" in text
    newest = latest_checkpoint(out)
    assert newest.name == f"step-{step:09d}" and read_training_state(newest)["step"] == step
    assert not list(checkpoint_root(out).glob("*.tmp"))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("worldmodel").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == f"SIGTERM at step {step}"
    # The same MLflow run continues on resume.
    with pytest.warns(UserWarning, match="config differs from the checkpoint's: run.checkpoint_every"):
        resumed = train(config_for(tmp_path, f"run.steps={step + 2}", f"run.checkpoint_every={step + 2}"),
                        resume=True)
    assert resumed.steps == step + 2 and not resumed.interrupted
    (run,) = client.search_runs([client.get_experiment_by_name("worldmodel").experiment_id])
    assert run.info.status == "FINISHED"


def test_nonfinite_loss_stops_the_run_failed_with_last_checkpoint_intact(tmp_path, monkeypatch, capsys):
    from training.cli import main

    monkeypatch.setenv(FAULT_NAN_AT_STEP, "5")
    code = main(["train", "--preset", "debug", *overrides(tmp_path, "run.steps=8", "run.checkpoint_every=2",
                                                          "data.batch_size=4")])
    err = capsys.readouterr().err
    assert code == 1
    assert "step 5: non-finite loss (nan)" in err and "step-000000004 is intact" in err and "Traceback" not in err
    out = tmp_path / "run"
    assert [p.name for p in list_checkpoints(out)] == ["step-000000002", "step-000000004"]
    model = WorldModel(debug().model)
    state = load_checkpoint(latest_checkpoint(out), model=model, restore_rng=False)
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in model.state_dict().values())
    assert [record["step"] for record in read_metrics_log(out) if "loss/total" in record] == [1, 2, 3, 4]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("worldmodel").experiment_id])
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["failure"]


def test_nonfinite_skip_mode_drops_the_step_and_carries_on(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_NAN_AT_STEP, "2")
    with pytest.warns(RuntimeWarning, match=r"step 2: non-finite loss \(nan\).*run.nonfinite=skip"):
        result = train(config_for(tmp_path, "run.steps=3", "run.nonfinite=skip", "run.tracking=none",
                                  "data.batch_size=4", "run.eval_batches=0"))
    assert result.steps == 3
    assert [h["optim/skipped_steps"] for h in result.history] == [0.0, 1.0, 1.0]
    assert all(torch.isfinite(t).all() for t in WorldModel.load(result.model_dir).state_dict().values())


class RecordingTracker:
    def __init__(self) -> None:
        self.tags: dict[str, object] = {}

    def set_tag(self, key, value) -> None:
        self.tags[key] = value


def test_collapse_monitor_thresholds():
    run = debug().run  # collapse_min_rank=0.1 of D=32 -> 3.2; collapse_min_std=0.01
    tracker = RecordingTracker()
    monitor = CollapseMonitor(run, 32, tracker)
    healthy = {"collapse/effective_rank": 20.0, "collapse/std_min": 0.5}
    assert monitor.check(10, healthy) is None and healthy["collapse/alarm"] == 0.0 and not tracker.tags
    with pytest.warns(CollapseWarning, match=r"step 20: effective rank 2.50 < 3.20"):
        assert monitor.check(20, {"collapse/effective_rank": 2.5, "collapse/std_min": 0.5})
    assert tracker.tags["collapse_alarm_step"] == 20
    # Still collapsed: no second warning; recovered then collapsed again (by std this time): warns again.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        assert monitor.check(30, {"collapse/effective_rank": 2.0, "collapse/std_min": 0.5})
        assert monitor.check(40, dict(healthy)) is None
    with pytest.warns(CollapseWarning, match=r"per-dimension std 0.001 < run.collapse_min_std=0.01"):
        monitor.check(50, {"collapse/effective_rank": 20.0, "collapse/std_min": 0.001})
    assert tracker.tags["collapse_alarm_step"] == 20 and "step 50" in tracker.tags["collapse_alarm"]


def test_forced_collapse_raises_the_alarm_and_a_healthy_run_does_not(tmp_path):
    """Collapse forced by removing the anti-collapse terms (VICReg weights 0, target = the encoder itself, no EMA)
    and, because this model's encoder only learns through the predictor's input and so drifts towards collapse
    slowly without them, a strong weight decay that squeezes the encoder's output map to zero."""
    steps = ["run.steps=6", "run.log_every=3", "run.checkpoint_every=100", "data.batch_size=8", "run.eval_batches=0"]
    collapse = ["model.regularizer.variance_weight=0", "model.regularizer.covariance_weight=0", "model.target=shared",
                "optim.weight_decay=400", "optim.warmup_steps=1"]
    with pytest.warns(CollapseWarning, match="representation collapse at step 3"):
        result = train(config_for(tmp_path / "collapsed", *steps, *collapse))
    assert [h["collapse/alarm"] for h in result.history] == [1.0, 1.0]
    assert result.history[-1]["collapse/std_min"] < debug().run.collapse_min_std

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(result.out_dir / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("worldmodel").experiment_id])
    assert "representation collapse at step 3" in run.data.tags["collapse_alarm"]
    assert run.data.tags["collapse_alarm_step"] == "3"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "collapse/alarm")] == [1.0, 1.0]

    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        healthy = train(config_for(tmp_path / "healthy", *steps, "run.tracking=none"))
    assert [h["collapse/alarm"] for h in healthy.history] == [0.0, 0.0]
    # Six steps in, the passed-through keypoint coordinates (which start near the image centre) are the least spread
    # dimensions of a healthy run: clearly above the alarm, and far above the collapsed run.
    healthy_std, collapsed_std = healthy.history[-1]["collapse/std_min"], result.history[-1]["collapse/std_min"]
    print(f"std_min healthy {healthy_std:.4g} collapsed {collapsed_std:.4g}")
    assert healthy_std > 2 * debug().run.collapse_min_std and healthy_std > 10 * collapsed_std


def test_checkpoint_holds_scaler_rng_and_data_position(tmp_path):
    config = config_for(tmp_path, "run.keep_checkpoints=2")
    model = WorldModel(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    rngs = [rng_state(), rng_state()]  # as if written by a 2-rank job
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / "run", step=step, model=model, optimizer=optimizer, schedule=schedule,
                        config=config, scaler=scaler, rng=rngs,
                        data={"batch_index": step, "global_batch_size": 30, "samples_seen": 30 * step})
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000000002", "step-000000003"]
    restored = torch.amp.GradScaler("cpu", init_scale=1.0)
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"), model=WorldModel(config.model), scaler=restored,
                            rank=1)
    assert restored.get_scale() == 1024.0 and len(state["rng"]) == 2
    assert state["data"] == {"batch_index": 3, "global_batch_size": 30, "samples_seen": 90}
    manifest = json.loads((latest_checkpoint(tmp_path / "run") / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model/config.json", "model/model.safetensors", "training_state.pt",
                                      "config.yaml"}


def test_resume_warning_names_fields_the_checkpoint_predates(tmp_path: Path) -> None:
    """A field added after a checkpoint was written reads as absent there, not as a change from None."""
    config = config_for(tmp_path, "run.steps=7")
    saved = to_dict(config)
    del saved["model"]["latent"]["free_bits"]  # as if written before the field existed
    saved["run"]["steps"] = 5
    (tmp_path / "config.yaml").write_text(json.dumps(saved))  # JSON is YAML
    with pytest.warns(UserWarning) as caught:
        _warn_config_changes(tmp_path / "config.yaml", config)
    (message,) = [str(w.message) for w in caught]
    assert "model.latent.free_bits: (absent: older checkpoint) -> 0.5" in message, message
    assert "run.steps: 5 -> 7" in message and "None" not in message
