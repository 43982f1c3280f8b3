"""Safety in TensorBoard: what a run logs about how safely its agent drives, under which tags, in which units.

    board = SafetyBoard(writer)                      # SB3's TensorBoard SummaryWriter (tensorboard_writer(logger))
    board.write_layout(...); board.write_glossary(step)
    board.log_training("dagger", rows, step)         # rows: EpisodeMetrics of finished training episodes
    board.log_evaluation("eval", rows, step, about)  # means, 95 % intervals, histograms

Tags (every scalar also carries its unit and definition as its TensorBoard description):

| tags | what |
| --- | --- |
| `safety_train/<phase>/<metric>` | means over the training episodes finished since the previous point; `<phase>` is `dagger_teacher` (DAgger iteration 1, the privileged teacher drives), `dagger` (later iterations, the learner drives), `ppo` or `a2c`; `.../episodes` says how many |
| `eval/<metric>` | periodic deterministic evaluation: the mean over a fixed set of episodes (step 0, every `eval_every` env steps, the last step) |
| `eval_ci95/<metric>/low`, `/high` | the mean's 95 % Student-t interval (the band of the custom scalars' margin charts) |
| `eval_hist/<quantity>` | per-episode distributions of min TTC, min headway, mean speed, RMS jerk at each evaluation |
| `eval_highway_env/...`, `eval_highway_env_ci95/...` | the same on highway-env, the reference simulator, at the end of a run whose periodic evaluation is on the fast backend |
| `safety/glossary`, `safety/summary` (text) | the glossary below; the final evaluation as a Markdown table, against `--baseline` |

`GLOSSARY` is written once, here; the TensorBoard text tab and docs/SAFETY.md are rendered from it
(`python -m agents.safety_board docs` rewrites the docs' section; a test checks both).
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from agents.evaluate import (
    CONFIDENCE, MIN_TTC_CAP_S, EpisodeMetrics, Estimate, episode_metrics, format_value, mean_ci, run_batched_episodes,
    run_episodes,
)
from envs.safety import HARD_BRAKE_MPS2, UNSAFE_HEADWAY_S, UNSAFE_TTC_S, VEHICLE_COLLISION_PENALTY, SafetyMonitor

TTC_THRESHOLD_S = 1.5  # [s] the usual "critical" time-to-collision (share of episodes that get closer)
HEADWAY_THRESHOLD_S = 1.0  # [s] the usual minimum time gap ("two-second rule" halved)

TRAIN_PREFIX = "safety_train"
EVAL_PREFIX = "eval"
REFERENCE_PREFIX = "eval_highway_env"  # the final check on the reference simulator
GLOSSARY_TAG = "safety/glossary"
SUMMARY_TAG = "safety/summary"


@dataclasses.dataclass(frozen=True)
class SafetyMetric:
    """One row of the glossary: a tag's last part, its unit and what it counts, over what."""

    name: str  # the tag's last part, unit included
    unit: str
    definition: str
    value: Callable[[EpisodeMetrics], float]  # the episode's number
    low: float = -math.inf  # its range: intervals are clipped to it
    high: float = math.inf
    digits: int = 3
    training: bool = True  # also logged for training episodes (safety_train/*)
    goal_only: bool = False  # defined only in scenarios with a goal (envs.goals)


