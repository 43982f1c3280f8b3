"""Robustness evaluation: the plain evaluation, repeated under attacks at decision time and under
natural corruptions, with guards against gradient masking.

    python run.py evaluate --run RUN --backend fast --episodes 200 \\
        --attack none,random,fgsm,pgd,mad,critic --eps 1/255,3/255,8/255 [--steps 10,50] [--restarts 1] \\
        [--transfer-from RUN2] [--corruption all]

Every setting plays the same evaluation seeds as `run.py evaluate` with the same loops
(`agents.evaluate.run_batched_episodes` on the fast backend, all episodes attacked side by side;
`run_episodes` on highway-env), through `AttackedAgent`, which perturbs each observation before the
agent's own `predict` sees it. Per setting: return, collision rate, mean speed, driving score,
TTC < 2 s share (with 95 % intervals, `agents.evaluate.mean_ci`), the share of steps whose greedy
action the attack changed, and the attack's cost per attacked observation [ms].

Results: the run's evaluation JSON (the plain evaluation's file, `evaluation-<scenario>.json`)
gets a "robustness" block, and TensorBoard gets `robust/<scenario>/<setting>/<metric>`. Settings
measured earlier on the same model, seeds and backend are kept, so a table can be built by several
commands; a setting measured again replaces its earlier numbers.

Gradient-masking guards (`checks`): if random noise or a transfer attack (crafted on another
run's model, `--transfer-from`) lowers the return more than the strongest white-box attack of the
same ε, the white-box number is not trustworthy and a warning says so; so do an attack whose
return rises with ε, and more PGD steps or restarts that weaken the attack.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from agents.evaluate import METRICS, EpisodeMetrics, EvaluationReport, evaluate_run, evaluation_seeds, mean_ci
from agents.robust.attacks import ATTACKS, GRADIENT, ITERATIVE, AttackSpec, check_attack, perturb_observations
from agents.robust.corruptions import CorruptionSpec, corrupted_scenario
from envs.files import atomic_write
from perception.attacks import format_eps, parse_eps

log = logging.getLogger(__name__)

ROBUST_METRICS: tuple[str, ...] = ("return", "collision_rate", "mean_speed", "driving_score", "ttc_unsafe_fraction")
TTC_UNSAFE_BOUNDS = (0.0, 1.0)
WHITE_BOX = GRADIENT


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one row of the table plays: an attack (maybe crafted on another run's model) or a corruption."""

    attack: AttackSpec
    corruption: CorruptionSpec | None = None
    transfer: bool = False  # crafted on --transfer-from's model, applied to the run's

    @property
    def name(self) -> str:
        if self.corruption is not None:
            return f"corruption-{self.corruption.name}"
        return f"transfer-{self.attack.name}" if self.transfer else self.attack.name

    def describe(self) -> str:
        if self.corruption is not None:
            return self.corruption.describe()
        text = self.attack.describe()
        return f"transfer: {text}, crafted on the --transfer-from model" if self.transfer else text


# -- parsing the command line's lists --------------------------------------------------------------


def parse_attacks(text: str) -> list[str]:
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    if not names:
        raise ValueError(f"--attack needs at least one of: {', '.join(ATTACKS)}")
    return list(dict.fromkeys(check_attack(name) for name in names))


def parse_eps_list(text: str) -> list[float]:
    """"1/255,3/255" -> budgets in (0, 1]; 0 is not a budget here (use --attack none)."""
    values = []
    for part in (part.strip() for part in str(text).split(",")):
        value = parse_eps(part)
        if value == 0.0:
            raise ValueError(f"invalid epsilon {part!r}: must be above 0 (use --attack none for the clean evaluation)")
        values.append(value)
    if not values:
        raise ValueError("--eps needs at least one budget, e.g. 3/255")
    return list(dict.fromkeys(values))


def parse_counts(text: str | int, flag: str) -> list[int]:
    """"10,50" -> [10, 50]: positive integers."""
    values = []
    for part in (part.strip() for part in str(text).split(",")):
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"{flag} takes positive integers (e.g. 10 or 10,50), got {part!r}") from None
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
        values.append(value)
    return list(dict.fromkeys(values))


