"""`worldmodel report`: one folder that shows how good a model is in a minute.

    index.html / index.md     headline numbers against the targets, then every figure and video
    futures.json probes.json surprise.json capacity.json     the full results
    *.png                      futures curves, probe bars vs controls, VoE bars, surprise curves, training curves,
                               collapse telemetry, capacity trade-off
    videos/*.mp4 (+ .gif)      sampled-futures grids (an ordinary clip and a fork scene), VoE example pairs

The same results are logged to the run's mlflow.db (when it has one) as a run tagged analysis=report, nested
under the training run.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.clips import generate_clips
from envs.physics import BallsConfig
from envs.scenes import generate_fork_scenes
from envs.voe import generate_pairs, voe_config_for
from worldmodel.config_io import atomic_write_text
from worldmodel.model import WorldModel

from . import inference, plots
from .loading import foreign_data_note, load_model, refit_note, run_config, simulator_config
from .multifuture import FuturesConfig, capacity_point, fork_configs, headline_family, run_futures
from .probes import ProbeConfig, run_probes
from .state_probes import StateProbeConfig, probe_run_state, reads_own_state
from .surprise import SurpriseConfig, run_surprise
from .tracking import log_analysis, run_directory, training_history

ANALYSES = ("futures", "probe", "surprise")


@dataclass
class ReportConfig:
    """What goes into a report and how big each analysis is."""

    futures: FuturesConfig = field(default_factory=FuturesConfig)
    """Multiple-futures evaluation."""
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    """Probe suite."""
    surprise: SurpriseConfig = field(default_factory=SurpriseConfig)
    """VoE suite."""
    skip: tuple[str, ...] = ()
    """Analyses left out (of ANALYSES)."""
    compare: tuple[str, ...] = ()
    """Other checkpoints placed on the capacity trade-off curve next to this one."""
    video_properties: tuple[str, ...] = ("permanence", "continuity", "solidity", "collision")
    """VoE properties with an example-pair video."""
    probe_suite: str = "auto"
    """'simulator': the bouncing-balls probe suite; 'state': the run's own recorded state (gym runs,
    `analysis.state_probes`); 'auto': state for a run trained on gym episodes, else simulator."""
    state_probes: StateProbeConfig = field(default_factory=StateProbeConfig)
    """State probes of a gym run."""


def check_model(model: WorldModel) -> None:
    """The suites drive the bouncing-balls simulator, which has no actions."""
    if getattr(model.config, "action_dim", 0):
        raise ValueError(
            f"this model is action-conditioned (model.action_dim={model.config.action_dim}); the analysis suites "
            "use the bouncing-balls simulator, which has no actions (`worldmodel report` shows what applies: training "
            "curves, collapse telemetry and the futures of the run's own clip; `worldmodel sample` samples more)"
        )


# --------------------------------------------------------------------------------------------------- headline


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (metric, measured, target, comparison, passed) of every issue target that the results cover."""
    rows: list[dict[str, Any]] = []

    def row(name: str, value: Any, target: float | None, better: str, note: str = "") -> None:
        passed = None
        if value is not None and target is not None and np.isfinite(value):
            passed = bool(value <= target) if better == "<=" else bool(value >= target)
        rows.append({"metric": name, "value": value, "target": target, "better": better, "passed": passed,
                     "note": note})

    futures = results.get("futures")
    if futures:
        t = futures["targets"]
        family = t.get("headline_family", "2way")
        row(f"best-of-10 / deterministic error at the last horizon ({family} fork)",
            t["best_of_10_over_deterministic_at_h10"], 0.5, "<=")
        ceiling = t.get("simulator_ceiling_mode_coverage_at_n10")
        row(f"mode coverage at N=10 ({family} fork)", t["mode_coverage_at_n10"], 0.9, ">=",
            "" if ceiling is None else f"the training simulator's own randomness reaches {ceiling:.3f} "
            "(ceiling of any model of that data)")
        first = next(iter(futures["families"].values()))
        ranking = first["energy_ranking"]["vs_other_scenes"]
        row("energy: true future ranked first among other scenes' futures (top-1 rate)", ranking["top1"], None, ">=",
            f"mean rank {ranking['mean_rank']:.2f} of {ranking['candidates']:.0f}")
        shuffled = first["energy_ranking"].get("vs_shuffled_time")
        if shuffled:
            row("energy: true future ranked first among its time-shuffled versions (top-1 rate)", shuffled["top1"],
                None, ">=", f"mean rank {shuffled['mean_rank']:.2f} of {shuffled['candidates']:.0f}")
        leak = futures["z_leak"].get("ordinary_clips", {})
        undefined = leak and leak.get("leak_ratio") is None
        row("z-leak ratio (shuffled / true error reduction by the posterior)", leak.get("leak_ratio"), None, "<=",
            f"undefined: the posterior removes {leak['true/reduction']:.2%} of the error for the true frame "
            "(z unused)" if undefined else "near 0: z cannot be steered to arbitrary frames")
        events = futures.get("capacity_by_event")
        if events:
            row("z capacity at forks / at quiet steps", events["fork_over_quiet"], None, ">=",
                f"fork steps carry {events['fork']['share']:.0%} of the capacity used "
                f"({events['fork']['steps']} of {sum(events[e]['steps'] for e in ('fork', 'kick', 'quiet'))} steps); "
                "1.0: z is spread evenly, not aimed at the forks")
        reveal = futures["families"].get(family, {}).get("reveal_step", {})
        if reveal.get("scenes"):
            row(f"share of the way z takes in where it first shows ({family} fork)", reveal["share_captured"], None,
                ">=", f"the posterior's codes of two ways lie {reveal['posterior_separation']:.2f} prior stds apart; "
                f"a z that renders the way lies {reveal['best_z_distance']:.1f} prior stds from the prior's mean")
    probes = results.get("probe")
    if probes and probes.get("suite") == "gym_state":
        env = probes.get("recording", {}).get("env_id", "the env")
        mean = ("mean over the state", {"results": probes["mean_over_state"]})
        for name, entry in [*probes["targets"].items(), mean]:
            results_of = entry.get("results") or {}
            if "model" not in results_of:
                continue
            for probe_model in results_of["model"]:
                note = ", ".join(f"{f} {results_of[f][probe_model]['test']:.3f}"
                                 for f in ("random_init", "pixels", "oracle_positions")
                                 if probe_model in results_of.get(f, {}))
                row(f"{env} {name} R2, {probe_model} probe, held-out episodes",
                    results_of["model"][probe_model]["test"], None, ">=", f"controls / ceiling: {note}")
    elif probes:
        for target, goal in (("position", 0.95), ("velocity", 0.9)):
            entry = probes["targets"][target]["results"]
            others = ("random_init", "pixels", "oracle_positions")
            note = ", ".join(f"{f} {entry[f]['linear']['test']:.3f}" for f in others if f in entry)
            row(f"{target} R2, linear probe, in distribution", entry["model"]["linear"]["test"], goal, ">=",
                f"controls / ceiling: {note}")
            if "mlp" in entry["model"]:
                note = ", ".join(f"{f} {entry[f]['mlp']['test']:.3f}" for f in others if "mlp" in entry.get(f, {}))
                row(f"{target} R2, MLP probe, in distribution", entry["model"]["mlp"]["test"], goal, ">=",
                    f"controls / ceiling: {note}")
    surprise = results.get("surprise")
    if surprise:
        for name in ("permanence", "continuity", "solidity"):
            entry = surprise["properties"].get(name)
            if entry is None:
                continue
            e, pixels = entry["energy"], entry.get("pixels", {})
            control = e.get("control_accuracy_mean")
            note = f"untrained control {control:.3f}" if control is not None else ""
            if "pairwise_accuracy" in pixels:
                note += f"{'; ' if note else ''}copy-last-frame control {pixels['pairwise_accuracy']:.3f}"
            row(f"VoE {name}: pairwise accuracy", e["pairwise_accuracy"], 0.95, ">=", note)
            kinds = entry.get("by_kind", {})
            # Max surprise compares clips of different scenes; where it fails is seen per kind of scene.
            row(f"VoE {name}: AUROC", e["auroc"], 0.95, ">=",
                ", ".join(f"{'behind the occluder' if kind == 'occluder' else 'in ' + kind} {scores['auroc']:.3f}"
                          for kind, scores in sorted(kinds.items())))
            hidden = kinds.get("occluder")
            if hidden:
                control = hidden.get("control_accuracy_mean")
                notes = [f"untrained control {control:.3f}"] if control is not None else []
                if "pixels_pairwise_accuracy" in hidden:
                    notes.append(f"copy-last-frame control {hidden['pixels_pairwise_accuracy']:.3f} (AUROC "
                                 f"{hidden['pixels_auroc']:.3f})")
                row(f"VoE {name}, behind the occluder only: pairwise accuracy", hidden["pairwise_accuracy"], 0.9,
                    ">=", "; ".join(notes))
                row(f"VoE {name}, behind the occluder only: AUROC", hidden["auroc"], 0.9, ">=", "")
        if "control" in surprise["properties"]:
            row("VoE control (both possible): pairwise accuracy, expect ~0.5",
                surprise["properties"]["control"]["energy"]["pairwise_accuracy"], None, ">=")
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def headline_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `headline` rows."""
    lines = ["| metric | measured | target | met | note |", "|---|---|---|---|---|"]
    for r in rows:
        target = f"{r['better']} {r['target']}" if r["target"] is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r["passed"]]
        lines.append(f"| {r['metric']} | {_fmt(r['value'])} | {target} | {met} | {r['note']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- videos


def voe_pair_video(balls: BallsConfig, property: str, context: int, seed: int, path: Path, *, pair: int = 0,
                   scale: int = 3, memory: int | None = None) -> Path:
    """Possible (top) and impossible (bottom) clip of one VoE pair; frames from the violation on get a red border."""
    from .futures import mark_predicted
    from .video import make_grid, write_video

    pairs = generate_pairs(balls, property, pair + 1, seed, voe_config_for(context, memory=memory))
    t = int(pairs.violation_frame[pair])
    grid = make_grid([pairs.possible[pair], mark_predicted(pairs.impossible[pair], t)],
                     labels=["possible", f"impossible ({pairs.variant[pair]})"], scale=scale)
    write_video(grid, path.with_suffix(".mp4"), fps=4)
    write_video(grid, path.with_suffix(".gif"), fps=4)
    return path.with_suffix(".mp4")


def _own_video(run_dir: Path | None, out: Path) -> list[Path]:
    """The futures grid that training wrote of a validation clip of the run's own data (<run>/samples/futures.mp4),
    copied in as videos/futures-own-data.mp4 (+ .gif): the one video of a non-simulator run's own material."""
    import shutil

    source = None if run_dir is None else run_dir / "samples" / "futures.mp4"
    if source is None or not source.is_file():
        return []
    target = out / "videos" / "futures-own-data.mp4"
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".mp4", ".gif"):
        if source.with_suffix(suffix).is_file():
            shutil.copyfile(source.with_suffix(suffix), target.with_suffix(suffix))
    return [target]


