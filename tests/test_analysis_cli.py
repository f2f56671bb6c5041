"""The analysis commands end to end at tiny sizes: futures, probe, surprise and report write their JSON, figures and
videos, log a nested analysis run into the run's mlflow.db, and bad input gets a one-line error."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import main
from training.config import debug
from training.config_io import apply_overrides, load_yaml, save_yaml
from worldmodel import WorldModel


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: one thread avoids oversubscribing the two cores the suite runs on.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as training leaves it: config.yaml, model/, and an mlflow.db with a few logged steps."""
    from training.tracking import MlflowTracker

    root = tmp_path_factory.mktemp("run")
    config = apply_overrides(debug(), [f"run.out_dir={root}"])
    save_yaml(config, root / "config.yaml")
    torch.manual_seed(0)
    WorldModel(config.model).save(root / "model")
    tracker = MlflowTracker(root, "worldmodel", "train")
    for step in (10, 20, 30):
        tracker.log_metrics({"loss/total": 1.0 / step, "error/prediction": 0.5 / step, "error/copy_last": 0.1,
                             "collapse/effective_rank": 10.0 + step, "collapse/std_min": 0.5}, step=step)
    tracker.finish()
    return root


COMMON = ["--threads", "1"]


def test_probe_command(run_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    code = main(["probe", "--checkpoint", str(run_dir), "--out", str(out), "--clips", "16", "--ood-clips", "4",
                 "--hidden-clips", "16", "--contact-clips", "12", "--length", "9", "--mlp-epochs", "2", "--no-mlflow",
                 *COMMON])
    assert code == 0
    result = json.loads((out / "probe.json").read_text())
    names = {"position", "velocity", "velocity_state", "speed", "radius", "direction", "color", "count",
             "contact_within_k"}
    assert names <= set(result["targets"])
    position = result["targets"]["position"]
    assert set(position["results"]) == {"model", "random_init", "pixels", "oracle_positions"}
    assert set(position["results"]["model"]) == {"linear", "mlp"}
    assert set(position["results"]["model"]["linear"]) == {"test", "ood"}
    assert result["targets"]["position"]["chance"] == 0.0
    assert 1 / 8 <= result["targets"]["direction"]["chance"] <= 1.0  # 1 / classes seen, averaged over colours
    assert "model/observed+rollout" in result["contact_readout"]
    assert len(result["predicted"]["position"]["r2_by_horizon"]) == len(result["predicted"]["horizons"])
    assert (out / "probes-linear.png").stat().st_size > 1000
    assert "position R2" in capsys.readouterr().out


def test_surprise_command_logs_a_nested_analysis_run(run_dir, tmp_path):
    out = tmp_path / "surprise"
    code = main(["surprise", "--checkpoint", str(run_dir), "--out", str(out), "--pairs", "4", "--controls", "2",
                 "--properties", "permanence,control", "--frames-after", "4", *COMMON])
    assert code == 0
    result = json.loads((out / "surprise.json").read_text())
    assert set(result["properties"]) == {"permanence", "control"}
    energy = result["properties"]["permanence"]["energy"]
    for key in ("pairwise_accuracy", "auroc", "peak_aligned", "control_accuracy_mean", "effect_size_h"):
        assert key in energy and 0.0 <= energy["pairwise_accuracy"] <= 1.0
    assert "prior" in result["properties"]["permanence"]
    # The suite's scene settings as drawn: the debug simulator's balls keep the default occluder; each frame is
    # judged from up to the trained window (3 + 3 - 1 = 5 frames), so a ball may hide up to 5 - 2 frames.
    assert result["context"] == 3 and result["memory"] == 5
    assert result["scenes"]["occluder_width"] == 0.3 and result["scenes"]["max_hidden_frames"] == 3
    assert (out / "surprise-energy.png").is_file() and (out / "voe.png").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    analysis = [r for r in runs if r.data.tags.get("analysis") == "surprise"]
    training = [r for r in runs if "analysis" not in r.data.tags]
    assert len(analysis) == 1 and len(training) == 1
    assert analysis[0].data.tags["mlflow.parentRunId"] == training[0].info.run_id
    assert "properties/permanence/energy/pairwise_accuracy" in analysis[0].data.metrics


def test_futures_command(run_dir, tmp_path):
    out = tmp_path / "futures"
    code = main(["futures", "--checkpoint", str(run_dir), "--out", str(out), "--scenes", "6", "--samples", "5",
                 "--horizon", "4", "--probe-clips", "8", "--no-mlflow", *COMMON])
    assert code == 0
    result = json.loads((out / "futures.json").read_text())
    family = result["families"]["2way"]
    assert family["ns"] == [1, 5] and len(family["best_of_n"]["5"]) == 4
    # More samples can only lower the best-of-N error.
    assert all(b5 <= b1 + 1e-12 for b1, b5 in zip(family["best_of_n"]["1"], family["best_of_n"]["5"]))
    assert set(result["z_leak"]["ordinary_clips"]) >= {"true/reduction", "shuffled/reduction", "leak_ratio"}
    assert result["capacity"]["capacity"] == "mixture" and result["capacity"]["capacity_used"] >= 0
    events = result["capacity_by_event"]
    assert sum(events[e]["share"] for e in ("fork", "kick", "quiet")) == pytest.approx(1.0)
    assert events["quiet"]["steps"] > 0 and events["quiet"]["capacity_mean"] >= 0
    assert (out / "futures.png").is_file() and (out / "capacity.png").is_file()
    # The rough-wall family is measured too; the debug simulator has smooth walls, so a kick family is the headline.
    assert result["families"]["bounce"]["ns"] == [1, 5]
    assert result["families"]["bounce"]["simulator_ceiling"]["mode_coverage"]["5"] < 0.5
    assert result["targets"]["headline_family"] == "2way"
    assert result["config"]["forks"]["bounce"]["event"] == "bounce"  # the fork settings as drawn
    assert result["config"]["forks"]["2way"]["min_separation"] == pytest.approx(0.06)  # 0.15 at h=10, scaled to h=4
    # A kick shows in the frame it happens in, a rough wall's scatter one frame later (it turns the velocity after the
    # bounce's move); the free search over z can only match or beat the posterior's code.
    for name, frame in (("2way", "0"), ("bounce", "1")):
        reveal = result["families"][name]["reveal_step"]
        assert reveal["reveal_frame"] == {frame: 6}
        assert reveal["best_z_error"] <= reveal["posterior_error"] and reveal["posterior_separation"] >= 0


@pytest.mark.slow
def test_report_command_writes_one_folder(run_dir, tmp_path):
    out = tmp_path / "report"
    # What training leaves of the run's own validation clip (stand-in bytes: the report only copies it in).
    (run_dir / "samples").mkdir(exist_ok=True)
    for suffix in (".mp4", ".gif"):
        (run_dir / "samples" / f"futures{suffix}").write_bytes(suffix.encode() * 100)
    code = main(["report", "--checkpoint", str(run_dir / "model"), "--out", str(out), "--scenes", "4",
                 "--samples", "5", "--horizon", "4", "--probe-clips", "8", "--clips", "12", "--ood-clips", "4",
                 "--hidden-clips", "12", "--contact-clips", "8", "--length", "8", "--mlp-epochs", "2",
                 "--probe-models", "linear", "--pairs", "2", "--controls", "1", "--properties", "permanence,solidity",
                 *COMMON])
    assert code == 0
    for name in ("index.html", "index.md", "futures.json", "probe.json", "surprise.json", "futures.png",
                 "probes-linear.png", "voe.png", "surprise-energy.png", "training.png", "collapse.png",
                 "videos/futures-clip.mp4", "videos/futures-fork.gif", "videos/voe-permanence.mp4"):
        assert (out / name).is_file() and (out / name).stat().st_size > 100, name
    page = (out / "index.html").read_text()
    assert "VoE permanence: pairwise accuracy" in page and "<video" in page and "training.png" in page
    assert (out / "videos" / "futures-own-data.gif").read_bytes() == b".gif" * 100
    assert "videos/futures-own-data.mp4" in page and "note:" not in page  # a simulator run needs no transfer note


def test_report_of_an_action_conditioned_model_shows_what_applies(tmp_path, capsys):
    # A gym run with actions: the suites roll out on the action-free simulator, so the report leaves them out and
    # says so, and keeps the collapse telemetry and the futures training sampled of the run's own clip.
    root = tmp_path / "gym"
    config = apply_overrides(debug(), [f"run.out_dir={root}", "data.source=gym", "data.env_id=CartPole-v1",
                                       f"data.cache_dir={tmp_path / 'cache'}", "model.action_dim=2"])
    save_yaml(config, root / "config.yaml")
    torch.manual_seed(0)
    WorldModel(config.model).save(root / "model")
    (root / "samples").mkdir()
    (root / "samples" / "futures.mp4").write_bytes(b"mp4" * 100)
    (root / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss/total": 1.0 / s, "error/prediction":
                                                            0.5 / s}) + "\n" for s in (10, 20, 30)))
    out = tmp_path / "report"
    assert main(["report", "--checkpoint", str(root), "--out", str(out), "--no-mlflow", "--state-episodes", "12",
                 "--mlp-epochs", "2", *COMMON]) == 0
    assert not (out / "futures.json").exists() and not (out / "surprise.json").exists()
    assert (out / "collapse.png").stat().st_size > 100 and (out / "videos" / "futures-own-data.mp4").is_file()
    page = (out / "index.html").read_text()
    assert "action-conditioned (model.action_dim=2)" in page and "left out" in page and "training.png" in page
    # The probes need no rollout: they read the env's own state (held-out episodes) out of the encoder.
    assert json.loads((out / "probe.json").read_text())["suite"] == "gym_state"
    assert "CartPole-v1 cart_position R2, linear probe, held-out episodes" in page and "probes-linear.png" in page
    # The simulator suites themselves refuse it, pointing at the report.
    assert main(["probe", "--checkpoint", str(root), "--suite", "simulator", "--no-mlflow", *COMMON]) == 2
    assert "worldmodel report" in capsys.readouterr().err


