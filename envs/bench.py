"""`run.py bench env`: what our camera costs, next to highway-env's own image observation.

Per scenario, three envs step through the same seeded episodes with the same action sequence:

    camera     DrivingEnv: our rasterizer + safety signals + ground truth (as agents train on it)
    grayscale  highway-env with its GrayscaleObservation, configured as its CNN recipe
               (128 x 64, stack 4): the image observation highway-env offers
    bare       highway-env with an empty observation: the simulator alone

The three run in interleaved rounds of ROUND_STEPS steps through the very same episodes, and
are timed in CPU time of this process (`time.process_time`), so that other programs on a
shared machine do not count as env time. The overheads over the bare simulator are measured
within one run, on the same steps (no run-to-run noise). The rasterizer alone is timed too
(µs per frame) for the "bev" and "front" cameras.

highway-env's viewer switches itself off under SDL_VIDEODRIVER=dummy, and GrayscaleObservation
then returns zeros at no cost. The variable is lifted while the benchmark runs, and the
grayscale frames are checked to be non-blank, so the comparison is honest.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import highway_env  # noqa: F401  (registers highway-env's ids)
import numpy as np
from rich.console import Console
from rich.table import Table

from envs.display import offscreen_video_driver
from envs.driving_env import CAMERA_VIEWS, DrivingEnv
from envs.policies import action_indexes
from envs.progress import ProgressBar
from scenarios import Scenario, available_scenarios, load_scenario

logger = logging.getLogger(__name__)

# highway-env's CNN recipe (docs: "Using images as observations").
GRAYSCALE_OBSERVATION = {
    "type": "GrayscaleObservation",
    "observation_shape": (128, 64),  # (W, H) [px]
    "stack_size": 4,
    "weights": [0.2989, 0.5870, 0.1140],  # RGB -> luma
    "scaling": 1.75,  # [px/m]
}
NULL_OBSERVATION = {"type": "AttributesObservation", "attributes": []}
ROUND_STEPS = 25  # steps per env per interleaved round
RASTER_CALLS = 200  # rasterizer calls per camera view and scenario
LANE_CHANGE_PROB = 0.1  # per step, in the fixed action sequence
SPEED_CHANGE_PROB = 0.1


def bench_env(
    scenarios: Sequence[str] | None = None, steps: int = 300, seed: int = 0, console: Console | None = None
) -> list[dict[str, Any]]:
    """Measure env steps/s and rasterizer µs/frame per scenario; print a table, return its rows.

    `steps` per env and scenario. Row keys: scenario, camera_sps, grayscale_sps, bare_sps
    [steps per CPU second], camera_vs_grayscale
    (ratio of steps/s), camera_overhead_pct (DrivingEnv's CPU time outside highway-env's
    step/reset over the time inside them, on the same steps [%]), grayscale_overhead_pct
    (GrayscaleObservation.observe() over the rest of highway-env's step, same steps [%]),
    raster_bev_us, raster_front_us [µs/frame].
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    names = list(scenarios) if scenarios else available_scenarios()
    loaded = [load_scenario(name) for name in names]  # fail on a bad name before any work
    console = console or Console(width=None if sys.stdout.isatty() else 120)  # pipes: don't squeeze to 80
    rounds = math.ceil(steps / ROUND_STEPS)
    rows = []
    total = len(loaded) * (3 * rounds + len(CAMERA_VIEWS))
    with offscreen_video_driver(), ProgressBar(total, "bench env", "rounds", transient=True, console=console) as bar:
        for scenario in loaded:
            rows.append(_bench_scenario(scenario, steps, seed, rounds, bar))
    console.print(results_table(rows, steps))
    return rows


def results_table(rows: list[dict[str, Any]], steps: int) -> Table:
    """The rows as a rich table."""
    table = Table(
        title=f"Env speed: {steps} steps per env, 1 process, CPU time",
        caption="steps/s: DrivingEnv (camera), highway-env with GrayscaleObservation (gray) and with an empty "
        "observation (bare). Overheads are paired on the same steps: camera = DrivingEnv's time outside "
        "highway-env; gray = GrayscaleObservation.observe(); both over the simulator's own time. "
        "Raster = one camera.render call.",
    )
    headers = ("scenario", "camera/s", "gray/s", "bare/s", "cam/gray", "cam +%", "gray +%", "bev µs", "front µs")
    for header in headers:
        table.add_column(header, justify="left" if header == "scenario" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*_cells(row))
    return table


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["scenario"], f"{row['camera_sps']:.1f}", f"{row['grayscale_sps']:.1f}", f"{row['bare_sps']:.1f}",
        f"{row['camera_vs_grayscale']:.2f}x", f"{row['camera_overhead_pct']:+.1f} %",
        f"{row['grayscale_overhead_pct']:+.1f} %", f"{row['raster_bev_us']:.0f}", f"{row['raster_front_us']:.0f}",
    ]


