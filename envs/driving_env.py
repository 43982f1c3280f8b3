"""`DrivingEnv`: a highway-env scenario seen through clearlane's own camera.

highway-env simulates the traffic; this env swaps its observation for stacked uint8 camera
frames (C, H, W) drawn by our rasterizer, and adds safety signals and privileged ground truth
to `info` every step:

    info["safety"]        crashed, off_road, speed, acceleration, jerk, ttc, headway, gap,
                          lane_change, hard_brake, distance, lane_id (see envs.safety)
    info["ground_truth"]  neighbours, lane occupancy, ego lane and speed (see envs.ground_truth)
    info["rewards"]       highway-env's reward terms, where the scenario has them
    info["goal_reached"]  whether the ego is at its manoeuvre's goal now, where the scenario has
                          one (exit, intersection, u-turn: envs.goals)
"""

from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import highway_env  # noqa: F401  (registers highway-env's ids)
import numpy as np
from highway_env.vehicle.behavior import IDMVehicle

from envs.bev_camera import BevCamera
from envs.corruptions import SensorCorruption
from envs.display import offscreen_video_driver
from envs.goals import goal_check
from envs.ground_truth import privileged_state
from envs.road_map import build_road_map
from envs.safety import StepTracker
from envs.scene import Scene, snapshot
from scenarios import Scenario, load_scenario
from scenarios.schema import TRAINING_SEED_LIMIT

# highway-env computes an observation every step; this one costs nothing and is thrown away.
_NULL_OBSERVATION = {"type": "AttributesObservation", "attributes": []}
CAMERA_VIEWS = ("bev", "front")
# IntersectionEnv's reset writes its own IDM constants into highway-env's IDMVehicle class and never
# puts them back, so every later env of the process would drive with them. Each reset starts from
# highway-env's own values instead (read here, at import, before any env exists).
IDM_CLASS_DEFAULTS = {name: getattr(IDMVehicle, name) for name in ("DISTANCE_WANTED", "COMFORT_ACC_MAX", "COMFORT_ACC_MIN")}


def restore_idm_class_defaults() -> None:
    """Undo what an IntersectionEnv reset wrote into IDMVehicle's class constants."""
    for name, value in IDM_CLASS_DEFAULTS.items():
        setattr(IDMVehicle, name, value)


def make_camera(scenario: Scenario):
    """The camera object for the scenario's active view."""
    if scenario.camera.view == "front":
        from envs.front_camera import FrontCamera

        return FrontCamera(scenario.camera.front)
    return BevCamera(scenario.camera.bev)


def with_camera_view(scenario: Scenario, view: str | None) -> Scenario:
    """The scenario with its camera switched to `view` ("bev" or "front"); None keeps it."""
    if view is None or view == scenario.camera.view:
        return scenario
    if view not in CAMERA_VIEWS:
        raise ValueError(f"unknown camera {view!r}; choose one of: {', '.join(CAMERA_VIEWS)}")
    camera = dataclasses.replace(scenario.camera, view=view)
    return dataclasses.replace(scenario, camera=camera)