def _videos(model: WorldModel, balls: BallsConfig, config: ReportConfig, out: Path, window: int, log
            ) -> list[Path]:
    from .futures import write_futures_video

    context = model.config.context_frames
    horizon = min(config.futures.horizon, model.config.predictor.max_len - context)
    videos = []
    clip = generate_clips(balls, 1, context + horizon, seed=config.futures.seed + 999).frames[0]
    videos.append(write_futures_video(model, inference.as_frames(clip[None])[0], context=context, num_samples=8,
                                      path=out / "videos" / "futures-clip.mp4", seed=config.futures.seed,
                                      window=window))
    # The headline fork: a rough-wall bounce when the training data has them, else the first kick family.
    fork_config = fork_configs(balls, config.futures, context, horizon)[headline_family(balls, config.futures)]
    fork = generate_fork_scenes(balls, fork_config, 1, seed=config.futures.seed)
    videos.append(write_futures_video(model, inference.as_frames(fork.realized_clips())[0], context=context,
                                      num_samples=8, path=out / "videos" / "futures-fork.mp4",
                                      seed=config.futures.seed, window=window))
    for name in config.video_properties:
        if name in config.surprise.properties:
            path = out / "videos" / f"voe-{name}.mp4"
            videos.append(voe_pair_video(balls, name, config.surprise.context or context, config.surprise.seed, path,
                                         memory=config.surprise.memory or min(window, model.config.predictor.max_len)))
    log(f"report: {len(videos)} videos written")
    return videos