def test_surprise_context_sets_the_window_and_the_scenes_drawn_for_it(run_dir, tmp_path, capsys):
    out = tmp_path / "surprise"
    assert main(["surprise", "--checkpoint", str(run_dir), "--out", str(out), "--pairs", "4", "--controls", "0",
                 "--properties", "permanence", "--frames-after", "3", "--context", "5", "--no-mlflow", *COMMON]) == 0
    result = json.loads((out / "surprise.json").read_text())
    # 5 past frames (the debug model's own context is 3): violations from frame 7, hidden at most 3 frames.
    assert result["context"] == 5 and result["clip_length"] == 5 + 2 + 3 + 1
    assert result["scenes"]["min_violation_frame"] == 7 and result["scenes"]["max_hidden_frames"] == 3
    too_long = debug().model.predictor.max_len
    assert main(["surprise", "--checkpoint", str(run_dir), "--pairs", "4", "--controls", "0", "--context",
                 str(too_long), "--no-mlflow", *COMMON]) == 2
    assert "model.predictor.max_len" in capsys.readouterr().err


def test_probe_of_a_gym_run_reads_its_own_recorded_state(tmp_path, capsys):
    # A gym run (action-conditioned, as data.source=gym trains by default): `probe` records held-out episodes of its
    # env and reads the env's state out of the encoder, beside the random-init and pixel controls.
    pytest.importorskip("gymnasium")
    pytest.importorskip("pygame")
    root = tmp_path / "gym"
    config = apply_overrides(debug(), [f"run.out_dir={root}", "data.source=gym", "data.env_id=CartPole-v1",
                                       "data.policy=scripted", f"data.cache_dir={tmp_path / 'cache'}",
                                       "model.action_dim=2"])
    save_yaml(config, root / "config.yaml")
    torch.manual_seed(0)
    WorldModel(config.model).save(root / "model")
    out = tmp_path / "probe"
    code = main(["probe", "--checkpoint", str(root), "--out", str(out), "--state-episodes", "12", "--mlp-epochs", "5",
                 "--no-mlflow", *COMMON])
    assert code == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["suite"] == "gym_state"
    assert list(result["targets"]) == ["cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"]
    recording = result["recording"]
    assert recording["env_id"] == "CartPole-v1" and recording["policy"] == "scripted"
    assert recording["seed"] == config.data.seed + 50_000 and recording["image_size"] == config.model.image_size
    assert sum(result["rows"].values()) == 12 * 64  # scripted episodes outlast 64 pairs: 64 evenly spaced of each
    # The cart is plain to see in the frames: the downsampled pixels read its position on held-out episodes. The
    # ceiling reads it from the true cart position and pole angle of the two frames: exactly.
    cart = result["targets"]["cart_position"]["results"]
    assert cart["pixels"]["linear"]["test"] > 0.8 and cart["oracle_positions"]["linear"]["test"] > 0.999
    scores = [result["targets"][n]["results"]["model"]["linear"]["test"] for n in result["targets"]]
    assert result["mean_over_state"]["model"]["linear"]["test"] == pytest.approx(np.mean(scores))
    assert (out / "probes-linear.png").stat().st_size > 100 and (out / "probes-mlp.png").stat().st_size > 100
    # Read on the model's own rollout (driven by the recorded actions) per horizon, beside "as last seen": the cart
    # moves little in a frame, so its last seen position still reads well one frame on.
    predicted = result["predicted"]
    horizon = min(8, config.model.predictor.max_len - config.model.context_frames)
    assert predicted["horizons"] == list(range(1, horizon + 1)) and predicted["rollouts"] == 3 * 8  # 3 test episodes
    assert set(predicted["by_state"]) == set(result["targets"])
    cart_rollout = predicted["by_state"]["cart_position"]
    assert len(cart_rollout["r2_by_horizon"]) == horizon and np.isfinite(cart_rollout["r2_by_horizon"]).all()
    assert cart_rollout["copy_last_r2_by_horizon"][0] > 0.8
    assert (out / "probes-predicted.png").stat().st_size > 100
    printed = capsys.readouterr().out
    assert "cart_position" in printed and "mean over the state" in printed


