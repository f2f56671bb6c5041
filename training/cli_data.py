"""`worldmodel data ...`: prepare and check training video.

    worldmodel data gym --env CartPole-v1 --episodes 200 --out DIR [--size 64] [--policy random|scripted] ...
    worldmodel data validate DIR [--on-bad-file error|skip] [--max-bad-fraction 0.1] [--min-frames 2]

`gym` records episodes of a gymnasium env (frames, actions, rewards, terminations, state) with a progress bar;
train on it with `worldmodel train data.source=gym data.path=DIR`. `validate` decodes every video file under DIR
fully and prints one row per file: path, codec, WxH, fps, header vs decoded frame count and status.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    """Register `worldmodel data` and its subcommands on the root parser's subcommands."""
    data_parser = commands.add_parser("data", help="record gym video, validate video folders")
    data_commands = data_parser.add_subparsers(dest="data_command", required=True)

    gym_parser = data_commands.add_parser("gym", help="record clips from a gymnasium environment")
    gym_parser.add_argument("--env", required=True, help="gymnasium env id, e.g. CartPole-v1, Pendulum-v1")
    gym_parser.add_argument("--episodes", type=int, default=200, help="episodes to record (one clip each)")
    gym_parser.add_argument("--out", required=True, help="output directory (must be new or empty, see --force)")
    gym_parser.add_argument("--size", type=int, default=64, help="frames are resized to SIZE x SIZE (model.image_size)")
    gym_parser.add_argument("--seed", type=int, default=0)
    gym_parser.add_argument("--policy", choices=("random", "scripted"), default="random")
    gym_parser.add_argument("--frame-skip", type=int, default=1, help="env steps per recorded frame")
    gym_parser.add_argument("--max-episode-steps", type=int, default=0, help="time limit in env steps (0: env's)")
    gym_parser.add_argument("--num-envs", type=int, default=4, help="environments stepped together")
    gym_parser.add_argument(
        "--vectorization", choices=("sync", "async"), default="async",
        help="async: one worker process per env (renders in parallel); sync: all in this process",
    )
    gym_parser.add_argument("--force", action="store_true", help="overwrite a non-empty --out directory")
    gym_parser.set_defaults(handler=command_gym)

    validate_parser = data_commands.add_parser("validate", help="decode every video under DIR and report")
    validate_parser.add_argument("path", metavar="DIR", help="folder of videos (searched recursively) or one file")
    validate_parser.add_argument(
        "--on-bad-file", choices=("error", "skip"), default="error",
        help="error: any unusable file fails the check; skip: fail only above --max-bad-fraction",
    )
    validate_parser.add_argument("--max-bad-fraction", type=float, default=0.1)
    validate_parser.add_argument(
        "--min-frames", type=int, default=2,
        help="files with fewer decoded frames are marked short (training drops clips shorter than its window)",
    )
    validate_parser.add_argument("--workers", type=int, default=0, help="decode threads")
    validate_parser.set_defaults(handler=command_validate)


def command_gym(args: argparse.Namespace) -> int:
    from envs.gym_video import GymRecordingSpec, record

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ValueError(f"--out {out} is not empty; choose a new directory or pass --force to overwrite it")
    spec = GymRecordingSpec(
        env_id=args.env, episodes=args.episodes, seed=args.seed, image_size=args.size, policy=args.policy,
        frame_skip=args.frame_skip, max_episode_steps=args.max_episode_steps,
    )
    spec.validate()
    bar = _bar(args.episodes, f"record {args.env}", "episode")
    started = time.perf_counter()
    try:
        recording = record(
            spec, out, num_envs=args.num_envs, vectorization=args.vectorization,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    frames = int(recording.episode_starts[-1])
    lengths = recording.lengths
    print(
        f"recorded {len(lengths)} episodes of {args.env} ({frames} frames of {args.size}x{args.size}, episode length "
        f"{lengths.min()}-{lengths.max()}, mean {lengths.mean():.1f}) to {out} in {seconds:.1f} s "
        f"({frames / max(seconds, 1e-9):.0f} frames/s)"
    )
    print(f"actions: {recording.meta['action']['space']} -> {recording.action_dim} floats per frame; "
          f"state: {recording.meta['state_dim']} floats per frame")
    print(f"train on it: worldmodel train data.source=gym data.path={out} model.image_size={args.size}")
    return 0


def command_validate(args: argparse.Namespace) -> int:
    from envs.recorded import VideoReport, find_videos, inspect_video

    root = Path(args.path)
    paths = find_videos(root)
    if not paths:
        raise ValueError(f"{root}: no video files found")
    bar = _bar(len(paths), "validate", "file")
    reports: list[VideoReport] = []
    pool = ThreadPoolExecutor(args.workers) if args.workers > 0 else None
    try:
        for report in (pool.map(inspect_video, paths) if pool else map(inspect_video, paths)):
            reports.append(report)
            if bar is not None:
                bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()

    print(format_table(reports, root, args.min_frames))
    bad = [(r.path, r.problem) for r in reports if not r.ok]
    short = [r for r in reports if r.ok and r.decoded_frames < args.min_frames]
    print(
        f"{len(reports)} files: {len(reports) - len(bad) - len(short)} ok, {len(short)} short "
        f"(< {args.min_frames} frames), {len(bad)} bad ({len(bad) / len(reports):.0%})"
    )
    fraction = len(bad) / len(reports)
    if bad and args.on_bad_file == "error":
        print(f"error: {len(bad)} of {len(reports)} files are unusable (--on-bad-file error)", file=sys.stderr)
        return 1
    if fraction > args.max_bad_fraction:
        print(
            f"error: {len(bad)} of {len(reports)} files are unusable ({fraction:.0%} > --max-bad-fraction "
            f"{args.max_bad_fraction:.0%})",
            file=sys.stderr,
        )
        return 1
    if bad:
        print(f"training with data.on_bad_file=skip would leave out the {len(bad)} bad files listed above")
    return 0


def format_table(reports: list, root: Path, min_frames: int) -> str:
    """One aligned row per file: path (relative to root), codec, WxH, fps, header/decoded frames, status."""
    rows = [("path", "codec", "WxH", "fps", "frames (header/decoded)", "status")]
    for report in reports:
        try:
            name = report.path.relative_to(root).as_posix() if root.is_dir() else report.path.name
        except ValueError:
            name = str(report.path)
        if not report.ok:
            status = f"BAD: {report.problem}"
        elif report.decoded_frames < min_frames:
            status = f"short: {report.decoded_frames} frame{'s' * (report.decoded_frames != 1)}"
        else:
            status = "ok"
        fps = f"{report.fps:.2f}" if report.fps else "?"
        if report.variable_fps:
            fps += " (vfr)"
        size = f"{report.width}x{report.height}" if report.width else "?"
        header = str(report.header_frames) if report.header_frames else "?"
        rows.append((name, report.codec, size, fps, f"{header}/{report.decoded_frames}", status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * 6)
    return "\n".join(lines)


def _bar(total: int, desc: str, unit: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)
