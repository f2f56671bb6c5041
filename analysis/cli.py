"""Analysis subcommands of the `worldmodel` command line (registered by training/cli.py via `add_analysis_parsers`):

    worldmodel futures  --checkpoint DIR [--scenes 128 --samples 20 --horizon 10] [--compare DIR ...]
    worldmodel probe    --checkpoint DIR [--clips 1024 --ood-clips 64 --hidden-clips 512 --contact-clips 256]
                        [--suite auto|simulator|state --state-episodes 96]   (gym runs: their own state)
    worldmodel surprise --checkpoint DIR [--pairs 256 --controls 5 --properties permanence,continuity,...]
    worldmodel report   --checkpoint DIR [all of the sizes above] [--skip probe,...]

Each writes <out>/<name>.json (default out: <run>/analysis/) and prints a summary; results also go to the run's
mlflow.db as a run tagged analysis=<name> (off with --no-mlflow). Every size is a flag so that tests can run the
commands in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from envs.voe import PROPERTIES
from worldmodel.config_io import atomic_write_text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {', '.join(allowed)}")
        return names

    return parse


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model, run or checkpoint directory")
    parser.add_argument("--out", help="output folder (default: <run>/analysis)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--window", type=_non_negative, default=0,
                        help="most recent inputs the predictor sees (default: its training window, from config.yaml)")
    parser.add_argument("--threads", type=_non_negative, default=0,
                        help="CPU threads for torch and BLAS (0: library default)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log into the run's mlflow.db")


def _futures_args(parser: argparse.ArgumentParser) -> None:
    from .multifuture import FuturesConfig

    default = FuturesConfig()
    parser.add_argument("--scenes", type=_positive, default=default.scenes, help="fork scenes per family")
    parser.add_argument("--samples", type=_positive, default=default.samples,
                        help="prior samples per scene (>= 20 for N=20)")
    parser.add_argument("--horizon", type=_positive, default=default.horizon, help="future frames")
    parser.add_argument("--probe-clips", type=_positive, default=default.probe_clips,
                        help="clips the frozen position probe is fit on")
    parser.add_argument("--compare", nargs="*", default=[], help="other checkpoints for the capacity trade-off curve")


def _probe_args(parser: argparse.ArgumentParser) -> None:
    from .probes import ProbeConfig
    from .state_probes import SUITES, StateProbeConfig

    default = ProbeConfig()
    parser.add_argument("--clips", type=_positive, default=default.clips,
                        help="in-distribution clips (train/val/test by clip)")
    parser.add_argument("--ood-clips", type=_positive, default=default.ood_clips, help="out-of-distribution test clips")
    parser.add_argument("--hidden-clips", type=_positive, default=default.hidden_clips,
                        help="clips with a wide occluder")
    parser.add_argument("--contact-clips", type=_positive, default=default.contact_clips,
                        help="clips for the contact readout")
    parser.add_argument("--length", type=_positive, default=default.length, help="frames per probe clip")
    parser.add_argument("--mlp-epochs", type=_positive, default=default.mlp_epochs, help="epochs of the MLP probe")
    parser.add_argument("--probe-models", type=_names(("linear", "mlp")), default=",".join(default.probe_models),
                        help="comma-separated readouts")
    parser.add_argument("--suite", choices=SUITES, default="auto",
                        help="simulator: the bouncing-balls suite; state: a gym run's own recorded state (held-out "
                             "episodes of its env); auto: state for gym runs, else simulator")
    parser.add_argument("--state-episodes", type=_positive, default=StateProbeConfig().episodes,
                        help="held-out episodes recorded for the state probes")


def _surprise_args(parser: argparse.ArgumentParser) -> None:
    from .surprise import SurpriseConfig

    default = SurpriseConfig()
    parser.add_argument("--pairs", type=_positive, default=default.pairs, help="matched pairs per property")
    parser.add_argument("--controls", type=_non_negative, default=default.controls,
                        help="randomly initialised control models")
    # A string default goes through `type` like a typed value, and --help prints it as one would type it.
    parser.add_argument("--properties", type=_names(PROPERTIES), default=",".join(default.properties),
                        help="comma-separated properties")
    parser.add_argument("--frames-after", type=_positive, default=default.frames_after,
                        help="frames after the earliest violation")
    parser.add_argument("--context", type=_non_negative, default=default.context,
                        help="surprise is scored from this frame on (0: the model's context_frames)")
    parser.add_argument("--memory", type=_non_negative, default=default.memory,
                        help="each frame is judged from up to this many frames before it (0: the longest past the "
                             "predictor was trained on)")


def add_analysis_parsers(commands: argparse._SubParsersAction) -> None:
    """Register futures / probe / surprise / report on the `worldmodel` subcommand parser."""
    # The defaults come from the analyses' config dataclasses; --help shows them.
    shows_defaults = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}
    futures = commands.add_parser("futures", help="measure multiple futures on fork scenes with known odds",
                                  **shows_defaults)
    _common(futures)
    _futures_args(futures)
    futures.set_defaults(handler=command_futures)

    probe = commands.add_parser("probe", help="linear / MLP probes of physical state vs random-init and pixels",
                                **shows_defaults)
    _common(probe)
    _probe_args(probe)
    probe.set_defaults(handler=command_probe)

    surprise = commands.add_parser("surprise", help="violation-of-expectation suite vs random-init controls",
                                   **shows_defaults)
    _common(surprise)
    _surprise_args(surprise)
    surprise.set_defaults(handler=command_surprise)

    report = commands.add_parser("report", help="all analyses + figures + videos in one folder (index.html)",
                                 **shows_defaults)
    _common(report)
    _futures_args(report)
    _probe_args(report)
    _surprise_args(report)
    report.add_argument("--skip", type=_names(("futures", "probe", "surprise")), default=(),
                        help="analyses to leave out")
    report.set_defaults(handler=command_report)


# --------------------------------------------------------------------------------------------------- handlers


def _setup(args: argparse.Namespace, *, simulator_suite: bool = True):
    """Threads, model, simulator settings, predictor window and output folder of a command. simulator_suite: the
    command rolls the model out on the simulator (futures, probe, surprise), so it refuses an action-conditioned
    model; the report leaves those parts out instead."""
    import torch

    from .inference import trained_window
    from .loading import foreign_data_note, load_model, simulator_config
    from .report import check_model
    from .tracking import run_directory

    if args.threads > 0:
        torch.set_num_threads(args.threads)
        try:  # numpy's BLAS threads fight torch's for the same cores; cap them too when asked
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        except ImportError:
            os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    model, model_dir = load_model(args.checkpoint, device=args.device)
    if simulator_suite:
        check_model(model)
    model.eval()
    note = foreign_data_note(model_dir)
    if note and simulator_suite:
        print(f"note: {note}", file=sys.stderr)
    balls = simulator_config(model_dir, model.config.image_size)
    window = args.window or trained_window(model, model_dir)
    run_dir = run_directory(model_dir)
    out = Path(args.out) if args.out else (run_dir or model_dir.parent) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    return model, model_dir, balls, window, run_dir, out


def _futures_config(args: argparse.Namespace):
    from .multifuture import FuturesConfig

    ns = tuple(n for n in FuturesConfig.ns if n <= args.samples)
    return FuturesConfig(scenes=args.scenes, samples=args.samples, ns=ns, horizon=args.horizon,
                         probe_clips=args.probe_clips)


def _probe_config(args: argparse.Namespace):
    from .probes import ProbeConfig

    return ProbeConfig(clips=args.clips, ood_clips=args.ood_clips, hidden_clips=args.hidden_clips,
                       contact_clips=args.contact_clips, length=args.length, mlp_epochs=args.mlp_epochs,
                       probe_models=tuple(args.probe_models))


def _surprise_config(args: argparse.Namespace):
    from .surprise import SurpriseConfig

    return SurpriseConfig(pairs=args.pairs, controls=args.controls, properties=tuple(args.properties),
                          frames_after=args.frames_after, context=args.context, memory=args.memory)


def _finish(name: str, result: dict[str, Any], out: Path, run_dir: Path | None, args: argparse.Namespace,
            model_dir: Path, figures: list[Path]) -> None:
    from .report import headline, headline_table
    from .tracking import log_analysis

    path = out / f"{name}.json"
    atomic_write_text(path, json.dumps(result, indent=1))
    print(headline_table(headline({name: result})))
    print(f"wrote {path}" + "".join(f" and {f}" for f in figures))
    if not args.no_mlflow:
        run_id = log_analysis(run_dir, name, result, [path, *figures], params={"checkpoint": str(model_dir)})
        if run_id:
            print(f"logged to MLflow run {run_id} (tag analysis={name}) in {run_dir / 'mlflow.db'}")


def command_futures(args: argparse.Namespace) -> int:
    from . import plots
    from .inference import trained_window
    from .loading import load_model
    from .multifuture import capacity_point, run_futures

    model, model_dir, balls, window, run_dir, out = _setup(args)
    result = run_futures(model, balls, _futures_config(args), window=window)
    points = [dict(result["capacity"], checkpoint=str(model_dir))]
    for other in args.compare:
        other_model, other_dir = load_model(other, device=args.device)
        points.append(dict(capacity_point(other_model.eval(), balls, window=trained_window(other_model, other_dir)),
                           checkpoint=str(other_dir)))
    result["capacity_curve"] = points
    for name, family in result["families"].items():
        at = family["at_horizon"]
        print(f"{name}: best-of-N / deterministic at h={at['horizon']}: "
              + ", ".join(f"N={k.split('_')[2]} {v:.3f}" for k, v in at.items() if k.startswith("best_of"))
              + f"; coverage {family['mode_coverage']}; calibration TV {family['calibration']['total_variation']:.3f}")
        reveal = family["reveal_step"]
        print(f"{name}: deterministic error {at['deterministic']:.3f} (copy-last {at['copy_last']:.3f}); its distance "
              f"from the ways' mean {at['deterministic_vs_ways_mean']:.3f}, the ways' mean's own error "
              f"{at['ways_mean']:.3f}"
              + (f"; where the way shows z takes in {reveal['share_captured']:.0%} of what a free z can "
                 f"(codes {reveal['posterior_separation']:.2f} prior stds apart, that z "
                 f"{reveal['best_z_distance']:.1f} from the prior mean)" if reveal.get("scenes") else ""))
    figures = [plots.futures_curves(result, out / "futures.png"), plots.capacity_curve(points, out / "capacity.png")]
    _finish("futures", result, out, run_dir, args, model_dir, figures)
    return 0


def _state_probe_config(args: argparse.Namespace):
    from .state_probes import StateProbeConfig

    return StateProbeConfig(episodes=args.state_episodes, probe_models=tuple(args.probe_models),
                            mlp_epochs=args.mlp_epochs)


def command_probe(args: argparse.Namespace) -> int:
    from . import plots
    from .loading import resolve_model_dir, run_config
    from .probes import run_probes
    from .state_probes import reads_own_state

    if reads_own_state(run_config(resolve_model_dir(args.checkpoint)), args.suite):
        return _command_state_probe(args)
    model, model_dir, balls, window, run_dir, out = _setup(args)
    result = run_probes(model, balls, _probe_config(args), window=window)
    print(f"{'target':<18}{'metric':<20}{'chance':>8}" + "".join(f"{f:>14}" for f in ("model", "random_init", "pixels"))
          + f"{'model OOD':>12}")
    for name, entry in result["targets"].items():
        results = entry["results"]
        cells = "".join(f"{results[f]['linear']['test']:>14.3f}" if f in results else f"{'-':>14}"
                        for f in ("model", "random_init", "pixels"))
        ood = results.get("model", {}).get("linear", {}).get("ood")
        ood_cell = f"{ood:>12.3f}" if ood is not None else ""
        print(f"{name:<18}{entry['metric']:<20}{entry['chance']:>8.3f}{cells}{ood_cell}")
    figures = [plots.probe_bars(result, out / "probes-linear.png"),
               plots.predicted_probe_curves(result, out / "probes-predicted.png")]
    if "mlp" in args.probe_models:
        figures.append(plots.probe_bars(result, out / "probes-mlp.png", "mlp"))
    _finish("probe", result, out, run_dir, args, model_dir, figures)
    return 0


def _command_state_probe(args: argparse.Namespace) -> int:
    from . import plots
    from .loading import run_config
    from .state_probes import FEATURES, probe_run_state

    model, model_dir, _, window, run_dir, out = _setup(args, simulator_suite=False)
    result = probe_run_state(model, run_config(model_dir), _state_probe_config(args), window=window)
    print(f"{'state':<24}{'probe':<8}" + "".join(f"{f:>17}" for f in FEATURES))
    rows = {**{name: entry.get("results", {}) for name, entry in result["targets"].items()},
            "mean over the state": result["mean_over_state"]}
    for name, results in rows.items():
        for probe_model in args.probe_models:
            cells = "".join(f"{results[f][probe_model]['test']:>17.3f}" if f in results else f"{'-':>17}"
                            for f in FEATURES)
            print(f"{name:<24}{probe_model:<8}{cells}")
    predicted = result["predicted"]
    for name, entry in predicted.get("by_state", {}).items():
        print(f"{name:<24}linear probe read on the rollout, h=1..{predicted['horizons'][-1]}: "
              + " ".join(f"{r:.2f}" for r in entry["r2_by_horizon"])
              + "  (last seen: " + " ".join(f"{r:.2f}" for r in entry["copy_last_r2_by_horizon"]) + ")")
    figures = [plots.probe_bars(result, out / "probes-linear.png")]
    if "mlp" in args.probe_models:
        figures.append(plots.probe_bars(result, out / "probes-mlp.png", "mlp"))
    if predicted.get("by_state"):
        figures.append(plots.predicted_probe_curves(result, out / "probes-predicted.png"))
    _finish("probe", result, out, run_dir, args, model_dir, figures)
    return 0


def command_surprise(args: argparse.Namespace) -> int:
    from . import plots
    from .surprise import run_surprise

    model, model_dir, balls, window, run_dir, out = _setup(args)
    result = run_surprise(model, balls, _surprise_config(args), window=window)
    print(f"{'property':<12}{'signal':<8}{'accuracy':>9}{'AUROC':>8}{'peak':>7}{'control':>9}{'h':>7}")
    for name, entry in result["properties"].items():
        for signal in ("energy", "prior", "change", "pixels"):
            e = entry[signal]
            control = e.get("control_accuracy_mean", float("nan"))
            print(f"{name:<12}{signal:<8}{e['pairwise_accuracy']:>9.3f}{e['auroc']:>8.3f}{e['peak_aligned']:>7.2f}"
                  f"{control:>9.3f}{e.get('effect_size_h', float('nan')):>7.2f}")
    figures = [plots.voe_bars(result, out / "voe.png"), plots.surprise_curves(result, out / "surprise-energy.png"),
               plots.surprise_curves(result, out / "surprise-prior.png", "prior")]
    _finish("surprise", result, out, run_dir, args, model_dir, figures)
    return 0


def command_report(args: argparse.Namespace) -> int:
    from .report import ReportConfig, build_report

    model, model_dir, _, window, run_dir, out = _setup(args, simulator_suite=False)
    del model
    config = ReportConfig(futures=_futures_config(args), probes=_probe_config(args),
                          surprise=_surprise_config(args), skip=tuple(args.skip), compare=tuple(args.compare),
                          probe_suite=args.suite, state_probes=_state_probe_config(args))
    target = Path(args.out) if args.out else out / "report"
    index = build_report(args.checkpoint, target, config, device=args.device, window=window,
                         mlflow=not args.no_mlflow)
    print(f"open {index}")
    return 0