def test_state_probe_rows_stay_inside_episodes_evenly_spaced(tmp_path):
    from analysis.state_probes import episode_pairs, probe_run_state, state_names

    frames, episodes = episode_pairs(np.array([0, 3, 10, 11]), 4)
    # Episode 0 has pairs ending at frames 1, 2; episode 1 six (4..9), of which 4 evenly spaced; episode 2 none.
    assert frames.tolist() == [1, 2, 4, 6, 7, 9] and episodes.tolist() == [0, 0, 1, 1, 1, 1]
    assert state_names("Pendulum-v1", 3) == ["cos_angle", "sin_angle", "angular_velocity"]
    assert state_names("MyEnv-v0", 2) == ["state_0", "state_1"]
    assert state_names("CartPole-v1", 5) == [f"state_{j}" for j in range(5)]  # a layout other than documented
    # A run that did not train on gym episodes, or names no env, has no state to probe: a clear error.
    model = WorldModel(debug().model)
    with pytest.raises(ValueError, match="data.source='recorded'"):
        probe_run_state(model, {"data": {"source": "recorded", "path": "videos/"}})
    if importlib.util.find_spec("gymnasium") is not None:
        with pytest.raises(ValueError, match="NoSuchEnv-v0"):
            probe_run_state(model, {"data": {"source": "gym", "env_id": "NoSuchEnv-v0",
                                             "cache_dir": str(tmp_path)}})


