"""`python run.py train`: SB3 PPO or A2C on the perception student's features, one run folder per run.

    python run.py train --scenario highway [--algo a2c] [--timesteps 100000] [--n-envs 2] [--seed 0]
    python run.py train --resume runs/highway-ppo-20250101-120000    # continue after Ctrl-C or a crash

The flow, top to bottom:
1. resolve the config (agents/defaults.yaml < --config FILE < flags) and check it against the
   scenario (camera shape vs the perception checkpoint) before anything is written;
2. make the run folder (config.yaml, command.txt, a copy of the perception weights, whose every
   tensor was checked: digest, finite values); a start that fails before its first checkpoint
   removes the folder again (agents.runs.remove_unstarted_run), so the same --name is free;
3. `n_envs` envs (`SubprocVecEnv` workers when n_envs > 1, else in-process) under `VecMonitor`;
4. on the fast backend, when `training.imitation_iterations` > 0, the warm start: the policy imitates
   the privileged teacher (agents/imitation.py), its env steps counted in the run's timesteps;
5. `model.learn` with callbacks: safety_train/<algo>/* per rollout, eval/* every `eval_every` steps,
   a checkpoint every `checkpoint_every` steps, hyperparameters once; with `--robust-reg sa`
   (`training.robust_reg`) PPO is `SmoothPPO` and steps 4-5 add SA-PPO's regulariser to their loss
   (agents/robust/sa_ppo.py);
6. the final evaluation (eval/*, on highway-env too for a fast-backend run, against `--baseline`),
   its table in TensorBoard's text tab, the final model.zip, or on Ctrl-C a checkpoint, and a short summary.
What goes to TensorBoard about safety, under which tags and units: agents/safety_board.py.

Resuming rebuilds the agent from config.yaml, loads the newest valid checkpoint's weights and optimizer
state (damaged or foreign newer files are skipped with a warning, agents.runs.load_newest_agent) and continues with `reset_num_timesteps=False`, so steps and TensorBoard curves go on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agents.callbacks import AtRolloutStart, HParamsCallback, PeriodicCheckpoint, SafetyCallback
from agents.explain.training_replay import TrainingReplays
from agents.config import RunConfig, check_algo, config_file_sets, load_agent_config
from agents.evaluate import evaluation_seeds
from agents.memory import check_n_envs_fit
from agents.robust.sa_ppo import check_robust_training, schedule_for
from agents.safety_board import (
    EVAL_PREFIX, REFERENCE_PREFIX, EpisodeTracker, Evaluated, EvaluationListener, EvaluationSet, Evaluator, SafetyBoard,
    hparam_metrics, summarize, summary_markdown, tensorboard_writer, untouched_rng,
)
from agents.runs import (
    PERCEPTION_FILE,
    append_command,
    build_agent,
    check_spaces,
    copy_file,
    create_run_dir,
    find_run,
    latest_model,
    load_agent,
    load_agent_to_play,
    read_run_config,
    record_training_session,
    remove_unstarted_run,
    run_name,
    save_checkpoint,
    save_final_model,
    saved_counters,
    write_run_config,
)
from envs.backends import Backend, default_backend_for, evaluation_env, get_backend, privileged_simulator
from envs.goals import has_goal
from envs.progress import progress_bar as _progress_bar
from envs.system import resolve_device, set_threads, usable_cores

if TYPE_CHECKING:
    from scenarios.schema import Scenario

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """What `run.py train` was asked; None = not given (defaults come from the config or the run)."""

    scenario: str | None = None  # name or YAML path; default highway
    algo: str | None = None  # ppo | a2c; default ppo
    timesteps: int | None = None  # total env steps of the run; default from the config
    n_envs: int | None = None  # default: the backend's default_n_envs() (cores on highway-env, 256 on fast)
    seed: int | None = None  # default 0
    backend: str | None = None  # envs.backends.BACKEND_NAMES; default: default_backend_for (a resumed run keeps its own)
    device: str = "auto"  # auto | cpu | cuda
    logdir: str | os.PathLike = "runs"
    name: str | None = None  # run folder name; default <scenario>-<algo>-<YYYYmmdd-HHMMSS>
    resume: str | None = None  # a run folder (or its name in logdir) to continue
    force: bool = False  # replace an existing run folder of the same name
    config: str | os.PathLike | None = None  # YAML file overriding agents/defaults.yaml
    fine_tune: bool | None = None  # train the perception weights too
    perception: str | os.PathLike | None = None  # perception checkpoint; default the config's (shipped student)
    threads: int | None = None  # PyTorch CPU threads of the main process; None: cores left over by the env workers
    progress_bar: bool = True
    command: str = ""  # the command line, recorded in command.txt
    baseline: str | None = None  # a run folder (or its name in logdir) of the same scenario to compare the final evaluation with
    robust_reg: str | None = None  # none | sa: SA-PPO's smoothness regulariser (agents/robust/sa_ppo.py); default the recipe's
    robust_eps: float | None = None  # [0, 1] pixel units: its budget at full ramp; default the config's (3/255)
    on_evaluation: EvaluationListener | None = None  # hears each periodic evaluation (a sweep reports it to Ray Tune)
    hparams_first: tuple[str, ...] = ()  # HPARAMS tab: these come first (a sweep's seed and grid keys, e.g. "ppo/gamma")


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_path: Path  # model.zip, or the checkpoint written on Ctrl-C
    start_timesteps: int
    num_timesteps: int
    interrupted: bool
    elapsed_s: float  # wall time of model.learn [s]
    backend: str = "highway-env"  # the simulator it trained on
    eval_seconds: float = 0.0  # [s] of elapsed_s spent in the evaluations (eval/*, eval_highway_env/*, the baseline's)
    replay_seconds: float = 0.0  # [s] of elapsed_s spent on replays for TensorBoard (replay/*)

    @property
    def steps_per_s(self) -> float:
        return (self.num_timesteps - self.start_timesteps) / max(self.elapsed_s, 1e-9)


# -- envs ----------------------------------------------------------------------------------------
# Choosing and building envs is envs.backends' job: Backend.make_vec_env / default_n_envs,
# default_backend_for (the simulator a run trains on), evaluation_env (eval/* on the reference).


def _stored_scenario(argument: str, scenario) -> str:
    """How config.yaml names the scenario: the shipped name, else the file's absolute path."""
    from scenarios import available_scenarios

    return argument if argument in available_scenarios() else str(Path(scenario.source).resolve())


