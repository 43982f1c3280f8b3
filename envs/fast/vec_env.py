"""`FastVecEnv`: the batched simulator as a stable-baselines3 VecEnv.

All B envs step in one call. SB3's contract is kept: a finished env is reset at once, its last
observation moves to `info["terminal_observation"]`, `info["TimeLimit.truncated"]` marks time-outs,
and every info carries the step's `safety` signals (what SafetyCallback aggregates) and the
episode seed. `seed(s)` gives env i the seed s + i for its next episode.

`step_tensors` is the step itself, auto-reset included, on the simulator's device; `step_wait`
turns its result into SB3's NumPy arrays and infos. A trainer that keeps its rollouts on the device
(agents/device_rollout.py) calls `step_async_on_device`: the next `step_wait` then returns the
observations as a device tensor (and terminal observations as device tensors in the infos), while
rewards, dones and infos are the same host values as always, so VecMonitor and callbacks work as
they are; the device tensors of that step are in `last_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from envs.fast.episodes import EpisodeSeeds
from envs.fast.simulators import make_simulator
from envs.fast.spawn_reserve import episodes_ahead
from scenarios import Scenario


def host_columns(columns: dict[str, torch.Tensor], packed: bool | None = None) -> dict[str, list]:
    """{name: (B,) tensor} -> {name: B Python scalars of the tensor's kind (bool, int or float)}.

    packed (default: when the tensors are not on the CPU): copy all columns to the host in ONE
    transfer, as float64 (exact for float32, bool and integers below 2**53: seeds, lanes, counts),
    instead of one synchronising copy per column (~15 per step on CUDA)."""
    if not columns:
        return {}
    first = next(iter(columns.values()))
    if packed is None:
        packed = first.device.type != "cpu"
    if not packed:
        return {name: value.cpu().tolist() for name, value in columns.items()}
    host = torch.stack([value.to(torch.float64) for value in columns.values()]).cpu()  # (columns, B), one copy
    lists = {}
    for (name, value), row in zip(columns.items(), host):
        if value.dtype == torch.bool:
            lists[name] = row.bool().tolist()
        elif value.dtype.is_floating_point:
            lists[name] = row.to(value.dtype).tolist()  # float32 -> float64 -> float32: exact
        else:
            lists[name] = row.to(torch.int64).tolist()
    return lists


def signal_rows(signals: dict[str, torch.Tensor]) -> list[dict[str, float | bool | int]]:
    """{name: (B,) tensor} -> B dicts of Python scalars, converting each tensor once."""
    return rows_of(host_columns(signals))


def rows_of(columns: dict[str, list]) -> list[dict[str, Any]]:
    """{name: B values} -> B dicts {name: value}."""
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*columns.values())]


@dataclass(frozen=True)
class FastStep:
    """One step of every env, after the auto-reset, as tensors on the simulator's device."""

    rewards: torch.Tensor  # (B,) float32 highway-env's normalised reward of the step
    dones: torch.Tensor  # (B,) bool: the episode ended (crash or time-out) and the env was reset
    time_limit: torch.Tensor  # (B,) bool: ended by the time limit alone (SB3's TimeLimit.truncated)
    signals: dict[str, torch.Tensor]  # each (B,): the step's safety signals (envs.fast.signals)
    episode_seeds: torch.Tensor  # (B,) int64: the seed of the episode each env just stepped
    finished: torch.Tensor  # (E,) int64: the envs that ended, ascending
    terminal: Any  # their last observations, (E, ...): what `terminal_observations` made of them
    goal: torch.Tensor | None = None  # (B,) bool: the ego at its scenario's goal (envs.goals); None without one


class FastVecEnv(VecEnv):
    def __init__(self, scenario: Scenario, num_envs: int, device: torch.device | str = "cpu",
                 render: bool = True) -> None:
        """render: draw camera frames (False for a subclass whose `observe` does not read them)."""
        self.sim = make_simulator(scenario, num_envs, device=device, render=render)  # FastHighway or FastRoad
        self.scenario = scenario
        height, width = scenario.camera.size
        observation_space = gym.spaces.Box(0, 255, (3 * self.sim.stack, height, width), np.uint8)
        self.render_mode = None
        super().__init__(num_envs, observation_space, gym.spaces.Discrete(len(self.sim.action_indexes)))
        self.seeds = EpisodeSeeds(num_envs, self.sim.device)
        self._actions = torch.zeros(num_envs, dtype=torch.long)
        self._on_device = False  # the next step_wait returns device observations (step_async_on_device)
        self.last_step: FastStep | None = None  # the tensors of the latest step

    # -- VecEnv API ------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        rows = torch.arange(self.num_envs, device=self.sim.device)
        episode_seeds = self.seeds.next(rows)
        given = [i for i, seed in enumerate(self._seeds) if seed is not None]
        if given:  # an explicit seed names the episode and restarts the slot's stream, as DrivingEnv does
            seeded = torch.tensor(given, device=self.sim.device)
            values = torch.tensor([int(self._seeds[i]) for i in given], device=self.sim.device)
            self.seeds.restart(seeded, values)
            episode_seeds[seeded] = values
        self.sim.reset(rows, episode_seeds)
        self.reset_infos = [{"episode_seed": seed} for seed in episode_seeds.tolist()]
        self._reset_seeds()
        self._reset_options()
        return self.observe().copy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = torch.as_tensor(np.asarray(actions).reshape(self.num_envs), dtype=torch.long)
        self._on_device = False

    def step_async_on_device(self, actions: torch.Tensor) -> None:
        """Like step_async, for (B,) integer actions on any device; the next `step_wait` returns the
        observations (and the infos' terminal observations) as tensors on the simulator's device."""
        self._actions = actions.reshape(self.num_envs).to(self.sim.device, torch.long)
        self._on_device = True

    def step_wait(self):
        on_device, self._on_device = self._on_device, False
        terminal = self.observe_rows_tensor if on_device else self.observe_rows  # (E,) rows -> (E, ...)
        step = self.last_step = self.step_tensors(self._actions, terminal)
        rewards, dones, infos = self.host_results(step)
        # No copy: the next step leaves these frames as they are (FrameStack.observation),
        # and SB3 copies them into its buffers by then.
        return (self.observe_tensor() if on_device else self.observe()), rewards, dones, infos

    def step_tensors(self, actions: torch.Tensor,
                     terminal_observations: Callable[[torch.Tensor], Any] | None = None) -> FastStep:
        """Step every env with (B,) int64 `actions`, reset the finished ones (the one auto-reset of
        this backend), and return the step as device tensors.

        terminal_observations: (E,) rows -> their last observations, read before the reset
        (default: `observe_rows_tensor`). One host synchronisation: the finished rows."""
        result = self.sim.step(actions)
        goal = self.sim.goal_reached()  # (B,) bool, None without a goal (envs.goals); before the resets
        done = result.terminated | result.truncated  # (B,) bool
        episode_seeds = self.sim.episode_seeds.clone()  # (B,) the episodes just stepped, before resets renumber them
        finished = done.nonzero(as_tuple=True)[0]  # (E,) synchronises: the resets need the rows
        terminal = None
        if finished.numel():
            terminal = (terminal_observations or self.observe_rows_tensor)(finished)  # a copy, kept by SB3
            self.sim.reset(finished, self.seeds.next(finished),
                           upcoming=lambda: self.seeds.upcoming(episodes_ahead(self.num_envs)))
        return FastStep(
            rewards=result.reward.to(torch.float32), dones=done, time_limit=result.truncated & ~result.terminated,
            signals=result.signals, episode_seeds=episode_seeds, finished=finished, terminal=terminal, goal=goal,
        )

    def host_results(self, step: FastStep) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """SB3's (rewards (B,) float32, dones (B,) bool, infos) of a step, from one host copy of
        its columns; `info["terminal_observation"]` is a row of `step.terminal`."""
        columns = host_columns({
            "reward": step.rewards, "done": step.dones, "time_limit": step.time_limit,
            "episode_seed": step.episode_seeds, **{f"safety.{name}": value for name, value in step.signals.items()},
            **({} if step.goal is None else {"goal_reached": step.goal}),
        })
        reward, done, time_limit, seeds = (columns.pop(key) for key in ("reward", "done", "time_limit", "episode_seed"))
        goals = columns.pop("goal_reached", None)
        signals = rows_of({name.removeprefix("safety."): values for name, values in columns.items()})
        infos: list[dict[str, Any]] = [{"safety": row, "episode_seed": seed} for row, seed in zip(signals, seeds)]
        if goals is not None:  # as DrivingEnv's info["goal_reached"]
            for info, goal in zip(infos, goals):
                info["goal_reached"] = bool(goal)
        for k, i in enumerate(step.finished.tolist()):  # finished rows, ascending, as `terminal`'s rows
            infos[i]["terminal_observation"] = step.terminal[k]
            infos[i]["TimeLimit.truncated"] = time_limit[i]
        return np.asarray(reward, dtype=np.float32), np.asarray(done, dtype=bool), infos

    # -- what the agent sees; a subclass may observe something else of the same states -----------
    def observe(self) -> np.ndarray:
        """(B, 3 * stack, H, W) uint8 camera observations of every env: a view, valid through the next step."""
        return self.observe_tensor().cpu().numpy()

    def observe_rows(self, rows: torch.Tensor) -> np.ndarray:
        """A copy of the observations of the envs `rows` ((E,) int64): terminal observations, kept by SB3."""
        return self.observe_rows_tensor(rows).cpu().numpy()

    def observe_tensor(self) -> torch.Tensor:
        """`observe` on the simulator's device: (B, 3 * stack, H, W) uint8, a view, valid through the next step.
        A subclass that observes something else overrides this too, or `on_device_observations` is False."""
        return self.sim.observation()

    def observe_rows_tensor(self, rows: torch.Tensor) -> torch.Tensor:
        """`observe_rows` on the simulator's device: (E, 3 * stack, H, W) uint8, a copy."""
        return self.sim.observations_of(rows)

    @property
    def on_device_observations(self) -> bool:
        """Whether `observe_tensor` shows what `observe` shows (a subclass may override only the NumPy pair)."""
        cls = type(self)
        numpy_pair = (cls.observe, cls.observe_rows) == (FastVecEnv.observe, FastVecEnv.observe_rows)
        tensor_pair = (cls.observe_tensor, cls.observe_rows_tensor) != (FastVecEnv.observe_tensor, FastVecEnv.observe_rows_tensor)
        return numpy_pair or tensor_pair

    def close(self) -> None:
        return None

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        raise AttributeError(f"FastVecEnv has no per-env method {method_name!r}: its envs are rows of one tensor")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each env's newest camera frame before sensor corruptions, (H, W, 3) uint8, as DrivingEnv.render."""
        newest = self.sim.clean_frames.permute(0, 2, 3, 1).cpu().numpy()
        return list(newest)
