"""`FastDrivingEnv`: one fast-backend env behind DrivingEnv's Gymnasium API.

Evaluation, previews and perception data collection play one episode at a time; this wraps a
batched simulator of batch 1 (FastHighway or FastRoad) so they work unchanged on `--backend fast`, with the same observation,
reward and `info` (safety signals, ground truth, reward terms, episode seed).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.fast.camera import BatchedBevCamera
from envs.fast.episodes import EpisodeSeeds
from envs.fast.simulators import BatchedSimulator, make_simulator
from envs.fast.vec_env import signal_rows
from envs.ground_truth import privileged_state
from envs.scene import Scene
from scenarios import Scenario, load_scenario
from scenarios.schema import BevCameraConfig

_ROW = torch.zeros(1, dtype=torch.long)
# The top-down view of previews and replays: highway-env's default screen (600 x 150 px, road left
# to right) at highway-env's default scale, drawn by the batched camera heading-up, then turned.
TOP_DOWN_VIEW = BevCameraConfig(width=150, height=600, pixels_per_meter=5.5, ego_row=0.5)


class FastMetaActions:
    """The parts of highway-env's `DiscreteMetaAction` that rule-based ego policies read
    (envs.policies: perception data collection, previews), for the one env of a FastDrivingEnv."""

    def __init__(self, sim: BatchedSimulator) -> None:
        self.sim = sim
        self.actions_indexes = dict(sim.action_indexes)  # ACTIONS_ALL's, or intersection's ACTIONS_LONGI

    def get_available_actions(self) -> list[int]:
        """As DiscreteMetaAction.get_available_actions: no lane change off the road's edge lanes (or
        to an unreachable lane), no speed change past the first or last target speed."""
        return self.sim.available_actions(0)


class FastDrivingEnv(gym.Env[np.ndarray, int]):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 1}

    def __init__(self, scenario: str | Path | Scenario = "highway", render_mode: str | None = None,
                 device: torch.device | str = "cpu", corruptions: bool = True) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.sim = make_simulator(self.scenario, 1, device=device, corruptions=corruptions)
        self.render_mode = render_mode
        height, width = self.scenario.camera.size
        self.observation_space = gym.spaces.Box(0, 255, (3 * self.sim.stack, height, width), np.uint8)
        self.action_space = gym.spaces.Discrete(len(self.sim.action_indexes))
        self.metadata = {**self.metadata, "render_fps": self.sim.config["policy_frequency"]}
        self.seeds = EpisodeSeeds(1, self.sim.device)
        self.episode_seed: int | None = None
        self.action_type = FastMetaActions(self.sim)  # what rule-based policies read, as on highway-env
        self._top_down_camera: BatchedBevCamera | None = None
        self._scene_camera: BatchedBevCamera | None = None  # render_scene's, built on first use
        # That camera reuses scratch buffers between calls, so two threads rendering at once (watch's
        # SHAP worker and its drawing loop) would read each other's half-written pixel indices.
        self._scene_camera_lock = threading.Lock()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.seeds.restart(_ROW, torch.tensor([seed]))
            episode_seed = torch.tensor([seed])
        else:
            episode_seed = self.seeds.next(_ROW)
        self.episode_seed = int(episode_seed[0])
        self.sim.reset(_ROW, episode_seed)
        return self._observation(), self._info(self.sim.reset_signals, {})

    def step(self, action):
        result = self.sim.step(torch.tensor([int(action)]))
        rewards = {name: float(value[0]) for name, value in result.rewards.items()}
        info = self._info(result.signals, rewards)
        return self._observation(), float(result.reward[0]), bool(result.terminated[0]), bool(result.truncated[0]), info

    def render(self) -> np.ndarray | None:
        """The newest camera frame before sensor corruptions (H, W, 3) uint8, as DrivingEnv.render gives it."""
        if self.render_mode != "rgb_array":
            return None
        return self.clean_frame

    def top_down(self) -> np.ndarray:
        """(150, 600, 3) uint8: a zoomed-out view, road left to right as highway-env draws it, for previews."""
        if self._top_down_camera is None:  # built on first use: its road table takes ~0.1 s
            self._top_down_camera = self.sim.make_camera(TOP_DOWN_VIEW, self.sim.device)
        frame = self.sim.render_with(self._top_down_camera, self.sim.state.select(_ROW.to(self.sim.device)))
        heading_up = frame[0].permute(1, 2, 0).cpu().numpy()  # (600, 150, 3): ahead is up
        return np.ascontiguousarray(np.rot90(heading_up, k=-1))  # (150, 600, 3): ahead is right

    @property
    def clean_frame(self) -> np.ndarray:
        """(H, W, 3) uint8: the newest frame before sensor corruptions."""
        return self.sim.clean_frames[0].permute(1, 2, 0).cpu().numpy().copy()

    def scene(self) -> Scene:
        """The current vehicles as envs.scene.Scene (row 0 the ego), for ground truth and tools."""
        return self.sim.scenes([0])[0]

    def vehicle_ids(self) -> np.ndarray:
        """(N,) int64: one id per row of `scene()`, the vehicle's column in the state (0 = the ego),
        which it keeps through the episode."""
        return np.flatnonzero(self.sim.state.present[0].cpu().numpy()).astype(np.int64)

    def render_scene(self, scene: Scene) -> np.ndarray:
        """(H, W, 3) uint8: the camera's frame of another scene, e.g. the same instant without one
        vehicle. A camera of its own: the simulator's keeps scratch buffers of its batch. Thread-safe."""

        def row(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.float64)[None]  # (1, N)

        present = torch.ones((1, len(scene.speeds)), dtype=torch.bool)
        with self._scene_camera_lock:
            if self._scene_camera is None:
                self._scene_camera = self.sim.make_camera(self.scenario.camera.bev, "cpu")
            frames = self._scene_camera.render(row(scene.positions[:, 0]), row(scene.positions[:, 1]),
                                               row(scene.headings), row(scene.lengths), row(scene.widths), present)
            return frames[0].permute(1, 2, 0).numpy().copy()  # (1, 3, H, W) -> (H, W, 3)

    def _observation(self) -> np.ndarray:
        return self.sim.observation()[0].cpu().numpy().copy()

    def _info(self, signals: dict[str, torch.Tensor], rewards: dict[str, float]) -> dict[str, Any]:
        safety = signal_rows(signals)[0]
        info: dict[str, Any] = {
            "safety": safety,
            "ground_truth": privileged_state(self.scene(), self.sim.ego_lane_width(0), int(safety["lane_id"])),
            "episode_seed": self.episode_seed,
        }
        if rewards:
            info["rewards"] = rewards
        goal = self.sim.goal_reached()
        if goal is not None:  # DrivingEnv's info["goal_reached"] (envs.goals)
            info["goal_reached"] = bool(goal[0])
        return info
