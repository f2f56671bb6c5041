"""Experiment tracking for training runs: MLflow by default, or nothing at all.

Every run keeps its own tracking store next to its checkpoints: an embedded SQLite
database ``<output_dir>/mlflow.db`` plus artifacts under ``<output_dir>/mlartifacts``, so
a run directory is self-contained, needs no tracking server, and can be browsed with
``mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db``.

Training code talks to the small :class:`Tracker` protocol only; ``make_tracker`` picks
the implementation from the config (``run.tracking=mlflow|none``). MLflow is imported
only when an :class:`MlflowTracker` is created, so ``run.tracking=none`` works without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import posixpath
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = [
    "MissingDependencyError",
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "TRACKER_KINDS",
    "flatten_params",
    "make_tracker",
]

log = logging.getLogger(__name__)

TRACKER_KINDS = ("mlflow", "none")
_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's server-side limits (mlflow.utils.validation). Exceeding them makes MLflow either
# reject the whole batch or truncate with a warning, so values are shortened here instead.
_MAX_KEY_LEN = 250
_MAX_PARAM_VALUE_LEN = 6000
_MAX_TAG_VALUE_LEN = 8000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

# Characters MLflow accepts in keys on every OS (colon is rejected on Windows).
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")
_TRUNCATION_MARK = "...[truncated]"

# MLflow's own INFO chatter on every store open ("Creating initial MLflow database
# tables...", alembic migration steps) says nothing useful for a training log.
_NOISY_LOGGERS = ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils")

_T = TypeVar("_T")


class MissingDependencyError(ImportError):
    """An optional package needed by the requested tracker is not installed."""


@runtime_checkable
class Tracker(Protocol):
    """What training code may ask of an experiment tracker."""

    @property
    def run_id(self) -> str | None:
        """Identifier of the tracked run (pass it back as ``resume_run_id``), or None."""
        ...

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record hyper-parameters; nested mappings become dotted keys (``optim.lr``)."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at a training step."""
        ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or directory into the run's artifacts (under ``artifact_path``)."""
        ...

    def set_tag(self, key: str, value: Any) -> None:
        """Attach a free-form string tag to the run."""
        ...

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run as ``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``."""
        ...


# --------------------------------------------------------------------------- helpers


def _check_status(status: str) -> str:
    if status not in _STATUSES:
        raise ValueError(f"run status must be one of {', '.join(_STATUSES)}, got {status!r}")
    return status


def _sanitize_key(key: Any) -> str:
    """Turn any key into one MLflow accepts, keeping it readable and distinct."""
    raw = str(key)
    clean = _BAD_KEY_CHARS.sub("_", raw) or "_"
    # MLflow rejects keys that a path normalisation would change ("a//b", "/a", "../a").
    if posixpath.normpath(clean) != clean or clean.startswith(("..", "/")) or clean == ".":
        clean = "_" + clean.replace("/", "_")
    if len(clean) > _MAX_KEY_LEN:
        # A hash of the full key keeps long keys sharing a prefix from colliding.
        digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:8]
        clean = clean[: _MAX_KEY_LEN - 9] + "-" + digest
    return clean


def _truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


def _stringify(value: Any) -> str:
    if isinstance(value, Path):
        return value.as_posix()
    return str(value)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings (and dataclass instances) into ``{"a.b.c": value}``.

    Lists and other values are kept as leaves (MLflow stores them as strings); an empty
    nested mapping is kept as ``"{}"`` so that its presence is still visible.
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            if value:
                flat.update(flatten_params(value, prefix=f"{name}."))
            else:
                flat[name] = "{}"
        else:
            flat[name] = value
    return flat


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _quiet_mlflow_logging() -> None:
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        # Respect a level someone configured on purpose; only raise the default.
        if logger.level in (logging.NOTSET, logging.DEBUG, logging.INFO):
            logger.setLevel(logging.WARNING)


def _import_mlflow() -> Any:
    # MLflow 3 sends usage telemetry over HTTPS from a background thread; a training job
    # should not phone home (or stall on offline cluster nodes) unless the user opts in
    # by setting MLFLOW_DISABLE_TELEMETRY=false. Must happen before mlflow is imported.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow  # noqa: F401  (the client lives in a submodule)
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise MissingDependencyError(
            "experiment tracking with MLflow needs the mlflow package: pip install mlflow "
            "(or disable tracking with run.tracking=none)"
        ) from exc
    return MlflowClient


# --------------------------------------------------------------------------- trackers


class NullTracker:
    """Tracker that records nothing; used for ``run.tracking=none`` and in tests."""

    @property
    def run_id(self) -> str | None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tag(self, key: str, value: Any) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        # Validated anyway so that a typo in the caller shows up without MLflow too.
        _check_status(status)

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(_exit_status(exc_type))


def _exit_status(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        return "FINISHED"
    if issubclass(exc_type, KeyboardInterrupt):
        return "KILLED"
    return "FAILED"


class MlflowTracker:
    """Tracker writing to an MLflow store embedded in the run's output directory.

    Uses its own ``MlflowClient`` bound to ``sqlite:///<output_dir>/mlflow.db`` and never
    touches MLflow's global state (``mlflow.set_tracking_uri``, the active run), so
    several trackers can coexist in one process.

    Args:
        output_dir: run directory; created if missing. Holds ``mlflow.db`` and
            ``mlartifacts/``.
        experiment: MLflow experiment name; created on first use (artifacts of a newly
            created experiment go to ``<output_dir>/mlartifacts``).
        run_name: display name of a new run (MLflow generates one when None).
        resume_run_id: continue this run (status set back to RUNNING) if it exists in
            the store; otherwise a warning is logged and a new run is started.

    Metric logging is best effort: non-finite values are logged as they are (MLflow
    stores NaN and clamps +-inf), values that cannot be converted to float are skipped,
    and a failing write is logged as a warning instead of interrupting training.
    Params, tags and artifacts raise on failure, since those are logged at the start
    and end of a run where failing loudly is cheap.
    """

    def __init__(
        self,
        output_dir: Path,
        experiment: str,
        run_name: str | None,
        resume_run_id: str | None = None,
    ) -> None:
        MlflowClient = _import_mlflow()
        _quiet_mlflow_logging()

        self._output_dir = Path(output_dir).expanduser().resolve()
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self._tracking_uri = f"sqlite:///{(self._output_dir / 'mlflow.db').as_posix()}"
        self._client = MlflowClient(tracking_uri=self._tracking_uri)
        self._finished = False
        self._metric_failures = 0

        run = self._find_run(resume_run_id) if resume_run_id else None
        if run is not None:
            if run.info.lifecycle_stage == "deleted":
                # Asking to resume a run is explicit enough to bring it back from the bin.
                self._client.restore_run(run.info.run_id)
            self._client.update_run(run.info.run_id, status="RUNNING")
            self._resumed = True
        else:
            experiment_id = self._get_or_create_experiment(experiment)
            run = self._client.create_run(experiment_id, run_name=run_name)
            self._resumed = False
        self._run_id: str = run.info.run_id
        # Params are immutable in MLflow; remembering what is already stored lets a
        # resumed run re-log its config without tripping over unchanged values.
        self._params: dict[str, str] = dict(run.data.params)

    # -- setup ---------------------------------------------------------------

    def _find_run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_run(run_id)
        except MlflowException:
            log.warning(
                "run %s to resume was not found in %s; starting a new run",
                run_id,
                self._tracking_uri,
            )
            return None

    def _get_or_create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            artifact_uri = (self._output_dir / "mlartifacts").as_uri()
            try:
                return str(self._client.create_experiment(name, artifact_location=artifact_uri))
            except MlflowException:
                # Another process sharing the store may have created it in between.
                experiment = self._client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            self._client.restore_experiment(experiment.experiment_id)
        return str(experiment.experiment_id)

    # -- Tracker -------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def tracking_uri(self) -> str:
        """``sqlite:///...`` URI of the store, e.g. for ``mlflow ui --backend-store-uri``."""
        return self._tracking_uri

    @property
    def resumed(self) -> bool:
        """True when this tracker continues an existing run."""
        return self._resumed

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"MLflow run {self._run_id} was already finished")

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._check_open()
        new: dict[str, str] = {}
        for key, value in flatten_params(params).items():
            name = _sanitize_key(key)
            text = _truncate(_stringify(value), _MAX_PARAM_VALUE_LEN)
            stored = self._params.get(name)
            if stored is None:
                new[name] = text
            elif stored != text:
                # MLflow refuses to overwrite a param; keep the original and record the
                # new value as a tag so a changed config on resume stays visible.
                log.warning(
                    "param %r already logged as %r; keeping it and tagging the new value %r",
                    name,
                    stored,
                    text,
                )
                self.set_tag(f"param_override.{name}", text)
        entries = [Param(k, v) for k, v in new.items()]
        for chunk in _chunks(entries, _MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, params=chunk)
        self._params.update(new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        self._check_open()
        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                log.warning("metric %r has non-numeric value %r; skipped", key, value)
                continue
            entries.append(Metric(_sanitize_key(key), number, timestamp, int(step)))
        try:
            for chunk in _chunks(entries, _MAX_METRICS_PER_BATCH):
                self._client.log_batch(self._run_id, metrics=chunk)
        except Exception as exc:  # tracking must never kill a long training run
            self._metric_failures += 1
            if self._metric_failures <= 5 or math.log2(self._metric_failures).is_integer():
                log.warning(
                    "failed to log metrics at step %s (%d failures so far): %s",
                    step,
                    self._metric_failures,
                    exc,
                )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._check_open()
        local = Path(path)
        if local.is_dir():
            self._client.log_artifacts(self._run_id, str(local), artifact_path)
        elif local.is_file():
            self._client.log_artifact(self._run_id, str(local), artifact_path)
        else:
            raise FileNotFoundError(f"artifact to log does not exist: {local}")

    def set_tag(self, key: str, value: Any) -> None:
        self._check_open()
        text = _truncate(_stringify(value), _MAX_TAG_VALUE_LEN)
        self._client.set_tag(self._run_id, _sanitize_key(key), text)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run; later calls are no-ops so cleanup paths may call it again."""
        _check_status(status)
        if self._finished:
            return
        self._client.set_terminated(self._run_id, status=status)
        self._finished = True

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(_exit_status(exc_type))


# --------------------------------------------------------------------------- factory


def make_tracker(
    kind: str,
    output_dir: str | Path,
    experiment: str,
    run_name: str | None,
    resume_run_id: str | None = None,
) -> Tracker:
    """Build the tracker named by ``kind`` (``"mlflow"`` or ``"none"``).

    Raises:
        ValueError: unknown ``kind``.
        MissingDependencyError: ``kind="mlflow"`` but mlflow is not installed (the message
            says to ``pip install mlflow`` or use ``run.tracking=none``).
    """
    normalized = str(kind).strip().lower()
    if normalized == "none":
        return NullTracker()
    if normalized == "mlflow":
        return MlflowTracker(Path(output_dir), experiment, run_name, resume_run_id)
    raise ValueError(
        f"unknown tracker kind {kind!r}; expected one of {', '.join(TRACKER_KINDS)}"
    )
