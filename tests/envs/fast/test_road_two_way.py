"""FastRoad (envs/fast/road_sim.py) on two-way-v0 against highway-env and clearlane's DrivingEnv.

1. Fidelity: DrivingEnv("two-way") reset with a seed, its road copied into a FastRoad row
   (float64), both stepped with the same seeded actions until the episode ends (the ego crashes,
   or the scenario's 20 policy steps): every vehicle's position, heading and speed (1e-6), the
   reward and each reward term (1e-6), terminated and truncated exactly, the safety signals, and
   at every state the actions DiscreteMetaAction offers; all seeds as rows of one batch. No crawl
   tolerance: the ego's target speeds are 20-30 m/s, it never slows to a crawl.
2. Spawn: spawn_two_way reproduces TwoWayEnv._make_vehicles exactly given highway-env's draws
   (recovered from its vehicles; the order of its draws checked against its generator, and that
   it draws nothing else); its own draws (envs.fast.rng) have highway-env's distributions over 500
   seeds.
3. Frames: uint8 of the scenario's shape, like the reference camera's.
4. What every road scenario must do on the fast backend (seeds, float32, FastDrivingEnv, FastVecEnv,
   the teacher): test_road_scenarios.py.
"""

from __future__ import annotations

import functools
import math

import gymnasium as gym
import highway_env  # noqa: F401
import numpy as np
import pytest
import torch

from envs.driving_env import DrivingEnv
from envs.fast.road_sim import FastRoad
from envs.fast.road_two_way import TWO_WAY_TRAFFIC, spawn_two_way, two_way_draws
from tests.envs.fast.road_episodes import EXACT, Replay, RoadFidelityCase, check_same_traffic, copy_road

# The ego cannot go below 20 m/s and the IDM traffic ahead brakes, so most episodes end in a crash:
# 21 and 29 are seeds where the calm policy reaches the step limit.
SEEDS = tuple(range(10)) + (21, 29)
CALM_FROM = 6  # seeds from here drive mostly IDLE / SLOWER, in the right lane
CALM_POLICY = (0.03, 0.5, 0.07, 0.0, 0.4)  # LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER
COLUMNS = 6  # the ego, three vehicles ahead, two oncoming
SPAWN_SEEDS = 500

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

TWO_WAY = RoadFidelityCase("two-way", SEEDS, lambda seed: CALM_POLICY if seed >= CALM_FROM else None)


@pytest.fixture(scope="module")
def replay() -> Replay:
    return TWO_WAY.replay()


def test_a_copied_two_way_road_steps_as_highway_env(replay):
    episodes = replay.episodes
    TWO_WAY.check_episode_ends(episodes, steps=20)  # by a crash or max_episode_steps (no duration)
    # the seeds use both lanes and every target speed
    assert {t["left_lane_reward"] for e in episodes for t in e.terms} == {0.0, 1.0}
    assert {t["high_speed_reward"] for e in episodes for t in e.terms} == {0.0, 0.5, 1.0}
    offered = {a for e in episodes for available in e.available for a in available}
    assert {0, 2} <= offered


def test_frames_look_like_the_reference_camera(replay):
    TWO_WAY.check_frames_look_like_the_reference_camera(replay)


def test_the_reward_is_not_zeroed_off_the_road():
    """TwoWayEnv._reward has no on-road factor: an ego pushed 20 m off its lane earns as on it, as
    in highway-env (the same displaced state stepped on both)."""
    env = DrivingEnv("two-way")
    sim = FastRoad(TWO_WAY.scenario(), 1, dtype=torch.float64, render=False)
    env.reset(seed=0)
    env.sim.vehicle.position[1] += 20.0
    sim.load(torch.zeros(1, dtype=torch.long), copy_road(sim, env.sim))
    _, reward, _, _, info = env.step(1)
    result = sim.step(torch.ones(1, dtype=torch.long))
    assert reward > 0 and info["safety"]["off_road"] and bool(result.signals["off_road"][0])
    assert float(result.reward[0]) == pytest.approx(reward, abs=EXACT)
    assert set(result.rewards) == set(info["rewards"])
    for name, value in info["rewards"].items():
        assert float(result.rewards[name][0]) == pytest.approx(float(value), abs=EXACT), name
    env.close()