def plan_settings(attacks: Sequence[str], eps: Sequence[float], steps: Sequence[int] = (10,), restarts: int = 1,
                  corruptions: Sequence[CorruptionSpec] = (), transfer: bool = False) -> list[Setting]:
    """Every attack at every ε (and the iterative ones at every step count), then the corruptions.

    With `transfer`, each white-box attack is played a second time, crafted on the other model."""
    settings: list[Setting] = []
    for kind in attacks:
        if kind == "none":
            settings.append(Setting(AttackSpec("none")))
            continue
        for budget in eps:
            if kind in ITERATIVE:
                specs = [AttackSpec(kind, budget, steps=count, restarts=restarts) for count in steps]
            else:
                specs = [AttackSpec(kind, budget)]
            for spec in specs:
                settings.append(Setting(spec))
                if transfer and kind in WHITE_BOX:
                    settings.append(Setting(spec, transfer=True))
    settings += [Setting(AttackSpec("none"), corruption=spec) for spec in corruptions]
    return list(dict.fromkeys(settings))


# -- the attacked agent ----------------------------------------------------------------------------


class AttackedAgent:
    """SB3's `predict` under an attack: perturbs the observation (crafted on `source`), then asks the agent.

    Counts, over the steps the evaluation loop says counted (`on_step`), how often the agent's greedy
    action differs from its action on the clean observation, and times the crafting."""

    def __init__(self, agent, target, source, spec: AttackSpec) -> None:
        self.agent, self.target, self.source, self.spec = agent, target, source, spec
        self.attack_seconds = 0.0
        self.attacked = 0  # observations perturbed
        self.steps = 0  # counted steps
        self.changed = 0  # counted steps whose greedy action the attack changed
        self._last_changed: np.ndarray | None = None

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        observation = np.asarray(observation)
        started = time.perf_counter()
        attacked = perturb_observations(self.source, observation, self.spec)
        self.attack_seconds += time.perf_counter() - started
        self.attacked += 1 if observation.ndim == 3 else observation.shape[0]
        actions, states = self.agent.predict(attacked, deterministic=deterministic)
        if self.spec.kind == "none" or self.spec.eps == 0.0:
            self._last_changed = np.zeros(np.asarray(actions).size, dtype=bool)
        else:
            clean_actions, _ = self.agent.predict(observation, deterministic=True)
            self._last_changed = np.asarray(actions).reshape(-1) != np.asarray(clean_actions).reshape(-1)
        return actions, states

    def on_step(self, counted: np.ndarray) -> None:
        """The evaluation loop's hook: (B,) mask of the rows whose step counted."""
        if self._last_changed is not None:
            self.changed += int(self._last_changed[counted].sum())
        self.steps += int(counted.sum())

    @property
    def changed_fraction(self) -> float:
        return self.changed / self.steps if self.steps else 0.0

    @property
    def ms_per_observation(self) -> float:
        return 1000.0 * self.attack_seconds / self.attacked if self.attacked else 0.0


# -- one setting -----------------------------------------------------------------------------------


def paired_changes(rows: Sequence[EpisodeMetrics], clean: Sequence[EpisodeMetrics]) -> dict[str, dict[str, Any]]:
    """The change from the clean evaluation, episode by episode on the same seeds, of each PAIRED_METRICS
    key: mean, std and Student-t interval of (attacked - clean). Pairing removes what attacked and
    clean episodes share (traffic that crashes either way); once an attack changes one decision the
    two episodes drift apart, so on `highway` the interval of a rise is only a little narrower than
    an unpaired one (docs/ROBUSTNESS.md)."""
    by_seed = {row["seed"]: row for row in clean}
    missing = [row["seed"] for row in rows if row["seed"] not in by_seed]
    if missing:
        raise ValueError(f"{len(missing)} attacked episodes have no clean episode of the same seed (first: {missing[0]})")
    return {key: mean_ci([row[key] - by_seed[row["seed"]][key] for row in rows]).to_dict() for key in PAIRED_METRICS}


PAIRED_METRICS = ("return", "collision_rate")


