"""A sweep's result table: one row per config, median and IQR over seeds, the best config marked.

Medians and interquartile ranges, not means and standard deviations: with 5 seeds one diverged
trial would move a mean a long way and say little about the config.
The same table is printed, and written to the sweep folder as CSV, JSON and Markdown.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# (key in an evaluation report's metrics, column title); the best config has the highest driving score
COLUMNS = (("return", "return"), ("collision_rate", "collision rate"), ("mean_speed", "mean speed [m/s]"),
           ("driving_score", "driving score"))
RANK_BY = "driving_score"


@dataclass(frozen=True)
class TrialResult:
    """One finished trial: its config's label (e.g. `c0`), what varied, its seed and its evaluation means."""

    config: str
    params: dict[str, Any]  # {"ppo.gamma": 0.9, ...}: the values of the grid's keys
    seed: int
    metrics: dict[str, float]  # COLUMNS' keys


@dataclass(frozen=True)
class Row:
    config: str
    params: dict[str, Any]
    seeds: list[int]
    median: dict[str, float]
    iqr: dict[str, float]
    best: bool = False


def read_trial(config: str, params: dict[str, Any], seed: int, evaluation_file: Path) -> TrialResult:
    """A trial's result from the evaluation JSON its run folder holds (`agents/evaluate.py`)."""
    data = json.loads(Path(evaluation_file).read_text())
    metrics = {key: float(data["metrics"][key]["mean"]) for key, _ in COLUMNS}
    return TrialResult(config, params, seed, metrics)


def build_rows(results: Sequence[TrialResult]) -> list[Row]:
    """Rows in config order; the config with the highest median driving score is marked best."""
    by_config: dict[str, list[TrialResult]] = {}
    for result in results:
        by_config.setdefault(result.config, []).append(result)
    rows = []
    for config, trials in by_config.items():
        median, iqr = {}, {}
        for key, _ in COLUMNS:
            values = np.array([trial.metrics[key] for trial in trials], dtype=float)
            q1, q2, q3 = np.percentile(values, [25, 50, 75])
            median[key], iqr[key] = float(q2), float(q3 - q1)
        rows.append(Row(config, trials[0].params, sorted(trial.seed for trial in trials), median, iqr))
    if rows:
        best = max(range(len(rows)), key=lambda i: (rows[i].median[RANK_BY], rows[i].median["return"]))
        rows[best] = Row(**{**rows[best].__dict__, "best": True})
    return rows


def to_markdown(rows: Sequence[Row]) -> str:
    params = _param_keys(rows)
    header = ["config", *params, "seeds", *(f"{title} (median ± IQR)" for _, title in COLUMNS), "best"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row.config, *(str(row.params.get(key, "")) for key in params), str(len(row.seeds)),
                 *(f"{row.median[key]:.3f} ± {row.iqr[key]:.3f}" for key, _ in COLUMNS), "★" if row.best else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Row], sweep_dir: Path) -> dict[str, Path]:
    """`results.csv`, `results.json` and `results.md` in the sweep folder; returns their paths."""
    sweep_dir = Path(sweep_dir)
    paths = {ext: sweep_dir / f"results.{ext}" for ext in ("csv", "json", "md")}
    params = _param_keys(rows)
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["config", *params, "seeds", *(f"{key}_{stat}" for key, _ in COLUMNS for stat in ("median", "iqr")),
                         "best"])
        for row in rows:
            writer.writerow([row.config, *(row.params.get(key, "") for key in params), len(row.seeds),
                             *(value for key, _ in COLUMNS for value in (row.median[key], row.iqr[key])), int(row.best)])
    paths["json"].write_text(json.dumps([row.__dict__ for row in rows], indent=2) + "\n")
    paths["md"].write_text(to_markdown(rows))
    return paths


def _param_keys(rows: Sequence[Row]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row.params if key not in keys]
    return keys
