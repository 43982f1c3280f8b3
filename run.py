#!/usr/bin/env python
"""clearlane's one command line. It parses arguments and calls into the packages, nothing else.

    python run.py scenarios
    python run.py preview --scenario highway [--camera front] --out preview.mp4
    python run.py bench env
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Mistakes a user can make and fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def cmd_scenarios(args: argparse.Namespace) -> None:
    from scenarios import available_scenarios, load_scenario

    names = available_scenarios()
    width = max(map(len, names))
    for name in names:
        scenario = load_scenario(name)
        print(f"{name:<{width}}  {scenario.highway_env.id:<16}  {scenario.description}")
    print(f"\n{len(names)} scenarios in scenarios/. Any command also takes a path to your own .yaml file.")


def cmd_preview(args: argparse.Namespace) -> None:
    from envs.preview import write_preview

    path = write_preview(args.scenario, out=args.out, camera=args.camera, seed=args.seed, steps=args.steps)
    print(f"wrote {path}")


def cmd_bench(args: argparse.Namespace) -> None:
    from envs.bench import bench_env

    bench_env(scenarios=args.scenarios, steps=args.steps, seed=args.seed)


def cmd_perception_collect(args: argparse.Namespace) -> None:
    from perception.collect import collect

    out = args.out or Path("data/perception") / "+".join(Path(name).stem for name in args.scenario)
    manifest = collect(
        scenarios=args.scenario, frames=args.frames, out=out, camera=args.camera,
        seed=args.seed, shard_frames=args.shard_frames, workers=args.workers,
    )
    print(f"{out}: {manifest.frames} frames in {len(manifest.shards)} shards")


def cmd_train(args: argparse.Namespace) -> None:
    raise ValueError(
        "`train` is not available yet: it arrives with the agents issue. "
        "Meanwhile try `python run.py scenarios` and `python run.py preview --scenario highway --out preview.mp4`."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="clearlane: driving agents from camera frames")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("scenarios", help="list the scenarios with a one-line description")
    listing.set_defaults(func=cmd_scenarios)

    preview = commands.add_parser("preview", help="write a video of an episode: camera beside highway-env's view")
    preview.add_argument("--scenario", default="highway", help="scenario name or path to a .yaml file")
    preview.add_argument("--camera", choices=("bev", "front"), default=None, help="camera view (default: the scenario's)")
    preview.add_argument("--out", type=Path, default=Path("preview.mp4"), help="output file, .mp4 or .gif")
    preview.add_argument("--seed", type=non_negative_int, default=0)
    preview.add_argument("--steps", type=positive_int, default=None, help="policy steps (default: one episode)")
    preview.set_defaults(func=cmd_preview)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="kind", required=True, metavar="KIND")
    bench_env = bench_kinds.add_parser("env", help="env steps/s: our camera vs highway-env's GrayscaleObservation")
    bench_env.add_argument("--scenarios", nargs="+", default=None, help="default: every shipped scenario")
    bench_env.add_argument("--steps", type=positive_int, default=300, help="env steps per measurement")
    bench_env.add_argument("--seed", type=non_negative_int, default=0)
    bench_env.set_defaults(func=cmd_bench)

    perception = commands.add_parser("perception", help="perception data, training, distillation, export")
    perception_steps = perception.add_subparsers(dest="step", required=True, metavar="STEP")
    collect = perception_steps.add_parser("collect", help="record camera frames and privileged labels")
    collect.add_argument("--scenario", nargs="+", default=["highway"], help="one or more names or .yaml paths (a mix)")
    collect.add_argument("--frames", type=positive_int, default=20_000, help="frames to record (about)")
    collect.add_argument("--out", type=Path, default=None, help="dataset folder (default data/perception/<scenarios>)")
    collect.add_argument("--camera", choices=("bev", "front"), default="bev")
    collect.add_argument("--seed", type=non_negative_int, default=0)
    collect.add_argument("--shard-frames", type=positive_int, default=1000, help="frames per shard")
    collect.add_argument("--workers", type=positive_int, default=1, help="processes (use the number of cores)")
    collect.set_defaults(func=cmd_perception_collect)

    train = commands.add_parser("train", help="train an agent (arrives with the agents issue)")
    train.add_argument("--scenario", default="highway")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
