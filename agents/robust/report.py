"""`python run.py bench robustness`: several agents, several training seeds each, under the same attacks.

    python run.py bench robustness --agent b='runs/robust/b-seed*' --agent c='runs/robust/c-seed*' \\
        --attack random,fgsm,pgd,mad --eps 1/255,3/255,8/255 --steps 10 --corruption all \\
        --episodes 200 --out docs/robustness

An agent is a name and the run folders of its training seeds (a glob). Every run plays the same
settings on the same evaluation seeds on the fast backend, through `evaluate_robustness` (the numbers
go into each run's evaluation JSON, as with `evaluate --attack`; a setting measured there before on
the same model and seeds is read back, not played again, so a killed report goes on where it stopped).

Per agent and setting the cells are the **median and interquartile range over the agent's runs** of
each run's mean over the episodes. **Worst-of** at an ε: for each run, the lowest mean return and the
highest collision rate among its white-box attacks (fgsm, pgd, mad, critic) at that ε, then median
and IQR over runs. Under the table, the **pooled paired rise** of the collision rate per agent: each
white-box attack's per-episode change from the clean episode of the same seed, pooled over all the
agent's runs (n runs x N episodes, so its interval is about sqrt(n) narrower than one run's). Written
to `--out`: report.json (every run's numbers), report.md (the tables) and robustness-eps.png (return
and collision rate against ε, per agent).
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agents.evaluate import Estimate, mean_ci
from agents.robust.attacks import ATTACKS, AttackSpec
from agents.robust.corruptions import KINDS as CORRUPTION_KINDS, CorruptionSpec
from agents.robust.evaluate import evaluate_robustness, rise_cell, white_box_entries
from agents.runs import FINAL_MODEL
from envs.files import atomic_write
from perception.attacks import format_eps

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("return", "collision_rate")  # the report's cells; every metric is in report.json
PLOT_FILE, TABLE_FILE, DATA_FILE = "robustness-eps.png", "report.md", "report.json"


def parse_agents(items: Sequence[str]) -> dict[str, list[Path]]:
    """["b=runs/b-seed*", ...] -> {"b": [run folders, sorted]}: one clear error for a bad or empty entry."""
    agents: dict[str, list[Path]] = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        name, pattern = name.strip(), pattern.strip()
        if not sep or not name or not pattern:
            raise ValueError(f"--agent takes NAME=GLOB (e.g. b='runs/b-seed*'), got {item!r}")
        if name in agents:
            raise ValueError(f"--agent {name} is given twice")
        runs = sorted(Path(path) for path in glob.glob(pattern) if (Path(path) / "config.yaml").is_file())
        if not runs:
            raise ValueError(f"--agent {name}: no run folder (with a config.yaml) matches {pattern!r}")
        unfinished = [str(run) for run in runs if not (run / FINAL_MODEL).is_file()]
        if unfinished:  # a killed run still has checkpoints, but it is not the agent its recipe makes
            raise ValueError(f"--agent {name}: {', '.join(unfinished)} has no {FINAL_MODEL} (its training did not "
                             f"finish): finish it with `python run.py train --resume RUN` or narrow {pattern!r}")
        agents[name] = runs
    if not agents:
        raise ValueError("give at least one --agent NAME=GLOB")
    return agents


@dataclass(frozen=True)
class Cell:
    """One metric of one setting for one agent: each run's value and their median and quartiles."""

    values: tuple[float, ...]  # per run (training seed), in the agent's run order

    @property
    def median(self) -> float:
        return float(np.median(self.values))

    @property
    def iqr(self) -> tuple[float, float]:
        return float(np.percentile(self.values, 25)), float(np.percentile(self.values, 75))


def _mean(entry: dict[str, Any], metric: str) -> float:
    return float(entry["metrics"][metric]["mean"])


def worst_name(budget: float) -> str:
    """The worst-of row's name at ε, in the settings' style: worst-eps3."""
    return "worst-" + AttackSpec("random", budget).name.removeprefix("random-")


def worst_of(settings: dict[str, dict[str, Any]], eps: float, metric: str) -> float | None:
    """The worst value of `metric` over one run's white-box settings at ε (None if none was measured):
    the lowest return, the highest collision rate (or other metric where higher is worse)."""
    values = [_mean(entry, metric) for entry in white_box_entries(settings, eps)]
    if not values:
        return None
    return min(values) if metric == "return" else max(values)