# -- preparing a run -----------------------------------------------------------------------------


def _check_options(options: TrainOptions) -> None:
    if options.timesteps is not None and options.timesteps <= 0:
        raise ValueError(f"--timesteps must be a positive integer, got {options.timesteps}")
    if options.n_envs is not None and options.n_envs <= 0:
        raise ValueError(f"--n-envs must be a positive integer, got {options.n_envs}")
    if options.seed is not None and options.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {options.seed}")
    if options.algo is not None:
        check_algo(options.algo)
    if options.backend is not None:
        get_backend(options.backend)
    if options.robust_reg is not None and options.robust_reg not in ("none", "sa"):
        raise ValueError(f"--robust-reg must be none or sa, got {options.robust_reg!r}")
    if options.robust_eps is not None and not 0.0 < options.robust_eps <= 1.0:
        raise ValueError(f"--robust-eps must be in (0, 1] (pixel units, e.g. 3/255), got {options.robust_eps:g}")


def _new_run(options: TrainOptions):
    """Resolve and check everything, then make the run folder. Returns (run_dir, config, eval env)."""
    from perception.checkpoint import verify_checkpoint
    from perception.extractor import DEFAULT_STUDENT
    from scenarios import load_scenario

    algo = options.algo or "ppo"
    scenario_arg = str(options.scenario or "highway")
    backend = get_backend(options.backend) if options.backend else default_backend_for(load_scenario(scenario_arg))
    env = evaluation_env(scenario_arg, backend)  # validates the scenario (and the backend)
    try:
        scenario = env.scenario
        stored = _stored_scenario(scenario_arg, scenario)
        overrides: dict[str, dict] = {"training": {}, "policy": {}}
        if options.timesteps is not None:
            overrides["training"]["timesteps"] = options.timesteps
        if options.fine_tune is not None:
            overrides["policy"]["fine_tune"] = options.fine_tune
        if options.perception is not None:
            overrides["policy"]["perception"] = str(options.perception)
        if options.robust_reg is not None:
            overrides["training"]["robust_reg"] = options.robust_reg
        if options.robust_eps is not None:
            overrides["training"]["robust_eps"] = options.robust_eps
        recipe = scenario.name if stored == scenario_arg else None
        agent = load_agent_config(recipe, options.config, overrides, backend=backend.name)
        if algo != "ppo" and agent.training.robust and options.robust_reg is None \
                and not config_file_sets(options.config, "training", "robust_reg"):
            # the recipe's SA regulariser (agents/defaults.yaml) is PPO's; an explicit one is an error below
            log.info("%s trains without the recipe's SA-PPO regulariser (training.robust_reg: sa works with PPO only)",
                     algo.upper())
            overrides["training"]["robust_reg"] = "none"
            agent = load_agent_config(recipe, options.config, overrides, backend=backend.name)
        perception = Path(agent.policy.perception).expanduser() if agent.policy.perception else DEFAULT_STUDENT
        if not perception.is_file():
            hint = (
                "the shipped student is made by `python run.py perception distill` + `perception ship`"
                if agent.policy.perception is None
                else "set policy.perception in your --config file to an existing .safetensors file"
            )
            raise FileNotFoundError(f"perception checkpoint not found: {perception} ({hint})")
        observation_shape = tuple(int(n) for n in env.observation_space.shape)
        input_shape = tuple(verify_checkpoint(perception)["input_shape"])  # every tensor: digest, finite values
        if input_shape != observation_shape:
            raise ValueError(
                f"perception checkpoint {perception} reads frames of shape (C, H, W) = {input_shape}, but scenario "
                f"{scenario_arg} gives {observation_shape}; use a checkpoint trained on this camera"
            )
        n_envs = options.n_envs or backend.default_n_envs()
        _check_imitation(agent.training, backend, n_envs, scenario)
        check_robust_training(algo, agent.training)
        if options.robust_eps is not None and not agent.training.robust:
            raise ValueError("--robust-eps is the budget of the robust regulariser, which is off; add --robust-reg sa")
        config = RunConfig(
            scenario=stored,
            algo=algo,
            seed=0 if options.seed is None else options.seed,
            backend=backend.name,
            n_envs=n_envs,
            device=options.device,
            observation_shape=observation_shape,
            n_actions=int(env.action_space.n),
            training=agent.training,
            policy=dataclasses.replace(agent.policy, perception=str(perception)),
            **{algo: agent.algo_config(algo)},
        )
        check_n_envs_fit(config, resolve_device(options.device))  # before the run folder and any work
        run_dir = create_run_dir(Path(options.logdir) / (options.name or run_name(scenario.name, algo)), options.force)
        try:
            copy_file(perception, run_dir / PERCEPTION_FILE)
            write_run_config(run_dir, config)
            append_command(run_dir, options.command)
        except BaseException:
            remove_unstarted_run(run_dir)
            raise
    except BaseException:
        env.close()
        raise
    return run_dir, config, env