# --------------------------------------------------------------------------------------------------- report


@torch.no_grad()
def collapse_telemetry(model: WorldModel, balls: BallsConfig, seed: int, clips: int = 64) -> dict[str, Any]:
    """Per-dimension std and effective rank of the encoder's representations of held-out frames."""
    frames = generate_clips(balls, clips, 8, seed=seed).frames
    reps = inference.encode(model, frames).reshape(-1, model.config.encoder.dim).cpu().double().numpy()
    stds = reps.std(0)
    singular = np.linalg.svd(reps - reps.mean(0), compute_uv=False)
    p = singular / singular.sum()
    rank = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    return {"effective_rank": rank, "dim": int(reps.shape[1]), "std_min": float(stds.min()),
            "std_mean": float(stds.mean()), "stds": stds.tolist()}


def build_report(checkpoint: str | Path, out: str | Path | None = None, config: ReportConfig | None = None, *,
                 device: str = "cpu", window: int = 0, mlflow: bool = True, log=print) -> Path:
    """Run the analyses and write the report folder; returns the path of index.html."""
    config = config or ReportConfig()
    started = time.perf_counter()
    model, model_dir = load_model(checkpoint, device=device)
    model.eval()
    balls = simulator_config(model_dir, model.config.image_size)
    window = window or inference.trained_window(model, model_dir)
    run_dir = run_directory(model_dir)
    out = Path(out) if out else (run_dir or model_dir.parent) / "analysis" / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes = [note for note in (refit_note(model_dir), foreign_data_note(model_dir)) if note]
    run = run_config(model_dir)
    own_state = reads_own_state(run, config.probe_suite)
    acts = bool(getattr(model.config, "action_dim", 0))
    if own_state and "probe" not in config.skip:
        notes.append("the probes read the run's own state: held-out episodes of its env, recorded with its spec "
                     "under another seed (the env's observation vector per frame)")
    if acts:
        # The suites and their videos roll the model out on the action-free simulator; what is left still tells a
        # person how training went and what the model predicts of its own data.
        left_out = {"futures", "surprise"} | (set() if own_state else {"probe"})
        config = replace(config, skip=tuple(sorted(set(config.skip) | left_out)))
        suites = "futures and surprise suites" if own_state else "futures, probe and surprise suites"
        notes.append(f"this model is action-conditioned (model.action_dim={model.config.action_dim}): the {suites} "
                     "and their videos drive the bouncing-balls simulator, which has no actions, so they are left "
                     "out; shown are the training curves, the collapse telemetry of simulator frames, and the "
                     "futures training sampled of the run's own validation clip (which follow its recorded "
                     "actions)")
    for note in notes:
        log(f"report: note: {note}")

    results: dict[str, Any] = {}
    if "futures" not in config.skip:
        results["futures"] = run_futures(model, balls, config.futures, window=window, log=log)
    if "probe" not in config.skip and own_state:
        try:
            results["probe"] = probe_run_state(model, run, config.state_probes, window=window, log=log)
        except ValueError as error:  # no env to record (or no gymnasium): the rest of the report still stands
            notes.append(f"no state probes: {error}")
            log(f"report: note: {notes[-1]}")
    elif "probe" not in config.skip:
        results["probe"] = run_probes(model, balls, config.probes, window=window, log=log)
    if "surprise" not in config.skip:
        results["surprise"] = run_surprise(model, balls, config.surprise, window=window, log=log)
    capacity = [dict(results["futures"]["capacity"], checkpoint=str(model_dir))] if "futures" in results else []
    if "futures" in results:
        futures = results["futures"]
        first = futures["families"][futures["targets"].get("headline_family", next(iter(futures["families"])))]
        capacity[0]["best_of_10"] = first["best_of_n"].get("10", [None])[-1]
    for other in config.compare:
        other_model, other_dir = load_model(other, device=device)
        point = capacity_point(other_model.eval(), balls, window=inference.trained_window(other_model, other_dir))
        capacity.append(dict(point, checkpoint=str(other_dir)))
    if capacity:
        results["capacity"] = capacity
    collapse = collapse_telemetry(model, balls, seed=config.probes.seed + 77)
    results["collapse"] = {k: v for k, v in collapse.items() if k != "stds"}
    for name, value in results.items():
        atomic_write_text(out / f"{name}.json", json.dumps(value, indent=1))

    figures = _figures(results, capacity, collapse, config, out)
    history = training_history(run_dir, use_mlflow=mlflow) if run_dir is not None else {}
    if history:
        figures.insert(-1, ("Training curves", plots.training_curves(history, out / "training.png")))
    videos = _own_video(run_dir, out) + ([] if acts else _videos(model, balls, config, out, window, log))

    rows = headline(results)
    index = _write_index(out, model_dir, window, rows, results, figures, videos, history_found=bool(history),
                         notes=notes)
    if mlflow:
        run_id = log_analysis(run_dir, "report", results, [out], params={"checkpoint": str(model_dir)})
        if run_id:
            log(f"report: logged to MLflow run {run_id} in {run_dir / 'mlflow.db'}")
    log(f"report: {index} ({time.perf_counter() - started:.0f} s)")
    return index


