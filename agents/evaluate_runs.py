"""`run.py evaluate --runs DIR_OR_GLOB`: many runs evaluated in parallel as Ray tasks, then one table.

Each run is `agents.evaluate.evaluate_run` (the fixed evaluation seeds, its JSON file and eval_final/*
in the run folder, exactly as `evaluate --run` writes them), one Ray task per run. Runs whose configs
are equal but for the seed form one row of `agents.sweep_table`'s table (median and IQR over seeds),
so the trials of a sweep give the sweep's table again, and any folder of runs gets one too.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Any, Callable

from agents.ray_backend import init_ray
from agents.runs import CONFIG_FILE, read_run_config
from agents.sweep_table import COLUMNS, Row, TrialResult, build_rows

IGNORED_KEYS = ("seed", "device")  # differ between runs of one config without changing what is trained


def find_runs(pattern: str) -> list[Path]:
    """Run folders (holding config.yaml) named by `pattern`: a run folder, a folder searched recursively
    for runs (a sweep folder, `runs/`), or a glob of either. A pattern that names no run is an error."""
    matches = sorted(Path(path) for path in glob.glob(str(Path(pattern).expanduser()))) if glob.has_magic(pattern) \
        else [Path(pattern).expanduser()]
    runs: list[Path] = []
    for match in matches:
        if (match / CONFIG_FILE).is_file():
            runs.append(match)
        elif match.is_dir():
            runs += sorted(path.parent for path in match.rglob(CONFIG_FILE))
    if not runs:
        raise FileNotFoundError(f"--runs {pattern}: no run folders (with {CONFIG_FILE}) there")
    return [run.resolve() for run in dict.fromkeys(runs)]


def evaluate_runs(pattern: str, episodes: int = 50, backend: str = "highway-env", device: str = "cpu",
                  address: str | None = None, cpus_per_run: float = 1.0,
                  write: Callable[[str], None] = print) -> list[Row]:
    """Evaluate every run of `pattern` in parallel (one Ray task each); the table's rows."""
    runs = find_runs(pattern)
    ray = init_ray(address)
    task = ray.remote(num_cpus=cpus_per_run)(_evaluate_one)
    pending = {task.remote(str(run), episodes, backend, device, max(1, round(cpus_per_run))): run for run in runs}
    began, metrics = time.monotonic(), {}
    while pending:
        [done], _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(done)
        metrics[run] = ray.get(done)
        write(f"[{len(metrics)}/{len(runs)} runs, {time.monotonic() - began:.0f} s] {run}: return "
              f"{metrics[run]['return']:.2f}, collisions {metrics[run]['collision_rate']:.1%}")
    return build_rows(trial_results({run: metrics[run] for run in runs}))


def _evaluate_one(run: str, episodes: int, backend: str, device: str, threads: int) -> dict[str, float]:
    """In a Ray worker: `evaluate_run` on one run; its table columns' means."""
    from agents.evaluate import evaluate_run
    from envs.system import set_threads

    set_threads(threads)
    report, _ = evaluate_run(run, episodes=episodes, backend=backend, device=device, logdir=Path(run).parent,
                             command=f"evaluate --runs ({episodes} episodes on {backend})")
    return {key: report.metrics[key].mean for key, _ in COLUMNS}


def trial_results(metrics: dict[Path, dict[str, float]]) -> list[TrialResult]:
    """Runs grouped by config (all but the seed): config labels c0, c1, ... in order, and as params the
    config values that differ between groups."""
    flat = {run: _flatten(read_run_config(run).to_dict()) for run in metrics}
    groups: dict[tuple, str] = {}
    for values in flat.values():
        groups.setdefault(_key(values), f"c{len(groups)}")
    varying = sorted({key for values in flat.values() for key in values
                      if len({repr(other.get(key)) for other in flat.values()}) > 1} - set(IGNORED_KEYS))
    return [TrialResult(groups[_key(values)], {key: values.get(key) for key in varying}, int(values["seed"]), metrics[run])
            for run, values in flat.items()]


def _key(values: dict[str, Any]) -> tuple:
    return tuple(sorted((key, repr(value)) for key, value in values.items() if key not in IGNORED_KEYS))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
