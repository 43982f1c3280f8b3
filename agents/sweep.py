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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.ray_backend import import_ray, init_ray
from agents.sweep_grid import expand_grid, load_grid
from agents.sweep_table import COLUMNS, Row, build_rows, read_trial, to_markdown, write_table

log = logging.getLogger(__name__)
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
    eval_episodes: int = 20
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def plan(options: SweepOptions) -> dict[str, Any]:
    """The sweep's configs (validated) and seeds, as written to `sweep.yaml`."""
    if options.seeds < 1:
        raise ValueError(f"--seeds {options.seeds}: a sweep needs at least 1 seed")
    configs = load_grid(options.grid, options.scenario) if options.grid else expand_grid({})
    return {"scenario": options.scenario, "seeds": list(range(options.seeds)), "configs": configs,
            "base_config": str(Path(options.config).resolve()) if options.config else None,
            "timesteps": options.timesteps, "eval_episodes": options.eval_episodes, "device": options.device}


def params_of(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"ppo.gamma": 0.9, ...}: a config block flattened, for the table and the HParams view."""
    return {f"{section}.{key}": value for section, body in config.items() for key, value in body.items()}


def run_trial(trial: dict[str, Any]) -> None:
    """One trial inside a Ray worker: train, evaluate, report. Resumes its run folder if it exists."""
    from ray import tune

    from agents.evaluate import evaluate_run
    from agents.train import TrainOptions, train

    run_dir = Path(trial["trials_dir"]) / trial["name"]
    block = _merged_block(trial["base_config"], trial["config"])
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    config_file = run_dir.parent / f"{trial['name']}.config.yaml"
    config_file.write_text(yaml.safe_dump(block))
    resume = (run_dir / "config.yaml").is_file()
    train(TrainOptions(
        scenario=trial["scenario"], seed=trial["seed"], timesteps=trial["timesteps"], logdir=run_dir.parent,
        name=None if resume else trial["name"], resume=trial["name"] if resume else None,
        config=None if resume else config_file, device=trial["device"], n_envs=1, threads=1, progress_bar=False,
        force=False, command=f"sweep trial {trial['name']}",
    ))
    report, _ = evaluate_run(run_dir, episodes=trial["eval_episodes"], logdir=run_dir.parent, device=trial["device"])
    tune.report({f"eval/{key}": report.metrics[key].mean for key, _ in COLUMNS})


def run_sweep(options: SweepOptions) -> tuple[Path, list[Row]]:
    """Run (or `--resume`) a sweep and write its table; returns (sweep folder, rows)."""
    if options.resume:
        sweep_dir = Path(options.resume).expanduser().resolve()
        if not (sweep_dir / PLAN_FILE).is_file() or not (sweep_dir / "ray").is_dir():
            raise ValueError(f"--resume {options.resume}: not a sweep folder (no {PLAN_FILE} and ray/ in it)")
        the_plan = yaml.safe_load((sweep_dir / PLAN_FILE).read_text())
    else:
        the_plan = plan(options)
        import_ray(options.address)
        name = options.name or f"{Path(options.scenario).stem}-sweep"
        sweep_dir = (Path(options.logdir) / name).resolve()
        if sweep_dir.exists():
            raise ValueError(f"{sweep_dir} exists; pick another --name or finish it with --resume {sweep_dir}")
        sweep_dir.mkdir(parents=True)
        (sweep_dir / PLAN_FILE).write_text(yaml.safe_dump(the_plan, sort_keys=False))
    init_ray(options.address)
    from ray import tune

    trials_dir = sweep_dir / "trials"
    space = {"trial": tune.grid_search([
        {"name": f"c{k}-seed{seed}", "seed": seed, "config": config, "scenario": the_plan["scenario"],
         "base_config": the_plan["base_config"], "timesteps": the_plan["timesteps"],
         "eval_episodes": the_plan["eval_episodes"], "device": the_plan["device"], "trials_dir": str(trials_dir)}
        for k, config in enumerate(the_plan["configs"]) for seed in the_plan["seeds"]
    ])}
    trainable = tune.with_resources(lambda cfg: run_trial(cfg["trial"]),
                                    {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
    storage = str(sweep_dir / "ray")
    if options.resume:
        tuner = tune.Tuner.restore(str(Path(storage) / "sweep"), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=space, run_config=tune.RunConfig(
            name="sweep", storage_path=storage, verbose=0,
            failure_config=tune.FailureConfig(max_failures=options.max_failures)))
    tuner.fit()
    rows = collect(sweep_dir, the_plan)
    write_table(rows, sweep_dir)
    return sweep_dir, rows


def collect(sweep_dir: Path, the_plan: dict[str, Any]) -> list[Row]:
    """The table from the trials' own evaluation files (a trial without one is left out)."""
    results = []
    scenario = Path(the_plan["scenario"]).stem
    for k, config in enumerate(the_plan["configs"]):
        for seed in the_plan["seeds"]:
            file = sweep_dir / "trials" / f"c{k}-seed{seed}" / f"evaluation-{scenario}.json"
            if file.is_file():
                results.append(read_trial(f"c{k}", params_of(config), seed, file))
    return build_rows(results)


def _merged_block(base_config: str | None, config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    block = yaml.safe_load(Path(base_config).read_text()) if base_config else {}
    for section, body in config.items():
        block.setdefault(section, {}).update(body)
    return block


def print_rows(rows: list[Row]) -> None:
    print(to_markdown(rows), end="")
