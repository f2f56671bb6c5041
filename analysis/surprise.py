"""Violation-of-expectation: is the model surprised by impossible events, and only by those?

Surprise of frame t (t >= `context`) is computed from the frames before it, up to `memory` of them (by default the
longest past the predictor was trained on, so that a ball that went behind the occluder many frames ago is still in
view of the judge), two ways:

    energy   the model's energy of frame t, z optimised for that frame: the cheaper of the posterior's code
             (+ refinement) with its capacity cost and the prior's code, which costs nothing
    prior    the prediction error of frame t with z at the prior's mean (z never sees frame t)

A z that can explain anything would make impossible events cheap under `energy`; comparing it with `prior` is the
leakage check. A third signal, `change` (the distance between consecutive target representations: the surprise of
a model that expects nothing to change), and a fourth, `pixels` (the copy-last-frame control: the mean squared
pixel change from the previous frame), are the baselines the predictor's surprise has to beat; note that an
untrained model of this architecture is close to it, since its residual prediction starts from the last frame.
Per clip, the mean and the max over frames t >= context are kept. Per property:

    pairwise accuracy   fraction of matched sets where the impossible clips have the higher mean surprise: a set
                        is one pair, or for permanence / continuity / shape / color / size the two pairs spliced
                        from one scene (IntPhys' relative protocol, balanced in frame content; see envs.voe).
                        The plain per-pair figure is reported too (per_pair_accuracy)
    AUROC               max surprise separating impossible from possible clips
    peak alignment      fraction of impossible clips whose peak surprise is at the violation frame (or within
                        `peak_tolerance` frames after it)

The same numbers for randomly initialised models of the same configuration are the control; the effect size is
Cohen's h between the trained model's accuracy and the controls' mean accuracy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from envs.physics import BallsConfig
from envs.voe import PROPERTIES, VoEPairs, generate_pairs, voe_config_for
from worldmodel.model import WorldModel, distance

from . import inference
from .metrics import auroc, cohens_h, matched_accuracy, paired_effect_size, pairwise_accuracy, peak_alignment
from .probes import random_model

SIGNALS = ("energy", "prior", "change", "pixels")


@dataclass
class SurpriseConfig:
    """Sizes and settings of the VoE suite."""

    pairs: int = 256
    """Matched pairs per property."""
    properties: tuple[str, ...] = PROPERTIES
    """Properties to test (see envs.voe.PROPERTIES)."""
    controls: int = 5
    """Randomly initialised models evaluated as the untrained control."""
    frames_after: int = 6
    """Frames after the earliest violation frame (clip length = context + 2 + frames_after + 1)."""
    context: int = 0
    """Surprise is scored from frame `context` on (0: the model's context_frames); violations come no earlier than
    frame context + 2 (`envs.voe.voe_config_for`)."""
    memory: int = 0
    """Each frame's surprise is predicted from up to this many frames before it (0: the longest past the predictor
    was trained on, `analysis.inference.trained_window`), so a model with memory can use what it saw before the
    ball hid; the scenes hide a ball for up to memory - 2 frames (at most 8). At most model.predictor.max_len."""
    peak_tolerance: int = 2
    """A peak counts as aligned when it is 0..peak_tolerance frames after the violation frame."""
    examples: int = 2
    """Pairs per property whose surprise curves are kept for plots."""
    seed: int = 40_000
    """Root seed of the pairs and of the control models."""


def clip_surprise(model: WorldModel, clips: np.ndarray, context: int, *, memory: int | None = None,
                  batch_size: int = 64) -> dict[str, np.ndarray]:
    """(P, T, H, W, 3) clips -> {"energy", "prior", "change", "pixels"}: (P, T) each, nan before `context`."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in SIGNALS}
    for start in range(0, clips.shape[0], batch_size):
        chunk = clips[start : start + batch_size]
        online, target = inference.encode(model, chunk), inference.encode(model, chunk, target=True)
        out["energy"].append(inference.sliding_energy(model, online, target, context, memory=memory)
                             .cpu().double().numpy())
        out["prior"].append(inference.sliding_prior_error(model, online, target, context, memory=memory)
                            .cpu().double().numpy())
        change = distance(target[:, 1:], target[:, :-1])  # (B, T-1): surprise of "nothing changes"
        change = torch.cat([torch.full_like(change[:, :1], float("nan")), change], 1)
        change[:, :context] = float("nan")
        out["change"].append(change.cpu().double().numpy())
        out["pixels"].append(pixel_change(chunk, context))
    return {name: np.concatenate(values) for name, values in out.items()}