def _check_imitation(training, backend: Backend, n_envs: int, scenario: Scenario) -> None:
    """The warm start needs a backend with privileged state (fast), a teacher frequency the scenario
    allows, routes to guess where it guesses them, and must leave steps of the budget to PPO/A2C."""
    if not training.imitates:
        return
    if not backend.has_privileged_state:
        from envs.backends import BACKENDS

        able = [other.name for other in BACKENDS if other.has_privileged_state]
        raise ValueError(
            f"training.imitation_iterations is {training.imitation_iterations}, but imitation needs the "
            f"{' or '.join(able)} backend (its teacher plans on the batched simulator's state); set it to 0 or use "
            f"--backend {able[0]}"
        )
    imitation_steps = training.imitation_iterations * training.imitation_steps * n_envs
    if imitation_steps >= training.timesteps:
        raise ValueError(
            f"--timesteps {training.timesteps:,} leaves nothing after the imitation warm start's {imitation_steps:,} "
            f"env steps (imitation_iterations {training.imitation_iterations} x imitation_steps "
            f"{training.imitation_steps} x {n_envs} envs); give more --timesteps, or set "
            f"training.imitation_iterations: 0 in a --config file"
        )
    from agents.teacher import planning_scenario

    try:
        planning_scenario(scenario, training.teacher_plan_hz)
    except ValueError as error:
        raise ValueError(f"training.teacher_plan_hz: {error}") from None
    from envs.fast.simulators import routes_can_be_guessed

    if training.teacher_routes == "guessed" and not routes_can_be_guessed(scenario):
        raise ValueError(f"training.teacher_routes is 'guessed', but {scenario.name}'s other vehicles do not choose "
                         f"among routes a camera cannot see (intersection's do); set it to 'known'")


