"""stable-baselines3 callbacks: safety metrics, periodic evaluation and replays, checkpoints, hyperparameters.

What the safety and evaluation callbacks write, and in which units: agents/safety_board.py.

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
from typing import Callable, Sequence

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from agents.evaluate import EpisodeMetrics
from agents.runs import save_checkpoint
from agents.safety_board import EpisodeTracker, SafetyBoard, tensorboard_writer

class SafetyCallback(BaseCallback):
    """One `SafetyMonitor` per env (agents.safety_board.EpisodeTracker), fed every step's info; at each
    rollout's end logs `safety_train/<phase>/*`, the means over the episodes finished since the last
    log (nothing when none finished). `board` None: nothing is written (the rows stay in `logged`)."""

    def __init__(self, route_length_m: float, board: SafetyBoard | None = None, phase: str = "ppo") -> None:
        super().__init__()
        self.route_length_m = route_length_m
        self.board = board
        self.phase = phase
        self.tracker: EpisodeTracker | None = None
        self.episodes = 0  # finished since training started
        self.logged: list[list[EpisodeMetrics]] = []  # the rows of each point written

    def _init_callback(self) -> None:
        self.tracker = EpisodeTracker(self.route_length_m, self.training_env.num_envs)

    @property
    def finished(self) -> list[EpisodeMetrics]:
        """Episodes finished and not yet logged."""
        return self.tracker.finished.get(self.phase, [])

    def _on_step(self) -> bool:
        self.tracker.step(self.locals["infos"], self.locals["dones"], self.phase)
        return True

    def _on_rollout_end(self) -> None:
        self.log_finished()

    def log_finished(self) -> None:
        rows = self.tracker.pop().get(self.phase, [])
        if not rows:
            return
        self.episodes += len(rows)
        self.logged.append(rows)
        if self.board is not None:
            self.board.log_training(self.phase, rows, self.num_timesteps)


class AtRolloutStart(BaseCallback):
    """At the start of every rollout, `task(model, num_timesteps)`: the periodic evaluation
    (`Evaluator.maybe_evaluate`: eval/* every `every` env steps, agents.safety_board) and the replays
    (`TrainingReplays.maybe_log`, agents.explain.training_replay) each decide whether one is due.

    At the start, not the end: SB3 calls `on_rollout_end` before the update that learns from the
    rollout, so an evaluation there would show the model one update behind the step it is logged
    at (and behind the saved model.zip at the last step). At the next rollout's start the model is
    the one trained on every step counted so far."""

    def __init__(self, task: Callable[[BaseAlgorithm, int], object]) -> None:
        super().__init__()
        self.task = task

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self.task(self.model, self.num_timesteps)


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
    """Log the run's hyperparameters once, at the start of training, to TensorBoard's HPARAMS tab, with
    `metrics` (tags of scalars: the plugin shows each one's last value) beside them. The plugin shows
    hyperparameters marked `differs` first, then by name; a sweep marks its seed and grid keys (`first`)
    so that its trials' table opens on what they vary, not on algo, backend, n_envs, ..."""

    METRICS = ("rollout/ep_rew_mean",)

    def __init__(self, hparams: dict[str, bool | str | float | int | None], metrics: Sequence[str] = (),
                 first: Sequence[str] = ()) -> None:
        super().__init__()
        self.hparams = {key: _hparam_value(value) for key, value in hparams.items()}
        self.metrics = [*self.METRICS, *metrics]
        self.first = tuple(first)

    def _on_training_start(self) -> None:
        metric_dict = {name: 0.0 for name in self.metrics}  # filled by the scalars of the same names
        writer = tensorboard_writer(self.logger)
        if writer is None:
            return
        # as SB3's TensorBoard output writes an HParam, plus the `differs` marks
        experiment, session_start, session_end = hparams_summaries(self.hparams, metric_dict)
        _mark_differing(experiment, self.first)
        for summary in (experiment, session_start, session_end):
            writer.file_writer.add_summary(summary)

    def _on_step(self) -> bool:
        return True


def _mark_differing(summary, names: Sequence[str]) -> None:
    """Set `differs` on the named hyperparameters of a TensorBoard experiment summary (in place)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    value = summary.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in names
    value.metadata.plugin_data.content = data.SerializeToString()


def _hparam_value(value):
    """What the HPARAMS tab can show: booleans as "true"/"false" (as numbers they read 0.0000/1.0000)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, str):
        return "none" if value is None else value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else str(value)
    return str(value)
