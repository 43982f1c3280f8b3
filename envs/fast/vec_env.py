"""`FastVecEnv`: the batched simulator as a stable-baselines3 VecEnv.

All B envs step in one call. SB3's contract is kept: a finished env is reset at once, its last
observation moves to `info["terminal_observation"]`, `info["TimeLimit.truncated"]` marks time-outs,
and every info carries the step's `safety` signals (what SafetyCallback aggregates) and the
episode seed. `seed(s)` gives env i the seed s + i for its next episode.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from envs.fast.episodes import EpisodeSeeds
from envs.fast.simulator import FastHighway
from scenarios import Scenario

ACTIONS = 5  # DiscreteMetaAction: LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER


def signal_rows(signals: dict[str, torch.Tensor]) -> list[dict[str, float | bool | int]]:
    """{name: (B,) tensor} -> B dicts of Python scalars, converting each tensor once."""
    columns = {name: value.cpu().tolist() for name, value in signals.items()}
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*columns.values())]


class FastVecEnv(VecEnv):
    def __init__(self, scenario: Scenario, num_envs: int, device: torch.device | str = "cpu",
                 render: bool = True) -> None:
        """render: draw camera frames (False for a subclass whose `observe` does not read them)."""
        self.sim = FastHighway(scenario, num_envs, device=device, render=render)
        self.scenario = scenario
        height, width = scenario.camera.size
        observation_space = gym.spaces.Box(0, 255, (3 * self.sim.stack, height, width), np.uint8)
        self.render_mode = None
        super().__init__(num_envs, observation_space, gym.spaces.Discrete(ACTIONS))
        self.seeds = EpisodeSeeds(num_envs, self.sim.device)
        self._actions = torch.zeros(num_envs, dtype=torch.long)

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

    def step_wait(self):
        result = self.sim.step(self._actions)
        done = result.terminated | result.truncated
        infos: list[dict[str, Any]] = [{"safety": signals} for signals in signal_rows(result.signals)]
        episode_seeds = self.sim.episode_seeds.tolist()
        time_limit = (result.truncated & ~result.terminated).tolist()
        for i, info in enumerate(infos):
            info["episode_seed"] = episode_seeds[i]
        finished = done.nonzero(as_tuple=True)[0]
        if finished.numel():
            terminal = self.observe_rows(finished)  # a copy, kept by SB3
            for k, i in enumerate(finished.tolist()):
                infos[i]["terminal_observation"] = terminal[k]
                infos[i]["TimeLimit.truncated"] = time_limit[i]
            self.sim.reset(finished, self.seeds.next(finished))
        return (
            # No copy: the next step leaves these frames as they are (FastHighway.observation),
            # and SB3 copies them into its buffers by then.
            self.observe(),
            result.reward.cpu().numpy().astype(np.float32),
            done.cpu().numpy(),
            infos,
        )

    # -- what the agent sees; a subclass may observe something else of the same states -----------
    def observe(self) -> np.ndarray:
        """(B, 3 * stack, H, W) uint8 camera observations of every env: a view, valid through the next step."""
        return self.sim.observation().cpu().numpy()

    def observe_rows(self, rows: torch.Tensor) -> np.ndarray:
        """A copy of the observations of the envs `rows` ((E,) int64): terminal observations, kept by SB3."""
        return self.sim.observations_of(rows).cpu().numpy()

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