GLOSSARY: tuple[SafetyMetric, ...] = (
    SafetyMetric("collision_rate", "share of episodes",
                 "episodes in which the ego vehicle hit another vehicle (at any step), over all episodes",
                 lambda e: e["collision_rate"], 0.0, 1.0),
    SafetyMetric("success_rate", "share of episodes",
                 "episodes that reached the scenario's goal without a collision, over all episodes; only scenarios "
                 "with a goal: exit (on the exit lane), intersection (25 m into its exit road), u-turn (on the "
                 "straight after the turn)",
                 lambda e: e["success_rate"], 0.0, 1.0, goal_only=True),
    SafetyMetric("min_ttc_s", "s",
                 f"per episode, the smallest time-to-collision to the leader in the ego's lane (bumper gap / closing "
                 f"speed, only while the ego is faster), capped at {MIN_TTC_CAP_S:g} s (an episode that never closes in "
                 f"on a leader counts {MIN_TTC_CAP_S:g} s); mean over episodes",
                 lambda e: e["min_ttc"], 0.0, MIN_TTC_CAP_S, 2),
    SafetyMetric(f"share_ttc_below_{TTC_THRESHOLD_S:g}s", "share of episodes",
                 f"episodes whose min time-to-collision fell below {TTC_THRESHOLD_S:g} s, over all episodes",
                 lambda e: float(e["min_ttc"] < TTC_THRESHOLD_S), 0.0, 1.0),
    SafetyMetric("min_headway_s", "s",
                 f"per episode, the smallest time headway to the leader (bumper gap / ego speed; none while stopped "
                 f"or without a leader), capped at {MIN_TTC_CAP_S:g} s; mean over episodes",
                 lambda e: e["min_headway"], 0.0, MIN_TTC_CAP_S, 2),
    SafetyMetric(f"share_headway_below_{HEADWAY_THRESHOLD_S:g}s", "share of episodes",
                 f"episodes whose min headway fell below {HEADWAY_THRESHOLD_S:g} s, over all episodes",
                 lambda e: float(e["min_headway"] < HEADWAY_THRESHOLD_S), 0.0, 1.0),
    SafetyMetric("unsafe_fraction", "share of steps",
                 f"per episode, the share of policy steps with TTC < {UNSAFE_TTC_S:g} s or headway < "
                 f"{UNSAFE_HEADWAY_S:g} s; mean over episodes",
                 lambda e: e["unsafe_fraction"], 0.0, 1.0),
    SafetyMetric("hard_brakes_per_km", "1/km",
                 f"per episode, policy steps decelerating harder than {HARD_BRAKE_MPS2:g} m/s², per km driven; "
                 f"mean over episodes",
                 lambda e: e["hard_brakes_per_km"], 0.0, digits=2),
    SafetyMetric("lane_changes_per_km", "1/km",
                 "per episode, changes of lane on the same road segment, per km driven; mean over episodes",
                 lambda e: e["lane_changes_per_km"], 0.0, digits=2),
    SafetyMetric("rms_jerk_mps3", "m/s³",
                 "per episode, the root mean square of the jerk (change of acceleration per second, over a policy "
                 "step): lower is smoother; mean over episodes",
                 lambda e: e["rms_jerk"], 0.0, digits=2),
    SafetyMetric("mean_speed_mps", "m/s", "per episode, the mean speed over its policy steps; mean over episodes",
                 lambda e: e["mean_speed"], 0.0, digits=2),
    SafetyMetric("off_road_fraction", "share of steps",
                 "per episode, the share of policy steps off the road; mean over episodes",
                 lambda e: e["off_road_fraction"], 0.0, 1.0),
    SafetyMetric("route_completion", "share of the route",
                 "per episode, distance driven / the scenario's route length (at most 1); mean over episodes",
                 lambda e: e["route_completion"], 0.0, 1.0),
    SafetyMetric("driving_score", "0..1",
                 f"per episode, route completion x {VEHICLE_COLLISION_PENALTY:g} per vehicle collision x "
                 f"(1 - off-road fraction), the CARLA leaderboard's form; mean over episodes",
                 lambda e: e["driving_score"], 0.0, 1.0),
    SafetyMetric("return", "reward", "per episode, the sum of the scenario's rewards; mean over episodes",
                 lambda e: e["return"], digits=2, training=False),
    SafetyMetric("length_steps", "policy steps", "per episode, policy steps until it ended; mean over episodes",
                 lambda e: e["length"], 0.0, digits=1),
)
EPISODES = "episodes"  # the count every point is a mean over
EPISODES_DEFINITION = "how many episodes the other metrics of this point are means over"

HISTOGRAMS: tuple[tuple[str, Callable[[EpisodeMetrics], float], np.ndarray], ...] = (
    ("min_ttc_s", lambda e: e["min_ttc"], np.linspace(0.0, MIN_TTC_CAP_S, 41)),
    ("min_headway_s", lambda e: e["min_headway"], np.linspace(0.0, MIN_TTC_CAP_S, 41)),
    ("mean_speed_mps", lambda e: e["mean_speed"], np.linspace(0.0, 40.0, 41)),
    ("rms_jerk_mps3", lambda e: e["rms_jerk"], np.linspace(0.0, 40.0, 41)),
)

PHASES = {
    "dagger_teacher": "DAgger iteration 1: the privileged teacher drives (the policy only watches)",
    "dagger": "DAgger iterations 2..: the learner drives, the teacher labels",
    "ppo": "PPO, the policy's own sampled actions",
    "a2c": "A2C, the policy's own sampled actions",
}


