"""What every road-network scenario on FastRoad must do, whatever its RoadTask: one test each,
parametrised over the scenarios (their fidelity to highway-env is in test_road_<scenario>.py).

- an episode depends on its seed only (not on the row, the batch or other rows' resets);
- a float32 spawn is the float64 spawn rounded;
- FastDrivingEnv plays whole episodes with DrivingEnv's action space and reward terms;
- episodes are truncated at the scenario's step limit (its own duration where its env has one), only;
- FastVecEnv resets finished envs from consecutive seeds;
- the teacher plans on FastRoad copies over the scenario's own actions.
"""

from __future__ import annotations

import dataclasses
import functools

import highway_env  # noqa: F401
import numpy as np
import pytest
import torch

from agents.teacher import LookaheadTeacher, best_actions
from envs.driving_env import DrivingEnv
from envs.fast.road_sim import FastRoad
from envs.fast.simulators import make_simulator, simulator_class
from envs.fast.vec_env import FastVecEnv
from envs.registration import make_env
from scenarios import load_scenario

ROAD_SCENARIOS = ["merge", "roundabout", "two-way", "u-turn", "exit", "intersection"]
STEP_LIMITS = {"merge": 40, "roundabout": 11, "two-way": 20, "u-turn": 10, "exit": 18, "intersection": 13}  # policy steps

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
              pytest.mark.parametrize("name", ROAD_SCENARIOS)]


@functools.lru_cache(maxsize=None)
def reference_reward_terms(name: str) -> frozenset[str]:
    """The reward terms DrivingEnv (highway-env) reports on this scenario."""
    env = DrivingEnv(name, corruptions=False)
    try:
        env.reset(seed=0)
        return frozenset(env.step(1)[4]["rewards"])
    finally:
        env.close()


def actions_of(sim: FastRoad) -> list[int]:
    """Six actions that touch every one the scenario has (lane changes and speed changes)."""
    return [i % len(sim.action_names) for i in (3, 0, 1, 2, 4, 1)]


def test_an_episode_depends_on_its_seed_only(name):
    scenario = load_scenario(name)
    big = FastRoad(scenario, 4, dtype=torch.float64, render=False)
    small = FastRoad(scenario, 1, dtype=torch.float64, render=False)
    big.reset(torch.arange(4), torch.tensor([5, 6, 7, 8]))
    big.reset(torch.tensor([2, 0]), torch.tensor([42, 7]))
    small.reset(torch.tensor([0]), torch.tensor([42]))
    for a in actions_of(small):
        r_big = big.step(torch.full((4,), a))
        r_small = small.step(torch.tensor([a]))
        mine, alone = big.state.vehicles, small.state.vehicles
        for field in ("x", "lane", "route_cursor"):
            assert torch.equal(getattr(mine, field)[2], getattr(alone, field)[0]), field
        for field in ("y", "heading", "speed"):  # vectorised arithmetic may round differently per batch size
            assert torch.allclose(getattr(mine, field)[2], getattr(alone, field)[0], atol=1e-12, rtol=0), field
        assert torch.equal(big.state.present[2], small.state.present[0])
        assert torch.equal(r_big.reward[2:3], r_small.reward)
    assert not torch.equal(big.state.vehicles.x[0], big.state.vehicles.x[2])


def test_a_float32_spawn_is_the_float64_spawn_rounded(name):
    scenario, seeds = load_scenario(name), torch.arange(20)
    wide = FastRoad(scenario, 1, dtype=torch.float64, render=False).spawn(seeds)
    narrow = FastRoad(scenario, 1, render=False).spawn(seeds)
    assert torch.equal(wide.present, narrow.present) and torch.equal(wide.vehicles.lane, narrow.vehicles.lane)
    assert torch.equal(wide.vehicles.target_lane, narrow.vehicles.target_lane)
    assert torch.equal(wide.vehicles.route_edge, narrow.vehicles.route_edge)
    assert torch.allclose(wide.vehicles.x.float(), narrow.vehicles.x) and narrow.vehicles.x.dtype == torch.float32


def test_fast_driving_env_plays_whole_episodes(name):
    scenario = load_scenario(name)
    assert simulator_class(scenario) is FastRoad
    assert isinstance(make_simulator(scenario, 2, render=False), FastRoad)
    env = make_env(name, backend="fast")
    reference = DrivingEnv(name, corruptions=False)
    assert isinstance(env.sim, FastRoad)
    assert env.action_space == reference.action_space
    assert env.action_type.actions_indexes == reference.sim.action_type.actions_indexes
    reference.close()
    observation, info = env.reset(seed=0)
    assert observation.shape == env.observation_space.shape == (3 * env.sim.stack, *scenario.camera.size)
    assert set(info) >= {"safety", "ground_truth", "episode_seed"} and info["episode_seed"] == 0
    assert len(env.scene().speeds) == int(env.sim.state.present[0].sum())
    idle = env.action_type.actions_indexes["IDLE"]
    for steps in range(1, scenario.episode_steps + 1):
        _, reward, terminated, truncated, info = env.step(idle)
        assert set(info["rewards"]) == reference_reward_terms(name)
        assert np.isfinite(reward) and isinstance(info.get("goal_reached", False), bool)
        if terminated or truncated:
            break
    assert terminated or (truncated and steps == env.sim.max_steps)


def test_episodes_are_truncated_at_the_step_limit_only(name):
    scenario = load_scenario(name)
    assert FastRoad(scenario, 1, render=False).max_steps == STEP_LIMITS[name]
    sim = FastRoad(dataclasses.replace(scenario, max_episode_steps=3), 2, dtype=torch.float64, render=False)
    sim.reset(torch.arange(2), torch.tensor([3, 4]))
    sim.state.vehicles.x[:, 1:] += 2000.0  # no one to crash into
    idle = torch.full((2,), sim.action_indexes["IDLE"])
    for step in range(1, 5):
        result = sim.step(idle)
        assert result.truncated.tolist() == [step >= 3] * 2
        assert not result.terminated.any()


def test_fast_vec_env_resets_finished_envs(name):
    scenario = load_scenario(name)
    env = FastVecEnv(scenario, 4)
    env.seed(100)
    first = env.reset()
    shape = (3 * env.sim.stack, *scenario.camera.size)
    assert first.shape == (4, *shape) and [info["episode_seed"] for info in env.reset_infos] == [100, 101, 102, 103]
    faster = env.sim.action_indexes["FASTER"]
    ended = []
    for _ in range(2 * scenario.episode_steps):
        observations, rewards, dones, infos = env.step(np.full(4, faster, dtype=np.int64))
        for i in np.flatnonzero(dones):
            assert infos[i]["terminal_observation"].shape == shape
            ended.append(infos[i]["TimeLimit.truncated"])
    assert observations.shape == (4, *shape) and rewards.dtype == np.float32
    assert len(ended) >= 4


def test_the_teacher_plans_on_fast_copies_over_the_scenarios_actions(name):
    env = FastVecEnv(load_scenario(name), 2, render=False)
    env.reset()
    teacher = LookaheadTeacher(env.sim, depth=1)
    values = teacher.action_values()
    assert values.shape == (2, env.action_space.n) and torch.isfinite(values).all()
    assert torch.equal(teacher.act(), best_actions(values, env.sim.action_names))
