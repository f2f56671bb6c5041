"""The mixture latent and its calibrated likelihood: known values, exact responsibilities, the energy as a negative
log-likelihood, rollouts past the predictor's window, and the dynamics stage on cached long windows."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from training.config import debug
from training.dynamics_stage import _stretches, dynamics_parameters, encode_clips, train_dynamics
from worldmodel import WorldModel
from worldmodel.likelihood import (
    LikelihoodScale,
    categorical_information,
    gaussian_log_density,
    mixture_log_likelihood,
)


def mixture_config():
    config = debug().model
    config.latent.capacity = "mixture"
    config.latent.classes = 4
    config.latent.dim = 1
    return config


@pytest.fixture
def model():
    torch.manual_seed(0)
    return WorldModel(mixture_config())


@pytest.fixture
def frames():
    torch.manual_seed(1)
    return torch.randint(0, 256, (3, 7, 3, 32, 32), dtype=torch.uint8)


def test_gaussian_log_density_known_values():
    # Standard normal at 0 in 2 dims: -log(2 pi); at (1, 0) with std 2: -0.5 * 1/4 - 2 log 2 - log(2 pi).
    assert float(gaussian_log_density(torch.zeros(2), torch.zeros(2), torch.ones(2))) == pytest.approx(
        -math.log(2 * math.pi))
    value = gaussian_log_density(torch.tensor([1.0, 0.0]), torch.zeros(2), torch.full((2,), 2.0))
    assert float(value) == pytest.approx(-0.125 - 2 * math.log(2.0) - math.log(2 * math.pi))


def test_mixture_log_likelihood_and_responsibilities_by_hand():
    # Two 1-D components at -1 and +1, std 1, weights 0.25 / 0.75, target at +1.
    target = torch.tensor([1.0])
    means = torch.tensor([[-1.0], [1.0]])
    weights = torch.tensor([0.25, 0.75])
    log_likelihood, responsibilities = mixture_log_likelihood(target, means, weights.log(), torch.ones(1))
    density = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    joint = [0.25 * density(2.0), 0.75 * density(0.0)]
    assert float(log_likelihood) == pytest.approx(math.log(sum(joint)), rel=1e-6)
    assert responsibilities.tolist() == pytest.approx([joint[0] / sum(joint), joint[1] / sum(joint)], rel=1e-6)
    # One component: the log-likelihood is the Gaussian's and its responsibility is 1.
    single, only = mixture_log_likelihood(target, means[:1], torch.zeros(1), torch.ones(1))
    assert float(single) == pytest.approx(math.log(density(2.0)), rel=1e-6) and only.tolist() == [1.0]


def test_far_target_picks_the_nearer_component_whatever_the_weights():
    # A calibrated likelihood: 0.9 prior weight does not save a component 10 stds away.
    target = torch.tensor([0.0, 0.0])
    means = torch.tensor([[1.0, 0.0], [0.0, 0.05]])
    _, responsibilities = mixture_log_likelihood(target, means, torch.tensor([0.9, 0.1]).log(), torch.full((2,), 0.1))
    assert float(responsibilities[1]) > 0.999


def test_likelihood_scale_init_and_floor():
    scale = LikelihoodScale(5, min_std=0.02, init_std=0.3)
    assert scale().tolist() == pytest.approx([0.3] * 5, rel=1e-5)
    with torch.no_grad():
        scale.raw.fill_(-30.0)
    assert scale().tolist() == pytest.approx([0.02] * 5, rel=1e-5)
    with pytest.raises(ValueError, match="min_std"):
        LikelihoodScale(3, min_std=0.5)


def test_likelihood_scale_rows_per_step_ahead():
    scale = LikelihoodScale(3, min_std=0.02, init_std=0.3, steps=4)
    with torch.no_grad():
        scale.raw[2].fill_(0.5 * math.log(1.0 - 0.02**2) / LikelihoodScale.SPEED)  # row 2: std 1
    assert scale(0).tolist() == pytest.approx([0.3] * 3, rel=1e-5)
    assert scale(2).tolist() == pytest.approx([1.0] * 3, rel=1e-5)
    assert scale(9).tolist() == pytest.approx([0.3] * 3, rel=1e-5)  # past the table: its last row
    with pytest.raises(ValueError, match="steps"):
        LikelihoodScale(3, min_std=0.02, steps=0)


def test_likelihood_scale_reaches_the_error_std_within_a_stage():
    # Errors of std 0.05 against an initial 0.3: Adam at lr 1e-3 must get the scale there in 1,000 steps.
    torch.manual_seed(0)
    scale = LikelihoodScale(4, min_std=0.02, init_std=0.3)
    optimizer = torch.optim.Adam(scale.parameters(), lr=1e-3)
    for _ in range(1000):
        error = 0.05 * torch.randn(256, 4)
        loss = -gaussian_log_density(error, torch.zeros(4), scale()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert scale().tolist() == pytest.approx([0.05] * 4, rel=0.15)


def test_rollout_errors_train_the_rollout_scale_only(frames):
    config = mixture_config()
    config.prediction_weight = 0.0
    config.rollout_weight = 1.0
    torch.manual_seed(0)
    model = WorldModel(config)
    losses, _ = model.predictive_losses(model.encode(frames), model.encode_target(frames))
    losses["rollout"].backward()
    assert model.latent.scale.raw.grad is None or float(model.latent.scale.raw.grad.abs().sum()) == 0.0
    rows = model.latent.rollout_scale.raw.grad.abs().sum(-1)  # (max_len,)
    steps = frames.shape[1] - config.context_frames
    assert bool((rows[:steps] > 0).all()) and float(rows[steps:].sum()) == 0.0


def test_models_saved_before_the_scales_split_load_as_they_were(tmp_path, model):
    model.save(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    old = torch.full((state["latent.scale.raw"].shape[-1],), 0.5 * math.log(0.1**2 - 0.02**2))  # std 0.1, old layout
    state["latent.scale.raw"] = old
    del state["latent.rollout_scale.raw"]
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    import json

    config_file = tmp_path / "m" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["model"]["latent"]["keypoint_mixture"]  # saved before: its components predicted every dimension
    config_file.write_text(json.dumps(saved))
    loaded = WorldModel.load(tmp_path / "m")
    assert loaded.config.latent.keypoint_mixture is False
    assert loaded.latent.scale().tolist() == pytest.approx([0.1] * len(old), rel=1e-5)
    assert loaded.latent.rollout_scale(7).tolist() == pytest.approx([0.1] * len(old), rel=1e-5)


def test_categorical_information():
    uniform = torch.full((4,), 0.25)
    assert float(categorical_information(uniform, uniform)) == pytest.approx(0.0, abs=1e-7)
    certain = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert float(categorical_information(certain, uniform)) == pytest.approx(math.log(4), rel=1e-5)


def test_energy_is_the_negative_log_likelihood(model, frames):
    context = 3
    online, target = model.encode(frames).detach(), model.encode_target(frames)
    energy = model.energy(frames[:, :context], frames[:, context:], reduction="none")  # (B, F)
    with torch.no_grad():
        for step in range(context, frames.shape[1]):
            summary = model.past(online[:, :step])[:, -1]
            weights = model.latent.prior(summary).probs[:, 0]  # (B, K)
            means = torch.stack([
                model.transition(summary, torch.nn.functional.one_hot(torch.full((3,), k), 4).float(),
                                 target[:, step - 1])
                for k in range(4)
            ], dim=1)  # (B, K, D)
            coordinates = 2 * model.config.encoder.keypoints
            means[:, 0, :coordinates] = target[:, step - 1, :coordinates]  # component 0: inertia
            means[:, :, coordinates:] = means[:, :, coordinates:].mean(1, keepdim=True)  # one shared rest
            std = model.latent.scale()
            density = torch.stack([gaussian_log_density(target[:, step], means[:, k], std) for k in range(4)], 1)
            expected = -(weights.log() + density).logsumexp(-1)
            assert torch.allclose(energy[:, step - context], expected, atol=1e-4)


def keypoint_model(trend_frames: int) -> tuple[WorldModel, int]:
    """A mixture model whose transition continues a `trend_frames` trend, and its number of keypoint coordinates."""
    config = mixture_config()
    config.predictor.trend_frames = trend_frames
    torch.manual_seed(0)
    coordinates = 2 * config.encoder.keypoints
    assert coordinates > 0 and config.encoder.keypoint_passthrough
    return WorldModel(config), coordinates


def test_components_move_only_the_keypoints_and_component_zero_keeps_their_trend(frames):
    model, coordinates = keypoint_model(3)
    config = model.config
    with torch.no_grad():
        target = model.encode_target(frames)
        summary = model.past(model.encode(frames))[:, -1]
        base = model.bases(target)[:, -1]  # (B, D): the last frame moved on by its 3-frame trend
        means = model.component_means(summary, base)  # (B, K, D)
        learned = model.transition(summary, torch.eye(4)[0].expand(3, 4), base)
    assert torch.equal(means[:, 0, :coordinates], base[:, :coordinates])
    assert float((means[:, 1:, :coordinates] - base[:, None, :coordinates]).abs().min()) > 0  # the others move
    heads = torch.stack([model.transition(summary, torch.eye(4)[k].expand(3, 4), base) for k in range(4)], 1)
    assert torch.allclose(means[:, 1:, :coordinates], heads[:, 1:, :coordinates], atol=1e-6)
    for k in range(4):  # the rest is one prediction: the mean of the K heads'
        assert torch.allclose(means[:, k, coordinates:], heads[:, :, coordinates:].mean(1), atol=1e-6)
    # The responsibilities then depend on the keypoints alone.
    target_next = base + 0.1 * torch.randn_like(base)
    changed = target_next.clone()
    changed[:, coordinates:] += 1.0
    prior = model.latent.prior(summary)
    with torch.no_grad():
        _, before, _ = model._mixture(summary, prior, base, target_next)
        _, after, _ = model._mixture(summary, prior, base, changed)
    assert torch.allclose(before, after, atol=1e-5)
    config.latent.keypoint_mixture = False
    plain = WorldModel(config)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain.component_means(summary, base)[:, 0], learned)


def test_rollout_along_component_zero_continues_the_keypoints_in_a_straight_line(frames):
    model, coordinates = keypoint_model(2)
    with torch.no_grad():
        online, target = model.encode(frames[:, :3]), model.encode_target(frames[:, :3])
        still = torch.nn.functional.one_hot(torch.zeros(3, 5, dtype=torch.long), 4).float()  # (B, H, K)
        rolled, used = model.rollout(online, target, 5, latents=still)
    velocity = target[:, -1, :coordinates] - target[:, -2, :coordinates]
    expected = target[:, -1:, :coordinates] + torch.arange(1, 6).view(1, 5, 1) * velocity[:, None]
    assert torch.allclose(rolled[..., :coordinates], expected, atol=1e-5)
    assert torch.equal(used, still)


def test_posterior_is_exact_and_charges_at_most_log_k(model, frames):
    online, target = model.encode(frames), model.encode_target(frames)
    posterior = model.posterior(online[:, :3], target[:, 3], last_target=target[:, 2])
    assert posterior.probs.shape == (3, 1, 4)
    assert torch.allclose(posterior.probs.sum(-1), torch.ones(3, 1))
    used = model.capacity_per_step(online, target)
    assert used.shape == (3, 6) and float(used.min()) >= -1e-6
    assert float(used.max()) <= math.log(4) - math.log(0.01 / 4) + 1e-4  # KL to a prior mixed with 1% uniform
    with pytest.raises(ValueError, match="last_target"):
        model.posterior(online[:, :3], target[:, 3])


def test_loss_terms_and_telemetry(model, frames):
    loss, metrics = model.loss({"frames": frames})
    assert torch.isfinite(loss)
    weights = model.loss_weights()
    total = sum(weights[name] * metrics[f"loss/{name}"] for name in model.LOSS_TERMS)
    assert metrics["loss/total"] == pytest.approx(total, rel=1e-5)
    assert metrics["loss/capacity"] == 0.0 and metrics["loss/prior_fit"] == 0.0
    assert metrics["likelihood/std_mean"] == pytest.approx(0.3, rel=1e-4)
    loss.backward()
    assert model.latent.scale.raw.grad is not None and model.latent.prior.net[0].weight.grad is not None


def test_sampling_slides_past_the_predictor_window(model, frames):
    horizon = model.config.predictor.max_len + 4  # longer than the predictor has positions
    futures = model.sample_futures(frames[:, :6], num_samples=3, horizon=horizon,
                                   generator=torch.Generator().manual_seed(0))
    assert futures.representations.shape == (3, 3, horizon, model.config.encoder.dim)
    assert futures.latents.shape == (3, 3, horizon, 4)
    assert torch.all(futures.latents.sum(-1) == 1)  # one component per step
    assert torch.isfinite(futures.energies).all()


def test_deterministic_rollout_takes_the_most_likely_component(model, frames):
    online, target = model.encode(frames), model.encode_target(frames)
    _, used = model.rollout(online[:, :3], target[:, 2], 1, deterministic=True)
    summary = model.past(online[:, :3])[:, -1]
    assert torch.equal(used[:, 0].argmax(-1), model.latent.prior(summary).probs[:, 0].argmax(-1))


def test_summaries_use_a_sliding_window_past_max_len(model):
    torch.manual_seed(3)
    window = model.config.predictor.max_len
    inputs = torch.randn(2, window + 3, model.config.encoder.dim)
    states = model.summaries(inputs)
    assert states.shape == (2, window + 3, model.config.predictor.width)
    assert torch.allclose(states[:, :window], model.past(inputs[:, :window]), atol=1e-5)
    last = model.past(inputs[:, 3:])[:, -1]  # the window ending at the last input
    assert torch.allclose(states[:, -1], last, atol=1e-5)


def test_dynamics_stage_trains_only_the_dynamics_on_long_windows(tmp_path):
    torch.manual_seed(0)
    config = debug()
    config.model.latent.capacity, config.model.latent.classes, config.model.latent.dim = "mixture", 4, 1
    config.data.cache_dir = str(tmp_path / "cache")
    config.run.out_dir = str(tmp_path / "run")
    config.dynamics.steps, config.dynamics.horizon, config.dynamics.frames = 60, 8, 1200
    config.dynamics.batch_size, config.dynamics.log_every, config.dynamics.lr = 32, 20, 2e-3
    config.model.predictor.trend_frames, config.dynamics.trend_frames = 0, 3
    config.validate()
    model = WorldModel(config.model)
    cache = encode_clips(model, config, torch.device("cpu"))
    length = config.data.clip_length  # fresh simulator clips, whole
    assert cache.online.shape == (1200, config.model.encoder.dim)
    assert cache.starts.shape == (100 * (length - config.dynamics_window + 1),)
    online, target, actions = cache.take(cache.starts[:3])
    assert online.shape == target.shape == (3, config.dynamics_window, config.model.encoder.dim) and actions is None
    # Frame encodings do not depend on the window they are read in: a window read from the cache is the window
    # encoded on its own.
    from training.dynamics_stage import _fresh_clips
    first = next(_fresh_clips(config, 1200, config.run.seed + 7 + 1000 * config.data.seed))[0]
    with torch.no_grad():
        alone = model.encode(first[None, 1 : 1 + config.dynamics_window])[0]
    assert torch.allclose(cache.take(cache.starts[1:2])[0][0], alone, atol=1e-5)
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]
    decoder_before = [p.detach().clone() for p in model.decoder.parameters()]
    logged = []
    train_dynamics(model, config, torch.device("cpu"), log=lambda step, metrics: logged.append((step, metrics)))
    assert [step for step, _ in logged] == [220, 240, 260]  # counted on from run.steps = 200
    first, last = logged[0][1], logged[-1][1]
    assert last["dynamics/loss/prediction"] < first["dynamics/loss/prediction"]
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, model.decoder.parameters()))
    assert all(p.requires_grad for p in model.encoder.parameters())  # unfrozen again for the caller
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    assert len(dynamics_parameters(model)) > 0
    assert model.config.predictor.trend_frames == 3  # the stage switched the transition's trend on


def test_dynamics_window_is_checked_against_the_predictor():
    config = debug()
    config.dynamics.steps, config.dynamics.horizon = 10, config.model.predictor.max_len
    with pytest.raises(ValueError, match="dynamics window"):
        config.validate()


def test_least_squares_trend_known_values():
    from worldmodel.predictor import extrapolated, extrapolated_last, least_squares_slope

    line = torch.tensor([0.0, 2.0, 4.0, 6.0]).view(1, 4, 1)  # slope 2
    assert float(least_squares_slope(line[0])) == pytest.approx(2.0)
    # Each point plus the slope through its last (up to) 3 points: a line continues exactly.
    assert extrapolated(line, 3).flatten().tolist() == pytest.approx([0.0, 4.0, 6.0, 8.0])
    assert float(extrapolated_last(line, 3)) == pytest.approx(8.0)
    zigzag = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 4, 1)
    assert float(extrapolated_last(zigzag, 4)) == pytest.approx(1.0 + 0.2)  # slope of the fit: 0.2
    assert torch.equal(extrapolated(zigzag, 0), zigzag) and torch.equal(extrapolated(zigzag, 1), zigzag)


def test_rollout_with_a_trend_continues_a_constant_velocity_when_the_residual_is_zero():
    config = mixture_config()
    config.predictor.trend_frames = 3
    model = WorldModel(config).eval()
    for p in model.transition.net[-1].parameters():
        torch.nn.init.zeros_(p)  # f = 0: the prediction is the extrapolated base itself
    steps = torch.arange(5).float().view(1, 5, 1)
    history = steps * torch.linspace(-0.1, 0.1, config.encoder.dim).view(1, 1, -1)  # (1, 5, D), a constant move
    predicted, _ = model.rollout(history, history, 4, deterministic=True)
    expected = torch.arange(5, 9).float().view(1, 4, 1) * torch.linspace(-0.1, 0.1, config.encoder.dim)
    assert torch.allclose(predicted, expected, atol=1e-5)
    # With only the last frame given, the trend builds up from the predictions: it stands still.
    still, _ = model.rollout(history, history[:, -1], 3, deterministic=True)
    assert torch.allclose(still, history[:, -1:].expand(1, 3, -1), atol=1e-5)


def test_stretches_tile_each_clip_with_the_fewest_windows():
    assert _stretches(list(range(0, 11)), 4) == [[0, 4, 8, 10]]  # clip of 14 frames, windows of 4, stride 1
    assert _stretches([0, 3, 6], 4) == [[0, 3, 6]]  # stride 3: every window is needed
    assert _stretches([0, 5, 10], 4) == [[0], [5], [10]]  # stride 5 > window: three stretches with gaps between
    assert _stretches([0, 2, 4, 6], 4) == [[0, 4, 6]]


def test_recorded_clips_are_encoded_whole_through_their_window_dataset(tmp_path):
    from envs.dataset import WindowDataset
    from training.dynamics_stage import _dataset_clips

    frames = np.random.default_rng(0).integers(0, 255, size=(3, 9, 8, 8, 3), dtype=np.uint8)
    dataset = WindowDataset(frames, window=4)
    clips = list(_dataset_clips(dataset, budget=100, seed=0))
    assert len(clips) == 3 and all(clip.shape == (9, 3, 8, 8) and actions is None for clip, actions in clips)
    as_read = sorted(clip.numpy().tobytes() for clip, _ in clips)
    assert as_read == sorted(np.ascontiguousarray(frames[i].transpose(0, 3, 1, 2)).tobytes() for i in range(3))
    assert len(list(_dataset_clips(dataset, budget=10, seed=0))) == 2  # stops once the frame budget is spent



def test_rollout_along_both_paths_averages_the_steered_and_the_deterministic_one(frames):
    from dataclasses import replace

    config = mixture_config()
    torch.manual_seed(0)
    model = WorldModel(config)
    with torch.no_grad():
        online, target = model.encode(frames), model.encode_target(frames)
        terms = {}
        for mode in ("closed_loop", "prior_mean", "both"):
            model.config = replace(config, rollout_latent=mode)
            losses, _ = model.predictive_losses(online, target)
            terms[mode] = float(losses["rollout"])
    assert terms["closed_loop"] != pytest.approx(terms["prior_mean"], rel=1e-3)
    assert terms["both"] == pytest.approx((terms["closed_loop"] + terms["prior_mean"]) / 2, rel=1e-5)
    latent = mixture_config()
    latent.latent.capacity = "kl"
    with pytest.raises(ValueError, match="rollout_latent=both"):
        replace(latent, rollout_latent="both").validate()
