"""The `worldmodel` command line.

    worldmodel train  [--preset small] [--config run.yaml] [--resume] [key=value ...]
    worldmodel sample --checkpoint DIR [--num-samples 8] [--clips 1] [--horizon H] [--out DIR]
    worldmodel demo   [--out runs/demo] [--steps N]

Overrides are dotted config paths (`optim.lr=1e-3 model.latent.capacity=sparse`); `worldmodel train --help`
lists the presets and `--show-config` prints the resolved config without training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import PRESETS, TrainConfig, preset
from worldmodel.serialization import CheckpointError

from .config_io import ConfigError, apply_overrides, load_yaml, merge, to_dict


def build_config(preset_name: str, config_file: str | None, overrides: list[str]) -> TrainConfig:
    config = preset(preset_name)
    if config_file:
        config = merge(config, load_yaml(config_file))
    return apply_overrides(config, overrides)


def command_train(args: argparse.Namespace) -> int:
    from .trainer import train

    config = build_config(args.preset, args.config, args.overrides)
    if args.show_config:
        import yaml

        print(yaml.safe_dump(to_dict(config), sort_keys=False))
        return 0
    result = train(config, resume=args.resume)
    _print_result(result)
    return 0


def _print_result(result) -> None:
    if result.rank != 0 or result.interrupted:  # rank 0 reports for a torchrun job; a stopped run said why
        return
    print(f"model saved to {result.model_dir}")
    end_to_end = [entry for entry in result.history if "error/prediction" in entry]
    if end_to_end:
        last = end_to_end[-1]
        print(
            f"final step {result.steps}: prediction error {last['error/prediction']:.4f} "
            f"(copy-last baseline {last['error/copy_last']:.4f}), "
            f"effective rank {last['collapse/effective_rank']:.1f}"
        )
    dynamics = [entry for entry in result.history if "dynamics/error/rollout" in entry]
    if dynamics:
        print(f"dynamics stage: open-loop error {dynamics[-1]['dynamics/error/rollout']:.4f}, "
              f"NLL {dynamics[-1]['dynamics/likelihood/nll_per_dim']:.3f} nats/dim")
    if result.val_metrics:
        print(
            f"validation: prediction error {result.val_metrics['val/error/prediction']:.4f} "
            f"(copy-last {result.val_metrics['val/error/copy_last']:.4f})"
        )
    if result.video:
        print(f"sampled futures: {result.video} (+ .gif)")
    print(f"MLflow runs: mlflow ui --backend-store-uri sqlite:///{(result.out_dir / 'mlflow.db').resolve()}")


def command_sample(args: argparse.Namespace) -> int:
    from analysis.futures import write_futures_video
    from analysis.loading import load_model

    model, model_dir = load_model(args.checkpoint, device=args.device)
    context = args.context or model.config.context_frames
    horizon = args.horizon or max(1, model.config.predictor.max_len // 2 - context)
    if context + horizon > model.config.predictor.max_len:
        raise SystemExit(
            f"error: context {context} + horizon {horizon} exceeds the model's max_len {model.config.predictor.max_len}"
        )
    out = Path(args.out) if args.out else model_dir.parent / "samples"
    try:
        clips = _sample_clips(args, model, model_dir, context + horizon)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from error
    for index, (name, frames, actions) in enumerate(clips):
        path = write_futures_video(
            model, frames, context=context, num_samples=args.num_samples, path=out / f"futures-{index:03d}.mp4",
            seed=args.seed + index, actions=actions,
        )
        print(f"{name}: wrote {path} and {path.with_suffix('.gif')}")
    return 0


def _sample_clips(args: argparse.Namespace, model, model_dir: Path, length: int):
    """(name, frames (length, 3, H, W) uint8, actions (length, A) or None) of each clip to sample futures of: the
    given video files, else held-out clips of the run's own data source (its validation split; fresh simulator
    clips for the simulator)."""
    import numpy as np

    from analysis.inference import as_frames
    from analysis.loading import run_config, simulator_config
    from envs.clips import generate_clips

    to_tensor = lambda clip: as_frames(clip[None])[0]  # noqa: E731  (T, H, W, 3) numpy -> (T, 3, H, W) tensor
    saved = run_config(model_dir)
    data = saved.get("data", {}) if isinstance(saved.get("data"), dict) else {}
    if args.video:
        if model.config.action_dim:
            raise ValueError(f"this model is action-conditioned (model.action_dim={model.config.action_dim}); a "
                             "video file has no actions, so sample it without --video (the run's own episodes)")
        from envs.recorded import DecodeSettings, decode_video

        # Decoded as the run decoded its training videos (frame rate, crop), when it trained on videos.
        recorded = data.get("source") == "recorded"
        settings = DecodeSettings(image_size=model.config.image_size, fps=float(data.get("fps", 0)) if recorded else 0.0,
                                  crop=bool(data.get("crop", True)) if recorded else True)
        clips = []
        for video in args.video:
            frames, _ = decode_video(video, settings)
            if len(frames) < args.start + length:
                raise ValueError(f"{video}: {len(frames)} frames at {settings.fps or 'native'} fps; sampling needs "
                                 f"--start {args.start} + context + horizon = {args.start + length} (lower --horizon "
                                 "or --context)")
            clips.append((str(video), to_tensor(frames[args.start : args.start + length]), None))
        return clips
    if data.get("source", "bouncing_balls") == "bouncing_balls":
        balls = simulator_config(model_dir, model.config.image_size)
        generated = generate_clips(balls, args.clips, length, seed=args.seed)
        return [(f"simulator clip {i}", to_tensor(generated.frames[i]), None) for i in range(args.clips)]
    from .config_io import from_dict
    from .data import make_source

    config = from_dict(TrainConfig, saved)
    loaded = make_source(config).load(window=length, val_fraction=config.data.val_fraction, seed=config.data.seed)
    if len(loaded.val) == 0:
        raise ValueError(f"{config.data.source} source ({config.data.path or config.data.env_id}): no validation "
                         f"clip has {length} frames (context + horizon); lower --horizon")
    picks = np.linspace(0, len(loaded.val) - 1, min(args.clips, len(loaded.val))).round().astype(int)
    clips = []
    for i in picks:
        item = loaded.val[int(i)]
        actions = item.get("actions") if model.config.action_dim else None
        clips.append((f"validation clip {int(item['clip'])} from frame {int(item['start'])}", item["frames"], actions))
    return clips


DEMO_OVERRIDES = ("run.steps=300", "dynamics.steps=500", "dynamics.frames=24000", "data.num_clips=1000")


def command_demo(args: argparse.Namespace) -> int:
    from .trainer import train

    # The small recipe, shortened to fit a few minutes of 2 CPU cores (the full recipe: `worldmodel train`).
    overrides = [f"run.out_dir={args.out}", *DEMO_OVERRIDES, *args.overrides]
    if args.steps:
        overrides.append(f"run.steps={args.steps}")
    config = build_config("small", None, overrides)
    started = time.perf_counter()
    result = train(config)
    _print_result(result)
    if result.rank == 0 and not result.interrupted and config.data.source == "bouncing_balls":
        from analysis.demo import demo_videos
        from analysis.inference import trained_window
        from analysis.loading import load_model, simulator_config

        model, model_dir = load_model(result.model_dir)
        balls = simulator_config(model_dir, model.config.image_size)
        for path in demo_videos(model.eval(), balls, result.out_dir / "samples",
                                window=trained_window(model, model_dir), seed=config.run.seed):
            print(f"sampled futures: {path} (+ .gif)")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="worldmodel", description="Latent-variable world model for video.")
    commands = root.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="train a world model")
    train_parser.add_argument("--preset", default="small", choices=sorted(PRESETS), help="starting config")
    train_parser.add_argument("--config", help="YAML file applied on top of the preset")
    train_parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    train_parser.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    train_parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-3")
    train_parser.set_defaults(handler=command_train)

    sample_parser = commands.add_parser("sample", help="video grid of sampled futures ranked by energy")
    sample_parser.add_argument("--checkpoint", required=True, help="model, run or checkpoint directory")
    sample_parser.add_argument("--num-samples", type=int, default=8)
    sample_parser.add_argument("--clips", type=int, default=1,
                               help="how many held-out clips of the run's own data (its validation split; fresh "
                               "clips for the simulator)")
    sample_parser.add_argument("--video", nargs="+", metavar="FILE",
                               help="sample futures of these video files instead (decoded like the run's videos)")
    sample_parser.add_argument("--start", type=int, default=0, help="--video: first frame of the context")
    sample_parser.add_argument("--context", type=int, default=0, help="observed frames (default: the model's)")
    sample_parser.add_argument("--horizon", type=int, default=0, help="future frames (default: fits max_len)")
    sample_parser.add_argument("--seed", type=int, default=10_000, help="seed of the held-out clips and of z")
    sample_parser.add_argument("--out", help="output folder (default: <run>/samples)")
    sample_parser.add_argument("--device", default="cpu")
    sample_parser.set_defaults(handler=command_sample)

    demo_parser = commands.add_parser("demo", help="train the small preset on CPU, then write sampled futures")
    demo_parser.add_argument("--out", default="runs/demo")
    demo_parser.add_argument("--steps", type=int, default=0, help="override run.steps")
    demo_parser.add_argument("overrides", nargs="*", metavar="key=value")
    demo_parser.set_defaults(handler=command_demo)

    from .cli_data import add_data_parser

    add_data_parser(commands)
    from analysis.cli import add_analysis_parsers  # futures / probe / surprise / report

    add_analysis_parsers(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # training.trainer.NonFiniteLossError: the message says what to do
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
