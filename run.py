#!/usr/bin/env python
"""clearlane's one command line. It parses arguments and calls into the packages, nothing else.

    python run.py scenarios
    python run.py preview --scenario highway [--camera front] --out preview.mp4
    python run.py bench env
    python run.py train --scenario highway [--algo a2c] [--resume RUN]
    python run.py evaluate --run RUN [--episodes 50] [--scenario OTHER]
    python run.py evaluate --run RUN --attack none,pgd,mad --eps 1/255,3/255 [--corruption all]
    python run.py bench reference --scenario highway [--run RUN] [--algo dqn|ppo]
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

# Mistakes a user can make and fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)
# Paths the user gave that cannot be read or written (OSError errnos): also one line, not a traceback.
PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EROFS,
                         errno.ENOSPC, errno.ENAMETOOLONG, errno.ELOOP})


def describe_error(error: Exception) -> str:
    """One line for a user mistake; an OSError says what went wrong with which path."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror.lower()}"
    return str(error)


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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
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

    path = write_preview(args.scenario, out=args.out, camera=args.camera, seed=args.seed, steps=args.steps,
                         backend=args.backend)
    print(f"wrote {path}")


def cmd_bench(args: argparse.Namespace) -> None:
    from envs.backends import get_backend

    if get_backend(args.backend).batched:  # the batched simulator's own bench, at each --batch-sizes
        from envs.fast.bench import bench_fast

        bench_fast(scenarios=args.scenarios, batch_sizes=args.batch_sizes, steps=args.fast_steps,
                   reference_steps=args.steps, seed=args.seed, device=args.device)
        return
    from envs.bench import bench_env

    bench_env(scenarios=args.scenarios, steps=args.steps, seed=args.seed)


def cmd_perception_collect(args: argparse.Namespace) -> None:
    from perception.collect import collect

    out = args.out or Path("data/perception") / "+".join(Path(name).stem for name in args.scenario)
    manifest = collect(
        scenarios=args.scenario, frames=args.frames, out=out, camera=args.camera,
        seed=args.seed, shard_frames=args.shard_frames, workers=args.workers, backend=args.backend,
    )
    print(f"{out}: {manifest.frames} frames in {len(manifest.shards)} shards")


def cmd_perception_train(args: argparse.Namespace) -> None:
    from perception.dataset import FrameDataset, split_shards
    from perception.attacks import parse_eps
    from perception.training import TrainConfig, train

    train_shards, held_out = split_shards(args.data)
    config = TrainConfig(
        arch=args.arch, mode=args.mode, eps=parse_eps(args.eps), epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, device=args.device, resume=args.resume, init=args.init,
        out=str(args.out), logdir=str(args.logdir or Path(args.out).with_suffix("")),
    )
    metrics = train(config, FrameDataset(args.data, train_shards), FrameDataset(args.data, held_out))
    print(f"wrote {args.out}: " + ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))


def cmd_perception_eval(args: argparse.Namespace) -> None:
    from perception.attacks import parse_eps
    from perception.evaluate import evaluate_models
    from perception.report import check_targets, write_report

    models: dict[str, Path] = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(
                f"--models takes NAME=PATH pairs, got {item!r} (e.g. robust-student=runs/perception/student.safetensors)"
            )
        if name in models:
            raise ValueError(f"--models: the name {name!r} is given twice")
        models[name] = Path(path)
    run = evaluate_models(
        models, args.data, eps_list=[parse_eps(text) for text in args.eps], attack_frames=args.attack_frames,
        pgd_steps=args.pgd_steps, device=args.device, threads=args.latency_threads, seed=args.seed,
    )
    path = write_report(run, args.out, command=command_line())
    for check in check_targets(run):
        value = "n/a" if check.value is None else f"{check.value:.3g}{check.unit}"
        print(f"{check.status:>4}  {check.what}: {value} (target {check.target})")
    print(f"wrote {path} and {path.with_name('perception_eval.json')}")


def cmd_perception_distill(args: argparse.Namespace) -> None:
    from perception.attacks import parse_eps
    from perception.dataset import FrameDataset, split_shards
    from perception.distill import DistillConfig, distill

    train_shards, held_out = split_shards(args.data)
    config = DistillConfig(
        teacher=str(args.teacher), mode=args.mode, eps=parse_eps(args.eps), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, pgd_steps=args.pgd_steps, seed=args.seed, device=args.device,
        resume=args.resume, init=args.init, out=str(args.out), map_weight=args.map_weight,
        feature_weight=args.feature_weight, attack_target=args.attack_target, logdir=str(args.logdir or Path(args.out).with_suffix("")),
    )
    metrics = distill(config, FrameDataset(args.data, train_shards), FrameDataset(args.data, held_out))
    print(f"wrote {args.out}: " + ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))


def cmd_perception_export(args: argparse.Namespace) -> None:
    from perception.export import export

    out, max_abs_diff = export(args.model, out=args.out, opset=args.opset)
    print(f"wrote {out} (max |ONNX Runtime - PyTorch| = {max_abs_diff:.2e})")


def cmd_perception_ship(args: argparse.Namespace) -> None:
    from perception.ship import ship

    card = ship(args.model, data=args.data, eval_json=args.eval_json)
    print(f"shipped {args.model} -> {card.parent} (card: {card.name})")