def pixel_change(clips: np.ndarray, context: int) -> np.ndarray:
    """The copy-last-frame control: mean squared pixel change from the previous frame, in [0, 1] units.
    (P, T, H, W, 3) uint8 -> (P, T), nan before `context`. On public intuitive-physics benchmarks this baseline
    matches published models where the event is in view; behind an occluder it has nothing to see."""
    frames = clips.astype(np.float32) / 255.0
    change = ((frames[:, 1:] - frames[:, :-1]) ** 2).mean(axis=(2, 3, 4)).astype(np.float64)  # (P, T-1)
    out = np.concatenate([np.full_like(change[:, :1], np.nan), change], axis=1)
    out[:, :context] = np.nan
    return out


def score_pairs(possible: np.ndarray, impossible: np.ndarray, violation: np.ndarray, groups: np.ndarray,
                context: int, tolerance: int) -> dict[str, float]:
    """Metrics of one property from (P, T) surprise curves of the possible and impossible clips."""
    mean_p, mean_i = np.nanmean(possible[:, context:], 1), np.nanmean(impossible[:, context:], 1)
    max_p, max_i = np.nanmax(possible[:, context:], 1), np.nanmax(impossible[:, context:], 1)
    peak = peak_alignment(impossible, violation, context, tolerance)
    difference = peak_alignment(impossible - possible, violation, context, tolerance)
    return {
        "pairwise_accuracy": matched_accuracy(mean_i, mean_p, groups),
        "per_pair_accuracy": pairwise_accuracy(mean_i, mean_p),
        "auroc": auroc(max_i, max_p),
        "peak_aligned": peak["aligned"],
        "peak_offset": peak["mean_offset"],
        "difference_peak_aligned": difference["aligned"],
        "effect_dz": paired_effect_size(mean_i - mean_p),
    }


def _evaluate_model(model: WorldModel, suite: dict[str, VoEPairs], context: int, memory: int, config: SurpriseConfig
                    ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, np.ndarray]]]:
    """metrics[property][signal] and curves[property][signal + '/possible' | '/impossible']."""
    model.eval()
    metrics, curves = {}, {}
    for name, pairs in suite.items():
        possible = clip_surprise(model, pairs.possible, context, memory=memory)
        impossible = clip_surprise(model, pairs.impossible, context, memory=memory)
        metrics[name] = {
            signal: score_pairs(possible[signal], impossible[signal], pairs.violation_frame, pairs.group, context,
                                config.peak_tolerance)
            for signal in SIGNALS
        }
        metrics[name]["by_kind"] = _by_kind(pairs, possible, impossible, context)
        curves[name] = {f"{s}/{kind}": clips[s] for s in SIGNALS
                        for kind, clips in (("possible", possible), ("impossible", impossible))}
    return metrics, curves


def _by_kind(pairs: VoEPairs, possible: dict[str, np.ndarray], impossible: dict[str, np.ndarray], context: int
             ) -> dict[str, dict]:
    """Energy accuracy / AUROC per kind of scene (the variant's last word: 'occluder' or 'view'), for properties
    built both behind the occluder and in view. Only the former needs a memory of the ball: in view, a vanishing,
    appearing or jumping ball is an abrupt change that even "nothing changes" flags."""
    if pairs.property not in ("permanence", "continuity"):
        return {}
    kinds = np.array([v.rsplit("_", 1)[-1] for v in pairs.variant])
    out = {}
    for kind in sorted(set(kinds.tolist())):
        rows = kinds == kind
        out[kind] = {}
        for signal, prefix in (("energy", ""), ("pixels", "pixels_")):  # the model, and the copy-last-frame control
            imp, pos = impossible[signal][rows, context:], possible[signal][rows, context:]
            out[kind].update({
                f"{prefix}pairwise_accuracy": matched_accuracy(np.nanmean(imp, 1), np.nanmean(pos, 1),
                                                               pairs.group[rows]),
                f"{prefix}auroc": auroc(np.nanmax(imp, 1), np.nanmax(pos, 1)),
            })
    return out


def build_suite(balls: BallsConfig, context: int, config: SurpriseConfig, *, memory: int | None = None
                ) -> dict[str, VoEPairs]:
    voe = voe_config_for(context, frames_after=config.frames_after, memory=memory)
    return {name: generate_pairs(balls, name, config.pairs, config.seed, voe) for name in config.properties}