# Spawn.


@functools.lru_cache(maxsize=None)
def highway_env_two_way():
    return gym.make("two-way-v0", config=TWO_WAY.scenario().highway_env_config(), disable_env_checker=True)


def recovered_draws(u) -> np.ndarray:
    """The (5, 2) draws (position normal, speed normal) that make spawn_two_way place TwoWayEnv's
    five vehicles as it did (they have not moved yet)."""
    draws = []
    for (lane_index, s, s_deviation, speed, speed_deviation), vehicle in zip(TWO_WAY_TRAFFIC, u.road.vehicles[1:]):
        longitudinal, _ = u.road.network.get_lane(lane_index).local_coordinates(vehicle.position)
        draws.append([(longitudinal - s) / s_deviation, (vehicle.speed - speed) / speed_deviation])
    return np.array(draws)


def test_spawn_is_two_way_make_vehicles_given_its_draws():
    sim, env = TWO_WAY.simulator(1, False), highway_env_two_way()
    for seed in range(10):
        env.reset(seed=seed)
        u = env.unwrapped
        assert len(u.road.vehicles) == COLUMNS and not u.road.objects
        assert not any(v.enable_lane_change for v in u.road.vehicles[1:])
        draws = recovered_draws(u)
        # highway-env's own generator, replayed: the draws come in this order, nothing else drawn
        replayed = gym.utils.seeding.np_random(seed)[0]
        for normal_s, normal_speed in draws:
            assert replayed.normal() == pytest.approx(normal_s, abs=1e-9)
            assert replayed.normal() == pytest.approx(normal_speed, abs=1e-9)
        assert replayed.bit_generator.state == u.np_random.bit_generator.state
        copied = copy_road(sim, u)
        spawned = spawn_two_way(torch.tensor(draws)[None], sim.road)
        check_same_traffic(spawned, copied, seed)


def test_spawn_has_highway_envs_distributions():
    sim, env = TWO_WAY.simulator(1, False), highway_env_two_way()
    reference_draws, reference = [], []
    for seed in range(SPAWN_SEEDS):
        env.reset(seed=seed)
        u = env.unwrapped
        reference_draws.append(recovered_draws(u))
        reference.append([[o.position[0], o.position[1], o.speed] for o in u.road.vehicles])
    reference_draws, reference = np.array(reference_draws), np.array(reference)  # (S, 5, 2), (S, N, 3)
    seeds = torch.arange(10**6, 10**6 + SPAWN_SEEDS)
    draws = two_way_draws(seeds).numpy()
    fast = sim.spawn(seeds)
    v = fast.vehicles
    mine = torch.stack([v.x, v.y, v.speed], dim=-1).numpy()
    assert np.allclose(mine[:, 0], reference[:, 0], atol=1e-12)  # the ego: position, speed
    for n, (_, _, s_deviation, _, speed_deviation) in enumerate(TWO_WAY_TRAFFIC):
        for k in (0, 1):  # the normals: mean 0, standard deviation 1
            a, b = draws[:, n, k], reference_draws[:, n, k]
            se = math.sqrt(2 / SPAWN_SEEDS)
            assert abs(a.mean() - b.mean()) < 4.5 * se, (n, k, a.mean(), b.mean())
            assert abs(a.std() - b.std()) < 0.12, (n, k, a.std(), b.std())
        # what the draws make: x (the lanes are along x), y (the lane's), speeds
        for column, spread in ((0, s_deviation), (2, speed_deviation)):
            a, b = mine[:, n + 1, column], reference[:, n + 1, column]
            assert abs(a.mean() - b.mean()) < 4.5 * spread * math.sqrt(2 / SPAWN_SEEDS), (n, column)
            assert abs(a.std() - b.std()) < 0.12 * spread, (n, column)
        assert np.array_equal(mine[:, n + 1, 1], reference[:, n + 1, 1])
    assert (fast.delta == 4).all() and not fast.lane_change.any()
