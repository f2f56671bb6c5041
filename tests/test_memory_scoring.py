"""Scoring with memory: each frame judged from the whole past up to the trained window, scenes that hide a ball longer
(and show it first), and the copy-last-frame pixel control."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis import inference
from analysis.surprise import pixel_change
from envs.voe import MAX_HIDDEN_FRAMES, voe_config_for
from training.cli import main
from training.config import debug
from training.config_io import apply_overrides, save_yaml
from worldmodel import WorldModel


def mixture_model():
    torch.manual_seed(0)
    config = debug().model
    config.latent.capacity, config.latent.classes, config.latent.dim = "mixture", 4, 1
    return WorldModel(config).eval()


def test_pixel_change_known_values():
    clips = np.zeros((1, 4, 2, 2, 3), dtype=np.uint8)
    clips[0, 2] = 255  # frame 2 all white: a change of 1 into it and out of it
    out = pixel_change(clips, context=1)
    assert np.isnan(out[0, 0]) and out[0, 1] == 0.0
    assert out[0, 2] == pytest.approx(1.0) and out[0, 3] == pytest.approx(1.0)
    assert np.isnan(pixel_change(clips, context=3)[0, :3]).all()


def test_sliding_energy_with_memory_judges_each_frame_from_all_it_saw():
    model = mixture_model()
    torch.manual_seed(1)
    online, target = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    with torch.no_grad():
        scored = inference.sliding_energy(model, online, target, 3, memory=10)
        assert torch.isnan(scored[:, :3]).all()
        for t in (3, 7, 11):
            first = max(0, t - 10)
            alone = model.energy_of_representations(online[:, first : t + 1], target[:, first : t + 1], t - first)
            assert torch.allclose(scored[:, t], alone[:, -1], atol=1e-4)
        # memory = context is the old fixed window: frame t from exactly the 3 before it
        fixed = inference.sliding_energy(model, online, target, 3)
        alone = model.energy_of_representations(online[:, 5:9], target[:, 5:9], 3)
        assert torch.allclose(fixed[:, 8], alone[:, -1], atol=1e-4)


def test_voe_scenes_for_a_long_memory_hide_longer_and_show_the_ball_first():
    short = voe_config_for(4)
    assert short.max_hidden_frames == 2 and short.min_violation_frame == 6
    long = voe_config_for(4, memory=19)
    assert long.max_hidden_frames == MAX_HIDDEN_FRAMES and long.min_violation_frame == MAX_HIDDEN_FRAMES + 4
    assert voe_config_for(4, memory=8).max_hidden_frames == 6


def test_trained_window_reads_the_dynamics_stage(tmp_path):
    config = apply_overrides(debug(), ["dynamics.steps=10", "dynamics.horizon=9"])
    save_yaml(config, tmp_path / "config.yaml")
    model = WorldModel(config.model)
    model.save(tmp_path / "model")
    assert inference.trained_window(model, tmp_path / "model") == config.model.context_frames + 9 - 1
    save_yaml(debug(), tmp_path / "config.yaml")
    assert inference.trained_window(model, tmp_path / "model") == debug().model.context_frames + 3 - 1


def test_surprise_memory_draws_scenes_for_it_and_reports_the_pixel_control(tmp_path):
    config = apply_overrides(debug(), [f"run.out_dir={tmp_path}", "model.latent.capacity=mixture",
                                       "model.latent.classes=4", "model.latent.dim=1"])
    save_yaml(config, tmp_path / "config.yaml")
    torch.manual_seed(0)
    WorldModel(config.model).save(tmp_path / "model")
    out = tmp_path / "surprise"
    assert main(["surprise", "--checkpoint", str(tmp_path), "--out", str(out), "--pairs", "4", "--controls", "0",
                 "--properties", "permanence", "--frames-after", "3", "--memory", "9", "--no-mlflow",
                 "--threads", "1"]) == 0
    result = json.loads((out / "surprise.json").read_text())
    assert result["context"] == 3 and result["memory"] == 9
    assert result["scenes"]["max_hidden_frames"] == 7 and result["scenes"]["min_violation_frame"] == 11
    entry = result["properties"]["permanence"]
    assert 0.0 <= entry["pixels"]["pairwise_accuracy"] <= 1.0
    assert "pixels_auroc" in entry["by_kind"]["occluder"]


def test_demo_videos_show_a_fork_and_a_ball_that_went_behind_the_occluder(tmp_path):
    from analysis.demo import demo_videos, occluder_clip
    from envs.physics import BallsConfig
    from training.config import scene_balls

    balls = scene_balls(32)
    clip, hidden = occluder_clip(balls.open_scene(), memory=12, seed=0)
    assert clip.shape[1:] == (32, 32, 3) and 4 <= hidden < clip.shape[0] - 1
    # The ball is in view before it hides: the frames before differ from the first hidden one outside the bar.
    assert np.abs(clip[0].astype(int) - clip[hidden].astype(int)).sum() > 0
    model = mixture_model()
    paths = demo_videos(model, BallsConfig(image_size=32, bounce_kick_prob=1.0), tmp_path, window=10, samples=2)
    assert [p.name for p in paths] == ["fork.mp4", "occluder.mp4"]
    assert all(p.is_file() and p.with_suffix(".gif").is_file() for p in paths)