def play_setting(agent, decision, source, setting: Setting, scenario, seeds: Sequence[int], simulator,
                 device: str, seed: int = 0, clean: Sequence[EpisodeMetrics] | None = None) -> dict[str, Any]:
    """Play the evaluation seeds under one setting; its numbers (the "robustness" block's entry).
    clean: the plain evaluation's episodes of the same seeds; with them the entry also holds the
    paired change from clean ("vs_clean") and each episode's return and collision ("per_episode")."""
    from agents.evaluate import run_batched_episodes, run_episodes

    torch.manual_seed(seed)  # random starts and the random attack: the same numbers every time
    attacked = AttackedAgent(agent, decision, source if setting.transfer else decision, setting.attack)
    played = corrupted_scenario(scenario, setting.corruption) if setting.corruption is not None else scenario
    started = time.perf_counter()
    if simulator.batched:
        rows = run_batched_episodes(attacked, played, seeds, device, on_step=attacked.on_step)
    else:
        env = simulator.make_env(played)
        try:
            rows = run_episodes(attacked, env, seeds, deterministic=True, on_step=attacked.on_step)
        finally:
            env.close()
    seconds = time.perf_counter() - started
    ranges = {metric.key: (metric.low, metric.high) for metric in METRICS}
    ranges["ttc_unsafe_fraction"] = TTC_UNSAFE_BOUNDS
    metrics = {key: mean_ci([row[key] for row in rows], low=ranges[key][0], high=ranges[key][1]).to_dict()
               for key in ROBUST_METRICS}
    spec = setting.attack
    return {
        "setting": setting.name,
        "description": setting.describe(),
        "attack": spec.kind,
        "eps": spec.eps,
        "eps_text": format_eps(spec.eps),
        "steps": spec.steps if spec.iterative else (1 if spec.kind == "fgsm" else 0),
        "restarts": spec.restarts if spec.iterative else 1,
        "step_size": spec.alpha if spec.kind in GRADIENT else None,
        "transfer": setting.transfer,
        "corruption": None if setting.corruption is None else {
            "kind": setting.corruption.kind, "severity": setting.corruption.severity, "value": setting.corruption.value},
        "episodes": len(rows),
        "metrics": metrics,
        "action_changed_fraction": attacked.changed_fraction,
        "attack_ms_per_step": attacked.ms_per_observation,  # crafting time per attacked observation
        "seconds": seconds,
        **({} if clean is None else {
            "vs_clean": paired_changes(rows, clean),
            "per_episode": {"seed": [row["seed"] for row in rows], "return": [round(row["return"], 4) for row in rows],
                            "collision": [int(row["collision_rate"]) for row in rows]},
        }),
    }


# -- guards against gradient masking ---------------------------------------------------------------


def _mean(entry: dict[str, Any], key: str = "return") -> float:
    return float(entry["metrics"][key]["mean"])


def _stderr(entry: dict[str, Any], key: str = "return") -> float:
    estimate = entry["metrics"][key]
    return 0.0 if estimate["std"] is None else float(estimate["std"]) / math.sqrt(estimate["n"])


