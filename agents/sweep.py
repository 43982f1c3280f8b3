"""`run.py sweep`: a grid of configs x seeds trained as Ray Tune trials, then one table.

    <sweep>/ray/                      Ray Tune's state (what `--resume` restores)
    <sweep>/trials/c<K>-seed<S>/      each trial's run folder, as `run.py train` writes it
    <sweep>/sweep.yaml                what was asked: scenario, seeds, configs
    <sweep>/results.{csv,json,md}     agents/sweep_table.py

A trial is `agents.train.train` (the same function as `run.py train`) with the config block written
to its folder as `--config`, then `agents.evaluate.evaluate_run` on the fixed evaluation seeds;
its eval/* means go to `tune.report`. Failed trials are retried (`FailureConfig`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.ray_backend import import_ray, init_ray
from agents.sweep_grid import expand_grid, load_grid
from agents.sweep_table import Row, build_rows, read_trial, write_table
from scenarios.loader import SCENARIO_DIR, resolve_scenario_path

PLAN_FILE = "sweep.yaml"


@dataclass(frozen=True)
class SweepOptions:
    """What `run.py sweep` was asked."""

    scenario: str = "highway"
    seeds: int = 5
    grid: str | None = None  # grid YAML; None: the scenario's default recipe, one config
    config: str | None = None  # a --config file applied under the grid's values (e.g. tiny test budgets)
    address: str | None = None  # None: a local Ray; "auto" or HOST:PORT: a running cluster
    timesteps: int | None = None
    logdir: str = "sweeps"
    name: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    resume: str | None = None  # a sweep folder to finish
    max_failures: int = 1
    eval_episodes: int = 200
    eval_backend: str | None = None  # None: each trial is evaluated on the simulator it trained on
    n_envs: int | None = None  # per trial; None: the backend's default (256 batched envs on fast, one worker per core on highway-env)
    device: str | None = None  # None: cuda when --gpus-per-trial > 0, else cpu


def plan(options: SweepOptions) -> dict[str, Any]:
    """The sweep's configs (validated) and seeds, as written to `sweep.yaml`."""
    if options.seeds < 1:
        raise ValueError(f"--seeds {options.seeds}: a sweep needs at least 1 seed")
    configs = load_grid(options.grid, options.scenario) if options.grid else expand_grid({})
    path = resolve_scenario_path(options.scenario)  # an unknown scenario is one clear error, before Ray starts
    shipped = path == SCENARIO_DIR / f"{options.scenario}.yaml"
    return {"scenario": options.scenario if shipped else str(path),  # absolute: trials run in Ray's working folder
            "seeds": list(range(options.seeds)), "configs": configs,
            "base_config": str(Path(options.config).resolve()) if options.config else None,
            "timesteps": options.timesteps, "eval_episodes": options.eval_episodes,
            "device": options.device or ("cuda" if options.gpus_per_trial > 0 else "cpu"),
            "n_envs": options.n_envs, "eval_backend": options.eval_backend,
            "cpus_per_trial": options.cpus_per_trial, "gpus_per_trial": options.gpus_per_trial,
            "max_failures": options.max_failures}