def cmd_bench_perception_training(args: argparse.Namespace) -> None:
    from perception.latency import training_step_seconds

    shape = tuple(args.input_shape)
    seconds = training_step_seconds(args.arch, shape, batch=args.batch_size, steps=args.steps, threads=args.threads_per_step)
    print(f"{args.arch} {shape}, batch {args.batch_size}, {args.threads_per_step} thread(s): seconds per optimizer step")
    for mode, value in seconds.items():
        print(f"  {mode:<8} {value:7.3f} s   {value / seconds['clean']:.2f}x clean")


def cmd_bench_ppo_ceiling(args: argparse.Namespace) -> None:
    from agents.ceiling import ppo_ceiling
    from agents.evaluate import print_report

    report = ppo_ceiling(scenario=args.scenario, timesteps=args.timesteps, episodes=args.episodes, seed=args.seed,
                         n_envs=args.n_envs, config_file=args.config)
    print_report(report)
    steps = report.num_timesteps
    print(f"trained {steps:,} steps in {report.train_seconds:.0f} s ({steps / report.train_seconds:.0f} steps/s)")


def cmd_bench_teacher(args: argparse.Namespace) -> None:
    from agents.ceiling import teacher_ceiling
    from agents.evaluate import print_report

    settings = {name: getattr(args, name) for name in ("depth", "horizon", "min_headway_s", "min_ttc_s", "ttc_penalty",
                                                       "sight", "plan_hz", "routes", "route_guesses")}
    given = {name: value for name, value in settings.items() if value is not None}  # the rest: the teacher's defaults
    if args.route_guesses is not None and args.routes != "guessed":
        raise ValueError("--route-guesses counts the plans of a teacher that guesses the routes; add --routes guessed")
    report = teacher_ceiling(scenario=args.scenario, episodes=args.episodes, **given)
    print_report(report)
    print(f"{args.episodes} episodes in {report.seconds:.0f} s")


def cmd_bench_constant(args: argparse.Namespace) -> None:
    from agents.ceiling import constant_baseline
    from agents.evaluate import print_report

    report = constant_baseline(scenario=args.scenario, action=args.action, episodes=args.episodes)
    print_report(report)
    print(f"{args.episodes} episodes in {report.seconds:.0f} s")


def cmd_bench_robustness(args: argparse.Namespace) -> None:
    from agents.robust.corruptions import parse_corruptions
    from agents.robust.evaluate import parse_attacks, parse_counts, parse_eps_list
    from agents.robust.report import parse_agents, robustness_report

    attacks = [name for name in parse_attacks(args.attack) if name != "none"]  # the plain evaluation is always played
    eps, steps = parse_eps_list(args.eps), parse_counts(args.steps, "--steps")
    corruptions = parse_corruptions(None if args.corruption == "none" else args.corruption)
    agents = parse_agents(args.agent)
    text = robustness_report(agents, attacks, eps, steps, corruptions, args.episodes, args.out, device=args.device,
                             command=" ".join(["python", "run.py", *sys.argv[1:]]))
    print(text)
    print(f"wrote {args.out}/report.md, report.json and robustness-eps.png")


def cmd_bench_attack_path(args: argparse.Namespace) -> None:
    from agents.robust.attack_path import bench_attack_path, format_rows
    from agents.robust.attacks import AttackSpec
    from perception.attacks import parse_eps

    eps = parse_eps(args.eps)
    count, rows = bench_attack_path(args.run, eps=eps, steps=args.steps, envs=args.envs,
                                    policy_steps=args.policy_steps, logdir=args.logdir)
    print(format_rows(count, AttackSpec("pgd", eps, steps=args.steps).describe(), rows))


def cmd_bench_reference(args: argparse.Namespace) -> None:
    from agents.reference import bench_reference, format_table

    data = bench_reference(args.scenario, run=args.run, algo=args.algo, episodes=args.episodes, seed=args.seed,
                           timesteps=args.timesteps, time_limit_s=args.time_limit, logdir=args.logdir, out=args.out,
                           command=command_line())
    print(format_table(data))
    print(f"wrote {Path(data['reference']['model']).parent}/reference.json and reference.md")


def cmd_bench_explain(args: argparse.Namespace) -> None:
    from agents.explain.bench import bench_explain, format_bench

    print(format_bench(bench_explain(args.run, backend=args.backend, every=args.every, logdir=args.logdir)))


def command_line() -> str:
    """The command line this process was started with, as a user would type it again."""
    import shlex

    return "python run.py " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def cmd_train(args: argparse.Namespace) -> None:
    from agents.train import TrainOptions, format_summary, train
    from perception.attacks import parse_eps

    robust_eps = None
    if args.robust_eps is not None:
        try:
            robust_eps = parse_eps(args.robust_eps)
        except (ValueError, TypeError) as error:
            raise ValueError(f"--robust-eps: {error}") from None
    result = train(TrainOptions(
        scenario=args.scenario, algo=args.algo, timesteps=args.timesteps, n_envs=args.n_envs, seed=args.seed,
        device=args.device, backend=args.backend, logdir=args.logdir, name=args.name, resume=args.resume, force=args.force,
        config=args.config, fine_tune=args.fine_tune, threads=args.threads, baseline=args.baseline,
        robust_reg=args.robust_reg, robust_eps=robust_eps,
        command=command_line(),
    ))
    print(format_summary(result))
    if result.interrupted:
        raise SystemExit(130)  # after a clean save: scripts chaining `train && evaluate` stop here