def masking_checks(settings: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(findings, warnings) about gradient masking over the measured settings.

    Strength is the return lost: a lower mean return is a stronger attack. Warnings:
    - random noise or a transfer attack beats the strongest white-box attack of the same ε by more than 2
      standard errors (within them, a finding: where nothing bites the returns differ by noise alone);
    - an attack's return rises with ε by more than 2 standard errors;
    - more PGD steps x restarts of the same attack and ε raise the return by more than 2 standard errors.
    """
    findings, warnings = [], []
    attacks = [entry for entry in settings.values() if entry["corruption"] is None and entry["attack"] != "none"]
    for eps in sorted({entry["eps"] for entry in attacks}):
        same = [entry for entry in attacks if entry["eps"] == eps]
        white = [entry for entry in same if entry["attack"] in WHITE_BOX and not entry["transfer"]]
        if not white:
            continue
        strongest = min(white, key=_mean)
        findings.append(f"ε = {format_eps(eps)}: strongest white-box attack {strongest['setting']} "
                        f"(return {_mean(strongest):.2f})")
        for entry in same:
            if (entry["attack"] == "random" or entry["transfer"]) and _mean(entry) < _mean(strongest):
                margin = _mean(strongest) - _mean(entry)
                noise = 2 * math.hypot(_stderr(entry), _stderr(strongest))
                beats = (f"{entry['setting']} (return {_mean(entry):.2f}) beats the strongest white-box attack "
                         f"{strongest['setting']} (return {_mean(strongest):.2f}) at ε = {format_eps(eps)} by {margin:.2f}")
                if margin > noise:
                    warnings.append(f"{beats}, more than 2 standard errors ({noise:.2f}): the gradient may be masked; "
                                    f"the white-box numbers are not trustworthy")
                else:  # where no attack bites, the returns differ by noise alone (a robust agent's usual case)
                    findings.append(f"{beats}, within 2 standard errors ({noise:.2f}): noise, not a sign of masking")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for entry in attacks:
        groups.setdefault((entry["attack"], entry["steps"], entry["restarts"], entry["transfer"]), []).append(entry)
    for (kind, steps, restarts, transfer), entries in groups.items():
        entries.sort(key=lambda entry: entry["eps"])
        if len(entries) > 1:
            findings.append(f"{entries[0]['setting'].rsplit('-eps', 1)[0]} return vs ε: " + ", ".join(
                f"{entry['eps_text']} {_mean(entry):.2f}" for entry in entries))
        for small, large in zip(entries, entries[1:]):
            if _mean(large) - _mean(small) > 2 * math.hypot(_stderr(large), _stderr(small)):
                warnings.append(f"{large['setting']} is weaker than {small['setting']} (return {_mean(large):.2f} > "
                                f"{_mean(small):.2f}): attack strength should grow with ε")
    budgets: dict[tuple, list[dict[str, Any]]] = {}
    for entry in attacks:
        if entry["attack"] in ITERATIVE:
            budgets.setdefault((entry["attack"], entry["eps"], entry["transfer"]), []).append(entry)
    for entries in budgets.values():
        entries.sort(key=lambda entry: entry["steps"] * entry["restarts"])
        for fewer, more in zip(entries, entries[1:]):
            findings.append(f"{more['setting']} vs {fewer['setting']}: return {_mean(more):.2f} vs {_mean(fewer):.2f}, "
                            f"collisions {_mean(more, 'collision_rate'):.1%} vs {_mean(fewer, 'collision_rate'):.1%}")
            if _mean(more) - _mean(fewer) > 2 * math.hypot(_stderr(more), _stderr(fewer)):
                warnings.append(f"{more['setting']} is weaker than {fewer['setting']}: more steps should never help "
                                f"the agent")
    return findings, warnings


# -- the command -----------------------------------------------------------------------------------


def load_attackable(run, env, device: str, logdir, scenario: str | None):
    """(agent, DecisionModel, run_dir) of a run's newest valid model; refuses a policy that does not read frames."""
    from agents.explain.decision import load_run
    from perception.extractor import PerceptionExtractor

    loaded = load_run(run, env, device=device, logdir=logdir, scenario=scenario)
    space = loaded.agent.observation_space
    if not isinstance(loaded.agent.policy.features_extractor, PerceptionExtractor) or space.dtype != np.uint8 \
            or len(space.shape) != 3:
        raise ValueError(f"{loaded.run_dir}: its policy does not read camera frames (uint8 (C, H, W) through the "
                         f"perception student), so attacks on the frames do not apply")
    for parameter in loaded.agent.policy.parameters():  # attacks take input gradients only
        parameter.requires_grad_(False)
    return loaded


def evaluate_robustness(
    run: str | Path,
    attacks: Sequence[str] = ("none",),
    eps: Sequence[float] = (3 / 255,),
    steps: Sequence[int] = (10,),
    restarts: int = 1,
    corruptions: Sequence[CorruptionSpec] = (),
    transfer_from: str | Path | None = None,
    episodes: int = 50,
    scenario: str | None = None,
    seed: int = 0,
    logdir: str | Path = "runs",
    device: str = "auto",
    backend: str = "highway-env",
    command: str = "",
    progress: bool = True,
    skip_measured: bool = False,
) -> tuple[EvaluationReport, dict[str, Any], Path]:
    """The plain evaluation (`agents.evaluate.evaluate_run`), then every setting; returns (report,
    robustness block, JSON path). The block is also in the JSON file and in TensorBoard.

    skip_measured: settings already in the file's block (same model, backend and seeds) are not played
    again (the multi-run report's resume: a killed report loses at most the setting it was playing)."""
    from agents.runs import find_run
    from envs.backends import get_backend
    from envs.system import resolve_device

    for kind in attacks:
        check_attack(kind)
    for budget in eps:
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"invalid epsilon {budget!r}: must be in (0, 1] pixel units, e.g. 3/255")
    for count in steps:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"--steps must be a positive integer, got {count!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"--restarts must be a positive integer, got {restarts!r}")
    if episodes < 1:
        raise ValueError(f"--episodes must be a positive integer, got {episodes}")
    if transfer_from is not None and not any(kind in WHITE_BOX for kind in attacks):
        raise ValueError(f"--transfer-from crafts white-box attacks on another model: add one of "
                         f"{', '.join(sorted(WHITE_BOX))} to --attack")
    simulator = get_backend(backend)
    run_dir = find_run(run, logdir)
    source_dir = find_run(transfer_from, logdir) if transfer_from is not None else None
    settings = plan_settings(attacks, eps, steps, restarts, corruptions, transfer=source_dir is not None)
    device = str(resolve_device(device))

    env = simulator.make_env(scenario or _run_scenario(run_dir))
    try:
        loaded = load_attackable(run_dir, env, device, logdir, scenario)
        source = load_attackable(source_dir, env, device, logdir, scenario).decision if source_dir is not None else None
    finally:
        env.close()
    report, path = evaluate_run(run_dir, episodes=episodes, scenario=scenario, seed=seed, logdir=logdir, device=device,
                                backend=backend, command=command)
    seeds = evaluation_seeds(env.scenario, episodes, seed)
    identity = {"model": report.model, "num_timesteps": report.num_timesteps, "backend": simulator.name,
                "scenario": report.scenario, "episodes": episodes, "first_seed": seeds[0], "last_seed": seeds[-1]}
    # evaluate_run kept the file's robustness block only if it was measured on this model, backend and seeds
    kept = json.loads(path.read_text()).get("robustness") or {}
    measured: dict[str, dict[str, Any]] = dict(kept.get("settings", {}))

    def save() -> dict[str, Any]:  # after every setting: a killed command loses at most the setting it was playing
        findings, warnings = masking_checks(measured)
        block = {**identity, "threat_model": THREAT_MODEL, "settings": measured, "checks": findings,
                 "warnings": warnings, "command": command}
        data = json.loads(path.read_text())
        data["robustness"] = block
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
        return block

    block = save()  # the plain evaluation rewrote the file: the earlier settings go back in at once
    if skip_measured:
        settings = [setting for setting in settings if setting.name not in measured]
    for index, setting in enumerate(settings, 1):
        if progress:
            log.info("[%d/%d] %s: %s", index, len(settings), setting.name, setting.describe())
        entry = play_setting(loaded.agent, loaded.decision, source, setting, env.scenario, seeds, simulator,
                             device, seed=seed, clean=report.per_episode)
        if setting.transfer:
            entry["source_run"] = str(source_dir)
        entry["command"] = command
        measured[setting.name] = entry
        block = save()
        if progress:
            log.info("    return %.2f, collisions %.1f%%, action changed %.1f%%, %.2f ms/step, %.0f s",
                     _mean(entry), 100 * _mean(entry, "collision_rate"), 100 * entry["action_changed_fraction"],
                     entry["attack_ms_per_step"], entry["seconds"])
    _write_tensorboard(run_dir, path.stem.removeprefix("evaluation-"), block, report.num_timesteps,
                       [setting.name for setting in settings])
    return report, block, path