def test_bad_input_gets_a_one_line_error(run_dir, tmp_path, capsys):
    assert main(["probe", "--checkpoint", str(tmp_path / "missing"), "--no-mlflow"]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["surprise", "--checkpoint", str(run_dir), "--properties", "levitation"])
    assert "levitation" in capsys.readouterr().err


def test_latent_refit_bench_rebuilds_the_posterior_and_reports_every_kind_of_step(run_dir):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "latent_refit.py"), "--checkpoint", str(run_dir), "--steps", "3",
         "--clips", "12", "--scenes", "4", "--threads", "1", "--horizon", "5", "model.latent.capacity=kl",
             "model.latent.dim=3",
         "model.latent.posterior_input=scaled_innovation", "model.rollout_latent=teacher_forced"],
        capture_output=True, text=True, timeout=600, cwd=root,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # A new z size rebuilds every module that reads or writes z; the causal predictor keeps its trained weights.
    assert {"posterior", "prior", "transition"} <= set(result["rebuilt"]) and "past" not in result["rebuilt"]
    window = debug().model.context_frames + 5  # --horizon 5
    assert result["window"] == window
    assert sum(e["steps"] for e in result["events"].values()) == 256 * (window - 1)
    drift = result["rollout_drift"]
    assert len(drift["deterministic"]) == len(drift["copy_last"]) == 10
    assert all(0 < x < 10 for x in drift["deterministic"]) and drift["copy_last"][-1] > drift["copy_last"][0]
    assert result["bounce"]["reveal_step"]["reveal_frame"] == {"1": 4}
    assert not result["trained_on_deterministic_simulator"] and result["training_kicks_and_scatters"] > 0
    bad = subprocess.run([sys.executable, str(root / "bench" / "latent_refit.py"), "--checkpoint", str(run_dir),
                          "model.encoder.dim=8"], capture_output=True, text=True, timeout=120, cwd=root)
    assert bad.returncode == 2 and "model.encoder.dim=8" in bad.stderr