# -- Internals ---------------------------------------------------------------------------------


class _Runner:
    """Steps one env through seeded episodes (seed, seed + 1, ...), resetting at episode end.

    Episodes end where DrivingEnv ends them (`episode_steps`), so that all three envs run the
    very same episodes: highway-env alone would let two-way and merge run on. With
    `time_observations`, the CPU time of highway-env's `observation_type.observe()` in each
    step is added up too: the image observation's own cost, paired with the same steps.
    """

    def __init__(self, env: gym.Env, seed: int, episode_steps: int, time_observations: bool = False) -> None:
        self.env, self.seed, self.episode_steps = env, seed, episode_steps
        self.time_observations = time_observations
        self.observe_seconds = 0.0  # CPU [s]
        self.obs, _ = env.reset(seed=seed)  # untimed: the first reset builds caches
        self._after_reset()

    def run(self, actions: Sequence[int]) -> float:
        """Take `actions`; returns the CPU time spent [s], resets included."""
        env = self.env
        start = time.process_time()
        for action in actions:
            self.obs, _, terminated, truncated, _ = env.step(action)
            self.step_in_episode += 1
            if terminated or truncated or self.step_in_episode >= self.episode_steps:
                self.seed += 1
                self.obs, _ = env.reset(seed=self.seed)
                self._after_reset()
        return time.process_time() - start

    def _after_reset(self) -> None:
        self.step_in_episode = 0
        if self.time_observations:
            # highway-env builds a new observation object (and viewer) on every reset.
            observation = self.env.unwrapped.observation_type
            observe = type(observation).observe.__get__(observation)

            def timed_observe():
                start = time.process_time()
                try:
                    return observe()
                finally:
                    self.observe_seconds += time.process_time() - start

            observation.observe = timed_observe


class _TimedSim:
    """Proxy for DrivingEnv's highway-env instance that adds up the CPU time of its step/reset.

    DrivingEnv time minus this time is exactly what clearlane adds over the bare simulator
    (camera, safety signals, ground truth), measured on the same steps: no run-to-run noise.
    """

    def __init__(self, sim: gym.Env) -> None:
        self._sim = sim
        self.seconds = 0.0  # CPU [s]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sim, name)

    def step(self, action):
        start = time.process_time()
        try:
            return self._sim.step(action)
        finally:
            self.seconds += time.process_time() - start

    def reset(self, **kwargs):
        start = time.process_time()
        try:
            return self._sim.reset(**kwargs)
        finally:
            self.seconds += time.process_time() - start