def rows(blocks: dict[str, list[dict[str, Any]]], eps: Sequence[float]) -> list[tuple[str, str, dict[str, dict[str, Cell]]]]:
    """(setting name, description, {agent: {metric: Cell}}) in table order: no attack, the attacks (by kind as
    ATTACKS lists them, then steps, transfer, ε), the corruptions (by kind, then severity), whatever order
    the runs measured them in; a worst-of row after each ε's attacks; a setting missing for any run is left out."""
    first = next(iter(blocks.values()))[0]["settings"]
    table = []
    for name, entry in sorted(first.items(), key=lambda item: _table_order(item[1])):
        cells = {agent: {metric: Cell(tuple(_mean(block["settings"][name], metric) for block in runs))
                         for metric in METRICS}
                 for agent, runs in blocks.items() if all(name in block["settings"] for block in runs)}
        if len(cells) == len(blocks):
            table.append((name, entry["description"], cells))
    for budget in eps:
        worst = {agent: {metric: [worst_of(block["settings"], budget, metric) for block in runs] for metric in METRICS}
                 for agent, runs in blocks.items()}
        if all(None not in values for agent in worst.values() for values in agent.values()):
            cells = {agent: {metric: Cell(tuple(values)) for metric, values in metrics.items()}
                     for agent, metrics in worst.items()}
            table.append((worst_name(budget), f"worst-of the white-box attacks, ε = {format_eps(budget)}", cells))
    return table


def _collision_changes(entry: dict[str, Any], clean: dict[int, int]) -> list[int]:
    """Per episode of an attacked entry: its collision (0/1) minus the clean episode's of the same seed."""
    episodes = entry["per_episode"]
    return [crashed - clean[seed] for seed, crashed in zip(episodes["seed"], episodes["collision"])]


def pooled_rises(runs: Sequence[dict[str, Any]], eps: Sequence[float]) -> dict[str, Estimate]:
    """{setting or worst-of name: the paired change of the collision rate pooled over the runs' episodes}.
    Each run's clean episodes are its "none" setting's; a setting is pooled only where every run holds
    its episodes. The worst-of takes each run's own worst attack (the highest collision rate), which
    biases it upwards a little, as picking the worst of noisy numbers does."""
    if not all("per_episode" in block["settings"].get("none", {}) for block in runs):
        return {}
    cleans = [dict(zip(block["settings"]["none"]["per_episode"]["seed"],
                       block["settings"]["none"]["per_episode"]["collision"])) for block in runs]
    pooled: dict[str, Estimate] = {}
    for budget in eps:
        per_run = [white_box_entries(block["settings"], budget) for block in runs]
        if not all(entries and all("per_episode" in entry for entry in entries) for entries in per_run):
            continue
        for entry in sorted(per_run[0], key=_table_order):  # the attacks every run measured, in table order
            name = entry["setting"]
            if all(name in block["settings"] for block in runs):
                pooled[name] = mean_ci([change for block, clean in zip(runs, cleans)
                                        for change in _collision_changes(block["settings"][name], clean)])
        worst = [max(entries, key=lambda entry: _mean(entry, "collision_rate")) for entries in per_run]
        pooled[worst_name(budget)] = mean_ci([change for entry, clean in zip(worst, cleans)
                                              for change in _collision_changes(entry, clean)])
    return pooled


def pooled_markdown(blocks: dict[str, list[dict[str, Any]]], eps: Sequence[float]) -> str:
    """The pooled paired rises, one row per attack (and worst-of), one column per agent; "" if none."""
    pooled = {agent: pooled_rises(runs, eps) for agent, runs in blocks.items()}
    names = [name for name in next(iter(pooled.values())) if all(name in rises for rises in pooled.values())]
    if not names:
        return ""
    agents = list(blocks)
    title = ("Collision rate's paired rise from clean, pooled over each agent's runs (points, mean ± 95 % "
             "half-width; episodes per agent: runs x episodes):")
    lines = [title, "",
             "| setting | " + " | ".join(agents) + " |", "| --- | " + " | ".join("---" for _ in agents) + " |"]
    for name in names:
        cells = [rise_cell({"vs_clean": {"collision_rate": pooled[agent][name].to_dict()}}) for agent in agents]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table_order(entry: dict[str, Any]) -> tuple:
    """Sort key of a setting's entry (an evaluation's "robustness" settings)."""
    corruption = entry.get("corruption")
    if corruption:
        return (2, list(CORRUPTION_KINDS).index(corruption["kind"]), corruption["severity"])
    if entry["attack"] == "none":
        return (0,)
    return (1, ATTACKS.index(entry["attack"]), entry.get("steps", 0), bool(entry.get("transfer")), entry["eps"])


