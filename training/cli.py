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
    if result.history:
        last = result.history[-1]
        print(
            f"final step {result.steps}: prediction error {last['error/prediction']:.4f} "
            f"(copy-last baseline {last['error/copy_last']:.4f}), "
            f"effective rank {last['collapse/effective_rank']:.1f}"
        )
    if result.val_metrics:
        print(
            f"validation: prediction error {result.val_metrics['val/error/prediction']:.4f} "
            f"(copy-last {result.val_metrics['val/error/copy_last']:.4f})"
        )
    if result.video:
        print(f"sampled futures: {result.video} (+ .gif)")
    print(f"MLflow runs: mlflow ui --backend-store-uri sqlite:///{(result.out_dir / 'mlflow.db').resolve()}")


def command_sample(args: argparse.Namespace) -> int:
    import torch

    from analysis.futures import write_futures_video
    from analysis.loading import load_model, simulator_config
    from envs.clips import generate_clips

    model, model_dir = load_model(args.checkpoint, device=args.device)
    context = args.context or model.config.context_frames
    horizon = args.horizon or max(1, model.config.predictor.max_len // 2 - context)
    if context + horizon > model.config.predictor.max_len:
        raise SystemExit(
            f"error: context {context} + horizon {horizon} exceeds the model's max_len {model.config.predictor.max_len}"
        )
    balls = simulator_config(model_dir, model.config.image_size)
    clips = generate_clips(balls, args.clips, context + horizon, seed=args.seed)
    out = Path(args.out) if args.out else model_dir.parent / "samples"
    for index in range(args.clips):
        clip = torch.from_numpy(clips.frames[index]).permute(0, 3, 1, 2)  # (T, 3, H, W)
        path = write_futures_video(
            model, clip, context=context, num_samples=args.num_samples, path=out / f"futures-{index:03d}.mp4",
            seed=args.seed + index,
        )
        print(f"wrote {path} and {path.with_suffix('.gif')}")
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from .trainer import train

    overrides = [f"run.out_dir={args.out}", *args.overrides]
    if args.steps:
        overrides.append(f"run.steps={args.steps}")
    config = build_config("small", None, overrides)
    started = time.perf_counter()
    result = train(config)
    _print_result(result)
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
    sample_parser.add_argument("--clips", type=int, default=1, help="how many held-out simulator clips")
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
