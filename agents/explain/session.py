"""Building the env an explanation plays on, and playing an episode while recording what the panels show.

`make_env` is the one place that constructs an env here (through envs.backends).
`play_episode` drives the agent deterministically, as `run.py evaluate` does, and records every
step: the observation the agent decided on, the clean newest camera frame, the simulator's
top-down view, the decision (probabilities, value, attention), the safety signals, and the
vehicles (`Scene` + stable ids) behind each frame of the stack, so that a frame stack can be
re-rendered later without one vehicle (agents.explain.vehicles).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from agents.explain.decision import Decision, DecisionModel, decide
from envs.safety import SafetyMonitor
from envs.scene import Scene


def make_env(scenario: str | Path, backend: str):
    """The clearlane env (a CameraEnv) of `scenario` on `backend` (envs.backends), rendering clean frames."""
    from envs.backends import get_backend

    return get_backend(backend).make_env(scenario, render_mode="rgb_array")


# -- vehicles behind a frame -------------------------------------------------------------------------


@dataclass(frozen=True)
class VehicleFrame:
    """The vehicles of one camera frame: the Scene (row 0 the ego) and one stable id per row."""

    scene: Scene
    ids: np.ndarray  # (N,) int64, the same vehicle keeps its id through the episode; ids[0] is the ego's

    def without(self, vehicle_id: int) -> Scene:
        """The scene with vehicle `vehicle_id` removed (unchanged when it is not there)."""
        keep = self.ids != vehicle_id
        keep[0] = True  # never the ego
        s = self.scene
        return Scene(s.positions[keep], s.headings[keep], s.speeds[keep], s.lengths[keep], s.widths[keep])


def vehicle_frame(env) -> VehicleFrame:
    """The vehicles the env's newest frame was rendered from."""
    inner = env.unwrapped  # a CameraEnv (envs.backends)
    return VehicleFrame(inner.scene(), inner.vehicle_ids())


class FrameRenderer:
    """Re-renders a clean camera frame (H, W, 3) uint8 from a Scene, with the env's own camera."""

    def __init__(self, env) -> None:
        self._env = env.unwrapped  # a CameraEnv (envs.backends)

    def render(self, scene: Scene) -> np.ndarray:
        return self._env.render_scene(scene)

    def render_stack(self, scenes: list[Scene]) -> np.ndarray:
        """Scenes of the stacked frames (oldest first) -> (3 * stack, H, W) uint8, the observation's layout."""
        return np.concatenate([self.render(scene).transpose(2, 0, 1) for scene in scenes], axis=0)


# -- episodes ----------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """One instant of an episode: what the agent saw and decided, and what the simulator says."""

    step: int
    observation: np.ndarray  # (C, H, W) uint8, what the agent decided on
    frame: np.ndarray  # (H, W, 3) uint8, the newest frame before sensor corruptions
    top_down: np.ndarray | None  # (h, w, 3) uint8, the simulator's own view (None when not recorded)
    decision: Decision  # on `observation`; the action taken next (the last record's is not taken)
    safety: dict[str, Any]  # info["safety"]: speed [m/s], ttc [s], headway [s], crashed, hard_brake, ...
    stack: list[VehicleFrame]  # vehicles of each stacked frame, oldest first
    reward: float = 0.0  # reward of the step that led here (0 at reset)
    taken: bool = True  # False for the final record after the episode ended


@dataclass
class Episode:
    seed: int
    records: list[StepRecord] = field(default_factory=list)
    episode_return: float = 0.0
    summary: dict[str, float] = field(default_factory=dict)  # SafetyMonitor.summary(): collision, driving_score, ...

    @property
    def length(self) -> int:
        return len(self.records) - 1  # policy steps


def iterate_episode(env, model: DecisionModel, seed: int, top_down: bool = True) -> Iterator[StepRecord]:
    """Play one deterministic episode on evaluation-style seed `seed`, yielding a record per instant
    (the reset, then one per policy step; the last one has `taken=False`)."""
    stack_size = env.unwrapped.scenario.camera.stack
    obs, info = env.reset(seed=int(seed))
    frames: deque[VehicleFrame] = deque([vehicle_frame(env)] * stack_size, maxlen=stack_size)
    step, reward, done = 0, 0.0, False
    while True:
        decision = decide(model, obs)
        yield StepRecord(step, obs, env.unwrapped.clean_frame.copy(), env.unwrapped.top_down() if top_down else None,
                         decision, dict(info["safety"]), list(frames), reward, taken=not done)
        if done:
            return
        obs, reward, terminated, truncated, info = env.step(decision.action)
        frames.append(vehicle_frame(env))
        step += 1
        done = bool(terminated or truncated)


def play_episode(env, model: DecisionModel, seed: int, top_down: bool = True,
                 on_step: Callable[[StepRecord], None] | None = None) -> Episode:
    """`iterate_episode` collected, with the episode's return and safety summary."""
    episode = Episode(int(seed))
    monitor = SafetyMonitor(env.unwrapped.scenario.safety.route_length_m)
    for record in iterate_episode(env, model, seed, top_down):
        if record.step > 0:
            monitor.update({"safety": record.safety})
            episode.episode_return += record.reward
        episode.records.append(record)
        if on_step is not None:
            on_step(record)
    episode.summary = monitor.summary()
    return episode
