"""Matplotlib figures of the analysis results (PNG). matplotlib is imported on first use, with the Agg backend, so
importing this module needs nothing and a missing matplotlib is reported by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .video import MissingDependencyError

FEATURE_COLORS = {"model": "#1f77b4", "random_init": "#ff7f0e", "pixels": "#7f7f7f",
                  "oracle_positions": "#bcbd22", "model_predictor": "#2ca02c", "random_predictor": "#d62728"}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("the report's figures need matplotlib: pip install matplotlib") from exc
    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def probe_bars(result: dict[str, Any], path: Path, probe_model: str = "linear") -> Path:
    """Test score of every target for each feature set (trained model vs controls), one panel per metric."""
    plt = _pyplot()
    targets = dict(result["targets"])
    panels = [(metric, title) for metric, title in (("r2", "R2 (test, in distribution)"),
                                                     ("balanced_accuracy", "balanced accuracy (test)"))
              if any(t.get("metric") == metric and t.get("results") for t in targets.values())]
    panels = panels or [("r2", "R2 (test, in distribution)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels):
        names = [n for n, t in targets.items() if t.get("metric") == metric and t.get("results")]
        features = sorted({f for n in names for f in targets[n]["results"]}, key=list(FEATURE_COLORS).index)
        width = 0.8 / max(1, len(features))
        for j, feature in enumerate(features):
            values = [targets[n]["results"].get(feature, {}).get(probe_model, {}).get("test", np.nan) for n in names]
            ax.bar(np.arange(len(names)) + j * width, np.clip(values, -0.2, 1.0), width, label=feature,
                   color=FEATURE_COLORS.get(feature))
        for i, n in enumerate(names):
            ax.hlines(targets[n]["chance"], i - 0.1, i + 0.9 - 0.1, colors="k", linestyles=":", linewidth=1)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20)
        ax.set_ylim(-0.2, 1.02)
        ax.set_title(f"{title}, {probe_model} probe (dotted: chance)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def predicted_probe_curves(result: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    predicted = result["predicted"]
    # The simulator suite reads position and velocity; a gym run's state probes every state entry (`by_state`).
    entries = predicted.get("by_state") or {name: predicted[name] for name in ("position", "velocity")
                                            if predicted.get(name)}
    fig, ax = plt.subplots(figsize=(6 if len(entries) <= 2 else 9, 4))
    palette = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
    for (name, entry), color in zip(entries.items(), palette * (len(entries) // len(palette) + 1)):
        ax.plot(predicted["horizons"], entry["r2_by_horizon"], "-o", color=color, label=f"{name}: predicted reps")
        if entry["copy_last_r2_by_horizon"]:
            ax.plot(predicted["horizons"], entry["copy_last_r2_by_horizon"], "--", color=color,
                    label=f"{name}: last observed frame")
    ax.set_xlabel("horizon (frames after the context)")
    ax.set_ylabel("R2 of the linear probe")
    ax.set_ylim(-0.5, 1.02)
    ax.set_title("probes read on the model's own rollout")
    if len(entries) <= 2:
        ax.legend(fontsize=8)
    else:  # beside the axes: many curves would hide under it
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def voe_bars(result: dict[str, Any], path: Path, signal: str = "energy") -> Path:
    """Pairwise accuracy and AUROC per property, trained vs the random-init controls."""
    plt = _pyplot()
    props = list(result["properties"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for ax, (key, control_key, title) in zip(axes, [
        ("pairwise_accuracy", "control_accuracy_mean", "pairwise accuracy (mean surprise)"),
        ("auroc", "control_auroc_mean", "AUROC (max surprise)"),
    ]):
        ours = [result["properties"][p][signal][key] for p in props]
        control = [result["properties"][p][signal].get(control_key, np.nan) for p in props]
        x = np.arange(len(props))
        ax.bar(x - 0.2, ours, 0.4, label="trained", color="#1f77b4")
        ax.bar(x + 0.2, control, 0.4, label="random init (mean)", color="#ff7f0e")
        if key == "pairwise_accuracy":
            spread = [result["properties"][p][signal].get("control_accuracy_std", 0.0) for p in props]
            ax.errorbar(x + 0.2, control, yerr=spread, fmt="none", ecolor="k", capsize=2)
        ax.axhline(0.5, color="k", linestyle=":", linewidth=1)
        ax.axhline(0.95, color="g", linestyle="--", linewidth=1)
        ax.set_xticks(x, props, rotation=20)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{title}, surprise = {signal}")
        ax.legend(fontsize=8)
    return _save(fig, path)


def surprise_curves(result: dict[str, Any], path: Path, signal: str = "energy") -> Path:
    """Surprise over time for the example pairs of every property; the dashed line is the violation frame."""
    plt = _pyplot()
    props = list(result["properties"])
    cols = 5
    rows = int(np.ceil(len(props) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    context = result["context"]
    for ax, name in zip(axes.ravel(), props):
        for i, example in enumerate(result["properties"][name]["examples"]):
            frames = np.arange(len(example[f"{signal}/possible"]))[context:]
            ax.plot(frames, example[f"{signal}/possible"][context:], color="#2ca02c", alpha=0.8,
                    label="possible" if i == 0 else None)
            ax.plot(frames, example[f"{signal}/impossible"][context:], color="#d62728", alpha=0.8,
                    label="impossible" if i == 0 else None)
            ax.axvline(example["violation_frame"], color="k", linestyle="--", linewidth=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("frame", fontsize=8)
    for ax in axes.ravel()[len(props):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"surprise ({signal}) per frame, example pairs")
    return _save(fig, path)


def futures_curves(result: dict[str, Any], path: Path) -> Path:
    """Best-of-N error by horizon (with the deterministic and copy-last baselines) and mode coverage by N."""
    plt = _pyplot()
    families = result["families"]
    fig, axes = plt.subplots(1, len(families) + 1, figsize=(5.2 * (len(families) + 1), 4))
    for ax, (name, family) in zip(axes, families.items()):
        horizons = np.arange(1, family["horizon"] + 1)
        for n, values in family["best_of_n"].items():
            ax.plot(horizons, values, label=f"best of {n}")
        ax.plot(horizons, family["deterministic"], "k--", label="deterministic (prior mean)")
        ax.plot(horizons, family["copy_last"], "k:", label="copy last frame")
        ax.set_xlabel("horizon")
        ax.set_ylabel("representation error")
        ax.set_title(f"{name} fork {family['probabilities']}")
        ax.legend(fontsize=7)
    ax = axes[-1]
    for name, family in families.items():
        ns = [int(n) for n in family["mode_coverage"]]
        ax.plot(ns, list(family["mode_coverage"].values()), "-o", label=name)
    ax.axhline(0.9, color="g", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("N samples")
    ax.set_title("mode coverage at the last horizon")
    ax.legend(fontsize=8)
    return _save(fig, path)


def capacity_curve(points: list[dict[str, Any]], path: Path) -> Path:
    """Error against capacity used, one point per model, labelled with its capacity settings."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    used = [p["capacity_used"] for p in points]
    for key, style in (("posterior_error", "-o"), ("prior_mean_error", "-s"), ("best_of_10", "-^")):
        values = [p.get(key) for p in points]
        if all(v is not None for v in values):
            order = np.argsort(used)
            ax.plot(np.asarray(used)[order], np.asarray(values, float)[order], style, label=key)
    for p in points:
        weight = p["kl_weight"] if p["capacity"] == "kl" else p["l1_weight"]
        ax.annotate(f"{p['capacity']} fb={p['free_bits']} w={weight}", (p["capacity_used"], p["prior_mean_error"]),
                    fontsize=7)
    ax.set_xlabel("capacity used (nats of KL per step, or |z|_1)")
    ax.set_ylabel("one-step representation error")
    ax.set_title("capacity trade-off")
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Loss, errors, capacity and collapse telemetry over training steps (what MLflow recorded)."""
    plt = _pyplot()
    panels = [
        ("loss", ["loss/total", "loss/prediction", "loss/rollout", "loss/reconstruction"]),
        ("error", ["error/prediction", "error/prior_mean_prediction", "error/copy_last", "error/rollout"]),
        ("latent", ["latent/kl_nats", "latent/capacity"]),
        ("collapse", ["collapse/effective_rank", "collapse/std_min", "collapse/std_mean"]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            points = history.get(key)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            continue
        if title == "collapse":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    return _save(fig, path)


def dimension_std(stds: np.ndarray, path: Path) -> Path:
    """Sorted per-dimension std of the encoder's representations on held-out clips (collapse shows as a tail)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(np.arange(len(stds)), np.sort(stds)[::-1], color="#1f77b4")
    ax.set_xlabel("dimension (sorted)")
    ax.set_ylabel("std over held-out frames")
    ax.set_title("representation spread per dimension")
    return _save(fig, path)