def _resumed_run(options: TrainOptions):
    """Check that the run can go on. Returns (run_dir, config, eval env, model path)."""
    conflicting = {
        "--scenario": options.scenario, "--algo": options.algo, "--seed": options.seed, "--config": options.config,
        "--fine-tune": options.fine_tune, "perception (policy.perception)": options.perception, "--name": options.name,
        "--backend": options.backend, "--robust-reg": options.robust_reg, "--robust-eps": options.robust_eps,
    }
    given = [flag for flag, value in conflicting.items() if value is not None] + (["--force"] if options.force else [])
    if given:
        raise ValueError(
            f"--resume continues a run with the config it was started with; leave out {', '.join(given)} "
            f"(only --timesteps, --n-envs and --device may change)"
        )
    run_dir = find_run(options.resume, options.logdir)
    config = read_run_config(run_dir)
    total = options.timesteps or config.training.timesteps
    config = dataclasses.replace(
        config,
        n_envs=options.n_envs or config.n_envs,
        device=options.device,
        training=dataclasses.replace(config.training, timesteps=total),
    )
    check_n_envs_fit(config, resolve_device(options.device), run_dir / PERCEPTION_FILE)
    env = evaluation_env(config.scenario, config.backend)
    try:
        check_spaces(config, run_dir, env.observation_space, env.action_space, config.scenario)
        model_path = _newest_valid_model(config, run_dir, env, options.device)
        done = saved_counters(model_path)["num_timesteps"]
        if done >= total:
            asked = "asked for" if options.timesteps else "of its config"
            reached = f"all the {total:,} {asked}" if done == total else f"more than the {total:,} {asked}"
            raise ValueError(
                f"run {run_dir} has already trained {done:,} timesteps, {reached}; pass --timesteps with a total "
                f"above {done:,} to train longer"
            )
        write_run_config(run_dir, config)
        append_command(run_dir, options.command)
    except BaseException:
        env.close()
        raise
    return run_dir, config, env, model_path


def _newest_valid_model(config: RunConfig, run_dir: Path, env, device: str) -> Path:
    """The newest model of the run whose tensors load into its policy (agents.runs.load_newest_agent,
    which warns about the newer files it skipped), tried on one env before the training envs start."""
    _, path = load_agent_to_play(config, run_dir, env, str(resolve_device(device)))
    return path


# -- training ------------------------------------------------------------------------------------


