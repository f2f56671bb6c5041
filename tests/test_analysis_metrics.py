"""Analysis metrics and probe readouts on hand-made inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.metrics import (
    assign_modes, auroc, balanced_accuracy, best_of_n_error, calibration, cohens_h, mode_coverage,
    paired_effect_size, pairwise_accuracy, pairwise_diversity, peak_alignment, r2_score, rank_statistics,
)
from analysis.probe_models import LogisticProbe, MLPProbe, RidgeProbe, Split
from analysis.tracking import flatten_numbers
from envs.physics import BallsConfig


@pytest.fixture(autouse=True)
def one_thread():
    # The probes here are tiny; more threads only add synchronisation on a shared 2-core machine.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_auroc_known_values():
    assert auroc([3.0, 4.0, 5.0], [0.0, 1.0, 2.0]) == 1.0  # separable
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 0.0  # separable the wrong way
    assert auroc([1.0, 1.0], [1.0, 1.0]) == 0.5  # all ties count half
    # One of the four pairs is ordered wrongly: (1 vs 2); positives 1, 3 against negatives 0, 2.
    assert auroc([1.0, 3.0], [0.0, 2.0]) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    assert abs(auroc(rng.normal(size=4000), rng.normal(size=4000)) - 0.5) < 0.03
    with pytest.raises(ValueError):
        auroc([], [1.0])


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy([2.0, 3.0, 1.0, 5.0], [1.0, 1.0, 2.0, 5.0]) == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def test_best_of_n_is_zero_when_a_sample_equals_the_truth():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(4, 3, 8))
    samples = rng.normal(size=(4, 10, 3, 8)) + 5.0
    samples[:, 6] = truth  # the 7th sample is exact
    errors = best_of_n_error(samples, truth, [1, 5, 7, 10])
    assert errors.shape == (4, 3)
    assert np.all(errors[2:] == 0.0)
    assert np.all(errors[0] > 20) and np.all(errors[1] >= errors[2])
    # Best-of-1 is the plain error of sample 0: mean over D of squares, averaged over scenes.
    assert np.allclose(errors[0], ((samples[:, 0] - truth) ** 2).mean(-1).mean(0))
    with pytest.raises(ValueError, match="every N"):
        best_of_n_error(samples, truth, [11])


def test_diversity_of_identical_and_opposite_samples():
    same = np.ones((2, 5, 3, 4))
    assert np.all(pairwise_diversity(same) == 0)
    opposite = np.stack([np.ones((1, 3, 4)), -np.ones((1, 3, 4))], axis=1)  # (1, 2, 3, 4)
    assert np.allclose(pairwise_diversity(opposite), 4.0)  # (1 - -1)^2


def test_mode_assignment_coverage_and_calibration():
    modes = np.array([[[0.0, 0.0], [1.0, 0.0]]])  # one scene, two modes 1 apart
    points = np.array([[[0.1, 0.0], [0.9, 0.1], [0.5, 0.5], [0.05, 0.0]]])
    assigned = assign_modes(points, modes)  # tolerance: half the mode distance = 0.5
    assert assigned.tolist() == [[0, 1, -1, 0]]
    assert mode_coverage(assigned, 2, [1, 2, 4]).tolist() == [0.5, 1.0, 1.0]
    # Exact frequencies: samples split 3:1 over the modes against true probabilities 0.75 / 0.25.
    exact = np.array([[0, 0, 1, 0]] * 5)
    result = calibration(exact, np.array([0.75, 0.25]))
    assert result["total_variation"] == pytest.approx(0.0) and result["per_scene_tv"] == pytest.approx(0.0)
    assert result["sampled"] == pytest.approx([0.75, 0.25]) and result["unassigned"] == 0.0
    # All samples in mode 0 while the truth is 50/50: total variation 0.5.
    assert calibration(np.zeros((3, 4), int), np.array([0.5, 0.5]))["total_variation"] == pytest.approx(0.5)
    # A null point (no fork) competes like a mode: a sample sitting on it, between the modes, hits nothing, and the
    # tolerance shrinks to half the smallest candidate distance (0.25 here).
    null = np.array([[0.5, 0.0]])
    between = np.array([[[0.5, 0.01], [0.8, 0.0], [0.2, 0.0], [0.7, 0.0]]])
    assert assign_modes(between, modes, null=null).tolist() == [[-1, 1, 0, -1]]
    assert assign_modes(between, modes).tolist() == [[-1, 1, 0, 1]]
    # Unassigned samples are reported, not counted as a mode.
    assert calibration(np.array([[0, 1, -1, -1]]), np.array([0.5, 0.5]))["unassigned"] == pytest.approx(0.5)


def test_rank_statistics():
    true = np.array([0.0, 2.5, 10.0])
    wrong = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    stats = rank_statistics(true, wrong)
    assert stats["mean_rank"] == pytest.approx((1 + 3 + 4) / 3)
    assert stats["top1"] == pytest.approx(1 / 3)
    assert stats["normalized_rank"] == pytest.approx((0 + 2 / 3 + 1) / 3)
    assert rank_statistics(np.zeros(4), np.ones((4, 5)))["auroc"] == 1.0


def test_leak_ratio_is_undefined_when_z_buys_nothing():
    from analysis.multifuture import LEAK_MIN_REDUCTION, leak_ratio

    assert leak_ratio(0.10, 0.02) == pytest.approx(0.2)
    assert leak_ratio(0.10, -0.05) == pytest.approx(-0.5)  # a shuffled frame the posterior makes worse
    assert leak_ratio(LEAK_MIN_REDUCTION, LEAK_MIN_REDUCTION) == pytest.approx(1.0)
    # An untrained model's z removes ~1e-9 of the error: the ratio would read millions, so it is None.
    assert leak_ratio(1e-9, 0.04) is None and leak_ratio(-0.01, 0.01) is None


def test_r2_and_balanced_accuracy_known_values():
    y = np.arange(10, dtype=float)
    assert r2_score(y, y) == 1.0
    assert r2_score(np.full(10, y.mean()), y) == pytest.approx(0.0)
    # Masked rows are ignored: garbage predictions where the mask is False do not count.
    pred = np.stack([y, y], 1)
    pred[:5, 1] = 1e6
    mask = np.ones((10, 2), bool)
    mask[:5, 1] = False
    assert r2_score(pred, np.stack([y, y], 1), mask) == pytest.approx(1.0)
    # Classes 0 (4 samples, 3 right) and 1 (2 samples, 1 right): mean recall (0.75 + 0.5) / 2.
    assert balanced_accuracy([0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]) == pytest.approx(0.625)
    assert balanced_accuracy([1, 1, 1], [1, 1, 1]) == 1.0


def test_peak_alignment_and_effect_sizes():
    curves = np.array([[np.nan, np.nan, 0.1, 0.2, 5.0, 0.1], [np.nan, np.nan, 9.0, 0.2, 0.3, 0.1]])
    result = peak_alignment(curves, np.array([4, 4]), first=2, tolerance=1)
    assert result["aligned"] == 0.5 and result["mean_offset"] == pytest.approx(-1.0)
    assert cohens_h(0.5, 0.5) == 0.0
    assert cohens_h(1.0, 0.5) == pytest.approx(math.pi / 2)
    assert paired_effect_size(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)


def _split(x, y, mask, rows):
    return Split(x[rows], y[rows], mask[rows])


def test_ridge_probe_recovers_a_linear_map_with_masked_columns():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12)) * rng.uniform(0.1, 10, size=12) + 3.0
    y = x @ rng.normal(size=(12, 4)) + np.array([1.0, -2.0, 0.0, 5.0])
    mask = np.ones_like(y, bool)
    mask[::3, 2:] = False  # columns 2-3 (a second "ball") absent in a third of the rows
    y[~mask] = 0.0
    probe = RidgeProbe(_split(x, y, mask, slice(0, 400)), _split(x, y, mask, slice(400, 500)))
    test = _split(x, y, mask, slice(500, 600))
    assert r2_score(probe.predict(test.features), test.values, test.mask) > 0.999
    # More features than rows goes through the dual form and still fits the training rows.
    wide = rng.normal(size=(60, 200))
    target = wide[:, :1] * 2.0
    ones = np.ones((60, 1), bool)
    wide_probe = RidgeProbe(Split(wide[:40], target[:40], ones[:40]), Split(wide[40:], target[40:], ones[40:]))
    assert wide_probe.predict(wide[:40]).shape == (40, 1)


def test_logistic_and_mlp_probes_separate_separable_classes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6))
    labels = np.stack([(x[:, 0] > 0).astype(int), (x[:, 1] + x[:, 2] > 0).astype(int) * 2], 1)  # 2 slots
    mask = np.ones_like(labels, bool)
    train, val, test = (_split(x, labels, mask, s) for s in (slice(0, 300), slice(300, 400), slice(400, 500)))
    logistic = LogisticProbe(train, val, num_classes=3)
    prediction = logistic.predict(test.features)
    assert prediction.shape == (100, 2)
    assert balanced_accuracy(prediction[:, 0], test.values[:, 0]) > 0.95
    assert balanced_accuracy(prediction[:, 1], test.values[:, 1]) > 0.9
    mlp = MLPProbe(train, val, "classification", num_classes=3, epochs=60, hidden=32)
    assert balanced_accuracy(mlp.predict(test.features)[:, 0], test.values[:, 0]) > 0.85
    regression = MLPProbe(Split(x[:300], x[:300, :1] ** 2, np.ones((300, 1), bool)),
                          Split(x[300:400], x[300:400, :1] ** 2, np.ones((100, 1), bool)), "regression", epochs=60)
    assert r2_score(regression.predict(x[400:]), x[400:, :1] ** 2) > 0.8  # nonlinear: linear would get ~0


def test_flatten_numbers_for_mlflow():
    flat = flatten_numbers({"a": {"b": 1, "c": [1, 2], "d": float("nan"), "e": True}, "f": 2.5, "g": "text"})
    assert flat == {"a/b": 1.0, "f": 2.5}


def test_mlp_probe_is_at_least_the_ridge_probe_on_a_linear_target():
    """A difference of two features (a velocity from two positions) is linear: the MLP probe starts from the ridge
    solution and must not lose it (a plain MLP reached R2 < 0 on such targets in its epoch budget)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, size=(900, 10))
    y = np.stack([x[:, 1] - x[:, 0], x[:, 3] - x[:, 2]], axis=1) * 0.1
    mask = np.ones_like(y, bool)
    train, val, test = (Split(x[a:b], y[a:b], mask[a:b]) for a, b in ((0, 500), (500, 700), (700, 900)))
    ridge, mlp = RidgeProbe(train, val), MLPProbe(train, val, "regression", epochs=30, hidden=32)
    assert r2_score(ridge.predict(test.features), test.values) > 0.999
    assert r2_score(mlp.predict(test.features), test.values) > 0.99


