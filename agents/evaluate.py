"""Deterministic evaluation on a scenario's fixed evaluation seeds, with 95 % confidence intervals.

    python run.py evaluate --run runs/highway-ppo-20250101-120000 [--episodes 50] [--scenario OTHER] [--seed K]

Episode i plays evaluation seed `first_seed + K + i` (the scenario's `evaluation.first_seed`;
these seeds are never drawn in training). The policy acts deterministically (the most likely
action), so the same run, scenario, episodes and K always give the same numbers.

Confidence intervals are Student-t intervals of the mean over episodes,
mean ± t(0.975, n - 1) · s / √n; for 0/1 outcomes (collision rate) this is the usual normal-style
approximation and is rough below ~30 episodes. One episode has no interval.

The same per-episode loop (`run_episodes`) serves the periodic evaluation during training. On the
fast backend, `run_batched_episodes` plays the episodes side by side as rows of one `FastVecEnv`
instead: the same numbers (an episode depends only on its seed, not on its row), and 1,000
episodes, with intervals ~4x narrower than 50 give, take seconds (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence, TypedDict

import gymnasium as gym
import numpy as np

from envs.backends import CameraEnv, get_backend
from envs.files import atomic_write
from envs.safety import SafetyMonitor

MIN_TTC_CAP_S = 10.0
"""[s] an episode's min time-to-collision is capped here for means: episodes that never close in on
a leader have an infinite TTC, which would make every mean infinite."""

CONFIDENCE = 0.95
CI_TEXT = f"{CONFIDENCE:.0%} Student t: mean ± t(0.975, n-1) * std / sqrt(n), clipped to the metric's range"
DEFINITIONS = (
    "collision rate: share of episodes with a crash; unsafe fraction: share of steps with TTC < 2 s or "
    "headway < 1 s; route completion: distance / the scenario's route length; driving score: route "
    "completion x 0.6 per collision x (1 - off-road fraction); success rate (scenarios with a goal: exit, "
    "intersection, u-turn): share of episodes that reached it without a collision"
)


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    digits: int  # shown after the decimal point
    low: float = -math.inf  # the range the metric can take; confidence intervals are clipped to it
    high: float = math.inf


METRICS: tuple[Metric, ...] = (
    Metric("return", "return", "", 2),
    Metric("collision_rate", "collision rate", "", 3, 0.0, 1.0),
    Metric("success_rate", "success rate", "", 3, 0.0, 1.0),  # only where the scenario has a goal (envs.goals)
    Metric("mean_speed", "mean speed", "m/s", 2),
    Metric("min_ttc", f"min TTC (capped at {MIN_TTC_CAP_S:g} s)", "s", 2, 0.0, MIN_TTC_CAP_S),
    Metric("unsafe_fraction", "unsafe fraction", "", 3, 0.0, 1.0),
    Metric("hard_brakes_per_km", "hard brakes", "/km", 2, 0.0),
    Metric("lane_changes_per_km", "lane changes", "/km", 2, 0.0),
    Metric("route_completion", "route completion", "", 3, 0.0, 1.0),
    Metric("driving_score", "driving score", "", 3, 0.0, 1.0),
    Metric("length", "episode length", "steps", 1, 0.0),
)


# One evaluation episode's numbers (a row of `per_episode` in the JSON file), under METRICS' keys; the
# functional form because "return" is a Python keyword.
EpisodeMetrics = TypedDict("EpisodeMetrics", {
    "seed": int, "return": float, "length": int, "collision_rate": float, "mean_speed": float,
    "min_ttc": float,  # [s], capped at MIN_TTC_CAP_S
    "min_headway": float,  # [s], capped at MIN_TTC_CAP_S (issue 19: its distribution in TensorBoard)
    "rms_jerk": float,  # [m/s^3] root mean square over the episode's steps
    "unsafe_fraction": float,
    "ttc_unsafe_fraction": float,  # share of steps with TTC < 2 s (issue 16's robustness table)
    "off_road_fraction": float, "hard_brakes_per_km": float, "lane_changes_per_km": float,
    "distance": float,  # [m]
    "route_completion": float, "driving_score": float,
    "success_rate": float | None,  # 1.0: the goal reached without a collision; None: the scenario has no goal
})


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A metric's mean over episodes, sample std and confidence interval of the mean (None with one episode)."""

    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """What an evaluation found: `run.py evaluate` (written as JSON by `to_dict`), `bench ppo-ceiling`
    and `bench teacher` (`print_report` shows any of them). Fields a producer does not know are None."""

    scenario: str
    episodes: int
    first_seed: int
    last_seed: int
    algo: str
    num_timesteps: int
    model: str  # the model file (relative to the run folder), or what drove
    metrics: dict[str, Estimate]  # METRICS' keys
    per_episode: list[EpisodeMetrics] = dataclasses.field(default_factory=list)
    confidence_interval: str = CI_TEXT
    # run.py evaluate
    run: str | None = None
    trained_on: str | None = None  # the scenario the run trained on (config.yaml's)
    trained_backend: str | None = None
    backend: str | None = None  # the simulator these episodes ran on
    scenario_source: str | None = None
    command: str | None = None
    # benches
    train_seconds: float | None = None  # bench ppo-ceiling: training time [s]
    seconds: float | None = None  # bench teacher: evaluation time [s]

    @property
    def seeds(self) -> dict[str, int]:
        return {"first": self.first_seed, "last": self.last_seed}

    def to_dict(self) -> dict[str, Any]:
        """The JSON file of `run.py evaluate` (the keys and order it has always had)."""
        return {
            "run": self.run,
            "model": self.model,
            "num_timesteps": self.num_timesteps,
            "algo": self.algo,
            "trained_on": self.trained_on,
            "trained_backend": self.trained_backend,
            "backend": self.backend,
            "scenario": self.scenario,
            "scenario_source": self.scenario_source,
            "episodes": self.episodes,
            "seeds": self.seeds,
            "deterministic": True,
            "confidence_interval": self.confidence_interval,
            "definitions": DEFINITIONS,
            "min_ttc_cap_s": MIN_TTC_CAP_S,
            "metrics": {key: estimate.to_dict() for key, estimate in self.metrics.items()},
            "per_episode": self.per_episode,
            "command": self.command,
        }