def test_latent_refit_bench_refits_a_resized_predictor_from_fresh_weights(run_dir, tmp_path):
    import subprocess
    import sys
    from dataclasses import replace

    from analysis import inference
    from analysis.loading import load_model, refit_note

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "latent_refit.py"), "--checkpoint", str(run_dir), "--steps", "2",
         "--clips", "8", "--scenes", "4", "--threads", "1", "--fresh", "--deterministic", "--horizon", "5",
         "--save", str(tmp_path / "refit"), "model.predictor.width=32", "model.predictor.depth=1"],
        capture_output=True, text=True, timeout=600, cwd=root,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # --save writes a model the analyses load, whose run config holds the refit's training window.
    saved, saved_dir = load_model(tmp_path / "refit")
    assert saved.config.predictor.width == 32
    assert inference.trained_window(saved, saved_dir) == debug().model.context_frames + 5 - 1
    assert load_yaml(tmp_path / "refit" / "config.yaml")["model"]["predictor"]["width"] == 32
    record = json.loads((tmp_path / "refit" / "refit.json").read_text())
    assert record["horizon"] == 5 and record["steps"] == 2 and record["fresh"] and record["deterministic"]
    assert "refitted for 2 steps at a 5-frame horizon on 8 simulator clips" in refit_note(saved_dir)
    assert refit_note(Path(run_dir) / "model") is None
    # --fresh rebuilds everything the refit trains, so a resized predictor has a control that starts like it.
    assert result["rebuilt"] == ["latent", "past", "transition"]
    config = debug().model
    resized = WorldModel(replace(config, predictor=replace(config.predictor, width=32, depth=1)))
    expected = sum(p.numel() for name, p in resized.named_parameters() if name.startswith(("past.", "latent.",
                                                                                           "transition.")))
    assert result["trainable_parameters"] == expected
    assert math.isfinite(result["bounce"]["deterministic"]) and result["bounce"]["deterministic"] > 0
    assert result["trained_on_deterministic_simulator"] and result["training_kicks_and_scatters"] == 0


