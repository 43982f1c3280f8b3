"""`FastHighway`: B highway-env highways stepped as tensors, with camera frames, rewards and signals.

One `step(actions)` is one policy step of highway-env's HighwayEnvFast for every env:
`simulation_frequency / policy_frequency` sub-steps of act + move, then highway-env's reward,
termination and truncation, our safety signals and a new camera frame, through the
scenario's sensor corruptions when it has any (envs.fast.corruptions). Finished envs keep
their final state until `reset(rows, seeds)` respawns them; the VecEnv does that (auto-reset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from highway_env.envs.highway_env import HighwayEnvFast

from envs.fast.corruptions import BatchedSensorCorruption
from envs.fast.dynamics import act, apply_ego_action, move
from envs.fast.params import CONTROLLER, LANE_WIDTH_M, VEHICLE
from envs.fast.scenes import scenes_of_columns
from envs.fast.signals import SignalTracker, on_road
from envs.fast.spawn import TrafficConfig, spawn
from envs.fast.state import TrafficState
from envs.scene import Scene
from scenarios import Scenario
from scenarios.schema import BevCameraConfig

if TYPE_CHECKING:
    from envs.fast.camera import BatchedBevCamera

SUPPORTED_ENV_IDS = ("highway-fast-v0",)
LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER = range(5)  # DiscreteMetaAction's indices
META_ACTIONS = ("LANE_LEFT", "IDLE", "LANE_RIGHT", "FASTER", "SLOWER")  # its names, by index


class UnsupportedScenario(ValueError):
    """The fast backend cannot simulate this scenario faithfully (it never falls back silently)."""


def unsupported_reasons(scenario: Scenario) -> list[str]:
    """Why the fast backend cannot reproduce this scenario faithfully; empty when it can."""
    reasons = []
    if scenario.highway_env.id not in SUPPORTED_ENV_IDS:
        reasons.append(f"its highway-env id is {scenario.highway_env.id}")
    if scenario.camera.view != "bev":
        reasons.append(f"its camera is {scenario.camera.view!r} (only 'bev' is batched)")
    config = {**HighwayEnvFast.default_config(), **scenario.highway_env_config()}
    if config.get("offroad_terminal"):
        reasons.append("offroad_terminal is set")
    if config.get("controlled_vehicles", 1) != 1:
        reasons.append("it has several controlled vehicles")
    return reasons


def check_supported(scenario: Scenario) -> None:
    """Raise UnsupportedScenario, naming the scenarios FastHighway simulates, unless this is one
    (envs.fast.simulators.check_supported asks the same of every batched simulator)."""
    from envs.fast import supported_scenarios

    reasons = unsupported_reasons(scenario)
    if reasons:
        name = scenario.source or "this scenario"
        raise UnsupportedScenario(
            f"FastHighway does not simulate {name}: {'; '.join(reasons)}. "
            f"Supported scenarios: {', '.join(supported_scenarios(unsupported_reasons))}"
        )


@dataclass(frozen=True)
class StepResult:
    reward: torch.Tensor  # (B,) highway-env's (normalised) reward
    terminated: torch.Tensor  # (B,) bool: the ego crashed
    truncated: torch.Tensor  # (B,) bool: the episode's time is up
    signals: dict[str, torch.Tensor]  # each (B,), see envs.fast.signals
    rewards: dict[str, torch.Tensor]  # highway-env's reward terms, each (B,)


class FrameStack:
    """The camera side of a batched simulator: a double-buffered stack of the last `stack` frames
    per env, sensor corruptions, and views of it. The simulator provides `frames`, `_stacks`,
    `_clean`, `corruption`, `episode_seeds`, `steps`, `state`, `batch_size`, `stack`, `device` and
    `_render(state, out)`."""

    def observations_of(self, rows: torch.Tensor) -> torch.Tensor:
        """(E, 3 * stack, H, W) uint8: a copy of the observations of the envs `rows` ((E,) int64)."""
        batch, stack, channels, height, width = self.frames.shape
        words = torch.index_select(_words(self.frames.view(batch, -1)), 0, rows.to(self.device))
        return words.view(torch.uint8).view(-1, stack * channels, height, width)

    @property
    def clean_frames(self) -> torch.Tensor:
        """(B, 3, H, W) uint8: every env's newest frame before sensor corruptions (a view, valid
        until the next step or reset); the observed newest frame when there are none."""
        return self.frames[:, -1] if self._clean is None else self._clean

    def observation(self) -> torch.Tensor:
        """(B, 3 * stack, H, W) uint8, oldest frame first, as DrivingEnv stacks them.

        A view of the current frame stack: the next step leaves it as it is, the one after
        overwrites it.
        """
        batch, stack, channels, height, width = self.frames.shape
        return self.frames.reshape(batch, stack * channels, height, width)

    def _init_frames(self, scenario: Scenario, batch_size: int, corruptions: bool) -> None:
        """The frame stacks and the sensor corruptions (after `camera` and `device` are set)."""
        self.stack = scenario.camera.stack
        height, width = scenario.camera.size
        # Two frame stacks (B, stack, 3, H, W), used in turn: each step writes the one not
        # handed out last, so the previous observation stays valid during the step (SB3 copies
        # it into its rollout buffer after stepping), resets included. No per-step allocation:
        # on CPU, page-faulting a fresh ~40 KB per env every step cost as much as rendering.
        # (A single history with a sliding window would save the copy of stack - 1 frames,
        # but resetting an env would then overwrite frames the previous observation shows.)
        self._stacks = tuple(
            torch.zeros((batch_size, self.stack, 3, height, width), dtype=torch.uint8, device=self.device)
            for _ in range(2)
        )
        self.frames = self._stacks[0]  # the current stack, oldest frame first
        # Sensor corruptions, only where the scenario has them (no cost otherwise): new frames are
        # rendered into `_clean` (B, 3, H, W) uint8, kept for `clean_frames`, and their corrupted
        # version goes into the stack.
        self.corruption: BatchedSensorCorruption | None = None
        self._clean: torch.Tensor | None = None
        if self.camera is not None and corruptions and scenario.corruptions.active:
            self.corruption = BatchedSensorCorruption(scenario.corruptions, batch_size, self.device)
            self._clean = torch.zeros((batch_size, 3, height, width), dtype=torch.uint8, device=self.device)

    def _start_stacks(self, rows: torch.Tensor) -> None:
        """Fill the stacks of the envs `rows` ((E,) int64, just reset) with their first frame."""
        frame = self._render(self.state.select(rows))  # (E, 3, H, W)
        if self.corruption is not None:  # the stack holds the corrupted first frame, as DrivingEnv's
            self._clean[rows] = frame
            self.corruption.reset(rows)
            frame = self.corruption(frame, rows, self.episode_seeds[rows], self.steps[rows])
        # A fresh episode's stack holds its first frame `stack` times. Written as 8-byte
        # words: indexed writes go element by element, so that is ~3x faster than bytes.
        stacks = _words(self.frames.view(self.batch_size, self.stack, -1))  # (B, stack, words per frame)
        stacks[rows] = _words(frame.reshape(frame.shape[0], 1, -1))  # broadcast over the stack

    def _push_frame(self) -> None:
        """Make the other stack current: the previous stack's newer frames, then a new frame
        rendered in place (or rendered clean, then corrupted into place)."""
        previous = self.frames
        self.frames = self._stacks[1] if previous is self._stacks[0] else self._stacks[0]
        self.frames[:, :-1].copy_(previous[:, 1:])  # (B, stack - 1, 3, H, W): contiguous per env
        if self.corruption is None:
            self._render(self.state, out=self.frames[:, -1])
        else:
            self._render(self.state, out=self._clean)
            self.corruption(self._clean, None, self.episode_seeds, self.steps, out=self.frames[:, -1])


class FastHighway(FrameStack):
    """B copies of a straight-highway scenario, on the CPU or a GPU."""

    def __init__(
        self,
        scenario: Scenario,
        batch_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        render: bool = True,
        corruptions: bool = True,
    ) -> None:
        """corruptions: apply the scenario's sensor corruptions to the frames (when it has any),
        as DrivingEnv's flag of the same name."""
        check_supported(scenario)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.scenario = scenario
        self.config = {**HighwayEnvFast.default_config(), **scenario.highway_env_config()}
        self.traffic = TrafficConfig.from_highway_env(self.config)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        policy_hz, sim_hz = self.config["policy_frequency"], self.config["simulation_frequency"]
        self.substeps = int(sim_hz // policy_hz)
        self.dt = 1.0 / sim_hz  # [s] per sub-step
        self.max_steps = scenario.episode_steps
        self.target_speeds = torch.tensor(CONTROLLER.target_speeds, dtype=dtype, device=self.device)
        self.camera = None
        if render:
            from envs.fast.camera import BatchedBevCamera

            self.camera = BatchedBevCamera(scenario.camera.bev, self.traffic.lanes_count, self.device)
        self._init_frames(scenario, batch_size, corruptions)
        self.tracker = SignalTracker(batch_size, 1.0 / policy_hz, self.device, dtype)
        self.steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.episode_seeds = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.state = spawn(torch.zeros(batch_size, dtype=torch.long, device=self.device), self.traffic, dtype)
        self.reset_signals: dict[str, torch.Tensor] = {}

    # -- episodes ------------------------------------------------------------------------------
    def reset(self, rows: torch.Tensor | None = None, seeds: torch.Tensor | None = None,
              upcoming: Callable[[], torch.Tensor] | None = None) -> None:
        """Respawn the envs `rows` ((E,) int64; all when None) from episode `seeds` ((E,) int64).
        `upcoming` (FastRoad's source of the next resets' seeds) is never called here: a highway spawn
        is one batched draw, as cheap per env for 3 envs as for 3,000."""
        rows = torch.arange(self.batch_size, device=self.device) if rows is None else rows.to(self.device)
        if seeds is None:
            raise ValueError("reset needs one episode seed per env")
        seeds = seeds.to(self.device, torch.long)
        if seeds.shape != rows.shape:
            raise ValueError(f"{rows.shape[0]} envs to reset but {seeds.shape[0]} seeds")
        self.load(rows, spawn(seeds, self.traffic, self.dtype), seeds)

    def load(self, rows: torch.Tensor, state: TrafficState, seeds: torch.Tensor | None = None) -> None:
        """Start the envs `rows` from a given state (used by reset, and to copy highway-env states)."""
        self.state.assign(rows, state.padded(self.state.vehicles))
        self.steps[rows] = 0
        if seeds is not None:
            self.episode_seeds[rows] = seeds
        self.reset_signals = self.tracker.reset(rows, self.state)
        if self.camera is not None:
            self._start_stacks(rows)

    # -- stepping ------------------------------------------------------------------------------
    def step(self, actions: torch.Tensor) -> StepResult:
        """One policy step of every env for (B,) int64 DiscreteMetaAction actions."""
        actions = actions.to(self.device, torch.long)
        lanes = self.traffic.lanes_count
        apply_ego_action(self.state, actions, lanes, self.target_speeds)
        for _ in range(self.substeps):
            act(self.state, lanes)
            move(self.state, self.dt, lanes)
        self.steps += 1
        reward, terms = self._reward()
        terminated = self.state.crashed[:, 0].clone()
        truncated = self.steps >= self.max_steps
        signals = self.tracker.step(self.state)
        if self.camera is not None:
            self._push_frame()
        return StepResult(reward=reward, terminated=terminated, truncated=truncated, signals=signals, rewards=terms)

    # -- views of one env, for FastDrivingEnv (the same methods as FastRoad's) ----------------------
    def scenes(self, rows: list[int]) -> list[Scene]:
        """Envs `rows` as envs.scene.Scene (the ego first, absent slots left out)."""
        state = self.state
        size = torch.ones_like(state.x)
        return scenes_of_columns(rows, state.present, state.x, state.y, state.heading, state.speed,
                                 size * VEHICLE.length, size * VEHICLE.width)

    def make_camera(self, view: BevCameraConfig, device: torch.device | str) -> BatchedBevCamera:
        """A camera of another view (top-down, counterfactual renders) on this road."""
        from envs.fast.camera import BatchedBevCamera

        return BatchedBevCamera(view, self.traffic.lanes_count, device)

    def render_with(self, camera: BatchedBevCamera, state: TrafficState) -> torch.Tensor:
        """(E, 3, H, W) uint8 frames of a state of E envs through a camera of `make_camera`."""
        return render_traffic(camera, state)

    @property
    def action_indexes(self) -> dict[str, int]:
        """DiscreteMetaAction.actions_indexes (ACTIONS_ALL: every highway scenario changes lanes and speed)."""
        return {name: index for index, name in enumerate(META_ACTIONS)}

    def available_actions(self, row: int) -> list[int]:
        """DiscreteMetaAction.get_available_actions of env `row` on a straight road: no lane change off
        the road's edge lanes, no speed change past the first or last target speed."""
        lane, speed_index = int(self.state.lane[row, 0]), int(self.state.ego_speed_index[row])
        actions = [IDLE]
        if lane > 0:
            actions.append(LANE_LEFT)
        if lane < self.traffic.lanes_count - 1:
            actions.append(LANE_RIGHT)
        if speed_index < len(self.target_speeds) - 1:
            actions.append(FASTER)
        if speed_index > 0:
            actions.append(SLOWER)
        return actions

    def goal_reached(self) -> None:
        """None: highway-fast has no goal (FastRoad's answers per env where its scenario has one)."""
        return None

    @property
    def action_names(self) -> tuple[str, ...]:
        """DiscreteMetaAction's names by index: all five on a highway."""
        return META_ACTIONS

    def steps_to_goal(self) -> None:
        """None: no reward waits at the end of a manoeuvre on a straight highway."""
        return None

    def ego_lane_numbers(self, rows: list[int]) -> list[int]:
        """The ego's lane _id (0 = leftmost) in envs `rows`."""
        return self.state.lane[rows, 0].tolist()

    def ego_lane_width(self, row: int) -> float:
        """[m] the width of env `row`'s ego lane (ground truth's lane offsets)."""
        return LANE_WIDTH_M

    # -- internals -----------------------------------------------------------------------------
    def _render(self, state: TrafficState, out: torch.Tensor | None = None) -> torch.Tensor:
        """(E, 3, H, W) uint8 frames of a state of E envs (into `out` when given)."""
        return render_traffic(self.camera, state, out)

    def _reward(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """HighwayEnv._reward: weighted terms, normalised to [0, 1], times on-road."""
        config, state = self.config, self.state
        low, high = config["reward_speed_range"]
        forward_speed = state.speed[:, 0] * torch.cos(state.heading[:, 0])
        terms = {
            "collision_reward": state.crashed[:, 0].to(self.dtype),
            "right_lane_reward": state.target_lane[:, 0].to(self.dtype) / max(self.traffic.lanes_count - 1, 1),
            "high_speed_reward": ((forward_speed - low) / (high - low)).clamp(0, 1),
            "on_road_reward": on_road(state).to(self.dtype),
        }
        reward = sum(config.get(name, 0) * value for name, value in terms.items())
        if config["normalize_reward"]:
            floor = config["collision_reward"]
            ceiling = config["high_speed_reward"] + config["right_lane_reward"]
            reward = (reward - floor) / (ceiling - floor)
        return reward * terms["on_road_reward"], terms


def _words(data: torch.Tensor) -> torch.Tensor:
    """(..., bytes) uint8 with a contiguous last dimension -> the same memory as (..., bytes / 8)
    int64 when bytes is a multiple of 8 (indexed copies then move 8 bytes per element), else unchanged."""
    return data.view(torch.int64) if data.shape[-1] % 8 == 0 else data


def render_traffic(camera: BatchedBevCamera, state: TrafficState, out: torch.Tensor | None = None) -> torch.Tensor:
    """(E, 3, H, W) uint8 frames of a state of E envs through `camera` (into `out` when given);
    every vehicle has highway-env's size."""
    length = torch.full_like(state.x, VEHICLE.length)  # (E, N) [m]
    width = torch.full_like(state.x, VEHICLE.width)
    return camera.render(state.x, state.y, state.heading, length, width, state.present, out=out)
