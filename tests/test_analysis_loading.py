"""Which saved model `--checkpoint RUN_DIR` picks: model/, or a newer checkpoint when model/ is stale."""

from __future__ import annotations

import json
from pathlib import Path

from analysis.loading import resolve_model_dir
from training.config import debug
from worldmodel import WorldModel
from worldmodel.serialization import read_training_step, save_model


def _checkpoint(run: Path, model: WorldModel, step: int) -> Path:
    """A complete checkpoint folder as far as the resolver looks: model/ plus a manifest of its file sizes."""
    folder = run / "checkpoints" / f"step-{step:09d}"
    save_model(model, folder / "model", step=step)
    files = {f"model/{p.name}": p.stat().st_size for p in (folder / "model").iterdir()}
    (folder / "manifest.json").write_text(json.dumps({"files": files}))
    return folder


def test_run_directory_prefers_the_newer_of_model_and_checkpoint(tmp_path, capsys):
    model = WorldModel(debug().model)
    run = tmp_path / "run"
    save_model(model, run / "model", step=10)
    assert read_training_step(run / "model") == 10
    _checkpoint(run, model, 5)
    assert resolve_model_dir(run) == run / "model"
    # Resumed past the finished model and stopped at step 20: the checkpoint is the newest weights.
    newest = _checkpoint(run, model, 20)
    assert resolve_model_dir(run) == newest / "model"
    assert "step-000000020 (step 20), newer than model/ (step 10)" in capsys.readouterr().err
    # A model saved without a step (before steps were recorded) keeps winning, as it always did.
    save_model(model, run / "model")
    assert read_training_step(run / "model") is None
    assert resolve_model_dir(run) == run / "model"
    # A checkpoint folder or a model folder given directly is used as is.
    assert resolve_model_dir(newest) == newest / "model"
    assert resolve_model_dir(run / "model") == run / "model"
    assert WorldModel.load(resolve_model_dir(run)).config == model.config