def test_pair_features_and_motion_read_through_the_velocity_probe():
    import torch

    from analysis.probe_models import fit_probe
    from analysis.probes import ProbeConfig, motion_readouts, oracle_features, pair_features, split_indices, \
        state_targets
    from envs.clips import generate_clips
    from envs.physics import BallsConfig

    reps = torch.tensor([[[1.0, 2.0], [4.0, 3.0], [4.5, 3.5]]])  # (N=1, T=3, D=2)
    assert np.allclose(pair_features(reps), [[4.0, 3.0, 3.0, 1.0], [4.5, 3.5, 0.5, 0.5]])

    # From the true positions the velocity probe is exact, so the speed and direction read through it are too.
    balls = BallsConfig(image_size=32, max_balls=2)
    data = generate_clips(balls, 60, 8, seed=9)
    config = ProbeConfig()
    features = pair_features(oracle_features(data.state, balls))
    targets = state_targets(data.state, data.num_balls, balls, config)
    velocity = targets["velocity"]
    rows = {k: np.repeat(np.isin(np.arange(60), v), 7) for k, v in split_indices(60, seed=0).items()}
    parts = {k: Split(features[r], velocity.values[r], velocity.mask[r]) for k, r in rows.items()}
    probe = fit_probe("linear", "regression", parts["train"], parts["val"])
    readouts = motion_readouts(config.direction_bins)
    test = parts["test"]
    assert readouts["speed_from_velocity"](probe.predict(test.features), test) > 0.99
    assert readouts["direction_from_velocity"](probe.predict(test.features), test) > 0.95
    # Known values: the true velocities give R2 1 and accuracy 1; their negation points every ball the other way.
    assert readouts["speed_from_velocity"](test.values, test) == pytest.approx(1.0)
    assert readouts["direction_from_velocity"](test.values, test) == pytest.approx(1.0)
    assert readouts["direction_from_velocity"](-test.values, test) == pytest.approx(0.0)