def metric(name: str) -> SafetyMetric:
    return next(entry for entry in GLOSSARY if entry.name == name)


def glossary(has_goal: bool) -> tuple[SafetyMetric, ...]:
    """The glossary's metrics of a scenario with or without a goal (the success rate needs one)."""
    return tuple(entry for entry in GLOSSARY if has_goal or not entry.goal_only)


def training_metrics(has_goal: bool = False) -> tuple[SafetyMetric, ...]:
    return tuple(entry for entry in glossary(has_goal) if entry.training)


def rows_have_goal(rows: Sequence[EpisodeMetrics]) -> bool:
    """Whether these episodes all come from a scenario with a goal (each has a success value)."""
    return bool(rows) and all(row.get("success_rate") is not None for row in rows)


def training_row(summary: dict[str, float], length: int) -> EpisodeMetrics:
    """A finished training episode (SafetyMonitor.summary()) as an EpisodeMetrics row; its return is not known."""
    return episode_metrics(-1, math.nan, length, summary)


# -- the glossary ----------------------------------------------------------------------------------


def glossary_markdown() -> str:
    """The glossary as Markdown: the TensorBoard text tab and docs/SAFETY.md show exactly this."""
    lines = [
        "| metric (last part of the tag) | unit | what is counted, over what |",
        "| --- | --- | --- |",
        *(f"| `{entry.name}` | {entry.unit} | {entry.definition} |" for entry in GLOSSARY),
        f"| `{EPISODES}` | episodes | {EPISODES_DEFINITION} |",
        "",
        "Where the tags come from:",
        "",
        f"- `{TRAIN_PREFIX}/<phase>/<metric>`: training episodes, means over the episodes that finished since the "
        "previous point (at the end of each DAgger iteration or PPO/A2C rollout); `<phase>`: "
        + "; ".join(f"`{name}` ({text})" for name, text in PHASES.items())
        + ". An episode is counted in a phase only when that phase drove all its steps. The return is not "
        "logged here (`rollout/ep_rew_mean` has it).",
        f"- `{EVAL_PREFIX}/<metric>`: deterministic evaluation (the most likely action) on a fixed set of episodes, "
        "the scenario's first evaluation seeds (never trained on): before training (step 0), every `eval_every` env "
        "steps and at the last step; the same episodes every time.",
        f"- `{EVAL_PREFIX}_ci95/<metric>/low` and `/high`: the {CONFIDENCE:.0%} Student-t interval of that mean "
        "(mean ± t(0.975, n-1) · std / √n, clipped to the metric's range), drawn as a band in the custom scalars tab.",
        f"- `eval_hist/<metric>`: the per-episode values of each evaluation (histograms and distributions tabs); "
        f"TTC and headway capped at {MIN_TTC_CAP_S:g} s.",
        f"- `{REFERENCE_PREFIX}/<metric>` (and `_ci95`): the same evaluation on highway-env, the reference simulator, "
        "at the end of a run whose periodic evaluation is on the fast backend.",
        f"- Steps are env steps of all envs together, DAgger's included, so every phase shares one axis.",
    ]
    return "\n".join(lines)


DOCS_START = "<!-- glossary:start (generated by `python -m agents.safety_board docs`; edit GLOSSARY instead) -->"
DOCS_END = "<!-- glossary:end -->"


def update_docs(path: Path) -> None:
    """Rewrite the glossary between the markers of docs/SAFETY.md."""
    text = path.read_text()
    start, end = text.index(DOCS_START) + len(DOCS_START), text.index(DOCS_END)
    path.write_text(text[:start] + "\n" + glossary_markdown() + "\n" + text[end:])


def docs_glossary(path: Path) -> str:
    """The glossary section of docs/SAFETY.md, as written."""
    text = path.read_text()
    return text[text.index(DOCS_START) + len(DOCS_START) : text.index(DOCS_END)].strip("\n")


# -- writing to TensorBoard ------------------------------------------------------------------------


def tensorboard_writer(logger):
    """The SummaryWriter of SB3's TensorBoard output, or None when the logger writes no TensorBoard."""
    from stable_baselines3.common.logger import TensorBoardOutputFormat

    return next((output.writer for output in logger.output_formats if isinstance(output, TensorBoardOutputFormat)),
                None)