StepHook = Callable[[np.ndarray], None]  # (B,) bool: the rows whose step just counted (robustness statistics)


# -- episodes ------------------------------------------------------------------------------------


def evaluation_seeds(scenario, episodes: int, offset: int = 0) -> list[int]:
    """`episodes` seeds from the scenario's first evaluation seed + offset, counting up."""
    first = scenario.evaluation.first_seed + offset
    return list(range(first, first + episodes))


def run_episodes(model, env: CameraEnv | gym.Wrapper, seeds: Sequence[int],
                 deterministic: bool = True, on_step: StepHook | None = None,
                 progress: str | None = None) -> list[EpisodeMetrics]:
    """Play one episode per seed on a (non-vectorised) clearlane env; per-episode metrics.

    model: anything with SB3's `predict(obs, deterministic)`; env: a backend's CameraEnv (or a wrapper of one).
    on_step: called after every step with the (1,) mask of rows whose step counted (always true here).
    progress: a progress bar's description (episodes on highway-env take ~1 s each); None = no bar.
    """
    from envs.progress import track

    route_length_m = env.unwrapped.scenario.safety.route_length_m
    results = []
    for seed in track(seeds, progress or "", unit="episodes", disable=progress is None, transient=True):
        obs, _ = env.reset(seed=int(seed))
        monitor = SafetyMonitor(route_length_m)
        total_reward, steps, done = 0.0, 0, False
        while not done:
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(int(action))
            monitor.update(info)
            total_reward += float(reward)
            steps += 1
            done = terminated or truncated
            if on_step is not None:
                on_step(np.ones(1, dtype=bool))
        results.append(episode_metrics(int(seed), total_reward, steps, monitor.summary()))
    return results


FAST_EVAL_BATCH = 256  # [envs] episodes played at once by run_batched_episodes


def run_batched_episodes(model, scenario, seeds: Sequence[int], device: str = "cpu",
                         batch: int = FAST_EVAL_BATCH, on_step: StepHook | None = None) -> list[EpisodeMetrics]:
    """`run_episodes` on the fast backend: up to `batch` consecutive seeds at a time, one per row of a
    FastVecEnv; each row's first episode is its result (SB3's auto-reset starts another, ignored).
    on_step: called after every batched step with the (B,) mask of the rows whose step counted.
    A model with a `bind(env)` method (agents.ceiling.TeacherDriver) is given each batch's env first."""
    from envs.fast.vec_env import FastVecEnv

    if any(b != a + 1 for a, b in zip(seeds, seeds[1:])):
        raise ValueError("run_batched_episodes plays consecutive seeds")
    results = []
    for start in range(0, len(seeds), batch):
        chunk = [int(seed) for seed in seeds[start : start + batch]]
        env = FastVecEnv(scenario, len(chunk), device=device)
        env.seed(chunk[0])  # row i plays chunk[0] + i
        obs = env.reset()
        if hasattr(model, "bind"):
            model.bind(env)
        monitors = [SafetyMonitor(scenario.safety.route_length_m) for _ in chunk]
        returns, steps = np.zeros(len(chunk)), np.zeros(len(chunk), dtype=int)
        playing = np.ones(len(chunk), dtype=bool)
        while playing.any():
            actions, _ = model.predict(obs, deterministic=True)
            obs, rewards, dones, infos = env.step(actions)
            for row in np.flatnonzero(playing):
                monitors[row].update(infos[row])
            returns[playing] += rewards[playing]
            steps[playing] += 1
            if on_step is not None:
                on_step(playing.copy())
            playing &= ~dones
        results += [episode_metrics(seed, returns[row], int(steps[row]), monitors[row].summary())
                    for row, seed in enumerate(chunk)]
    return results