def train(options: TrainOptions) -> TrainResult:
    """Train (or resume) one run; see the module docstring. Ctrl-C saves a checkpoint and returns."""
    from stable_baselines3.common.callbacks import CallbackList

    _check_options(options)
    baseline = _check_baseline(options)
    device = str(resolve_device(options.device))
    if options.resume:
        run_dir, config, eval_env, model_path = _resumed_run(options)
    else:
        run_dir, config, eval_env = _new_run(options)
        model_path = None
    log.info(
        "%s on %s: %d envs on the %s simulator, %s env steps in all -> %s", config.algo.upper(),
        eval_env.scenario.name, config.n_envs, config.backend, f"{config.training.timesteps:,}", run_dir,
    )

    backend = get_backend(config.backend)
    _set_threads(options.threads, config.n_envs if backend.uses_worker_processes else 1)  # else: no workers
    vec_env = replays = None
    try:
        vec_env = backend.make_vec_env(config.scenario, config.n_envs, str(device))
        if model_path is None:
            model = build_agent(config, run_dir, vec_env, device)
        else:
            # a different seed than the start's, so the resumed episodes are new ones
            start = saved_counters(model_path)["num_timesteps"]
            model = load_agent(config, run_dir, vec_env, device, model_path, seed=config.seed + start)
            log.info("resuming %s from %s at %s steps", run_dir, model_path.name, f"{model.num_timesteps:,}")
        start_timesteps = model.num_timesteps
        model.set_logger(_tensorboard_logger(run_dir, purge_step=None if model_path is None else start_timesteps))

        training = config.training
        writer = tensorboard_writer(model.logger)
        board = SafetyBoard(writer) if writer is not None else None
        periodic, reference = _evaluation_sets(config, eval_env, str(device))
        evaluator = (Evaluator(board, periodic, training.eval_every, start_timesteps, options.on_evaluation)
                     if periodic else None)
        replays = (TrainingReplays(writer, config.scenario, config.backend, training.replay_every,
                                   start_step=start_timesteps)
                   if writer is not None and training.replay_every else None)
        phases = _phases(config)
        prefixes = [evaluation.prefix for evaluation in (periodic, reference) if evaluation is not None]
        goal = has_goal(eval_env.scenario.highway_env.id)  # a success rate to chart (envs.goals)
        if model_path is None and board is not None:
            board.write_layout(phases, [(evaluation.prefix, _chart_title(evaluation))
                                        for evaluation in (periodic, reference) if evaluation is not None], goal)
            board.write_glossary(0, _run_about(run_dir, config, periodic, reference))
        callbacks = [
            SafetyCallback(eval_env.scenario.safety.route_length_m, board, config.algo),
            PeriodicCheckpoint(run_dir, training.checkpoint_every, training.keep_checkpoints),
        ]
        if evaluator is not None:
            callbacks.append(AtRolloutStart(evaluator.maybe_evaluate))
        if replays is not None:
            callbacks.append(AtRolloutStart(replays.maybe_log))
        if model_path is None:
            callbacks.append(HParamsCallback(_hparams(config), hparam_metrics(phases, prefixes, goal), options.hparams_first))
        progress = progress_bar() if options.progress_bar else None
        if progress is not None:
            callbacks.append(progress)

        interrupted = False
        began = time.perf_counter()
        try:
            if evaluator is not None and model_path is None:
                evaluator.evaluate(model, 0)  # before training: where the curves start
            if replays is not None and model_path is None:
                replays.log(model, 0)
            if model_path is None and training.imitates:
                _imitate(model, vec_env, training, run_dir, options.progress_bar, board, evaluator,
                         eval_env.scenario.safety.route_length_m, replays, schedule_for(training, config.n_envs))
            model.learn(
                total_timesteps=training.timesteps - model.num_timesteps,
                callback=CallbackList(callbacks),
                log_interval=1,
                reset_num_timesteps=model.num_timesteps == 0,
            )
            if evaluator is not None:
                _final_evaluation(model, evaluator, reference, baseline, board, run_dir, eval_env, str(device), began)
            if replays is not None:
                replays.final(model, model.num_timesteps)
        except KeyboardInterrupt:
            interrupted = True
            if progress is not None:
                progress.close()
        elapsed = time.perf_counter() - began
        if interrupted:
            saved = save_checkpoint(model, run_dir, training.keep_checkpoints)
        else:
            saved = save_final_model(model, run_dir)
        record_training_session(run_dir, start_timesteps, model.num_timesteps, elapsed, interrupted)
        model.logger.close()
    except BaseException:
        if model_path is None and remove_unstarted_run(run_dir):  # a failed start: the same --name works again
            log.info("removed %s: the run failed before its first checkpoint", run_dir)
        raise
    finally:
        _close(vec_env)
        eval_env.close()
        if replays is not None:
            replays.close()
    return TrainResult(run_dir, saved, start_timesteps, model.num_timesteps, interrupted, elapsed, config.backend,
                       evaluator.seconds if evaluator is not None else 0.0,
                       replays.seconds if replays is not None else 0.0)


# -- safety and evaluation in TensorBoard (agents/safety_board.py) --------------------------------


@dataclass(frozen=True)
class _Baseline:
    run_dir: Path
    config: RunConfig


def _check_baseline(options: TrainOptions) -> _Baseline | None:
    """--baseline RUN: a run folder of the same scenario, with a model; checked before anything is written."""
    from scenarios import load_scenario

    if options.baseline is None:
        return None
    try:
        run_dir = find_run(options.baseline, options.logdir)
        config = read_run_config(run_dir)
        latest_model(run_dir)  # it has an intact model file; the one played is the newest valid one
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--baseline {options.baseline}: {error}") from None
    if options.resume:
        ours = read_run_config(find_run(options.resume, options.logdir)).scenario
    else:
        argument = str(options.scenario or "highway")
        ours = _stored_scenario(argument, load_scenario(argument))
    if config.scenario != ours:
        raise ValueError(
            f"--baseline {options.baseline}: that run is of scenario {config.scenario}, this one of {ours}; "
            f"a baseline must be a run of the same scenario (its evaluation episodes are compared one by one)"
        )
    return _Baseline(run_dir, config)


