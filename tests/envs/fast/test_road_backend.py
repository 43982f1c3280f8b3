"""merge on the fast backend: FastRoad behind FastVecEnv, FastDrivingEnv and the teacher (issue 21).

1. What FastDrivingEnv reads of a FastRoad (scenes, ground truth, the actions rule-based policies may
   take) equals DrivingEnv's / highway-env's own at the same states, along whole episodes.
2. FastVecEnv keeps SB3's contract on merge: auto-reset, terminal observations, episodes that end at
   the end of the road (no crash, not a time-out) as well as by crashes.
3. The teacher plans on FastRoad copies, and an episode that ends without a crash keeps its tail value.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from agents.teacher import LookaheadTeacher, best_actions
from envs.backends import FAST, privileged_simulator
from envs.driving_env import DrivingEnv
from envs.fast.road_merge import MERGE_END_X_M
from envs.fast.road_sim import FastRoad
from envs.fast.road_traffic import RoadTraffic
from envs.fast.simulators import make_simulator, simulator_class
from envs.fast.vec_env import FastVecEnv
from envs.ground_truth import privileged_state
from scenarios import load_scenario

COLUMNS = 6  # ego, three IDM vehicles, the merging vehicle, the obstacle
SEEDS = (0, 1, 2, 3)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@functools.lru_cache(maxsize=None)
def merge():
    return load_scenario("merge")


def test_the_fast_backend_simulates_merge_on_fast_road():
    assert simulator_class(merge()) is FastRoad
    assert isinstance(make_simulator(merge(), 2, render=False), FastRoad)
    env = FAST.make_env("merge")
    assert isinstance(env.sim, FastRoad) and privileged_simulator(env) is env.sim


VIEW_EPISODES = [("merge", seed) for seed in SEEDS] + [
    (name, seed) for name in ("roundabout", "two-way", "u-turn") for seed in (0, 1)]


@pytest.mark.parametrize("name, seed", VIEW_EPISODES)
def test_views_of_a_fast_road_equal_highway_envs_along_an_episode(name, seed):
    """At every state of a highway-env episode (copied into FastRoad in float64): the scene, the
    ground truth and the available actions are DrivingEnv's."""
    env = DrivingEnv(name)
    sim = FastRoad(env.scenario, 1, dtype=torch.float64, render=False)
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    row = torch.zeros(1, dtype=torch.long)
    checked_lane_changes = 0
    for _ in range(env.scenario.episode_steps):
        u = env.sim
        sim.load(row, RoadTraffic.from_highway_env(sim.graph, [u.road], [u.vehicle], sim.columns, sim.route_slots))
        ours, theirs = sim.scenes([0])[0], env.scene()
        for column in ("positions", "headings", "speeds", "lengths", "widths"):
            np.testing.assert_allclose(getattr(ours, column), getattr(theirs, column), atol=1e-9, err_msg=column)
        truth = privileged_state(ours, sim.ego_lane_width(0), sim.ego_lane_numbers([0])[0])
        for label, value in info["ground_truth"].items():
            np.testing.assert_allclose(truth[label], value, atol=1e-5, err_msg=label)
        available = u.action_type.get_available_actions()
        assert sim.available_actions(0) == available
        checked_lane_changes += len({0, 2} & set(available))
        action = int(rng.integers(5))
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    env.close()
    if name == "merge":
        assert checked_lane_changes > 0  # some of merge's states offered a lane change


def test_fast_driving_env_on_merge_plays_episodes_with_drivingenvs_info():
    env = FAST.make_env("merge")
    observation, info = env.reset(seed=0)
    assert observation.shape == env.observation_space.shape == (9, 96, 48)
    assert set(info) >= {"safety", "ground_truth", "episode_seed"} and info["episode_seed"] == 0
    assert len(env.vehicle_ids()) == len(env.scene().speeds) == COLUMNS
    assert env.scene().lengths[-1] == 2.0  # the obstacle keeps its own size
    np.testing.assert_array_equal(env.render_scene(env.scene()), env.clean_frame)  # same state, same frame
    assert env.top_down().shape == (150, 600, 3)
    for step in range(merge().episode_steps):
        _, reward, terminated, truncated, info = env.step(1)
        assert set(info["rewards"]) >= {"collision_reward", "merging_speed_reward"}
        if terminated or truncated:
            break
    assert terminated and not info["safety"]["crashed"]  # IDLE reaches the end of the road on seed 0 (crashes on 1, 2, 3)
    assert env.scene().positions[0, 0] > MERGE_END_X_M


def test_fast_vec_env_on_merge_resets_finished_envs_as_sb3_expects():
    env = FastVecEnv(merge(), 4)
    env.seed(100)
    first = env.reset()
    assert first.shape == (4, 9, 96, 48) and [info["episode_seed"] for info in env.reset_infos] == [100, 101, 102, 103]
    ended = []
    for _ in range(merge().episode_steps):
        observations, rewards, dones, infos = env.step(np.ones(4, dtype=np.int64))  # IDLE
        for i in np.flatnonzero(dones):
            assert infos[i]["terminal_observation"].shape == (9, 96, 48)
            ended.append((infos[i]["safety"]["crashed"], infos[i]["TimeLimit.truncated"]))
        if len(ended) >= 4:
            break
    assert observations.shape == (4, 9, 96, 48) and rewards.dtype == np.float32
    assert len(ended) >= 4 and (False, False) in ended  # episodes end at the end of the road, not by time


def test_the_teacher_plans_on_fast_road_and_values_arriving_like_surviving():
    env = FastVecEnv(merge(), 2, render=False)
    env.reset()
    sim = env.sim
    state = sim.state.clone()
    state.vehicles.x[1, 0] = MERGE_END_X_M - 5.0  # env 1's ego crosses the end within the first step
    sim.load(torch.arange(2), state)
    teacher = LookaheadTeacher(sim)
    values = teacher.action_values()
    assert values.shape == (2, 5) and torch.isfinite(values).all()
    # env 1's plans all end after one step; without a crash they keep the tail value
    assert (values[1] > teacher.tail_value).all() and (values[1] < teacher.tail_value + 1.0 + 1e-3).all()
    assert teacher._planners["first"].__class__ is FastRoad
    assert torch.equal(teacher.act(), best_actions(values))