def episode_metrics(seed: int, episode_return: float, length: int, safety: dict[str, float]) -> EpisodeMetrics:
    """One episode's numbers under the names of METRICS (min TTC capped at MIN_TTC_CAP_S)."""
    return {
        "seed": seed,
        "return": float(episode_return),
        "length": int(length),
        "collision_rate": float(safety["collision"]),
        "mean_speed": float(safety["mean_speed"]),
        "min_ttc": float(min(safety["min_ttc"], MIN_TTC_CAP_S)),
        "min_headway": float(min(safety["min_headway"], MIN_TTC_CAP_S)),
        "rms_jerk": float(safety["rms_jerk"]),
        "unsafe_fraction": float(safety["unsafe_fraction"]),
        "ttc_unsafe_fraction": float(safety["ttc_unsafe_fraction"]),
        "off_road_fraction": float(safety["off_road_fraction"]),
        "hard_brakes_per_km": float(safety["hard_brakes_per_km"]),
        "lane_changes_per_km": float(safety["lane_changes_per_km"]),
        "distance": float(safety["distance"]),
        "route_completion": float(safety["route_completion"]),
        "driving_score": float(safety["driving_score"]),
        "success_rate": safety.get("success"),
    }


def safety_means(summaries: Sequence[dict[str, float]]) -> dict[str, float]:
    """Means of `SafetyMonitor.summary()` dicts under TensorBoard's `safety/*` names."""
    def mean(key: str, cap: float = math.inf) -> float:
        return float(np.mean([min(summary[key], cap) for summary in summaries]))

    return {
        "collision_rate": mean("collision"),
        "min_ttc": mean("min_ttc", MIN_TTC_CAP_S),
        "unsafe_fraction": mean("unsafe_fraction"),
        "hard_brakes_per_km": mean("hard_brakes_per_km"),
        "lane_changes_per_km": mean("lane_changes_per_km"),
        "mean_speed": mean("mean_speed"),
        "route_completion": mean("route_completion"),
        "driving_score": mean("driving_score"),
    }


def summarize(per_episode: Sequence[EpisodeMetrics]) -> dict[str, Estimate]:
    """Mean and confidence interval of every metric of METRICS over episodes (run_episodes' rows); a
    metric some episode does not define (the success rate in a scenario without a goal) is left out."""
    return {
        metric.key: mean_ci([episode[metric.key] for episode in per_episode], low=metric.low, high=metric.high)
        for metric in METRICS
        if all(episode.get(metric.key) is not None for episode in per_episode)
    }


def mean_ci(
    values: Sequence[float], confidence: float = CONFIDENCE, low: float = -math.inf, high: float = math.inf
) -> Estimate:
    """Mean, sample std and Student-t confidence interval of the mean, clipped to [low, high] (None with one value)."""
    from scipy import stats

    data = np.asarray(values, dtype=float)
    n = len(data)
    mean = float(data.mean())
    if n < 2:
        return Estimate(mean, None, None, None, n)
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return Estimate(mean, std, max(mean - half, low), min(mean + half, high), n)


# -- the evaluate command ------------------------------------------------------------------------