def cmd_evaluate_runs(args: argparse.Namespace) -> None:
    from agents.evaluate_runs import evaluate_runs
    from agents.sweep_table import to_markdown

    if args.scenario is not None or args.seed:
        raise ValueError("--runs evaluates each run on its own scenario from the first evaluation seed; "
                         "leave out --scenario and --seed")
    rows = evaluate_runs(args.runs, episodes=args.episodes, backend=args.backend, device=args.device,
                         address=args.address, cpus_per_run=args.cpus_per_run)
    print(to_markdown(rows), end="")


def cmd_sweep(args: argparse.Namespace) -> None:
    from agents.sweep import SweepIncomplete, SweepOptions, run_sweep
    from agents.sweep_table import to_markdown

    options = SweepOptions(
        scenario=args.scenario, seeds=args.seeds, grid=args.grid, config=args.config, address=args.address,
        timesteps=args.timesteps, logdir=args.logdir, name=args.name, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, resume=args.resume, eval_episodes=args.eval_episodes,
        eval_backend=args.eval_backend, n_envs=args.n_envs, device=args.device,
    )
    try:
        sweep_dir, rows = run_sweep(options)
    except SweepIncomplete as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(to_markdown(rows), end="")
    print(f"table: {sweep_dir / 'results.md'} (and .csv, .json)")
    print(f"TensorBoard, its HPARAMS tab side by side: tensorboard --logdir {sweep_dir / 'trials'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    if (args.run is None) == (args.runs is None):
        raise ValueError("evaluate needs one of --run RUN (one run) or --runs DIR_OR_GLOB (many, in parallel on Ray)")
    robustness = {"--attack": args.attack, "--corruption": args.corruption, "--transfer-from": args.transfer_from,
                  "--eps": args.eps, "--steps": args.steps, "--restarts": args.restarts}
    if args.runs is not None:
        given = [flag for flag, value in robustness.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: attacked evaluation takes one --run, not --runs")
        cmd_evaluate_runs(args)
        return
    from agents.evaluate import evaluate_run, print_report

    if args.attack is not None or args.corruption is not None or args.transfer_from is not None:
        return cmd_evaluate_robustness(args)
    given = [flag for flag, value in (("--eps", args.eps), ("--steps", args.steps), ("--restarts", args.restarts))
             if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} set(s) the attacks of --attack, which is missing (e.g. --attack pgd)")
    report, path = evaluate_run(
        args.run, episodes=args.episodes, scenario=args.scenario, seed=args.seed, logdir=args.logdir,
        device=args.device, backend=args.backend, command=command_line(), progress=True,
    )
    print_report(report)
    print(f"wrote {path} and eval_final/{path.stem.removeprefix('evaluation-')}/* (TensorBoard) in {report.run}")


def cmd_evaluate_robustness(args: argparse.Namespace) -> None:
    from agents.evaluate import print_report
    from agents.robust.corruptions import parse_corruptions
    from agents.robust.evaluate import (evaluate_robustness, parse_attacks, parse_counts, parse_eps_list,
                                        print_robustness)

    attacks = parse_attacks(args.attack if args.attack is not None else "none")
    restarts = parse_counts(args.restarts or "1", "--restarts")
    if len(restarts) != 1:
        raise ValueError(f"--restarts takes one positive integer, got {args.restarts!r}")
    report, block, path = evaluate_robustness(
        args.run, attacks=attacks, eps=parse_eps_list(args.eps or "3/255"), steps=parse_counts(args.steps or "10", "--steps"),
        restarts=restarts[0], corruptions=parse_corruptions(args.corruption),
        transfer_from=args.transfer_from, episodes=args.episodes, scenario=args.scenario, seed=args.seed,
        logdir=args.logdir, device=args.device, backend=args.backend, command=command_line(),
    )
    print_report(report)
    print_robustness(block)
    name = path.stem.removeprefix("evaluation-")
    print(f"wrote {path} (\"robustness\") and robust/{name}/* (TensorBoard) in {report.run}")


def cmd_replay(args: argparse.Namespace) -> None:
    from agents.explain.replay import write_replays

    result = write_replays(
        args.run, episodes=args.episodes, overlay=args.overlay, every=args.every, scenario=args.scenario,
        seed=args.seed, backend=args.backend, out=args.out, gif=args.gif, device=args.device, logdir=args.logdir,
    )
    print(f"wrote {len(result.videos)} video(s) and {result.index} in {result.seconds:.0f} s")


def cmd_watch(args: argparse.Namespace) -> None:
    from agents.explain.watch import watch

    watch(args.run, episodes=args.episodes, overlay=args.overlay, every=args.every, scenario=args.scenario,
          seed=args.seed, backend=args.backend, out=args.out, device=args.device, logdir=args.logdir,
          max_frames=args.max_frames, speed=args.speed)


def build_parser() -> argparse.ArgumentParser:
    from agents.reference import REFERENCE_ALGOS
    from envs.backends import BACKEND_NAMES, HIGHWAY_ENV
    from perception.attacks import format_eps
    from perception.distill import ATTACK_TARGETS, DistillConfig
    from perception.distill import MODES as DISTILL_MODES
    from perception.loop import field_default
    from perception.models import ARCHS
    from perception.training import MODES as TRAIN_MODES
    from perception.training import TrainConfig

    def trained(name: str):  # the perception training commands' defaults are TrainConfig's ...
        return field_default(TrainConfig, name)

    def distilled(name: str):  # ... and DistillConfig's
        return field_default(DistillConfig, name)

    parser = argparse.ArgumentParser(prog="run.py", description="clearlane: driving agents from camera frames")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--threads", type=positive_int, default=None,
        help="CPU threads for PyTorch and OpenCV (default: all cores; use 1 per job when running jobs side by side)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("scenarios", help="list the scenarios with a one-line description")
    listing.set_defaults(func=cmd_scenarios)

    preview = commands.add_parser("preview", help="write a video of an episode: camera beside highway-env's view")
    preview.add_argument("--scenario", default="highway", help="scenario name or path to a .yaml file")
    preview.add_argument("--camera", choices=("bev", "front"), default=None, help="camera view (default: the scenario's)")
    preview.add_argument("--out", type=Path, default=Path("preview.mp4"), help="output file, .mp4 or .gif")
    preview.add_argument("--seed", type=non_negative_int, default=0)
    preview.add_argument("--steps", type=positive_int, default=None, help="policy steps (default: one episode)")
    preview.add_argument("--backend", choices=BACKEND_NAMES, default=HIGHWAY_ENV.name,
                         help="simulator: highway-env (default) or fast (right panel: its own zoomed-out top-down)")
    preview.set_defaults(func=cmd_preview)

    sweep = commands.add_parser("sweep", help="train a grid of configs x seeds as Ray Tune trials, then one table")
    sweep.add_argument("--scenario", default="highway", help="scenario name or path to a .yaml file")
    sweep.add_argument("--seeds", type=int, default=5, help="seeds per config (0, 1, ...)")
    sweep.add_argument("--grid", default=None, help="grid YAML: a --config block with lists where values vary")
    sweep.add_argument("--config", default=None, help="a --config file under the grid's values")
    sweep.add_argument("--address", default=None, help="auto | HOST:PORT of a running Ray cluster (default: a local one)")
    sweep.add_argument("--timesteps", type=positive_int, default=None, help="env steps per trial")
    sweep.add_argument("--logdir", default="sweeps", help="where sweep folders go")
    sweep.add_argument("--name", default=None, help="sweep folder name (default: <scenario>-sweep-<YYYYmmdd-HHMMSS>)")
    sweep.add_argument("--cpus-per-trial", type=positive_float, default=1.0,
                       help="CPUs (and PyTorch threads) per trial; trials run side by side on the CPUs (default: 1)")
    sweep.add_argument("--gpus-per-trial", type=non_negative_float, default=0.0,
                       help="GPUs per trial, a fraction shares one (default: 0)")
    sweep.add_argument("--device", default=None, help="cpu | cuda | auto (default: cuda with --gpus-per-trial, else cpu)")
    sweep.add_argument("--n-envs", type=positive_int, default=None,
                       help="training envs per trial (default: the backend's; on highway-env set it to --cpus-per-trial)")
    sweep.add_argument("--eval-episodes", type=positive_int, default=200, help="evaluation episodes per trial (default: 200)")
    sweep.add_argument("--eval-backend", choices=BACKEND_NAMES, default=None,
                       help="simulator of each trial's final evaluation (default: the one it trained on)")
    sweep.add_argument("--resume", default=None, help="a sweep folder to finish")
    sweep.set_defaults(func=cmd_sweep)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="kind", required=True, metavar="KIND")
    bench_env = bench_kinds.add_parser("env", help="env steps/s: our camera vs highway-env's GrayscaleObservation")
    bench_env.add_argument("--scenarios", nargs="+", default=None, help="default: every shipped scenario")
    bench_env.add_argument("--steps", type=positive_int, default=300, help="env steps per measurement")
    bench_env.add_argument("--seed", type=non_negative_int, default=0)
    bench_env.add_argument("--backend", choices=BACKEND_NAMES, default=HIGHWAY_ENV.name,
                           help="fast: the batched simulator's steps/s at each --batch-sizes vs highway-env + camera")
    bench_env.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[256, 1024, 4096], help="fast: B")
    bench_env.add_argument("--fast-steps", type=positive_int, default=20, help="fast: timed batched steps per B")
    bench_env.add_argument("--device", default="cpu", help="fast: cpu | cuda | auto")
    bench_env.set_defaults(func=cmd_bench)
    bench_training = bench_kinds.add_parser(
        "perception-training", help="seconds per training step: clean vs FGSM-RS vs PGD, back to back"
    )
    bench_training.add_argument("--arch", choices=list(ARCHS), default=trained("arch"))
    bench_training.add_argument("--input-shape", type=positive_int, nargs=3, default=[9, 96, 48], metavar=("C", "H", "W"))
    bench_training.add_argument("--batch-size", type=positive_int, default=trained("batch_size"))
    bench_training.add_argument("--steps", type=positive_int, default=8, help="timed steps per mode (median)")
    bench_training.add_argument("--threads-per-step", type=positive_int, default=1, help="torch threads")
    bench_training.set_defaults(func=cmd_bench_perception_training)
    bench_ceiling = bench_kinds.add_parser(
        "ppo-ceiling", help="PPO on exact labels instead of camera features (fast backend): perfect perception's ceiling"
    )
    bench_ceiling.add_argument("--scenario", default="highway", help="a scenario the fast backend supports")
    bench_ceiling.add_argument("--timesteps", type=positive_int, default=None, help="default: the fast block's")
    bench_ceiling.add_argument("--episodes", type=positive_int, default=50, help="evaluation episodes")
    bench_ceiling.add_argument("--seed", type=non_negative_int, default=0)
    bench_ceiling.add_argument("--n-envs", type=positive_int, default=None, help="default: FAST_N_ENVS (256)")
    bench_ceiling.add_argument("--config", default=None, help="YAML overriding agents/defaults.yaml, as for train")
    bench_ceiling.set_defaults(func=cmd_bench_ppo_ceiling)
    bench_teacher = bench_kinds.add_parser(
        "teacher", help="the privileged lookahead planner that warm-starts training (fast backend): how it drives"
    )
    bench_teacher.add_argument("--scenario", default="highway", help="a scenario the fast backend supports")
    bench_teacher.add_argument("--episodes", type=positive_int, default=50, help="evaluation episodes")
    # no defaults here: a flag left out keeps LookaheadTeacher's own default, which is not repeated here
    bench_teacher.add_argument("--depth", type=positive_int, help="actions searched exhaustively")
    bench_teacher.add_argument("--horizon", type=positive_int, help="policy steps simulated per plan")
    bench_teacher.add_argument("--min-headway-s", type=float,
                               help="margin to the car ahead [s] below which a step costs a penalty; 0 = none")
    bench_teacher.add_argument("--min-ttc-s", type=float,
                               help="time to collision with the car ahead [s] below which a step costs --ttc-penalty")
    bench_teacher.add_argument("--ttc-penalty", type=float, help="cost of such a step; 0 = none")
    bench_teacher.add_argument("--sight", choices=("all", "camera"),  # agents.teacher.SIGHTS (not imported: --help stays light)
                               help="plan with every vehicle (all, the default) or only those the top-down camera frame shows")
    bench_teacher.add_argument("--plan-hz", type=positive_int,
                               help="physics steps per second of the plans' simulation (default: the scenario's own)")
    bench_teacher.add_argument("--routes", choices=("known", "guessed"),  # agents.teacher.ROUTES
                               help="the other vehicles' routes: exact (known, the default) or guessed for those "
                                    "not yet turning, as a camera sees them (intersection)")
    bench_teacher.add_argument("--route-guesses", type=positive_int,
                               help="with --routes guessed: plans per decision, each with new guesses (default 4)")
    bench_teacher.set_defaults(func=cmd_bench_teacher)

    bench_constant = bench_kinds.add_parser(
        "constant", help="a policy that always takes one action (fast backend): the floor any agent must beat"
    )
    bench_constant.add_argument("--scenario", default="highway", help="a scenario the fast backend supports")
    bench_constant.add_argument("--action", default="IDLE", help="the action's name, e.g. IDLE, FASTER, SLOWER")
    bench_constant.add_argument("--episodes", type=positive_int, default=50, help="evaluation episodes")
    bench_constant.set_defaults(func=cmd_bench_constant)
    bench_explain = bench_kinds.add_parser(
        "explain", help="what explanations cost: a replay (cold and cached), watch's step and redraw, a TensorBoard replay"
    )
    bench_explain.add_argument("--run", required=True, help="run folder (or its name in --logdir); it is not written to")
    bench_explain.add_argument("--backend", choices=BACKEND_NAMES, default=HIGHWAY_ENV.name)
    bench_explain.add_argument("--every", type=positive_int, default=5, help="a SHAP keyframe every K policy steps")
    bench_explain.add_argument("--logdir", type=Path, default=Path("runs"), help="where to look up a run name")
    bench_explain.set_defaults(func=cmd_bench_explain)

    bench_robust = bench_kinds.add_parser(
        "robustness", help="agents x training seeds under attacks and corruptions: median/IQR table and ε plot"
    )
    bench_robust.add_argument("--agent", action="append", required=True, metavar="NAME=GLOB",
                              help="an agent and the run folders of its seeds, e.g. b='runs/b-seed*' (repeat per agent)")
    bench_robust.add_argument("--attack", default="random,fgsm,pgd,mad",
                              help="attacks at every --eps (default: random,fgsm,pgd,mad; also critic)")
    bench_robust.add_argument("--eps", default="1/255,3/255,8/255", help="l-inf budgets (default: 1/255,3/255,8/255)")
    bench_robust.add_argument("--steps", default="10", help="PGD steps, a list such as 10,50 (default: 10)")
    bench_robust.add_argument("--corruption", default="all", help="natural corruptions, KIND:SEV,... | all | none")
    bench_robust.add_argument("--episodes", type=positive_int, default=200, help="evaluation episodes per setting")
    bench_robust.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    bench_robust.add_argument("--out", type=Path, default=Path("docs/robustness"), help="folder of the report")
    bench_robust.set_defaults(func=cmd_bench_robustness)

    bench_path = bench_kinds.add_parser(
        "attack-path", help="which part of the student's output (embedding, labels, feature map) carries an attack to the actor"
    )
    bench_path.add_argument("--run", required=True, help="run folder (or its name in --logdir); it is not written to")
    bench_path.add_argument("--eps", default="3/255", help="l-inf budget of the PGD attack (default: 3/255)")
    bench_path.add_argument("--steps", type=positive_int, default=10, help="PGD steps (default: 10)")
    bench_path.add_argument("--envs", type=positive_int, default=256, help="episodes driven side by side (default: 256)")
    bench_path.add_argument("--policy-steps", type=positive_int, default=8,
                            help="decisions per episode whose observations are attacked (default: 8)")
    bench_path.add_argument("--logdir", type=Path, default=Path("runs"), help="where to look up a run name")
    bench_path.set_defaults(func=cmd_bench_attack_path)

    bench_reference = bench_kinds.add_parser(
        "reference", help="highway-env's own agent (SB3 on its privileged state observation) beside clearlane's, same budget and episodes"
    )
    bench_reference.add_argument("--scenario", default="highway", help="a shipped scenario name or a .yaml path")
    bench_reference.add_argument("--run", default=None,
                                 help="clearlane's trained run of this scenario (default: train one, as `train --scenario S`)")
    bench_reference.add_argument("--algo", choices=REFERENCE_ALGOS, default="dqn",
                                 help="the reference: highway-env's DQN or PPO script (default: dqn)")
    bench_reference.add_argument("--episodes", type=positive_int, default=200, help="highway-env evaluation episodes")
    bench_reference.add_argument("--seed", type=non_negative_int, default=0, help="training seed of both agents")
    bench_reference.add_argument("--timesteps", type=positive_int, default=None,
                                 help="the reference's env-step budget (default: the clearlane model's)")
    bench_reference.add_argument("--time-limit", type=positive_float, default=None, metavar="SECONDS",
                                 help="the reference's wall-clock limit (default: the clearlane run's training "
                                      "time, from its training.json)")
    bench_reference.add_argument("--logdir", type=Path, default=Path("runs"), help="runs folder (look-up and new runs)")
    bench_reference.add_argument("--out", type=Path, default=None, help="folder of the reference (default: <run>/reference-<algo>)")
    bench_reference.set_defaults(func=cmd_bench_reference)

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
    collect.add_argument("--backend", choices=BACKEND_NAMES, default=HIGHWAY_ENV.name,
                         help="simulator: highway-env (default) or fast (straight highways; see envs/fast)")
    collect.set_defaults(func=cmd_perception_collect)

    p_train = perception_steps.add_parser("train", help="train a teacher or student, clean or adversarially")
    p_train.add_argument("--data", type=Path, default=Path("data/perception/highway-mix"), help="dataset folder")
    p_train.add_argument("--arch", choices=list(ARCHS), default=trained("arch"))
    p_train.add_argument("--mode", choices=TRAIN_MODES, default=trained("mode"))
    p_train.add_argument("--eps", default=format_eps(trained("eps")), help="l-inf budget in [0, 1] pixels, e.g. 4/255")
    p_train.add_argument("--epochs", type=positive_int, default=trained("epochs"))
    p_train.add_argument("--batch-size", type=positive_int, default=trained("batch_size"))
    p_train.add_argument("--lr", type=float, default=trained("lr"))
    p_train.add_argument("--seed", type=non_negative_int, default=trained("seed"))
    p_train.add_argument("--device", default=trained("device"), help="auto | cpu | cuda")
    p_train.add_argument("--out", type=Path, default=Path(trained("out")))
    p_train.add_argument("--logdir", type=Path, default=None, help="TensorBoard folder (default: next to --out)")
    p_train.add_argument("--init", default=trained("init"), help="start from this checkpoint's weights")
    p_train.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is --out")
    p_train.set_defaults(func=cmd_perception_train)

    distill = perception_steps.add_parser("distill", help="distil a (robust) teacher into the small student")
    distill.add_argument("--teacher", type=Path, default=Path(distilled("teacher")), help="teacher checkpoint")
    distill.add_argument("--data", type=Path, default=Path("data/perception/highway-mix"), help="dataset folder")
    distill.add_argument("--mode", choices=DISTILL_MODES, default=distilled("mode"), help="robust: RSLAD-style adversarial term")
    distill.add_argument("--eps", default=format_eps(distilled("eps")), help="l-inf budget of the training attack in [0, 1] pixels, e.g. 4/255")
    distill.add_argument("--pgd-steps", type=positive_int, default=distilled("pgd_steps"), help="steps of the training attack")
    distill.add_argument(
        "--attack-target", choices=ATTACK_TARGETS, default=distilled("attack_target"),
        help="what the training attack pushes away from the teacher: labels (RSLAD) or features (embedding and map too)",
    )
    distill.add_argument(
        "--feature-weight", type=non_negative_float, default=distilled("feature_weight"),
        help="weight of matching the teacher's embedding (through a learned projection)",
    )
    distill.add_argument(
        "--map-weight", type=non_negative_float, default=distilled("map_weight"),
        help="weight of matching the teacher's last feature map (needs a teacher of the student's arch)",
    )
    distill.add_argument("--epochs", type=positive_int, default=distilled("epochs"))
    distill.add_argument("--batch-size", type=positive_int, default=distilled("batch_size"))
    distill.add_argument("--lr", type=float, default=distilled("lr"))
    distill.add_argument("--seed", type=non_negative_int, default=distilled("seed"))
    distill.add_argument("--device", default=distilled("device"), help="auto | cpu | cuda")
    distill.add_argument("--out", type=Path, default=Path(distilled("out")))
    distill.add_argument("--logdir", type=Path, default=None, help="TensorBoard folder (default: next to --out)")
    distill.add_argument("--init", default=distilled("init"), help="start the student from this checkpoint's weights")
    distill.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is --out")
    distill.set_defaults(func=cmd_perception_distill)

    p_export = perception_steps.add_parser("export", help="export a checkpoint to ONNX and check it against PyTorch")
    p_export.add_argument("--model", type=Path, default=Path("perception/weights/student.safetensors"), help="checkpoint")
    p_export.add_argument("--out", type=Path, default=None, help=".onnx file (default: --model with suffix .onnx)")
    p_export.add_argument("--opset", type=positive_int, default=17, help="ONNX opset")
    p_export.set_defaults(func=cmd_perception_export)

    p_ship = perception_steps.add_parser("ship", help="copy a student into perception/weights/ with ONNX and a card")
    p_ship.add_argument("--model", type=Path, default=Path("runs/perception/student.safetensors"), help="student checkpoint")
    p_ship.add_argument("--data", type=Path, default=Path("data/perception/highway-mix"), help="the dataset it was trained on")
    p_ship.add_argument("--eval-json", type=Path, default=Path("docs/perception_eval.json"), help="evaluation results")
    p_ship.set_defaults(func=cmd_perception_ship)

    p_eval = perception_steps.add_parser(
        "eval", help="accuracy, robustness (PGD, noise, corruptions), size and CPU speed of models -> docs/PERCEPTION.md"
    )
    p_eval.add_argument(
        "--models", nargs="+", required=True, metavar="NAME=PATH",
        help="checkpoints to compare; the names teacher, robust-teacher, robust-student, clean-student get target checks",
    )
    p_eval.add_argument("--data", type=Path, default=Path("data/perception/highway-mix"), help="dataset (held-out shards)")
    p_eval.add_argument("--attack-frames", type=positive_int, default=256, help="held-out frames attacked (seeded choice)")
    p_eval.add_argument("--eps", nargs="+", default=["1/255", "2/255", "4/255", "8/255"], help="l-inf budgets")
    p_eval.add_argument("--pgd-steps", nargs="+", type=positive_int, default=[10, 50], help="PGD step counts")
    p_eval.add_argument("--latency-threads", nargs="+", type=positive_int, default=[1, 2], help="CPU threads for latency")
    p_eval.add_argument("--device", default="auto", help="where the attacks run: auto | cpu | cuda (speed: always CPU)")
    p_eval.add_argument("--seed", type=non_negative_int, default=0, help="attack subset, random starts, noise")
    p_eval.add_argument("--out", type=Path, default=Path("docs/PERCEPTION.md"), help="report (JSON written next to it)")
    p_eval.set_defaults(func=cmd_perception_eval)

    train = commands.add_parser(
        "train", help="train a PPO or A2C agent on the perception student's features",
        description="Train an agent; hyperparameters come from agents/defaults.yaml (per scenario) and --config.",
    )
    train.add_argument("--scenario", default=None, help="scenario name or path to a .yaml file (default: highway)")
    train.add_argument("--algo", type=str.lower, default=None, metavar="{ppo,a2c}", help="algorithm (default: ppo)")
    train.add_argument("--timesteps", type=positive_int, default=None, help="total env steps (default: from the config)")
    train.add_argument("--n-envs", type=positive_int, default=None,
                       help="parallel envs (default: the number of cores on highway-env, 256 on fast)")
    train.add_argument("--seed", type=non_negative_int, default=None,
                       help="seed of the run (default: 0): the policy's initialisation, and env i starts at "
                            "episode seed x n_envs + i")
    train.add_argument("--backend", choices=BACKEND_NAMES, default=None,
                       help="simulator (default: fast for the scenarios it reproduces: every shipped one; "
                            "highway-env for scenario files it cannot reproduce)")
    train.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda when available)")
    train.add_argument("--logdir", type=Path, default=Path("runs"), help="where run folders go (default: runs/)")
    train.add_argument("--name", default=None, help="run folder name (default: <scenario>-<algo>-<YYYYmmdd-HHMMSS>)")
    train.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML overriding agents/defaults.yaml")
    train.add_argument("--fine-tune", action="store_true", default=None, help="train the perception student too (default: frozen)")
    train.add_argument("--resume", default=None, metavar="RUN", help="continue this run folder from its newest checkpoint")
    train.add_argument("--force", action="store_true", help="replace an existing run folder of the same name")
    train.add_argument("--baseline", default=None, metavar="RUN",
                       help="a run of the same scenario: its newest model plays the final evaluation's episodes too, "
                            "and TensorBoard's safety/summary compares both (docs/SAFETY.md)")
    train.add_argument("--robust-reg", choices=("none", "sa"), default=None,
                       help="sa: SA-PPO's smoothness regulariser (KL between the policy on clean and on MAD-attacked "
                            "frames) in PPO's and the imitation phase's loss (default: the recipe's: sa on highway with PPO, none "
                            "elsewhere; docs/ROBUSTNESS.md)")
    train.add_argument("--robust-eps", default=None, metavar="EPS",
                       help="with --robust-reg sa: the l-inf budget in (0, 1] pixel units its schedule ramps up to "
                            "(default: the config's, 3/255)")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="deterministic evaluation of a run on the scenario's evaluation seeds: safety table, 95%% CIs",
    )
    evaluate.add_argument("--run", default=None, help="run folder (or its name in --logdir)")
    evaluate.add_argument("--runs", default=None,
                          help="many runs in parallel on Ray: a folder of runs (e.g. a sweep), a run, or a glob; "
                               "prints one row per config (median and IQR over seeds)")
    evaluate.add_argument("--address", default=None, help="with --runs: auto | HOST:PORT of a Ray cluster (default: local)")
    evaluate.add_argument("--cpus-per-run", type=positive_float, default=1.0, help="with --runs: CPUs (and PyTorch threads) per run")
    evaluate.add_argument("--episodes", type=positive_int, default=50, help="episodes (default: 50)")
    evaluate.add_argument("--scenario", default=None, help="another scenario with the same camera (default: the run's)")
    evaluate.add_argument("--seed", type=non_negative_int, default=0, help="start this many seeds into the evaluation seeds")
    evaluate.add_argument("--logdir", type=Path, default=Path("runs"), help="where to look up a run name")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda")
    evaluate.add_argument("--backend", choices=BACKEND_NAMES, default=HIGHWAY_ENV.name, help="simulator to evaluate on (default: highway-env)")
    robust = evaluate.add_argument_group(
        "robustness (docs/ROBUSTNESS.md)", "attacks on the camera frames at decision time and sensor corruptions; "
        "results go into the evaluation JSON under \"robustness\" and to TensorBoard under robust/*")
    robust.add_argument("--attack", default=None, metavar="LIST",
                        help="comma-separated: none, random, fgsm, pgd, mad, critic (e.g. none,pgd,mad)")
    robust.add_argument("--eps", default=None, metavar="LIST",
                        help="l-inf budgets in (0, 1] pixel units, comma-separated (default: 3/255), e.g. 1/255,3/255,8/255")
    robust.add_argument("--steps", default=None, metavar="LIST",
                        help="PGD steps of pgd, mad and critic, comma-separated (default: 10), e.g. 10,50")
    robust.add_argument("--restarts", default=None, metavar="N", help="PGD random restarts, best kept (default: 1)")
    robust.add_argument("--transfer-from", default=None, metavar="RUN",
                        help="also play each white-box attack crafted on this run's model (a transfer attack)")
    robust.add_argument("--corruption", default=None, metavar="LIST",
                        help="sensor faults one at a time: all, or KIND:SEVERITY, comma-separated "
                             "(noise, blur, brightness, drop; severity 1 = highway-noisy's level, 2 = twice it)")
    evaluate.set_defaults(func=cmd_evaluate)

    explain_help = {"overlay": "attention (every frame), shap (keyframes), both, or none",
                    "every": "a SHAP keyframe every K policy steps (computed once, cached in the run folder)"}
    for name, text in (("replay", "videos of episodes with attention/SHAP overlays, top-down view, signals + index.html"),
                       ("watch", "watch episodes live in a window with the replay's panels (no display: writes a replay)")):
        explain = commands.add_parser(name, help=text)
        explain.add_argument("--run", required=True, help="run folder (or its name in --logdir)")
        explain.add_argument("--episodes", type=int, default=3 if name == "replay" else 10,
                             help="episodes, on the scenario's evaluation seeds")
        explain.add_argument("--overlay", default="both", help=explain_help["overlay"])
        explain.add_argument("--every", type=int, default=5, help=explain_help["every"])
        explain.add_argument("--scenario", default=None, help="another scenario with the same camera (default: the run's)")
        explain.add_argument("--seed", type=non_negative_int, default=0, help="start this many seeds into the evaluation seeds")
        explain.add_argument("--backend", choices=BACKEND_NAMES, default=HIGHWAY_ENV.name, help="simulator (default: highway-env)")
        explain.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/replays)")
        explain.add_argument("--logdir", type=Path, default=Path("runs"), help="where to look up a run name")
        explain.add_argument("--device", default="cpu", help="auto | cpu | cuda (default: cpu)")
        if name == "replay":
            explain.add_argument("--gif", action="store_true", help="also write a GIF per episode")
            explain.set_defaults(func=cmd_replay)
        else:
            explain.add_argument("--speed", type=float, default=1.0, help="playback speed (1 = real time, 2 = twice as fast)")
            explain.add_argument("--max-frames", type=int, default=None, help=argparse.SUPPRESS)  # tests
            explain.set_defaults(func=cmd_watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.threads is not None:
        from envs.system import set_threads

        set_threads(args.threads)
    try:
        args.func(args)
    except USER_ERRORS as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in PATH_ERRNOS:
            raise
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