def _figures(results: dict[str, Any], capacity: list[dict[str, Any]], collapse: dict[str, Any],
             config: ReportConfig, out: Path) -> list[tuple[str, Path]]:
    """(title, PNG path) of every figure the results allow, in report order."""
    figures: list[tuple[str, Path]] = []
    if "futures" in results:
        figures.append(("Multiple futures: best-of-N error and mode coverage",
                        plots.futures_curves(results["futures"], out / "futures.png")))
    if capacity:
        figures.append(("Capacity trade-off", plots.capacity_curve(capacity, out / "capacity.png")))
    if "probe" in results:
        probe = results["probe"]
        figures.append(("Probes (linear) vs controls", plots.probe_bars(probe, out / "probes-linear.png")))
        if "mlp" in probe["config"]["probe_models"]:
            figures.append(("Probes (MLP) vs controls", plots.probe_bars(probe, out / "probes-mlp.png", "mlp")))
        if probe.get("predicted", {}).get("horizons"):
            figures.append(("Probes read on predicted representations",
                            plots.predicted_probe_curves(probe, out / "probes-predicted.png")))
    if "surprise" in results:
        surprise = results["surprise"]
        figures.append(("Violation of expectation: trained vs untrained", plots.voe_bars(surprise, out / "voe.png")))
        figures.append(("Surprise curves (energy, z optimised)",
                        plots.surprise_curves(surprise, out / "surprise-energy.png")))
        figures.append(("Surprise curves (z from the prior)",
                        plots.surprise_curves(surprise, out / "surprise-prior.png", "prior")))
    figures.append(("Collapse telemetry: per-dimension std",
                    plots.dimension_std(np.asarray(collapse["stds"]), out / "collapse.png")))
    return figures