class DrivingEnv(gym.Env[np.ndarray, int]):
    """Camera-frame driving env for one scenario. Same seed, bit-identical episode."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        scenario: str | Path | Scenario = "highway",
        camera: str | None = None,
        render_mode: str | None = None,
        corruptions: bool = True,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        base = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.scenario = with_camera_view(base, camera)
        self.render_mode = render_mode
        config = {**self.scenario.highway_env_config(), "observation": _NULL_OBSERVATION}
        self.sim = gym.make(
            self.scenario.highway_env.id, config=config, render_mode="rgb_array", disable_env_checker=True
        ).unwrapped
        self.camera = make_camera(self.scenario)
        self.corrupt = SensorCorruption(self.scenario.corruptions) if corruptions else None
        self.stack = self.scenario.camera.stack
        height, width = self.scenario.camera.size
        self.observation_space = gym.spaces.Box(0, 255, (3 * self.stack, height, width), np.uint8)
        self.action_space = self.sim.action_space
        self.metadata = {**self.metadata, "render_fps": self.scenario.highway_env_config()["policy_frequency"]}
        self.tracker = StepTracker(dt_s=1.0 / self.scenario.highway_env_config()["policy_frequency"])
        self._goal_reached = goal_check(self.sim)  # None: this scenario has no goal
        self._frames: deque[np.ndarray] = deque(maxlen=self.stack)  # each (3, H, W)
        self._clean_frame: np.ndarray | None = None  # (H, W, 3), before corruption
        self._steps = 0
        self.episode_seed: int | None = None

    # -- Gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # An explicit seed names the episode; otherwise draw one from our own stream, below the
        # evaluation seeds, so a run seeded once is reproducible end to end.
        self.episode_seed = seed if seed is not None else int(self.np_random.integers(TRAINING_SEED_LIMIT))
        restore_idm_class_defaults()
        self.sim.reset(seed=self.episode_seed)
        self._steps = 0
        self._road_map = build_road_map(self.sim.road.network, self.camera.map_pixels_per_meter)
        if self.corrupt is not None:
            self.corrupt.reset()
        self.tracker.reset(self.sim.vehicle)
        frame = self._observe_frame()
        self._frames.clear()
        self._frames.extend([frame] * self.stack)
        info = self._info(self.tracker.observe(self.sim.road, self.sim.vehicle), {})
        return self._observation(), info

    def step(self, action):
        _, reward, terminated, truncated, sim_info = self.sim.step(action)
        self._steps += 1
        truncated = bool(truncated or self._steps >= self.scenario.episode_steps)
        self._frames.append(self._observe_frame())
        signals = self.tracker.step(self.sim.road, self.sim.vehicle)
        return self._observation(), float(reward), bool(terminated), truncated, self._info(signals, sim_info)

    def render(self) -> np.ndarray | None:
        """The latest camera frame as the agent would see it without corruptions, (H, W, 3)."""
        if self.render_mode != "rgb_array":
            return None
        return None if self._clean_frame is None else self._clean_frame.copy()

    def close(self) -> None:
        self.sim.close()
        super().close()

    # -- Extras ----------------------------------------------------------------------------
    def top_down(self) -> np.ndarray:
        """highway-env's own top-down render, (h, w, 3) uint8, for previews and replays.

        The viewer is created under SDL's offscreen driver (envs.display): no display needed,
        not switched off as under SDL_VIDEODRIVER=dummy, no XDG_RUNTIME_DIR complaint.
        """
        if self.sim.viewer is None:
            with offscreen_video_driver():
                return self.sim.render()
        return self.sim.render()

    @property
    def clean_frame(self) -> np.ndarray:
        """(H, W, 3) uint8: the newest frame before sensor corruptions."""
        return self._clean_frame

    def scene(self) -> Scene:
        """The vehicles the newest frame was drawn from (row 0 the ego)."""
        return self._scene

    def vehicle_ids(self) -> np.ndarray:
        """(N,) int64: one id per row of `scene()` that a vehicle keeps through the episode; 0 = the ego."""
        road, ego = self.sim.road, self.sim.vehicle
        others = [vehicle for vehicle in road.vehicles if vehicle is not ego] + list(road.objects)  # snapshot's order
        return np.array([0] + [id(other) for other in others], dtype=np.int64)

    def render_scene(self, scene: Scene) -> np.ndarray:
        """(H, W, 3) uint8: the camera's frame of another scene on this episode's road, e.g. the same
        instant without one vehicle (counterfactual explanations)."""
        return self.camera.render(self._road_map, scene)

    # -- Internals -------------------------------------------------------------------------
    def _observe_frame(self) -> np.ndarray:
        """Render, remember the clean frame, corrupt; returns (3, H, W) uint8."""
        self._scene = snapshot(self.sim.road, self.sim.vehicle)
        self._clean_frame = self.camera.render(self._road_map, self._scene)
        frame = self._clean_frame
        if self.corrupt is not None:
            frame = self.corrupt(frame, self.np_random)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def _observation(self) -> np.ndarray:
        return np.concatenate(self._frames, axis=0)  # (3 * stack, H, W)

    def _info(self, signals: dict, sim_info: dict) -> dict[str, Any]:
        ego = self.sim.vehicle
        lane_width = ego.lane.width_at(0.0) if ego.lane else 4.0  # [m]; constant along straight, circular and sine lanes (all our scenarios use)
        info: dict[str, Any] = {
            "safety": signals,
            "ground_truth": privileged_state(self._scene, lane_width, signals["lane_id"]),
            "episode_seed": self.episode_seed,
        }
        for key in ("rewards", "is_success"):
            if key in sim_info:
                info[key] = sim_info[key]
        if self._goal_reached is not None:
            info["goal_reached"] = self._goal_reached(self.sim)
        return info
