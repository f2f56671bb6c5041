"""Metric functions of the analysis suite, on plain numpy arrays so their answers can be checked by hand.

Futures:   best_of_n_error, pairwise_diversity, assign_modes, mode_coverage, mode_frequencies, calibration
Ranking:   auroc, pairwise_accuracy, matched_accuracy, rank_statistics
Probes:    r2_score, balanced_accuracy
Surprise:  peak_alignment, cohens_h, paired_effect_size

Shapes are written as (B, N, H, ...) = (scenes, samples, horizon, ...). Nothing here touches a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------- futures


def squared_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared difference over the last axis (the representation distance the model uses): (..., D) -> (...)."""
    return ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean(-1)


def best_of_n_error(samples: np.ndarray, truth: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """Best-of-N error per horizon: for each N, the smallest error among the first N samples at each horizon step,
    averaged over scenes.

    samples: (B, S, H, D) predicted representations (S >= max(ns)); truth: (B, H, D). Returns (len(ns), H).
    """
    samples, truth = np.asarray(samples), np.asarray(truth)
    if samples.ndim != 4 or truth.shape != (samples.shape[0], samples.shape[2], samples.shape[3]):
        raise ValueError(f"samples must be (B, S, H, D) and truth (B, H, D), got {samples.shape} and {truth.shape}")
    if max(ns) > samples.shape[1] or min(ns) < 1:
        raise ValueError(f"every N must be in [1, {samples.shape[1]}] (samples drawn), got {list(ns)}")
    errors = squared_distance(samples, truth[:, None])  # (B, S, H)
    return np.stack([errors[:, :n].min(axis=1).mean(axis=0) for n in ns])


def pairwise_diversity(samples: np.ndarray) -> np.ndarray:
    """Mean squared distance between every two distinct samples, per horizon: (B, S, H, D) -> (H,)."""
    samples = np.asarray(samples, np.float64)
    count = samples.shape[1]
    if count < 2:
        return np.zeros(samples.shape[2])
    diff = squared_distance(samples[:, :, None], samples[:, None, :])  # (B, S, S, H)
    off_diagonal = ~np.eye(count, dtype=bool)
    return diff[:, off_diagonal].mean(axis=(0, 1))


def assign_modes(points: np.ndarray, modes: np.ndarray, tolerance: float | np.ndarray | None = None, *,
                 null: np.ndarray | None = None) -> np.ndarray:
    """Which true mode each predicted point falls in: nearest mode, if closer than the tolerance, else -1.

    points: (B, S, P) e.g. probed positions of S samples; modes: (B, K, P). null: optional (B, P), a point that is
    no mode (e.g. where the object goes if the fork does not happen): it competes like a mode, and points that fall
    to it are -1, so a prediction sitting between the modes never counts as a hit. tolerance: scalar or (B,)
    radius; None uses half the smallest distance between two candidates (modes and null) of the scene, so every
    point goes to at most one. Returns (B, S) int64.
    """
    points, modes = np.asarray(points, np.float64), np.asarray(modes, np.float64)
    k = modes.shape[1]
    if null is not None:
        modes = np.concatenate([modes, np.asarray(null, np.float64)[:, None]], axis=1)  # (B, K + 1, P)
    dist = np.sqrt(((points[:, :, None] - modes[:, None]) ** 2).sum(-1))  # (B, S, K[+1])
    if tolerance is None:
        between = np.sqrt(((modes[:, :, None] - modes[:, None]) ** 2).sum(-1))  # (B, K', K')
        count = modes.shape[1]
        between[:, np.arange(count), np.arange(count)] = np.inf
        tolerance = 0.5 * between.min(axis=(1, 2))
    tolerance = np.broadcast_to(np.asarray(tolerance, np.float64), (points.shape[0],))
    nearest = dist.argmin(-1)
    close = np.take_along_axis(dist, nearest[..., None], -1)[..., 0] < tolerance[:, None]
    return np.where(close & (nearest < k), nearest, -1).astype(np.int64)


def mode_coverage(assignments: np.ndarray, num_modes: int, ns: Sequence[int]) -> np.ndarray:
    """Fraction of the true modes hit by at least one of the first N samples, averaged over scenes.

    assignments: (B, S) from `assign_modes` (-1 = no mode). Returns (len(ns),).
    """
    assignments = np.asarray(assignments)
    out = []
    for n in ns:
        first = assignments[:, :n]
        hit = np.stack([(first == k).any(axis=1) for k in range(num_modes)], axis=1)  # (B, K)
        out.append(hit.mean())
    return np.asarray(out)


def mode_frequencies(assignments: np.ndarray, num_modes: int) -> np.ndarray:
    """Per scene, the fraction of samples in each mode and (last column) in none: (B, S) -> (B, K + 1)."""
    assignments = np.asarray(assignments)
    counts = np.stack([(assignments == k).sum(1) for k in [*range(num_modes), -1]], axis=1)
    return counts / assignments.shape[1]


def calibration(assignments: np.ndarray, probabilities: np.ndarray) -> dict[str, object]:
    """Sampled mode frequencies against the true probabilities (the same K probabilities for every scene).

    Returns: sampled (K,) pooled frequency of each mode among samples that hit a mode; unassigned, the fraction of
    samples in no mode; total_variation, 0.5 * sum |sampled - true| (0 = perfectly calibrated, 1 = disjoint);
    per_scene_tv, the same distance averaged over scenes (sensitive to each scene's own sample split).
    """
    probabilities = np.asarray(probabilities, np.float64)
    k = probabilities.shape[0]
    freq = mode_frequencies(assignments, k)  # (B, K+1)
    assigned = freq[:, :k].sum(1)
    pooled = freq[:, :k].sum(0)
    sampled = pooled / pooled.sum() if pooled.sum() > 0 else np.zeros(k)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_scene = freq[:, :k] / assigned[:, None]
    valid = assigned > 0
    per_scene_tv = float(0.5 * np.abs(per_scene[valid] - probabilities).sum(1).mean()) if valid.any() else 1.0
    return {
        "true": probabilities.tolist(),
        "sampled": sampled.tolist(),
        "unassigned": float(freq[:, k].mean()),
        "total_variation": float(0.5 * np.abs(sampled - probabilities).sum()) if pooled.sum() > 0 else 1.0,
        "per_scene_tv": per_scene_tv,
    }


# --------------------------------------------------------------------------------------------------- ranking


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve for 'positive scores are higher': P(pos > neg) + 0.5 P(pos == neg)."""
    positive, negative = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if positive.size == 0 or negative.size == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    scores = np.concatenate([positive, negative])
    ranks = _average_ranks(scores)
    # Mann-Whitney U from the rank sum of the positives (ties get average ranks, i.e. count half).
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(u / (positive.size * negative.size))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, np.float64)
    sorted_values = values[order]
    start = 0
    while start < values.size:
        stop = start
        while stop + 1 < values.size and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = 0.5 * (start + stop) + 1
        start = stop + 1
    return ranks


def pairwise_accuracy(impossible: np.ndarray, possible: np.ndarray) -> float:
    """Fraction of matched pairs where the impossible clip scores higher (ties count half)."""
    impossible, possible = np.asarray(impossible, np.float64), np.asarray(possible, np.float64)
    if impossible.shape != possible.shape or impossible.size == 0:
        raise ValueError(
            f"pairwise_accuracy needs two equal, non-empty arrays, got {impossible.shape}, {possible.shape}"
        )
    return float(((impossible > possible) + 0.5 * (impossible == possible)).mean())


def matched_accuracy(impossible: np.ndarray, possible: np.ndarray, groups: np.ndarray) -> float:
    """IntPhys relative protocol: per group of matched pairs, is the summed surprise of its impossible clips higher
    than that of its possible clips? (ties count half). With singleton groups this is `pairwise_accuracy`."""
    impossible, possible = np.asarray(impossible, np.float64), np.asarray(possible, np.float64)
    labels, index = np.unique(np.asarray(groups), return_inverse=True)
    summed_i = np.bincount(index, weights=impossible, minlength=labels.size)
    summed_p = np.bincount(index, weights=possible, minlength=labels.size)
    return pairwise_accuracy(summed_i, summed_p)


def rank_statistics(true_scores: np.ndarray, wrong_scores: np.ndarray) -> dict[str, float]:
    """Where the true candidate ranks among wrong ones when lower scores are better (energies).

    true_scores: (B,); wrong_scores: (B, M). rank 1 = the truth is best (ties count half a place).
    Returns mean / median rank, top-1 rate, mean normalised rank in [0, 1] (0 = always best, 0.5 = chance) and the
    AUROC of 'wrong scores are higher than the true one'.
    """
    true_scores, wrong_scores = np.asarray(true_scores, np.float64), np.asarray(wrong_scores, np.float64)
    if wrong_scores.ndim != 2 or true_scores.shape != (wrong_scores.shape[0],):
        raise ValueError(
            f"true_scores must be (B,) and wrong_scores (B, M), got {true_scores.shape}, {wrong_scores.shape}"
        )
    below = (wrong_scores < true_scores[:, None]).sum(1) + 0.5 * (wrong_scores == true_scores[:, None]).sum(1)
    rank = 1 + below
    m = wrong_scores.shape[1]
    return {
        "mean_rank": float(rank.mean()),
        "median_rank": float(np.median(rank)),
        "top1": float((below == 0).mean()),
        "normalized_rank": float((below / m).mean()),
        "auroc": auroc(wrong_scores.ravel(), true_scores),
        "candidates": float(m + 1),
    }


# --------------------------------------------------------------------------------------------------- probes


def r2_score(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Coefficient of determination averaged over output columns: (n, k) -> float.

    mask: (n, k) bool, which rows count for each column (absent balls); columns with fewer than 2 valid rows or no
    variance are skipped. Returns nan when no column qualifies.
    """
    prediction, target = _columns(np.asarray(prediction, np.float64)), _columns(np.asarray(target, np.float64))
    if prediction.shape != target.shape:
        raise ValueError(f"r2_score needs prediction and target of one shape, got {prediction.shape}, {target.shape}")
    mask = np.ones(target.shape, bool) if mask is None else _columns(np.asarray(mask, bool))
    scores = []
    for j in range(target.shape[1]):
        rows = mask[:, j]
        if rows.sum() < 2:
            continue
        y, p = target[rows, j], prediction[rows, j]
        total = ((y - y.mean()) ** 2).sum()
        if total <= 1e-12 * max(1.0, float((y**2).sum())):
            continue
        scores.append(1.0 - ((y - p) ** 2).sum() / total)
    return float(np.mean(scores)) if scores else float("nan")


def _columns(x: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1); (n, k) unchanged."""
    return x[:, None] if x.ndim == 1 else x


def balanced_accuracy(prediction: np.ndarray, target: np.ndarray) -> float:
    """Mean recall over the classes present in `target` (chance = 1 / number of those classes)."""
    prediction, target = np.asarray(prediction).ravel(), np.asarray(target).ravel()
    if prediction.shape != target.shape or target.size == 0:
        raise ValueError(
            f"balanced_accuracy needs two equal, non-empty label arrays, got {prediction.shape}, {target.shape}"
        )
    classes = np.unique(target)
    return float(np.mean([(prediction[target == c] == c).mean() for c in classes]))


# --------------------------------------------------------------------------------------------------- surprise


def peak_alignment(curves: np.ndarray, violation_frame: np.ndarray, first: int, tolerance: int = 1) -> dict[str, float]:
    """Does peak surprise land on the violation? curves: (P, T) with frames < first ignored; violation_frame: (P,).

    aligned: fraction of clips whose argmax is in [violation, violation + tolerance]; mean_offset: mean of
    (argmax - violation) in frames.
    """
    curves = np.asarray(curves, np.float64)
    peak = first + np.nanargmax(curves[:, first:], axis=1)
    offset = peak - np.asarray(violation_frame)
    return {"aligned": float(((offset >= 0) & (offset <= tolerance)).mean()), "mean_offset": float(offset.mean())}


def cohens_h(p1: float, p2: float) -> float:
    """Effect size between two proportions: 2 asin(sqrt(p1)) - 2 asin(sqrt(p2)) (0.2 small, 0.5 medium, 0.8 large)."""
    clip = lambda p: min(max(float(p), 0.0), 1.0)  # noqa: E731
    return 2 * math.asin(math.sqrt(clip(p1))) - 2 * math.asin(math.sqrt(clip(p2)))


def paired_effect_size(differences: np.ndarray) -> float:
    """Cohen's d_z of paired differences: mean / std (scale free, so models with different energy scales compare)."""
    differences = np.asarray(differences, np.float64)
    std = differences.std(ddof=1) if differences.size > 1 else 0.0
    if std == 0:
        return 0.0 if differences.mean() == 0 else math.copysign(math.inf, differences.mean())
    return float(differences.mean() / std)