def _bench_scenario(
    scenario: Scenario, steps: int, seed: int, rounds: int, bar: ProgressBar
) -> dict[str, Any]:
    bar.describe(f"{scenario.name}: env steps")
    camera = DrivingEnv(scenario)
    camera.sim = timed_sim = _TimedSim(camera.sim)
    grayscale = _highway_env(scenario, GRAYSCALE_OBSERVATION)
    bare = _highway_env(scenario, NULL_OBSERVATION)
    envs = {"camera": camera, "grayscale": grayscale, "bare": bare}
    try:
        actions = _action_sequence(action_indexes(camera), steps, seed)
        runners = {
            kind: _Runner(env, seed, scenario.episode_steps, time_observations=kind == "grayscale")
            for kind, env in envs.items()
        }
        first_reset_seconds = timed_sim.seconds
        seconds = dict.fromkeys(envs, 0.0)
        order = list(envs)
        for index, chunk in enumerate(np.array_split(actions, rounds)):
            for kind in order[index % 3 :] + order[: index % 3]:  # rotate who goes first
                seconds[kind] += runners[kind].run(chunk.tolist())
                bar.advance()
        _check_not_blank(runners["grayscale"].obs, scenario.name)
        # The first reset was untimed by the runner but counted by the proxy: start from the runs.
        sim_seconds = timed_sim.seconds - first_reset_seconds
        grayscale_observe_seconds = runners["grayscale"].observe_seconds
    finally:
        for env in envs.values():
            env.close()
    sps = {kind: steps / max(seconds[kind], 1e-9) for kind in envs}  # [steps/s]
    row: dict[str, Any] = {
        "scenario": scenario.name,
        "camera_sps": sps["camera"],
        "grayscale_sps": sps["grayscale"],
        "bare_sps": sps["bare"],
        "camera_vs_grayscale": sps["camera"] / sps["grayscale"],
        # Paired, same steps: DrivingEnv's time outside highway-env over highway-env's own time.
        "camera_overhead_pct": 100.0 * (seconds["camera"] - sim_seconds) / max(sim_seconds, 1e-9),
        # Paired likewise: GrayscaleObservation.observe() over the rest of highway-env's step.
        "grayscale_overhead_pct": 100.0 * grayscale_observe_seconds
        / max(seconds["grayscale"] - grayscale_observe_seconds, 1e-9),
    }
    for view in CAMERA_VIEWS:
        bar.describe(f"{scenario.name}: raster {view}")
        row[f"raster_{view}_us"] = raster_us_per_frame(scenario, view, seed)
        bar.advance()
    logger.debug("bench %s: %s", scenario.name, row)
    return row


def raster_us_per_frame(scenario: Scenario, view: str, seed: int = 0, calls: int = RASTER_CALLS) -> float:
    """Median time of one `camera.render` call [µs], a few steps into an episode (traffic in view)."""
    env = DrivingEnv(scenario, camera=view, corruptions=False)
    try:
        env.reset(seed=seed)
        idle = action_indexes(env)["IDLE"]
        for _ in range(3):
            _, _, terminated, truncated, _ = env.step(idle)
            if terminated or truncated:
                env.reset(seed=seed)
                break
        render, road_map, scene = env.camera.render, env._road_map, env._scene
        render(road_map, scene)  # warm-up
        per_call = []
        for _ in range(5):
            start = time.process_time()
            for _ in range(max(1, calls // 5)):
                render(road_map, scene)
            per_call.append((time.process_time() - start) / max(1, calls // 5))
    finally:
        env.close()
    return float(np.median(per_call) * 1e6)


def _highway_env(scenario: Scenario, observation: dict[str, Any]) -> gym.Env:
    config = {**scenario.highway_env_config(), "observation": observation}
    return gym.make(scenario.highway_env.id, config=config, disable_env_checker=True).unwrapped


def _action_sequence(actions: dict[str, int], steps: int, seed: int) -> np.ndarray:
    """(steps,) action indices: mostly IDLE, some lane and speed changes, from a seeded rng."""
    rng = np.random.default_rng(seed)
    lateral = [actions[name] for name in ("LANE_LEFT", "LANE_RIGHT") if name in actions]
    longitudinal = [actions[name] for name in ("FASTER", "SLOWER") if name in actions]
    sequence = np.full(steps, actions["IDLE"], dtype=np.int64)
    draw = rng.random(steps)
    if lateral:
        pick = draw < LANE_CHANGE_PROB
        sequence[pick] = rng.choice(lateral, size=int(pick.sum()))
    if longitudinal:
        pick = (draw >= LANE_CHANGE_PROB) & (draw < LANE_CHANGE_PROB + SPEED_CHANGE_PROB)
        sequence[pick] = rng.choice(longitudinal, size=int(pick.sum()))
    return sequence


def _check_not_blank(obs: np.ndarray, name: str) -> None:
    """GrayscaleObservation is all zeros when highway-env's viewer is off: that run is no benchmark."""
    frame = np.asarray(obs)[-1]  # (W, H) newest grayscale frame
    if frame.max() == frame.min():
        raise RuntimeError(
            f"{name}: highway-env's GrayscaleObservation returned blank frames, so its timing is meaningless; "
            "is its viewer disabled (SDL_VIDEODRIVER=dummy) or pygame missing?"
        )