def params_of(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"ppo.gamma": 0.9, ...}: a config block flattened, for the table and the HParams view."""
    return {f"{section}.{key}": value for section, body in config.items() for key, value in body.items()}


def run_trial(trial: dict[str, Any]) -> None:
    """One trial inside a Ray worker: train (reporting each periodic evaluation as it comes), evaluate on
    the fixed evaluation seeds, report that last. Resumes its run folder if it exists (a retried trial)."""
    from ray import tune

    from agents.evaluate import evaluate_run
    from agents.train import TrainOptions, train

    def report(step: int, estimates: dict[str, Any], final: bool = False) -> None:
        tune.report({"env_steps": step, "final": final, **{f"eval/{key}": estimate.mean for key, estimate in estimates.items()}})

    run_dir = Path(trial["trials_dir"]) / trial["name"]
    block = _merged_block(trial["base_config"], trial["config"])
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    config_file = run_dir.parent / f"{trial['name']}.config.yaml"
    config_file.write_text(yaml.safe_dump(block))
    if _finished(run_dir):  # a retried or resumed trial whose training had ended: evaluate only
        from agents.runs import FINAL_MODEL, read_run_config, saved_counters

        num_timesteps, backend = saved_counters(run_dir / FINAL_MODEL)["num_timesteps"], read_run_config(run_dir).backend
    else:
        from agents.runs import checkpoint_paths

        common = dict(timesteps=trial["timesteps"], logdir=run_dir.parent, device=trial["device"], n_envs=trial["n_envs"],
                      threads=trial["threads"], progress_bar=False, command=f"sweep trial {trial['name']}",
                      on_evaluation=report,
                      hparams_first=("seed", *(key.replace(".", "/", 1) for key in params_of(trial["config"]))))
        if (run_dir / "config.yaml").is_file() and checkpoint_paths(run_dir):  # killed mid-run: go on from its checkpoint
            options = TrainOptions(resume=trial["name"], **common)
        else:  # new, or killed before its first checkpoint: start (again)
            options = TrainOptions(scenario=trial["scenario"], seed=trial["seed"], name=trial["name"], config=config_file,
                                   force=run_dir.exists(), **common)
        result = train(options)
        num_timesteps, backend = result.num_timesteps, result.backend
    evaluation, _ = evaluate_run(run_dir, episodes=trial["eval_episodes"], logdir=run_dir.parent, device=trial["device"],
                                 backend=trial["eval_backend"] or backend)
    report(num_timesteps, evaluation.metrics, final=True)


def _finished(run_dir: Path) -> bool:
    """Whether the run folder holds its final model (written when training reached its total)."""
    from agents.runs import FINAL_MODEL

    return (run_dir / FINAL_MODEL).is_file() and (run_dir / "config.yaml").is_file()


def run_sweep(options: SweepOptions) -> tuple[Path, list[Row]]:
    """Run (or `--resume`) a sweep and write its table; returns (sweep folder, rows)."""
    if options.resume:
        sweep_dir = Path(options.resume).expanduser().resolve()
        if not (sweep_dir / PLAN_FILE).is_file():
            raise ValueError(f"--resume {options.resume}: not a sweep folder (no {PLAN_FILE} in it)")
        the_plan = yaml.safe_load((sweep_dir / PLAN_FILE).read_text())
    else:
        the_plan = plan(options)
        import_ray(options.address)
        name = options.name or f"{Path(options.scenario).stem}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        sweep_dir = (Path(options.logdir) / name).resolve()
        if sweep_dir.exists():
            raise ValueError(f"{sweep_dir} exists; pick another --name or finish it with --resume {sweep_dir}")
        sweep_dir.mkdir(parents=True)
        (sweep_dir / PLAN_FILE).write_text(yaml.safe_dump(the_plan, sort_keys=False))
    init_ray(options.address)
    # Ray Tune's newer console output prints its own tables, and a TensorBoard command for its internal
    # artifacts rather than the trials' logs, even at verbose=0; SweepProgress says what matters
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    from agents.sweep_progress import SweepProgress

    trials_dir = sweep_dir / "trials"
    resources = {"cpu": the_plan["cpus_per_trial"], "gpu": the_plan["gpus_per_trial"]}
    space = {"trial": tune.grid_search([
        {"name": f"c{k}-seed{seed}", "seed": seed, "config": config, "scenario": the_plan["scenario"],
         "base_config": the_plan["base_config"], "timesteps": the_plan["timesteps"],
         "eval_episodes": the_plan["eval_episodes"], "device": the_plan["device"], "trials_dir": str(trials_dir),
         "n_envs": the_plan["n_envs"], "eval_backend": the_plan["eval_backend"],
         "threads": max(1, round(resources["cpu"]))}
        for k, config in enumerate(the_plan["configs"]) for seed in the_plan["seeds"]
    ])}
    total = len(the_plan["configs"]) * len(the_plan["seeds"])
    trainable = tune.with_resources(lambda cfg: run_trial(cfg["trial"]), resources)
    storage = str(sweep_dir / "ray")
    # killed before Ray Tune saved its state: start the trials again; each one resumes its own run folder
    if options.resume and tune.Tuner.can_restore(str(Path(storage) / "sweep")):
        tuner = tune.Tuner.restore(str(Path(storage) / "sweep"), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=space, run_config=tune.RunConfig(
            name="sweep", storage_path=storage, verbose=0, callbacks=[SweepProgress(total)],
            failure_config=tune.FailureConfig(max_failures=the_plan["max_failures"])))
    results = tuner.fit()
    rows = collect(sweep_dir, the_plan)
    write_table(rows, sweep_dir)
    if results.errors:
        raise SweepIncomplete(f"{len(results.errors)} of {total} trials failed (after {the_plan['max_failures']} "
                              f"retries each): {_last_line(results.errors[0])}; the table has the others; fix the "
                              f"cause and finish with: python run.py sweep --resume {sweep_dir}")
    return sweep_dir, rows


class SweepIncomplete(RuntimeError):
    """Some trials failed for good; the table of the others is written."""


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def collect(sweep_dir: Path, the_plan: dict[str, Any]) -> list[Row]:
    """The table from the trials' own evaluation files (a trial without one is left out)."""
    from agents.evaluate import evaluation_name
    from agents.runs import read_run_config
    from scenarios.loader import load_scenario

    results = []
    scenario = load_scenario(the_plan["scenario"]).name
    for k, config in enumerate(the_plan["configs"]):
        for seed in the_plan["seeds"]:
            run_dir = sweep_dir / "trials" / f"c{k}-seed{seed}"
            if not (run_dir / "config.yaml").is_file():
                continue
            backend = the_plan["eval_backend"] or read_run_config(run_dir).backend
            file = run_dir / f"evaluation-{evaluation_name(scenario, backend)}.json"
            if file.is_file():
                results.append(read_trial(f"c{k}", params_of(config), seed, file))
    return build_rows(results)


def _merged_block(base_config: str | None, config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    block = yaml.safe_load(Path(base_config).read_text()) if base_config else {}
    for section, body in config.items():
        block.setdefault(section, {}).update(body)
    return block