def _evaluation_sets(config: RunConfig, eval_env, device: str) -> tuple[EvaluationSet | None, EvaluationSet | None]:
    """(periodic eval/*, final eval_highway_env/*). The periodic evaluation plays `eval_episodes` batched on
    a backend that can (fast: ~20 ms per episode) where it reproduces the scenario, else
    `reference_eval_episodes` on highway-env (~1 s each); the first case adds a final check of
    `reference_eval_episodes` on highway-env, the reference simulator. None where there is none."""
    from envs.backends import BACKENDS, REFERENCE

    training, scenario = config.training, eval_env.scenario
    if training.eval_every <= 0:
        return None, None
    reference = None
    if training.reference_eval_episodes > 0:
        reference = EvaluationSet(REFERENCE_PREFIX, evaluation_seeds(scenario, training.reference_eval_episodes),
                                  REFERENCE.name, batched=False, scenario=scenario, env=eval_env)
    batched = next((backend for backend in BACKENDS if backend.batched and backend.supports(scenario)), None)
    if batched is None:
        if reference is None:
            return None, None
        return dataclasses.replace(reference, prefix=EVAL_PREFIX), None
    periodic = EvaluationSet(EVAL_PREFIX, evaluation_seeds(scenario, training.eval_episodes), batched.name,
                             batched=True, scenario=scenario, device=device)
    return periodic, reference


def _phases(config: RunConfig) -> list[str]:
    """The phases whose training episodes are logged (safety_train/<phase>/*), in order."""
    return (["dagger_teacher", "dagger"] if config.training.imitates else []) + [config.algo]


def _chart_title(evaluation: EvaluationSet) -> str:
    when = "step 0, every eval_every steps and the end" if evaluation.prefix == EVAL_PREFIX else "the end of the run"
    return f"{evaluation.prefix}: mean and 95 % band, {len(evaluation.seeds)} episodes on {evaluation.backend} ({when})"


def _run_about(run_dir: Path, config: RunConfig, periodic: EvaluationSet | None,
               reference: EvaluationSet | None) -> str:
    lines = [f"**{run_dir.name}**: {config.algo.upper()} on `{config.scenario}`, trained on the {config.backend} "
             f"simulator, {config.training.timesteps:,} env steps"
             + (f" ({config.training.imitation_iterations} DAgger iterations first)" if config.training.imitates else "")
             + (f", with SA-PPO's smoothness regulariser (weight {config.training.robust_reg_weight:g}, ε up to "
                f"{config.training.robust_eps * 255:.3g}/255: robust/sa_kl, robust/sa_eps)" if config.training.robust else "")
             + "."]
    if periodic is not None:
        lines.append(f"`{periodic.prefix}/*`: {periodic.about}, every {config.training.eval_every:,} env steps.")
    if reference is not None:
        lines.append(f"`{reference.prefix}/*`: {reference.about}, at the end.")
    return "  \n".join(lines)


def _final_evaluation(model, evaluator: Evaluator, reference: EvaluationSet | None, baseline: _Baseline | None,
                      board: SafetyBoard | None, run_dir: Path, eval_env, device: str, began: float) -> None:
    """At the last step: eval/* (unless the periodic one was there), eval_highway_env/*, the baseline
    on the same episodes, and the summary table (text tab and <run>/safety_summary.md)."""
    step = model.num_timesteps
    final = evaluator.final(model, step)
    checked = evaluator.evaluate(model, step, reference) if reference is not None else None
    compared = None
    if baseline is not None:
        started = time.perf_counter()
        compared = _evaluate_baseline(baseline, evaluator.evaluation, eval_env, device)
        evaluator.seconds += time.perf_counter() - started
    text = summary_markdown(final, checked, compared, baseline.run_dir.name if baseline else None, evaluator.seconds,
                            time.perf_counter() - began)
    if board is not None:
        board.write_summary(step, text)
    (run_dir / "safety_summary.md").write_text(text + "\n")
    log.info("final evaluation: %s", run_dir / "safety_summary.md")