def ci_tags(prefix: str, name: str) -> tuple[str, str]:
    return f"{prefix}_ci95/{name}/low", f"{prefix}_ci95/{name}/high"


class SafetyBoard:
    """Writes the safety tags into one run's TensorBoard events (a torch SummaryWriter)."""

    def __init__(self, writer) -> None:
        self.writer = writer
        self.described: set[str] = set()  # tags whose description this writer has written

    def scalar(self, tag: str, value: float, step: int, description: str) -> None:
        """A scalar whose description (TensorBoard shows it beside the chart) says its unit and definition;
        TensorBoard keeps a tag's first metadata, so it goes with the first value only."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.scalar import metadata

        value = Summary.Value(tag=tag, simple_value=float(value))
        if tag not in self.described:
            value.metadata.CopyFrom(metadata.create_summary_metadata(display_name=tag, description=description))
            self.described.add(tag)
        self.writer.file_writer.add_summary(Summary(value=[value]), int(step))

    def log_training(self, phase: str, rows: Sequence[EpisodeMetrics], step: int) -> None:
        """safety_train/<phase>/*: means over the training episodes `rows` (nothing when there are none)."""
        if not rows:
            return
        where = f"training episodes, phase {phase} ({PHASES.get(phase, phase)})"
        for entry in training_metrics(rows_have_goal(rows)):
            mean = float(np.mean([entry.value(row) for row in rows]))
            self.scalar(f"{TRAIN_PREFIX}/{phase}/{entry.name}", mean, step,
                        f"[{entry.unit}] {entry.definition}; {where}")
        self.scalar(f"{TRAIN_PREFIX}/{phase}/{EPISODES}", len(rows), step, f"{EPISODES_DEFINITION}; {where}")
        self.writer.flush()

    def log_evaluation(self, prefix: str, rows: Sequence[EpisodeMetrics], step: int, about: str) -> dict[str, Estimate]:
        """<prefix>/* means, <prefix>_ci95/* intervals, eval_hist/* distributions; returns the estimates."""
        estimates = summarize(rows)
        for entry in glossary(rows_have_goal(rows)):
            estimate = estimates[entry.name]
            description = f"[{entry.unit}] {entry.definition}; {about}"
            self.scalar(f"{prefix}/{entry.name}", estimate.mean, step, description)
            if estimate.ci_low is not None:
                low, high = ci_tags(prefix, entry.name)
                self.scalar(low, estimate.ci_low, step, f"lower end of the {CONFIDENCE:.0%} interval of {prefix}/{entry.name}")
                self.scalar(high, estimate.ci_high, step, f"upper end of the {CONFIDENCE:.0%} interval of {prefix}/{entry.name}")
        self.scalar(f"{prefix}/{EPISODES}", len(rows), step, f"{EPISODES_DEFINITION}; {about}")
        hist = "eval_hist" if prefix == EVAL_PREFIX else f"{prefix}_hist"
        for name, value, bins in HISTOGRAMS:
            values = np.array([value(row) for row in rows], dtype=float)
            self.writer.add_histogram(f"{hist}/{name}", values, int(step), bins=bins)
        self.writer.flush()
        return estimates

    def write_layout(self, phases: Sequence[str], prefixes: Sequence[tuple[str, str]], has_goal: bool = False) -> None:
        """The custom scalars tab: a margin chart (mean and its 95 % band) per evaluated metric and per
        evaluation `prefixes` ((tag prefix, category title)), and one chart per training metric with a line per phase."""
        layout: dict[str, dict[str, list]] = {}
        for prefix, title in prefixes:
            layout[title] = {
                f"{entry.name} [{entry.unit}]": ["Margin", [f"{prefix}/{entry.name}", *ci_tags(prefix, entry.name)]]
                for entry in glossary(has_goal)
            }
        alternatives = "|".join(re.escape(phase) for phase in phases)
        layout[f"training episodes: one line per phase ({', '.join(phases)})"] = {
            f"{entry.name} [{entry.unit}]": ["Multiline", [f"^{TRAIN_PREFIX}/({alternatives})/{re.escape(entry.name)}$"]]
            for entry in training_metrics(has_goal)
        }
        self.writer.add_custom_scalars(layout)
        self.writer.flush()

    def text(self, tag: str, markdown: str, step: int, description: str) -> None:
        """Markdown for the text tab under exactly `tag` (SummaryWriter.add_text appends "/text_summary")."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text import metadata

        tensor = TensorProto(dtype="DT_STRING", string_val=[markdown.encode()],
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        value = Summary.Value(tag=tag, tensor=tensor,
                              metadata=metadata.create_summary_metadata(display_name=tag, description=description))
        self.writer.file_writer.add_summary(Summary(value=[value]), int(step))
        self.writer.flush()

    def write_glossary(self, step: int, about: str) -> None:
        self.text(GLOSSARY_TAG, f"{about}\n\n{glossary_markdown()}", step, "what every safety tag counts, in which unit")

    def write_summary(self, step: int, markdown: str) -> None:
        self.text(SUMMARY_TAG, markdown, step, "the final evaluation with 95 % intervals (and against --baseline)")


def summarize(rows: Sequence[EpisodeMetrics]) -> dict[str, Estimate]:
    """Mean and 95 % interval of every glossary metric these episodes define."""
    return {entry.name: mean_ci([entry.value(row) for row in rows], low=entry.low, high=entry.high)
            for entry in glossary(rows_have_goal(rows))}


def hparam_metrics(phases: Sequence[str], prefixes: Sequence[str], has_goal: bool = False) -> list[str]:
    """Every safety tag, as HParams metrics (the plugin shows each one's last value per run)."""
    tags = [f"{prefix}/{entry.name}" for prefix in prefixes for entry in glossary(has_goal)]
    tags += [f"{TRAIN_PREFIX}/{phase}/{entry.name}" for phase in phases for entry in training_metrics(has_goal)]
    return tags


# -- episodes of the training phases ---------------------------------------------------------------


class EpisodeTracker:
    """One SafetyMonitor per env, fed every step's infos; finished episodes become rows, kept per phase.
    An episode is kept only when one phase drove all its steps (one that began in the teacher's
    iteration and ended in the learner's is dropped)."""

    def __init__(self, route_length_m: float, n_envs: int) -> None:
        self.monitors = [SafetyMonitor(route_length_m) for _ in range(n_envs)]
        self.drivers: list[set[str]] = [set() for _ in range(n_envs)]
        self.finished: dict[str, list[EpisodeMetrics]] = {}
        self.dropped = 0  # episodes driven by two phases

    def step(self, infos: Sequence[dict], dones: Sequence[bool], phase: str) -> None:
        for monitor, drivers, info, done in zip(self.monitors, self.drivers, infos, dones):
            if "safety" in info:
                monitor.update(info)
                drivers.add(phase)
            if done:
                if monitor.totals.steps:
                    if len(drivers) == 1:
                        self.finished.setdefault(phase, []).append(training_row(monitor.summary(), monitor.totals.steps))
                    else:
                        self.dropped += 1
                monitor.reset()
                drivers.clear()

    def pop(self) -> dict[str, list[EpisodeMetrics]]:
        finished, self.finished = self.finished, {}
        return finished


# -- evaluation during training --------------------------------------------------------------------


@contextmanager
def untouched_rng() -> Iterator[None]:
    """Evaluation must not change training: the global Python, NumPy and PyTorch generators are restored."""
    import torch

    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@dataclasses.dataclass
class EvaluationSet:
    """A fixed set of episodes: the seeds, and where they play (batched on the fast backend, or one by one on `env`)."""

    prefix: str  # its tags
    seeds: list[int]
    backend: str  # the simulator's name
    batched: bool
    scenario: Any  # the loaded Scenario
    env: Any = None  # the CameraEnv of one-by-one episodes
    device: str = "cpu"

    def play(self, model) -> list[EpisodeMetrics]:
        with untouched_rng():
            if self.batched:
                return run_batched_episodes(model, self.scenario, self.seeds, self.device)
            return run_episodes(model, self.env, self.seeds, deterministic=True)

    @property
    def about(self) -> str:
        return (f"{len(self.seeds)} deterministic episodes on the {self.backend} simulator, evaluation seeds "
                f"{self.seeds[0]}..{self.seeds[-1]}")


EvaluationListener = Callable[[int, dict[str, Estimate]], None]  # (env step, metric key -> estimate)


@dataclasses.dataclass(frozen=True)
class Evaluated:
    step: int
    rows: list[EpisodeMetrics]
    estimates: dict[str, Estimate]
    evaluation: EvaluationSet


class Evaluator:
    """The periodic evaluation of a run: `evaluation` at step 0, whenever the step passes a multiple of
    `every` (after a DAgger iteration's fit, or at the start of a rollout, after the previous one's
    update), and at the end; the time it takes is counted. `listener(step, estimates)` hears each
    of these evaluations (a sweep's trial reports them to Ray Tune)."""

    def __init__(self, board: SafetyBoard | None, evaluation: EvaluationSet, every: int, start_step: int = 0,
                 listener: EvaluationListener | None = None) -> None:
        if every < 1:
            raise ValueError(f"eval interval must be positive, got {every}")
        self.board = board
        self.listener = listener
        self.evaluation = evaluation
        self.every = every
        self.next_at = (start_step // every + 1) * every
        self.last: Evaluated | None = None
        self.seconds = 0.0  # [s] spent evaluating

    def evaluate(self, model, step: int, evaluation: EvaluationSet | None = None) -> Evaluated:
        evaluation = evaluation or self.evaluation
        began = time.perf_counter()
        rows = evaluation.play(model)
        estimates = (self.board.log_evaluation(evaluation.prefix, rows, step, evaluation.about)
                     if self.board is not None else summarize(rows))
        self.seconds += time.perf_counter() - began
        result = Evaluated(step, rows, estimates, evaluation)
        if evaluation is self.evaluation:
            self.last = result
            self.next_at = (step // self.every + 1) * self.every
            if self.listener is not None:
                self.listener(step, estimates)
        return result

    def maybe_evaluate(self, model, step: int) -> Evaluated | None:
        return self.evaluate(model, step) if step >= self.next_at else None

    def final(self, model, step: int) -> Evaluated:
        """The evaluation of the final model at the last step (reused when the last periodic one
        evaluated that model: periodic ones run when a DAgger iteration or an update is done)."""
        if self.last is not None and self.last.step == step:
            return self.last
        return self.evaluate(model, step)


# -- the summary table -----------------------------------------------------------------------------


def _cell(estimate: Estimate, digits: int) -> str:
    if estimate.ci_low is None:
        return format_value(estimate.mean, digits)
    return (f"{format_value(estimate.mean, digits)} [{format_value(estimate.ci_low, digits)}, "
            f"{format_value(estimate.ci_high, digits)}]")


def summary_markdown(final: Evaluated, reference: Evaluated | None = None, baseline: Evaluated | None = None,
                     baseline_name: str | None = None, eval_seconds: float | None = None,
                     train_seconds: float | None = None) -> str:
    """The final evaluation with 95 % intervals, and against a baseline run on the same episodes:
    its table and the paired difference (this run − baseline, episode by episode)."""
    lines = [f"### Final evaluation at step {final.step:,}: {final.evaluation.about}", ""]
    if baseline is None:
        lines += ["| metric | unit | mean [95 % interval] |", "| --- | --- | --- |"]
        lines += [f"| `{entry.name}` | {entry.unit} | {_cell(final.estimates[entry.name], entry.digits)} |"
                  for entry in GLOSSARY if entry.name in final.estimates]
    else:
        lines += [f"| metric | unit | this run | baseline `{baseline_name}` (step {baseline.step:,}) | "
                  "difference (this − baseline, paired) |", "| --- | --- | --- | --- | --- |"]
        for entry in (entry for entry in GLOSSARY if entry.name in final.estimates and entry.name in baseline.estimates):
            ours = [entry.value(row) for row in final.rows]
            theirs = [entry.value(row) for row in baseline.rows]
            difference = mean_ci(np.subtract(ours, theirs))
            lines.append(f"| `{entry.name}` | {entry.unit} | {_cell(final.estimates[entry.name], entry.digits)} | "
                         f"{_cell(baseline.estimates[entry.name], entry.digits)} | {_cell(difference, entry.digits)} |")
    lines += ["", f"Cells: mean [{CONFIDENCE:.0%} Student-t interval of the mean]."]
    if baseline is not None:
        lines.append("Both runs played the same episodes (same seeds), so the difference is taken episode by "
                     "episode; an interval that excludes 0 is a difference these episodes can tell apart.")
    if reference is not None:
        lines += ["", f"### On highway-env, the reference simulator: {reference.evaluation.about}", "",
                  "| metric | unit | mean [95 % interval] |", "| --- | --- | --- |"]
        lines += [f"| `{entry.name}` | {entry.unit} | {_cell(reference.estimates[entry.name], entry.digits)} |"
                  for entry in GLOSSARY if entry.name in reference.estimates]
    if eval_seconds is not None and train_seconds:
        lines += ["", f"Evaluation took {eval_seconds:.1f} s of this session's {train_seconds:.1f} s of training "
                      f"({eval_seconds / train_seconds:.1%})."]
    return "\n".join(lines)


# -- what an evaluation costs ------------------------------------------------------------------------


def bench_evaluation(episodes: int = 200, reference_episodes: int = 20, scenario: str = "highway",
                     device: str = "cpu") -> dict[str, float]:
    """Time one eval/* point of the default run: `episodes` batched episodes of a fresh agent with the
    default run's policy (agents/defaults.yaml's fast block, the shipped student), and the final check's
    `reference_episodes` on highway-env.

    A batched evaluation steps all its rows until the longest episode ends, so its cost is (longest
    episode) x (one step of the batch), whatever the agent; a fresh agent's episodes on highway-env
    end sooner than a trained one's, so that part is also given per policy step and scaled to
    episodes that all last the scenario's whole duration (the upper bound)."""
    import tempfile
    import warnings

    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.config import RunConfig, load_agent_config
    from agents.evaluate import evaluation_seeds
    from agents.runs import PERCEPTION_FILE, build_agent, copy_file
    from envs.backends import FAST, REFERENCE
    from perception.extractor import DEFAULT_STUDENT

    env = REFERENCE.make_env(scenario)
    agent = load_agent_config(scenario, None, {"training": {}, "policy": {}}, backend=FAST.name)
    config = RunConfig(scenario=scenario, algo="ppo", seed=0, backend=FAST.name, n_envs=1, device=device,
                       observation_shape=tuple(int(n) for n in env.observation_space.shape),
                       n_actions=int(env.action_space.n), training=agent.training,
                       policy=dataclasses.replace(agent.policy, perception=str(DEFAULT_STUDENT)),
                       ppo=agent.algo_config("ppo"))
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You have specified a mini-batch size")
        copy_file(DEFAULT_STUDENT, Path(folder) / PERCEPTION_FILE)
        model = build_agent(config, Path(folder), DummyVecEnv([lambda: env]), device)
    results: dict[str, float] = {"episodes": episodes, "reference_episodes": reference_episodes}
    batched = EvaluationSet(EVAL_PREFIX, evaluation_seeds(env.scenario, episodes), FAST.name, True, env.scenario,
                            device=device)
    reference = EvaluationSet(REFERENCE_PREFIX, evaluation_seeds(env.scenario, reference_episodes), REFERENCE.name,
                              False, env.scenario, env=env)
    batched.play(model)  # warm-up: road raster, first calls
    for name, evaluation in (("batched", batched), ("reference", reference)):
        began = time.perf_counter()
        rows = evaluation.play(model)
        seconds = time.perf_counter() - began
        steps = sum(row["length"] for row in rows)
        full = len(rows) * env.scenario.episode_steps
        results[f"{name}_seconds"] = seconds
        if evaluation.batched:
            results[f"{name}_batch_steps"] = max(row["length"] for row in rows)
            results[f"{name}_full_length_seconds"] = seconds / max(row["length"] for row in rows) * env.scenario.episode_steps
        else:
            results[f"{name}_policy_steps"] = steps
            results[f"{name}_full_length_seconds"] = seconds / steps * full
    env.close()
    return results


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="docs/SAFETY.md's glossary, and what an evaluation costs")
    parser.add_argument("what", choices=["docs", "bench"], help="docs: rewrite docs/SAFETY.md's glossary; "
                        "bench: time one periodic evaluation of the default run's policy")
    parser.add_argument("--episodes", type=int, default=200, help="batched episodes (eval_episodes)")
    parser.add_argument("--reference-episodes", type=int, default=20, help="highway-env episodes (reference_eval_episodes)")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    arguments = parser.parse_args()
    if arguments.threads:
        from envs.system import set_threads

        set_threads(arguments.threads)
    if arguments.what == "docs":
        update_docs(Path(__file__).resolve().parents[1] / "docs" / "SAFETY.md")
    else:
        print(json.dumps(bench_evaluation(arguments.episodes, arguments.reference_episodes), indent=2))