def _format(cell: Cell, metric: str) -> str:
    low, high = cell.iqr
    if metric == "collision_rate":
        return f"{100 * cell.median:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{cell.median:.2f} [{low:.2f}, {high:.2f}]"


def markdown(table, agents: dict[str, list[Path]]) -> str:
    """One row per setting, per agent a return cell and a collision-rate cell: median [IQR] over runs."""
    names = list(agents)
    header = ["setting", "what"] + [f"{agent}: {label}" for agent in names for label in ("return", "collisions")]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for name, description, cells in table:
        values = [_format(cells[agent][metric], metric) for agent in names for metric in METRICS]
        lines.append("| " + " | ".join([name, description, *values]) + " |")
    return "\n".join(lines)


def plot(table, agents: dict[str, list[Path]], eps: Sequence[float], path: Path) -> None:
    """Return and collision rate against ε (0 = no attack), per agent: the worst-of white-box attacks and
    random noise, medians with IQR bars over the agent's runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {name: cells for name, _, cells in table}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, agent in enumerate(agents):
        for label, style, name_at in (("worst-of white-box", "-o", worst_name),
                                      ("random noise", ":s", lambda budget: AttackSpec("random", budget).name)):
            points = [(0.0, by_name["none"][agent])] if "none" in by_name else []
            points += [(255 * budget, by_name[name_at(budget)][agent]) for budget in eps if name_at(budget) in by_name]
            if not points:
                continue
            xs = [x for x, _ in points]
            for axis, metric in zip(axes, METRICS):
                scale = 100.0 if metric == "collision_rate" else 1.0
                medians = np.array([cells[metric].median for _, cells in points]) * scale
                quartiles = np.array([cells[metric].iqr for _, cells in points]).T * scale  # (2, n)
                axis.errorbar(xs, medians, yerr=np.abs(quartiles - medians), fmt=style, capsize=3,
                              color=colours[index % len(colours)], label=f"{agent}: {label}")
    for axis, label in zip(axes, ("mean return", "collision rate [% of episodes]")):
        axis.set_xlabel("ε [grey levels, of 255]")
        axis.set_ylabel(label)
        axis.set_xticks([0, *(255 * budget for budget in eps)])
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    runs = sorted({len(paths) for paths in agents.values()})
    figure.suptitle(f"Robustness against ε: median and IQR over {'/'.join(map(str, runs))} training seeds per agent",
                    fontsize=10)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


def robustness_report(agents: dict[str, list[Path]], attacks: Sequence[str], eps: Sequence[float],
                      steps: Sequence[int], corruptions: Sequence[CorruptionSpec], episodes: int, out: Path,
                      device: str = "cpu", command: str = "") -> str:
    """Measure every run (resuming from what their evaluation files hold), then write the report; its table."""
    out.mkdir(parents=True, exist_ok=True)
    blocks: dict[str, list[dict[str, Any]]] = {}
    total = sum(len(runs) for runs in agents.values())
    done = 0
    for agent, runs in agents.items():
        blocks[agent] = []
        for run in runs:
            done += 1
            log.info("[%d/%d] agent %s: %s", done, total, agent, run)
            _, block, _ = evaluate_robustness(run, attacks=["none", *attacks], eps=eps, steps=steps,
                                              corruptions=corruptions, episodes=episodes, device=device,
                                              backend="fast", command=command, skip_measured=True)
            blocks[agent].append(block)
    table = rows(blocks, eps)
    text = markdown(table, agents)
    pooled = pooled_markdown(blocks, eps)
    if pooled:
        text += "\n\n" + pooled
    data = {"command": command, "agents": {agent: [str(run) for run in runs] for agent, runs in agents.items()},
            "blocks": blocks}
    atomic_write(out / DATA_FILE, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
    atomic_write(out / TABLE_FILE, lambda tmp: tmp.write_text(text + "\n"))
    plot(table, agents, eps, out / PLOT_FILE)
    return text