def test_hidden_ball_bench_reports_where_the_prediction_sits_at_the_frames_the_ball_is_due_out(run_dir):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "bench" / "hidden_ball_expectation.py"), "--checkpoint",
                           str(run_dir), "--pairs", "16", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["pairs"] >= 2 and result["context"] == debug().model.context_frames
    frames = result["frames"]
    assert set(frames) == {"t+0", "t+1", "t+2"}
    # At t only a faint rim differs; then the ball shows more and more: the two clips' frames part.
    gaps = [frames[k]["comes_out_vs_nothing"] for k in ("t+0", "t+1", "t+2")]
    assert 0 < gaps[0] < gaps[1] < gaps[2]
    for row in frames.values():
        assert all(math.isfinite(v) for v in row.values()) and 0.0 <= row["nothing_more_surprising"] <= 1.0
    # The clips share their past up to t, so there the prediction from either is the one the share is read from.
    assert frames["t+0"]["prediction_to_nothing"] == pytest.approx(frames["t+0"]["error_nothing_own_past"])
    assert frames["t+0"]["prediction_to_comes_out"] == pytest.approx(frames["t+0"]["error_comes_out_own_past"])
    assert frames["t+0"]["share_towards_ball"] == pytest.approx(frames["t+0"]["share_towards_ball_from_its_own_past"])


def test_emergence_windows_are_those_whose_predicted_frames_show_a_hidden_ball_coming_out():
    import importlib.util
    import numpy as np

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("latent_refit", root / "bench" / "latent_refit.py")
    refit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(refit)
    # One clip of 8 frames, 32 px, an occluder over columns [12, 20) (x in [0.375, 0.625)); a ball of radius 0.05
    # at x = 0.5 is fully behind it in frames 2-3 and comes out in frame 4 (x = 0.6: its rim passes 0.625).
    xs = np.array([0.2, 0.35, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9])
    state = {"positions": np.stack([xs, np.full(8, 0.5)], -1)[None, :, None],  # (1, 8, 1, 2)
             "radii": np.full((1, 8, 1), 0.05), "present": np.ones((1, 8, 1), bool),
             "occluder": np.tile(np.array([12, 20]), (1, 8, 1))}
    # Context 2, window 4: the window starting at s predicts frames s+2 and s+3; frame 4 is predicted by s = 1, 2.
    from envs.physics import BallsConfig

    balls = BallsConfig(image_size=32)
    windows = refit.emergence_windows(state, balls, context=2, window=4)
    assert windows.tolist() == [[0, 1], [0, 2]]
    state["present"][:] = False  # no ball: nothing comes out
    assert len(refit.emergence_windows(state, balls, context=2, window=4)) == 0


def test_command_defaults_are_the_analysis_configs_defaults():
    from analysis.cli import _futures_config, _probe_config, _surprise_config
    from analysis.multifuture import FuturesConfig
    from analysis.probes import ProbeConfig
    from analysis.surprise import SurpriseConfig
    from training.cli import parser

    args = parser().parse_args(["report", "--checkpoint", "somewhere"])
    assert _futures_config(args) == FuturesConfig()
    assert _probe_config(args) == ProbeConfig()
    assert _surprise_config(args) == SurpriseConfig()
    # A smaller --samples drops the N's it cannot draw.
    assert _futures_config(parser().parse_args(["futures", "--checkpoint", "x", "--samples", "8"])).ns == (1, 5)