def run_surprise(model: WorldModel, balls: BallsConfig, config: SurpriseConfig | None = None, *,
                 window: int | None = None, log=print) -> dict[str, object]:
    """The VoE suite for a trained model and its random-init controls; JSON-able. window: the longest past the
    predictor was trained on (`inference.trained_window`), the default for config.memory."""
    config = config or SurpriseConfig()
    unknown = [p for p in config.properties if p not in PROPERTIES]
    if unknown:
        raise ValueError(f"unknown VoE properties {unknown}; expected some of {', '.join(PROPERTIES)}")
    started = time.perf_counter()
    context = config.context or model.config.context_frames
    memory = config.memory or min(max(window or context, context), model.config.predictor.max_len)
    if not 1 <= context < model.config.predictor.max_len:
        raise ValueError(f"surprise context {context}: the predictor reads 1 to model.predictor.max_len - 1 = "
                         f"{model.config.predictor.max_len - 1} frames")
    if not context <= memory <= model.config.predictor.max_len:
        raise ValueError(f"surprise memory {memory}: must be in [context={context}, model.predictor.max_len="
                         f"{model.config.predictor.max_len}]")
    suite = build_suite(balls, context, config, memory=memory)
    log(f"surprise: {len(suite)} properties x {config.pairs} pairs generated ({time.perf_counter() - started:.0f} s)")
    trained, curves = _evaluate_model(model, suite, context, memory, config)
    log(f"surprise: trained model done ({time.perf_counter() - started:.0f} s)")
    controls = []
    for k in range(config.controls):
        metrics, _ = _evaluate_model(random_model(model, config.seed + 1 + k), suite, context, memory, config)
        controls.append(metrics)
        log(f"surprise: control {k + 1}/{config.controls} done ({time.perf_counter() - started:.0f} s)")

    properties: dict[str, object] = {}
    for name, pairs in suite.items():
        entry: dict[str, object] = {"pairs": len(pairs)}
        for signal in SIGNALS:
            ours = trained[name][signal]
            summary: dict[str, object] = dict(ours)
            if controls:
                accuracies = np.array([c[name][signal]["pairwise_accuracy"] for c in controls])
                aurocs = np.array([c[name][signal]["auroc"] for c in controls])
                summary["control_accuracy_mean"] = float(accuracies.mean())
                summary["control_accuracy_std"] = float(accuracies.std())
                summary["control_auroc_mean"] = float(aurocs.mean())
                peaks = [c[name][signal]["peak_aligned"] for c in controls]
                summary["control_peak_aligned_mean"] = float(np.mean(peaks))
                summary["effect_size_h"] = cohens_h(ours["pairwise_accuracy"], accuracies.mean())
            entry[signal] = summary
        # Accuracy per sub-case (vanish / appear, behind the occluder / in view, ...) for the trained model.
        entry["by_variant"] = {
            variant: pairwise_accuracy(
                np.nanmean(curves[name]["energy/impossible"][pairs.variant == variant, context:], 1),
                np.nanmean(curves[name]["energy/possible"][pairs.variant == variant, context:], 1),
            )
            for variant in sorted(set(pairs.variant.tolist()))
        }
        if trained[name]["by_kind"]:
            entry["by_kind"] = {
                kind: {**scores, **({"control_accuracy_mean": float(np.mean(
                    [c[name]["by_kind"][kind]["pairwise_accuracy"] for c in controls]))} if controls else {})}
                for kind, scores in trained[name]["by_kind"].items()
            }
        entry["examples"] = [
            {
                "variant": str(pairs.variant[i]),
                "violation_frame": int(pairs.violation_frame[i]),
                **{key: np.nan_to_num(values[i], nan=0.0).tolist() for key, values in curves[name].items()},
            }
            for i in range(min(config.examples, len(pairs)))
        ]
        properties[name] = entry
    return {
        "properties": properties,
        "context": context,
        "memory": memory,
        "clip_length": int(next(iter(suite.values())).possible.shape[1]),
        "config": asdict(config),
        # The VoE suite's settings as drawn (envs.voe.VoEConfig), and per property the scenes slowed to fit.
        "scenes": {**asdict(next(iter(suite.values())).config),
                   "slowed": {name: pairs.slowed for name, pairs in suite.items()}},
        "seconds": time.perf_counter() - started,
    }


def targets(result: dict[str, object], signal: str = "energy") -> dict[str, object]:
    """The issue's VoE targets: accuracy and AUROC >= 0.95 on permanence, continuity and solidity; control ~50%."""
    out: dict[str, object] = {}
    for name in ("permanence", "continuity", "solidity", "control"):
        entry = result["properties"].get(name)
        if entry is None:
            continue
        metrics = entry[signal]
        out[name] = {key: metrics.get(key) for key in
                     ("pairwise_accuracy", "auroc", "control_accuracy_mean", "effect_size_h", "peak_aligned")}
    return out