def test_headline_names_the_auroc_of_each_kind_of_scene():
    from analysis.report import headline

    scores = {"pairwise_accuracy": 0.9, "auroc": 0.8}
    surprise = {"properties": {"permanence": {
        "energy": dict(scores),
        "by_kind": {"occluder": {"pairwise_accuracy": 0.8, "auroc": 0.6}, "view": {"pairwise_accuracy": 1.0,
                                                                                 "auroc": 1.0}},
    }}}
    rows = {row["metric"]: row for row in headline({"surprise": surprise})}
    auroc = rows["VoE permanence: AUROC"]
    assert auroc["value"] == 0.8 and auroc["passed"] is False
    assert auroc["note"] == "behind the occluder 0.600, in view 1.000"
    assert rows["VoE permanence, behind the occluder only: pairwise accuracy"]["value"] == 0.8


@pytest.mark.parametrize("balls", [
    BallsConfig(),  # the default: bigger balls fit
    BallsConfig(min_balls=1, max_balls=2, radius_range=(0.15, 0.22)),  # big balls: only a smaller step up fits
    BallsConfig(min_balls=1, max_balls=1, radius_range=(0.3, 0.37)),  # the box is full already: smaller balls
], ids=["default", "big", "full"])
def test_ood_probe_clips_lie_outside_the_training_ranges_and_can_be_generated(balls):
    from envs.clips import generate_clips
    from analysis.probes import ood_config

    ood = ood_config(balls)
    assert ood.speed_range[0] > balls.speed_range[1] and ood.max_speed >= ood.speed_range[1]
    above, below = ood.radius_range[0] > balls.radius_range[1], ood.radius_range[1] < balls.radius_range[0]
    assert above or below
    if balls.radius_range == (0.08, 0.14):
        assert ood.radius_range == pytest.approx((0.154, 0.189))  # what the default has always used
    clips = generate_clips(ood, 48, 4, seed=3)
    radii = clips.state["radii"][clips.state["radii"] > 0]
    assert radii.min() >= ood.radius_range[0] - 1e-9 and radii.max() <= ood.radius_range[1] + 1e-9