def _evaluate_baseline(baseline: _Baseline, evaluation: EvaluationSet, eval_env, device: str) -> Evaluated:
    """The baseline run's newest valid model (agents.runs.load_newest_agent) on the same evaluation episodes."""
    check_spaces(baseline.config, baseline.run_dir, eval_env.observation_space, eval_env.action_space,
                 baseline.config.scenario)
    with untouched_rng():  # building the agent draws initial weights: not from the training's generators
        model, _ = load_agent_to_play(baseline.config, baseline.run_dir, eval_env, device)
    rows = evaluation.play(model)
    return Evaluated(int(model.num_timesteps), rows, summarize(rows), evaluation)


def _imitate(model, vec_env, training, run_dir: Path, show_progress: bool, board: SafetyBoard | None = None,
             evaluator: Evaluator | None = None, route_length_m: float = 1.0,
             replays: TrainingReplays | None = None, smoothing=None) -> None:
    """The warm start (agents/imitation.py): the policy imitates the privileged teacher for
    `imitation_iterations` DAgger iterations. Its env steps count towards the run's timesteps; a
    checkpoint after each iteration means a kill loses at most one iteration (`--resume` then goes
    on with PPO/A2C from it). imitation/* goes to TensorBoard, and after each iteration the safety of
    its finished episodes (safety_train/dagger_teacher/* in the first, where the teacher drives;
    safety_train/dagger/* after, where the learner drives) and, when due, eval/* and a replay.
    `smoothing` (an agents.robust.sa_ppo.SASchedule, `--robust-reg sa`) adds SA-PPO's regulariser to
    the imitation loss; robust/sa_kl and robust/sa_eps then go to TensorBoard after each iteration (and
    robust/attacked_regret with adversarial imitation, `training.robust_imitation_weight`)."""
    from agents.imitation import imitate_teacher
    from agents.teacher import teacher_for

    steps_per_iteration = training.imitation_steps * vec_env.num_envs  # env steps of all envs
    tracker = EpisodeTracker(route_length_m, vec_env.num_envs)

    def transition(infos, dones, learner_drove: bool) -> None:
        tracker.step(infos, dones, "dagger" if learner_drove else "dagger_teacher")

    def record(progress) -> None:
        model.num_timesteps = progress.iteration * steps_per_iteration
        for key in ("regret", "agreement", "samples"):
            model.logger.record(f"imitation/{key}", getattr(progress, key))
        if progress.sa_eps is not None:
            model.logger.record("robust/sa_eps", progress.sa_eps)
            model.logger.record("robust/sa_kl", progress.sa_kl)
        if progress.attacked_regret is not None:
            model.logger.record("robust/attacked_regret", progress.attacked_regret)
        model.logger.dump(model.num_timesteps)
        for phase, rows in tracker.pop().items():
            if board is not None:
                board.log_training(phase, rows, model.num_timesteps)
        save_checkpoint(model, run_dir, training.keep_checkpoints)
        if evaluator is not None:
            evaluator.maybe_evaluate(model, model.num_timesteps)
        if replays is not None:
            replays.maybe_log(model, model.num_timesteps)
        log.info("imitation %d/%d: regret %.3f, agreement with the teacher %.2f, %.0f s", progress.iteration,
                 training.imitation_iterations, progress.regret, progress.agreement, progress.seconds)

    total = training.imitation_iterations * steps_per_iteration
    with _progress_bar(total, "imitating the teacher", unit="env steps", disable=not show_progress) as bar:
        teacher = teacher_for(privileged_simulator(vec_env), training)
        imitate_teacher(model.policy, vec_env, training.imitation_iterations, training.imitation_steps,
                        teacher=teacher, on_iteration=record, on_step=lambda: bar.advance(vec_env.num_envs), on_transition=transition,
                        smoothing=smoothing, tune_perception=training.imitation_tunes_perception)


def _tensorboard_logger(run_dir: Path, purge_step: int | None):
    """SB3's logger writing TensorBoard events into the run folder itself.

    On resume, `purge_step` = the checkpoint's step: the new events file starts with TensorBoard's
    restart marker at that step (what `SummaryWriter(purge_step=...)` writes), so TensorBoard drops
    what an earlier session logged at or after it (the steps a kill -9 lost), and the curve continues
    without a fold. SB3's `TensorBoardOutputFormat` takes no purge step; its public `writer` is
    given the marker before anything else is written.
    """
    from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    output = TensorBoardOutputFormat(str(run_dir))
    if purge_step is not None:
        output.writer.file_writer.add_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))
    return Logger(str(run_dir), [output])