THREAT_MODEL = ("l-inf in [0, 1] pixel space on the whole stacked observation, every step; perturbed frames re-quantised "
                "to uint8 within floor(255 eps) grey levels; white-box through perception and policy (DecisionModel); "
                "PGD with a random start, step 2.5 eps / steps, best iterate kept; FGSM: random start, one step of "
                "1.25 eps; corruptions: the envs' own sensor faults, one at a time")


def _run_scenario(run_dir: Path) -> str:
    from agents.runs import read_run_config

    return read_run_config(run_dir).scenario


def _write_tensorboard(run_dir: Path, scenario: str, block: dict[str, Any], step: int, names: Sequence[str]) -> None:
    """robust/<scenario>/<setting>/<metric> (means; action_changed_fraction; attack_ms_per_step) of the settings played."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir), filename_suffix=".robust")
    try:
        for name in names:
            entry = block["settings"][name]
            for key in ROBUST_METRICS:
                writer.add_scalar(f"robust/{scenario}/{name}/{key}", entry["metrics"][key]["mean"], step)
            writer.add_scalar(f"robust/{scenario}/{name}/action_changed_fraction", entry["action_changed_fraction"], step)
            writer.add_scalar(f"robust/{scenario}/{name}/attack_ms_per_step", entry["attack_ms_per_step"], step)
    finally:
        writer.close()


# -- the table -------------------------------------------------------------------------------------


def table_rows(block: dict[str, Any]) -> list[list[str]]:
    """One row per setting: setting, what, return, collisions, speed, driving score, TTC < 2 s, changed, ms/step."""
    rows = []
    for name, entry in block["settings"].items():
        metrics = entry["metrics"]

        def cell(key: str, percent: bool = False) -> str:
            estimate = metrics[key]
            if percent:
                return f"{estimate['mean']:.1%}"
            return f"{estimate['mean']:.2f}"

        changed = "–" if entry["attack"] == "none" else f"{entry['action_changed_fraction']:.1%}"
        cost = "–" if entry["attack"] == "none" else f"{entry['attack_ms_per_step']:.2f}"
        rows.append([name, entry["description"], cell("return"), cell("collision_rate", True), rise_cell(entry),
                     cell("mean_speed"), cell("driving_score"), cell("ttc_unsafe_fraction", True), changed, cost])
    return rows


def rise_cell(entry: dict[str, Any]) -> str:
    """The paired change of the collision rate from clean ± the half-width of its 95 % interval (a
    Student-t interval of a difference: symmetric, never clipped), in points: "+2.5 ± 1.6"; "–" where
    the entry has none (a file written before pairing was stored)."""
    change = entry.get("vs_clean", {}).get("collision_rate")
    if change is None:
        return "–"
    if change["ci_low"] is None:
        return f"{100 * change['mean']:+.1f}"
    return f"{100 * change['mean']:+.1f} ± {100 * (change['ci_high'] - change['mean']):.1f}"


def white_box_entries(settings: dict[str, dict[str, Any]], eps: float | None = None) -> list[dict[str, Any]]:
    """The settings that make up a worst-of at ε (at any ε when None): the white-box attacks crafted
    on the agent itself (not transfers, not corruptions)."""
    return [entry for entry in settings.values()
            if entry["attack"] in WHITE_BOX and not entry.get("transfer") and entry.get("corruption") is None
            and (eps is None or abs(float(entry["eps"]) - eps) < 1e-9)]


def worst_of_lines(block: dict[str, Any]) -> list[str]:
    """Per ε with white-box attacks: the worst-of (the attack with the highest collision rate, as the
    report counts it) with its paired change from clean, and the stricter worst case per episode (an
    episode counts as crashed if any of those attacks crashed it: an attacker who picks the attack per
    episode), where there are several and the entries hold their episodes."""
    lines = []
    for eps in sorted({float(entry["eps"]) for entry in white_box_entries(block["settings"])}):
        entries = white_box_entries(block["settings"], eps)
        worst = max(entries, key=lambda entry: _mean(entry, "collision_rate"))
        line = (f"worst-of at ε = {format_eps(eps)}: {worst['setting']}, {_mean(worst, 'collision_rate'):.1%} collisions "
                f"({rise_cell(worst)} points vs clean), return {_mean(worst):.2f}")
        episodes = [entry.get("per_episode") for entry in entries]
        if (len(entries) > 1 and "vs_clean" in worst and all(episodes)
                and all(e["seed"] == episodes[0]["seed"] for e in episodes)):
            clean_rate = _mean(worst, "collision_rate") - worst["vs_clean"]["collision_rate"]["mean"]
            crashed = np.max([e["collision"] for e in episodes], axis=0)  # (episodes,) any attack crashed it
            line += (f"; any of the {len(entries)} attacks per episode: {crashed.mean():.1%} "
                     f"({100 * (crashed.mean() - clean_rate):+.1f} points)")
        lines.append(line)
    return lines


TABLE_HEADER = ["setting", "what", "return", "collisions", "Δ collisions [pts]", "speed [m/s]",
                "driving score", "TTC < 2 s", "action changed", "attack ms/step"]


def markdown_table(block: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "| " + " | ".join("---" for _ in TABLE_HEADER) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(block)]
    return "\n".join(lines)


def print_robustness(block: dict[str, Any], console=None) -> None:
    """The settings' table, the masking checks, and a warning line for each warning."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"robustness: {block['scenario']} on {block['backend']}, {block['episodes']} episodes per setting "
                        f"(seeds {block['first_seed']}..{block['last_seed']}, {block['model']})")
    for index, header in enumerate(TABLE_HEADER):
        if index != 1:  # the description is in the JSON file and the Markdown table; too wide for a terminal
            # (the setting and its "+4.6 ± 2.2" stay on one line; headers shorten first)
            table.add_column(header, justify="left" if index == 0 else "right", no_wrap=index in (0, 4))
    for row in table_rows(block):
        table.add_row(row[0], *row[2:])
    console.print(table)
    for line in worst_of_lines(block):
        console.print(line)
    for line in block["checks"]:
        console.print(f"check: {line}")
    for line in block["warnings"]:
        console.print(f"warning: {line}", style="bold red")