def test_rollout_motion_bench_reads_motion_and_landing_per_horizon(run_dir):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "bench" / "rollout_motion.py"), "--checkpoint", str(run_dir),
                           "--clips", "8", "--scenes", "4", "--samples", "3", "--probe-clips", "24",
                           "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    horizon = result["horizon"]
    motion = result["motion"]
    for errors in motion["position_error"].values():
        assert len(errors) == horizon and all(math.isfinite(e) and e >= 0 for e in errors)
    # Copy-last stands still while the balls move on: its error grows with the horizon.
    assert motion["position_error"]["copy_last"][-1] > motion["position_error"]["copy_last"][0]
    assert motion["step_length"]["true_positions"] > 0
    straight = motion["straight"]
    assert len(straight["share"]) == horizon and all(0 <= v <= 1 for v in straight["share"])
    assert set(straight["position_error"]) == {"deterministic_rollout", "copy_last", "probe_extrapolation",
                                               "true_positions_extrapolation"}
    # A straight line through the true positions of a ball that moves straight is its future, exactly.
    assert all(e < 1e-4 for e in straight["position_error"]["true_positions_extrapolation"] if math.isfinite(e))
    assert -1 <= motion["change_autocorrelation"]["true_positions"] <= 1
    landing = result["bounce_landing"]
    assert landing["scenes"] == 4 and landing["ways_apart"][0] == 0.0 and landing["ways_apart"][-1] > 0.1
    for name in ("true_future_frames", "posterior_rollout", "deterministic_rollout", "prior_samples"):
        assert set(landing[name]) == {str(h) for h in range(2, horizon + 1)}
        for shares in landing[name].values():
            total = sum(shares[k] for k in ("way_that_happened", "other_way", "clean_bounce", "none"))
            assert total == pytest.approx(1.0, abs=2e-3)


def test_linear_dynamics_of_the_motion_bench_extrapolate_a_constant_change():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("rollout_motion", root / "bench" / "rollout_motion.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    dim = 3
    # next change = last change: rows [change | state | 1] -> change
    weights = torch.cat([torch.eye(dim), torch.zeros(dim + 1, dim)]).double()
    before, last = torch.tensor([[0.0, 1.0, 2.0]]).double(), torch.tensor([[0.5, 1.0, 1.0]]).double()
    rolled = bench._roll_linear(weights, before, last, 4)
    step = last - before
    expected = torch.stack([last + (k + 1) * step for k in range(4)], dim=1)
    assert torch.allclose(rolled, expected)


def test_motion_bench_helpers_on_known_tracks():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("rollout_motion", root / "bench" / "rollout_motion.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # A straight-line fit through points on a line continues the line; through noisy points, their trend.
    line = np.array([0.1, 0.2]) + np.arange(4)[:, None] * np.array([0.03, -0.01])  # (C, 2)
    ahead = bench._extrapolate(line[None, :, None], 3)  # (1, 3, 1, 2)
    assert np.allclose(ahead[0, :, 0], line[-1] + np.arange(1, 4)[:, None] * np.array([0.03, -0.01]))
    zigzag = line + np.array([[0.01], [-0.01], [0.01], [-0.01]])
    assert np.allclose(bench._extrapolate(zigzag[None, :, None], 1)[0, 0, 0], line[-1] + [0.03, -0.01], atol=0.01)
    # Straight until the velocity changes (a bounce at frame 2), and never for a ball absent at frame 0.
    velocities = np.zeros((1, 4, 2, 2))
    velocities[0, :, 0] = [[0.03, 0.01], [0.03, 0.01], [-0.03, 0.01], [-0.03, 0.01]]
    present = np.array([[[True, False], [True, True], [True, True], [True, True]]])
    assert bench._straight(velocities, present).tolist() == [[[True, False], [True, False], [False, False],
                                                              [False, False]]]
    # Lag-1 autocorrelation of the changes: 1 for constant steps, -1 for alternating ones.
    steady = np.cumsum(np.full((2, 6, 1), 0.5), axis=1) + np.random.default_rng(0).normal(size=(2, 1, 1))
    alternating = np.cumsum(np.tile([[1.0], [-1.0]], (3, 1))[None], axis=1)
    valid = np.ones((2, 6, 1), dtype=bool)
    assert bench._change_autocorrelation(steady, valid)[0] == pytest.approx(1.0)
    assert bench._change_autocorrelation(alternating, valid[:1])[0] == pytest.approx(-1.0)