def test_hidden_target_is_each_colours_position_once_it_went_behind_the_occluder():
    from analysis.probes import hidden_config, hidden_target
    from envs.physics import BallsConfig

    balls = hidden_config(BallsConfig(image_size=64))
    left, right = (c / 64 for c in balls.occluder_columns())
    middle, r = (left + right) / 2, 0.05
    red, green = balls.palette[0], balls.palette[1]
    # Ball 0 (red) comes in from the left: visible at t = 0, 1, fully hidden at t = 2, 3. Ball 1 (green) is parked
    # behind the occluder from the start: never seen, so never a target.
    x0 = np.array([0.1, left - 0.02, middle - 0.01, middle + 0.01])
    positions = np.stack([np.stack([x0, np.full(4, 0.3)], -1), np.tile([middle, 0.7], (4, 1))], axis=1)[None]
    state = {"positions": positions, "radii": np.full((1, 4, 2), r), "present": np.ones((1, 4, 2), bool),
             "colors": np.tile(np.array([red, green], np.uint8), (1, 4, 1, 1))}
    target = hidden_target(state, balls)
    assert target.values.shape == target.mask.shape == (3, 2 * len(balls.palette))  # rows = frames 1..3
    assert target.mask[:, :2].tolist() == [[False, False], [True, True], [True, True]]
    assert not target.mask[:, 2:].any()  # green was never seen; no other colour is present
    assert np.allclose(target.values[1:, :2], positions[0, 2:, 0])