_STYLE = ("body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:3px 8px}")


def _write_index(out: Path, model_dir: Path, window: int, rows: list[dict[str, Any]], results: dict[str, Any],
                 figures: list[tuple[str, Path]], videos: list[Path], *, history_found: bool,
                 notes: list[str] = ()) -> Path:
    collapse = results["collapse"]
    facts = [
        *(f"note: {n}" for n in notes),
        f"model: `{model_dir}`",
        f"predictor window used: {window} frames (the longest input sequence seen in training)",
        f"collapse: effective rank {collapse['effective_rank']:.1f} of {collapse['dim']}, "
        f"min per-dim std {collapse['std_min']:.3f}",
    ]
    if not history_found:
        facts.append("training curves: no mlflow.db or metrics.jsonl of a training run next to this model")
    md = ["# World model report", "", *[f"- {f}" for f in facts], "", "## Targets", "", headline_table(rows), ""]
    for title, path in figures:
        md += [f"## {title}", "", f"![{title}]({path.name})", ""]
    md += ["## Videos", ""]
    md += [f"- [{p.stem}](videos/{p.name}) ([gif](videos/{p.with_suffix('.gif').name}))" for p in videos]
    md += ["", "Full results: " + ", ".join(f"[{n}.json]({n}.json)" for n in results)]
    atomic_write_text(out / "index.md", "\n".join(md) + "\n")

    table = ["<table><tr><th>metric</th><th>measured</th><th>target</th><th>met</th><th>note</th></tr>"]
    for r in rows:
        target = f"{r['better']} {r['target']}" if r["target"] is not None else "-"
        met = {True: "yes", False: "<b style='color:#c00'>no</b>", None: "-"}[r["passed"]]
        table.append(f"<tr><td>{html.escape(r['metric'])}</td><td>{_fmt(r['value'])}</td><td>{html.escape(target)}</td>"
                     f"<td>{met}</td><td>{html.escape(r['note'])}</td></tr>")
    table.append("</table>")
    body = ["<h1>World model report</h1>", "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>",
            "<h2>Targets</h2>", "\n".join(table)]
    for title, path in figures:
        body += [f"<h2>{html.escape(title)}</h2>", f"<img src='{path.name}' style='max-width:100%'>"]
    body.append("<h2>Videos</h2>")
    for p in videos:
        body.append(f"<figure><video src='videos/{p.name}' controls loop muted style='max-width:100%'></video>"
                    f"<figcaption>{html.escape(p.stem)} (<a href='videos/{p.with_suffix('.gif').name}'>gif</a>)"
                    "</figcaption></figure>")
    body.append("<p>Full results: " + ", ".join(f"<a href='{n}.json'>{n}.json</a>" for n in results) + "</p>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>World model report</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index
