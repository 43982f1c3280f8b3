"""stable-baselines3 callbacks: safety metrics, periodic evaluation, checkpoints, hyperparameters.

SB3's VecEnvs reset an env as soon as its episode ends and hand back, for that env, the info of
the episode's *last step* (the first observation of the next episode replaces the observation,
the last one moves to `info["terminal_observation"]`). So `self.locals["infos"][i]` always belongs
to the step just taken, and when `self.locals["dones"][i]` is set, its `safety` dict is the final
step of the finished episode. (This is SB3's VecEnv contract; Gymnasium 1.x's own vector envs
report finished episodes differently and are not used here.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam

from agents.evaluate import EpisodeMetrics, run_episodes, safety_means
from agents.runs import save_checkpoint
from envs.safety import SafetyMonitor

# Formats that cannot show hyperparameters; TensorBoard can.
_NOT_TENSORBOARD = ("stdout", "log", "json", "csv")


class SafetyCallback(BaseCallback):
    """One `SafetyMonitor` per env, fed every step's info; at each rollout's end logs `safety/*`,
    the means over the episodes finished since the last log (nothing when none finished)."""

    def __init__(self, route_length_m: float) -> None:
        super().__init__()
        self.route_length_m = route_length_m
        self.monitors: list[SafetyMonitor] = []
        self.finished: list[dict[str, float]] = []  # SafetyMonitor.summary() of episodes not yet logged
        self.episodes = 0  # finished since training started

    def _init_callback(self) -> None:
        self.monitors = [SafetyMonitor(self.route_length_m) for _ in range(self.training_env.num_envs)]

    def _on_step(self) -> bool:
        for monitor, info, done in zip(self.monitors, self.locals["infos"], self.locals["dones"]):
            if "safety" in info:
                monitor.update(info)
            if done:
                if monitor.totals.steps:
                    self.finished.append(monitor.summary())
                    self.episodes += 1
                monitor.reset()
        return True

    def _on_rollout_end(self) -> None:
        self.log_finished()

    def log_finished(self) -> None:
        if not self.finished:
            return
        for key, value in safety_means(self.finished).items():
            self.logger.record(f"safety/{key}", value)
        self.logger.record("safety/episodes", len(self.finished))
        self.finished.clear()


class PeriodicEvaluation(BaseCallback):
    """Every `every` env steps (checked at the end of a rollout), play `seeds` deterministically on
    `env` (a non-vectorised clearlane env) and log `eval/*`."""

    def __init__(self, env, seeds: Sequence[int], every: int) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"eval interval must be positive, got {every}")
        self.env = env
        self.seeds = list(seeds)
        self.every = every
        self.next_at = every
        self.last_results: list[EpisodeMetrics] = []

    def _on_training_start(self) -> None:
        self.next_at = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps < self.next_at:
            return
        results = run_episodes(self.model, self.env, self.seeds, deterministic=True)
        self.last_results = results
        for key, name in (
            ("return", "mean_reward"),
            ("collision_rate", "collision_rate"),
            ("mean_speed", "mean_speed"),
            ("driving_score", "driving_score"),
            ("length", "mean_ep_length"),
        ):
            self.logger.record(f"eval/{name}", sum(result[key] for result in results) / len(results))
        self.next_at = (self.num_timesteps // self.every + 1) * self.every


class PeriodicCheckpoint(BaseCallback):
    """`model.save` to <run>/checkpoints/step-<N>.zip every `every` env steps, keeping the newest `keep`."""

    def __init__(self, run_dir: Path, every: int, keep: int) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"checkpoint interval must be positive, got {every}")
        self.run_dir = Path(run_dir)
        self.every = every
        self.keep = keep
        self.next_at = every
        self.last_path: Path | None = None

    def _on_training_start(self) -> None:
        self.next_at = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_at:
            self.last_path = save_checkpoint(self.model, self.run_dir, self.keep)
            self.next_at = (self.num_timesteps // self.every + 1) * self.every
        return True


class HParamsCallback(BaseCallback):
    """Log the run's hyperparameters once, at the start of training, to TensorBoard's HPARAMS tab."""

    METRICS = ("rollout/ep_rew_mean", "eval/mean_reward", "eval/driving_score", "safety/collision_rate")

    def __init__(self, hparams: dict[str, bool | str | float | int | None]) -> None:
        super().__init__()
        self.hparams = {key: _hparam_value(value) for key, value in hparams.items()}

    def _on_training_start(self) -> None:
        metric_dict = {name: 0.0 for name in self.METRICS}  # filled by the scalars of the same names
        self.logger.record("hparams", HParam(self.hparams, metric_dict), exclude=_NOT_TENSORBOARD)

    def _on_step(self) -> bool:
        return True


def _hparam_value(value):
    if value is None or isinstance(value, (bool, str)):
        return "none" if value is None else value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else str(value)
    return str(value)
