"""The analysis side of MLflow: read a run's training curves from its mlflow.db, and log analysis results back into
it as a separate run tagged `analysis`, nested under the training run (MLflow's `mlflow.parentRunId` tag).

Runs keep their store at `<run>/mlflow.db` (see training/tracking.py); a model directory that has none (a bare
saved model) simply gets no MLflow logging.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .video import MissingDependencyError

ANALYSIS_TAG = "analysis"
"""Tag key marking analysis runs (value: which analysis); training-run lookups skip runs that carry it."""


def run_directory(model_dir: Path) -> Path | None:
    """The training run directory a model belongs to (the folder holding mlflow.db or metrics.jsonl), if any.

    A run's final model lives in <run>/model, a checkpoint's in <run>/checkpoints/step-N/model.
    """
    model_dir = Path(model_dir)
    for candidate in (model_dir.parent, model_dir.parent.parent.parent, model_dir):
        if (candidate / "mlflow.db").is_file() or (candidate / "metrics.jsonl").is_file():
            return candidate
    return None


def _client(run_dir: Path) -> Any:
    # As in training/tracking.py: no usage telemetry from an offline analysis unless the user opts in.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise MissingDependencyError("reading or logging MLflow runs needs mlflow: pip install mlflow "
                                     "(or pass --no-mlflow)") from exc
    return MlflowClient(tracking_uri=f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve().as_posix()}")


def training_run(run_dir: Path) -> Any | None:
    """The newest run in the store that is not an analysis run, or None."""
    client = _client(run_dir)
    runs = []
    for experiment in client.search_experiments():
        runs.extend(client.search_runs([experiment.experiment_id], max_results=1000))
    runs = [r for r in runs if ANALYSIS_TAG not in r.data.tags]
    return max(runs, key=lambda r: r.info.start_time or 0) if runs else None


def training_history(run_dir: Path, *, use_mlflow: bool = True) -> dict[str, list[tuple[int, float]]]:
    """Every metric the training run logged, as (step, value) lists: from mlflow.db, else from the run's
    metrics.jsonl (written also with run.tracking=none); {} when there is neither."""
    run_dir = Path(run_dir)
    run = training_run(run_dir) if use_mlflow and (run_dir / "mlflow.db").is_file() else None
    if run is None:
        return _jsonl_history(run_dir / "metrics.jsonl")
    client = _client(run_dir)
    return {
        key: sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def flatten_numbers(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalar leaves of nested dicts as {"a/b/c": value}; lists, strings and non-finite numbers are left out."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def log_analysis(run_dir: Path | None, name: str, results: Mapping[str, Any], artifacts: list[Path],
                 params: Mapping[str, Any] | None = None) -> str | None:
    """Log `results` (flattened) and `artifacts` into the run's store as a new run tagged analysis=<name>, nested
    under the training run. Returns the new run's id, or None when the run has no mlflow.db."""
    if run_dir is None or not (Path(run_dir) / "mlflow.db").is_file():
        return None
    from training.tracking import MlflowTracker

    parent = training_run(run_dir)
    experiment = "worldmodel"
    if parent is not None:
        experiment = _client(run_dir).get_experiment(parent.info.experiment_id).name
    tracker = MlflowTracker(Path(run_dir), experiment, f"analysis-{name}")
    try:
        tracker.set_tag(ANALYSIS_TAG, name)
        if parent is not None:
            tracker.set_tag("mlflow.parentRunId", parent.info.run_id)
        if params:
            tracker.log_params(params)
        tracker.log_metrics(flatten_numbers(results), step=0)
        for path in artifacts:
            if Path(path).exists():
                tracker.log_artifact(path, artifact_path=name)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return tracker.run_id


def _jsonl_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    history: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return history
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if not isinstance(record, dict) or "step" not in record:
            continue
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                history.setdefault(key, []).append((int(record["step"]), float(value)))
    return history