def progress_bar():
    """An SB3 callback drawing training's progress as every long job does (envs.progress: env steps,
    elapsed < remaining), with a total of whole rollouts: `learn` always finishes the rollout it is
    in, so SB3's own total (the steps asked for) ended at e.g. 212,992/197,600."""
    from stable_baselines3.common.callbacks import BaseCallback

    class WholeRolloutsProgressBar(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.bar = None  # envs.progress.ProgressBar while training runs

        def _on_training_start(self) -> None:
            rollout = self.model.n_steps * self.training_env.num_envs  # env steps per rollout
            asked = self.locals["total_timesteps"] - self.model.num_timesteps
            self.bar = _progress_bar(math.ceil(asked / rollout) * rollout, "training", unit="env steps")

        def _on_step(self) -> bool:
            self.bar.advance(self.training_env.num_envs)
            return True

        def _on_training_end(self) -> None:
            self.close()

        def close(self) -> None:
            """End the bar (also after Ctrl-C, when SB3 never calls `_on_training_end`)."""
            if self.bar is not None:
                self.bar.close()

    return WholeRolloutsProgressBar()


def _set_threads(threads: int | None, n_envs: int) -> None:
    """PyTorch threads of the main process. By default, leave the env workers their cores: PyTorch's
    threads spin while they wait and take CPU from the workers. Measured on 2 cores beside another
    job, PPO on highway with 2 workers: 1 thread 57 env steps/s, 2 threads 47 (and 41 vs 5 while
    the other job was heavier)."""
    import torch

    if threads is None:
        if n_envs <= 1:
            return
        threads = max(1, usable_cores() - n_envs)
        if torch.get_num_threads() <= threads:
            return
        log.info("using %d PyTorch thread(s) beside %d env workers (set --threads to change)", threads, n_envs)
    set_threads(threads)


def _close(vec_env) -> None:
    """Close the training envs; after Ctrl-C a worker may already be gone."""
    if vec_env is None:
        return
    try:
        vec_env.close()
    except (BrokenPipeError, EOFError, ConnectionResetError, OSError) as error:
        log.debug("closing the env workers: %r", error)


def _hparams(config: RunConfig) -> dict:
    """Flat hyperparameters for TensorBoard's HPARAMS tab."""
    values = {"algo": config.algo, "scenario": config.scenario, "backend": config.backend, "seed": config.seed,
              "n_envs": config.n_envs}
    for section in ("training", "policy"):
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            values[f"{section}/{key}"] = str(list(value)) if isinstance(value, (list, tuple)) else value
    for key, value in dataclasses.asdict(config.algo_params).items():
        values[f"{config.algo}/{key}"] = value
    return values


def format_summary(result: TrainResult) -> str:
    """The lines printed at the end of `run.py train`."""
    run = result.run_dir
    status = (
        f"interrupted at {result.num_timesteps:,} steps; saved {result.model_path}"
        if result.interrupted
        else f"trained to {result.num_timesteps:,} steps; final model {result.model_path}"
    )
    return "\n".join(
        [
            status,
            f"  run folder: {run}  ({result.num_timesteps - result.start_timesteps:,} steps in "
            f"{result.elapsed_s:.0f} s, {result.steps_per_s:.1f} steps/s on the {result.backend} simulator)",
            *([f"  evaluation: {result.eval_seconds:.0f} s of the {result.elapsed_s:.0f} s "
               f"({result.eval_seconds / max(result.elapsed_s, 1e-9):.1%}); final table in {run / 'safety_summary.md'}"]
              if result.eval_seconds and not result.interrupted else []),
            *([f"  replays:    {result.replay_seconds:.0f} s ({result.replay_seconds / max(result.elapsed_s, 1e-9):.1%}); "
               f"TensorBoard's IMAGES tab, replay/*"] if result.replay_seconds else []),
            f"  watch:      tensorboard --logdir {run.parent}",
            f"  evaluate:   python run.py evaluate --run {run}",
            *([f"  continue:   python run.py train --resume {run}"] if result.interrupted else []),
        ]
    )
