"""Tests for training.tracking: the MLflow tracker is read back through an independent
MlflowClient on the run's embedded SQLite store; resume, key/value sanitising,
non-finite metrics, isolation between trackers, and the no-op tracker."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from training.tracking import (
    MlflowTracker,
    NullTracker,
    Tracker,
    flatten_params,
    make_tracker,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# MLflow's SQLAlchemy models trigger a deprecation warning inside MLflow itself.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")


def client_for(output_dir: Path):  # -> mlflow.tracking.MlflowClient
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{output_dir.resolve().as_posix()}/mlflow.db")


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_mlflow_tracker_logs_everything_and_fails(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tracker = make_tracker("mlflow", out, "wm-test", "first")
    assert isinstance(tracker, MlflowTracker) and isinstance(tracker, Tracker)
    run_id = tracker.run_id
    assert run_id

    tracker.log_params(
        {
            "model": {"latent_dim": 32, "encoder": {"channels": [32, 64]}},
            "optim": {"lr": 3e-4},
            "data_dir": Path("/data/clips"),
            "empty": {},
        }
    )
    for step in range(5):
        tracker.log_metrics({"train/loss": 1.0 / (step + 1), "train/energy": step * 0.5}, step)
    tracker.log_metrics({"val/loss": 0.25}, step=4)
    artifact = tmp_path / "samples.txt"
    artifact.write_text("hello")
    tracker.log_artifact(artifact, artifact_path="samples")
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"x")
    tracker.log_artifact(folder, artifact_path="videos")
    tracker.set_tag("git_commit", "abc123")
    tracker.finish("FAILED")

    client = client_for(out)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.info.run_name == "first"
    assert run.data.params == {
        "model.latent_dim": "32",
        "model.encoder.channels": "[32, 64]",
        "optim.lr": "0.0003",
        "data_dir": "/data/clips",
        "empty": "{}",
    }
    assert run.data.tags["git_commit"] == "abc123"
    assert history(client, run_id, "train/loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert history(client, run_id, "train/energy") == [(s, s * 0.5) for s in range(5)]
    assert history(client, run_id, "val/loss") == [(4, 0.25)]

    assert {f.path for f in client.list_artifacts(run_id, "samples")} == {"samples/samples.txt"}
    assert {f.path for f in client.list_artifacts(run_id, "videos")} == {"videos/a.mp4"}
    experiment = client.get_experiment_by_name("wm-test")
    assert experiment.artifact_location == (out.resolve() / "mlartifacts").as_uri()
    stored = out / "mlartifacts" / run_id / "artifacts" / "samples" / "samples.txt"
    assert stored.read_text() == "hello"


def test_resume_continues_the_same_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    first = MlflowTracker(out, "wm-test", "resumable")
    first.log_params({"lr": 0.1, "steps": 100})
    for step in range(3):
        first.log_metrics({"loss": float(step)}, step)
    first.finish("KILLED")
    run_id = first.run_id

    second = MlflowTracker(out, "wm-test", "ignored-name", resume_run_id=run_id)
    assert second.run_id == run_id and second.resumed
    client = client_for(out)
    assert client.get_run(run_id).info.status == "RUNNING"
    with caplog.at_level(logging.WARNING, logger="training.tracking"):
        second.log_params({"lr": 0.1, "steps": 200})  # unchanged lr is fine, steps changed
    assert "already logged" in caplog.text
    for step in range(3, 5):
        second.log_metrics({"loss": float(step)}, step)
    second.finish()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "resumable"
    assert run.data.params == {"lr": "0.1", "steps": "100"}
    assert run.data.tags["param_override.steps"] == "200"
    assert history(client, run_id, "loss") == [(s, float(s)) for s in range(5)]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_resume_unknown_run_starts_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="training.tracking"):
        tracker = make_tracker("mlflow", tmp_path, "wm-test", "fresh", resume_run_id="0" * 32)
    assert tracker.run_id and tracker.run_id != "0" * 32
    assert "not found" in caplog.text
    tracker.finish()
    assert client_for(tmp_path).get_run(tracker.run_id).info.status == "FINISHED"


def test_awkward_values_do_not_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker = MlflowTracker(tmp_path, "wm-test", None)
    long_value = "v" * 10_000
    tracker.log_params({"long": long_value, "odd key:with*chars": 1, "k" * 400: 2})
    tracker.set_tag("note", "t" * 20_000)
    with caplog.at_level(logging.WARNING, logger="training.tracking"):
        tracker.log_metrics(
            {"nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "text": "oops"}, 0
        )
        tracker.log_metrics({f"many/{i}": float(i) for i in range(1500)}, 1)  # > 1 batch
    assert "non-numeric" in caplog.text
    tracker.finish()

    client = client_for(tmp_path)
    run = client.get_run(tracker.run_id)
    params = run.data.params
    assert len(params["long"]) <= 6000 and params["long"].startswith("vvvv")
    assert params["odd key_with_chars"] == "1"
    assert [k for k in params if k.startswith("kkk")] and all(len(k) <= 250 for k in params)
    assert len(run.data.tags["note"]) <= 8000
    nan_history = client.get_metric_history(tracker.run_id, "nan")
    assert len(nan_history) == 1 and math.isnan(nan_history[0].value)
    assert history(client, tracker.run_id, "inf")[0][1] > 1e300  # MLflow clamps infinity
    assert history(client, tracker.run_id, "ninf")[0][1] < -1e300
    assert client.get_metric_history(tracker.run_id, "text") == []
    assert history(client, tracker.run_id, "many/1499") == [(1, 1499.0)]


def test_trackers_are_isolated_and_leave_global_mlflow_state_alone(tmp_path: Path) -> None:
    import mlflow

    uri_before = mlflow.get_tracking_uri()
    a = MlflowTracker(tmp_path / "a", "exp", "a")
    b = MlflowTracker(tmp_path / "b", "exp", "b")
    a.log_metrics({"m": 1.0}, 0)
    b.log_metrics({"m": 2.0}, 0)
    a.finish()
    b.finish()

    assert mlflow.get_tracking_uri() == uri_before
    assert mlflow.active_run() is None
    assert history(client_for(tmp_path / "a"), a.run_id, "m") == [(0, 1.0)]
    assert history(client_for(tmp_path / "b"), b.run_id, "m") == [(0, 2.0)]
    with pytest.raises(Exception):
        client_for(tmp_path / "a").get_run(b.run_id)


def test_finish_semantics(tmp_path: Path) -> None:
    tracker = MlflowTracker(tmp_path, "exp", "x")
    with pytest.raises(ValueError, match="FINISHED"):
        tracker.finish("DONE")
    tracker.finish()
    tracker.finish("FAILED")  # second call is a no-op
    assert client_for(tmp_path).get_run(tracker.run_id).info.status == "FINISHED"
    with pytest.raises(RuntimeError, match="already finished"):
        tracker.log_metrics({"loss": 1.0}, 0)

    with pytest.raises(KeyError):
        with MlflowTracker(tmp_path, "exp", "ctx") as ctx:
            raise KeyError("boom")
    assert client_for(tmp_path).get_run(ctx.run_id).info.status == "FAILED"


def test_null_tracker() -> None:
    tracker = make_tracker("none", "/nonexistent/never/created", "exp", None)
    assert isinstance(tracker, NullTracker) and isinstance(tracker, Tracker)
    assert tracker.run_id is None
    tracker.log_params({"a": {"b": 1}})
    tracker.log_metrics({"loss": float("nan")}, step=0)
    tracker.log_artifact("/no/such/file")
    tracker.set_tag("k", "v")
    tracker.finish("KILLED")
    with pytest.raises(ValueError):
        tracker.finish("done")
    assert not Path("/nonexistent/never/created").exists()


def test_make_tracker_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tracker kind 'wandb'"):
        make_tracker("wandb", tmp_path, "exp", None)
    assert isinstance(make_tracker(" None ", tmp_path, "exp", None), NullTracker)


def test_missing_mlflow_gives_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match="pip install mlflow") as info:
        make_tracker("mlflow", tmp_path, "exp", None)
    assert "run.tracking=none" in str(info.value)
    assert isinstance(make_tracker("none", tmp_path, "exp", None), NullTracker)


def test_module_imports_without_mlflow() -> None:
    code = (
        "import sys\n"
        "sys.modules['mlflow'] = None\n"
        "import training.tracking as t\n"
        "assert 'mlflow' not in {k for k, v in sys.modules.items() if v is not None}\n"
        "t.make_tracker('none', '.', 'exp', None).finish()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


def test_flatten_params() -> None:
    from dataclasses import dataclass

    @dataclass
    class Optim:
        lr: float = 1e-3
        betas: tuple[float, float] = (0.9, 0.99)

    flat = flatten_params({"optim": Optim(), "a": {"b": {"c": 1}}, "d": None})
    assert flat == {"optim.lr": 1e-3, "optim.betas": (0.9, 0.99), "a.b.c": 1, "d": None}
