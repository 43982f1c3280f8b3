"""Building the env an explanation plays on, and playing an episode while recording what the panels show.

`make_env` is the one place that constructs an env here (a backend registry can replace it).
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
    """The clearlane env of `scenario` on `backend` ("highway-env" or "fast"), rendering clean frames."""
    from envs.registration import make_env as registry_make_env

    return registry_make_env(scenario, backend, render_mode="rgb_array")


def is_fast(env) -> bool:
    from envs.fast.gym_env import FastDrivingEnv

    return isinstance(env.unwrapped, FastDrivingEnv)


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
    inner = env.unwrapped
    if is_fast(env):
        from envs.fast.params import VEHICLE

        state = inner.sim.state
        present = state.present[0].cpu().numpy()  # (N,) bool, column 0 the ego
        columns = np.flatnonzero(present)
        x, y, heading, speed = (values[0].detach().cpu().double().numpy()[columns]
                                for values in (state.x, state.y, state.heading, state.speed))
        scene = Scene(np.stack([x, y], axis=1), heading, speed, np.full(len(columns), VEHICLE.length),
                      np.full(len(columns), VEHICLE.width))
        return VehicleFrame(scene, columns.astype(np.int64))
    from envs.scene import snapshot

    road, ego = inner.sim.road, inner.sim.vehicle
    movers = [ego] + [vehicle for vehicle in road.vehicles if vehicle is not ego] + list(road.objects)  # snapshot's order
    ids = np.array([0] + [id(obj) for obj in movers[1:]], dtype=np.int64)
    return VehicleFrame(snapshot(road, ego), ids)


class FrameRenderer:
    """Re-renders a clean camera frame (H, W, 3) uint8 from a Scene, with the env's own camera.

    On highway-env: the env's camera and the road map of its current road. On the fast backend: a
    BatchedBevCamera of its own (the simulator's keeps scratch buffers that must not be shared)."""

    def __init__(self, env) -> None:
        inner = env.unwrapped
        self.fast = is_fast(env)
        if self.fast:
            from envs.fast.camera import BatchedBevCamera

            self.camera = BatchedBevCamera(inner.scenario.camera.bev, inner.sim.traffic.lanes_count, "cpu")
        else:
            self.camera = inner.camera
        self._env = inner

    def render(self, scene: Scene) -> np.ndarray:
        if self.fast:
            import torch

            def row(values: np.ndarray) -> torch.Tensor:
                return torch.as_tensor(values, dtype=torch.float64)[None]  # (1, N)

            present = torch.ones((1, len(scene.speeds)), dtype=torch.bool)
            frames = self.camera.render(row(scene.positions[:, 0]), row(scene.positions[:, 1]), row(scene.headings),
                                        row(scene.lengths), row(scene.widths), present)  # (1, 3, H, W)
            return frames[0].permute(1, 2, 0).numpy().copy()
        from envs.road_map import build_road_map

        road_map = build_road_map(self._env.sim.road.network, self.camera.map_pixels_per_meter)  # cached per road
        return self.camera.render(road_map, scene)

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