def evaluate_run(
    run: str | Path,
    episodes: int = 50,
    scenario: str | None = None,
    seed: int = 0,
    logdir: str | Path = "runs",
    device: str = "auto",
    backend: str = "highway-env",
    command: str = "",
    progress: bool = False,
) -> tuple[EvaluationReport, Path]:
    """Evaluate a run's newest model; writes evaluation-<scenario>.json and eval_final/* to the run folder.

    command: the command line that asked for it, recorded in the JSON file.
    progress: a progress bar over the episodes played one at a time (the batched backend takes seconds).
    Returns (report, path of the JSON file).
    """
    from stable_baselines3.common.utils import set_random_seed

    from agents.runs import check_spaces, find_run, load_agent_to_play, read_run_config
    from envs.system import resolve_device

    if episodes < 1:
        raise ValueError(f"--episodes must be a positive integer, got {episodes}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")
    simulator = get_backend(backend)
    run_dir = find_run(run, logdir)
    config = read_run_config(run_dir)
    device = str(resolve_device(device))
    scenario_arg = scenario or config.scenario
    env = simulator.make_env(scenario_arg)
    try:
        check_spaces(config, run_dir, env.observation_space, env.action_space, scenario_arg)
        set_random_seed(seed)
        # the newest valid model; damaged newer ones are skipped with a warning naming them
        model, model_path = load_agent_to_play(config, run_dir, env, device, seed=seed)
        seeds = evaluation_seeds(env.scenario, episodes, seed)
        if simulator.batched:  # all episodes side by side, the same numbers as one at a time
            per_episode = run_batched_episodes(model, env.scenario, seeds, device)
        else:
            per_episode = run_episodes(model, env, seeds, deterministic=True,
                                       progress=f"evaluating on {simulator.name}" if progress else None)
    finally:
        env.close()
    name = evaluation_name(env.scenario.name, simulator.name)
    report = EvaluationReport(
        scenario=env.scenario.name, episodes=episodes, first_seed=seeds[0], last_seed=seeds[-1], algo=config.algo,
        num_timesteps=int(model.num_timesteps), model=str(model_path.relative_to(run_dir)),
        metrics=summarize(per_episode), per_episode=per_episode, run=str(run_dir), trained_on=config.scenario,
        trained_backend=config.backend, backend=simulator.name, scenario_source=env.scenario.source, command=command,
    )
    data = {**report.to_dict(), **_robustness_of_this_evaluation(run_dir / f"evaluation-{name}.json", report)}
    path = atomic_write(run_dir / f"evaluation-{name}.json", lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
    _write_tensorboard(run_dir, name, report)
    return report, path


def evaluation_name(scenario: str, backend: str) -> str:
    """The name of an evaluation's file (`evaluation-<name>.json`) and TensorBoard tag: the scenario's on
    the reference simulator, `<scenario>-<backend>` on another."""
    return scenario if get_backend(backend).reference else f"{scenario}-{backend}"


def _robustness_of_this_evaluation(path: Path, report: EvaluationReport) -> dict[str, Any]:
    """{"robustness": block} of the file being replaced when it was measured on the same model, backend and
    seeds (agents/robust/evaluate.py), so a plain evaluation does not throw away the attacked one; else {}."""
    try:
        block = json.loads(path.read_text()).get("robustness")
    except (OSError, ValueError, AttributeError):
        return {}
    same = {"model": report.model, "num_timesteps": report.num_timesteps, "backend": report.backend,
            "episodes": report.episodes, "first_seed": report.first_seed}
    if isinstance(block, dict) and all(block.get(key) == value for key, value in same.items()):
        return {"robustness": block}
    return {}


def _write_tensorboard(run_dir: Path, scenario: str, report: EvaluationReport) -> None:
    """eval_final/<scenario>/<metric> (means) at the model's timestep, beside the training curves."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir), filename_suffix=".evaluate")
    try:
        for key, estimate in report.metrics.items():
            writer.add_scalar(f"eval_final/{scenario}/{key}", estimate.mean, report.num_timesteps)
    finally:
        writer.close()


def format_value(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_report(report: EvaluationReport, console=None) -> None:
    """The safety table: metric, mean, 95 % CI (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(
        title=(
            f"{report.scenario}: {report.episodes} deterministic episodes, seeds {report.first_seed}"
            f"..{report.last_seed} ({report.algo}, {report.num_timesteps:,} steps, {report.model})"
        ),
        caption=f"CI: {report.confidence_interval}",
    )
    table.add_column("metric")
    table.add_column("unit")
    table.add_column("mean", justify="right")
    table.add_column(f"{CONFIDENCE:.0%} CI", justify="right")
    for metric in METRICS:
        if metric.key not in report.metrics:
            continue
        estimate = report.metrics[metric.key]
        ci = (
            "n/a"
            if estimate.ci_low is None
            else f"[{format_value(estimate.ci_low, metric.digits)}, {format_value(estimate.ci_high, metric.digits)}]"
        )
        table.add_row(metric.label, metric.unit, format_value(estimate.mean, metric.digits), ci)
    console.print(table)
    console.print(DEFINITIONS, style="dim")
