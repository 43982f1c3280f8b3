"""FastRoad (envs/fast/road_sim.py) on u-turn-v1 against highway-env and clearlane's DrivingEnv.

1. Fidelity: DrivingEnv("u-turn") reset with a seed, its road (routes included) copied into a
   FastRoad row (float64), both stepped with the same seeded actions until the episode ends (the
   ego crashes, or the 10 s duration): every vehicle's position, heading and speed (1e-6), the
   reward and each reward term (1e-6), terminated and truncated exactly, the safety signals, and
   at every state the actions DiscreteMetaAction offers, and envs.goals' goal (info["goal_reached"],
   FastRoad.goal_reached); all seeds as rows of one batch. Some IDM
   vehicles spawn crawling (4.5 + 2 N m/s on the U-turn) or brake to a crawl behind them; there
   highway-env's lateral loop amplifies round-off about 100x per policy step, so a row is
   re-synchronised with highway-env after each step where one of its vehicles crawls (CRAWL_MPS).
2. Spawn: spawn_u_turn reproduces UTurnEnv._make_vehicles exactly given highway-env's draws
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
from envs.fast.road_scenario import IDM_DELTA_RANGE
from envs.fast.road_sim import FastRoad
from envs.fast.road_u_turn import (
    U_TURN_POSITION_DEVIATION_M,
    U_TURN_SPEED_DEVIATION_MPS,
    U_TURN_TRAFFIC,
    spawn_u_turn,
    u_turn_draws,
)
from tests.envs.fast.road_episodes import (
    EXACT,
    Crawl,
    Replay,
    RoadFidelityCase,
    check_same_traffic,
    copy_road,
)

SEEDS = tuple(range(12))
CALM_FROM = 6  # seeds from here drive mostly IDLE / SLOWER (so that some episodes run to the duration)
CALM_POLICY = (0.05, 0.5, 0.05, 0.0, 0.4)  # LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER
COLUMNS = 7  # the ego, six IDM vehicles
# Below about 0.5 m/s highway-env's lateral loop (heading command arcsin(lateral speed / speed))
# amplifies round-off about 100x per policy step (a 2e-12 m difference after the first step of a
# vehicle spawned at 0.45 m/s is 2e-5 m four steps later, 3e-3 m six steps later). As in
# test_road_roundabout.py, after each policy step where any vehicle of a row moves slower than
# CRAWL_MPS (before or after the step) the row's vehicles are re-synchronised with highway-env;
# unlike there, no looser tolerance is needed: within one step the difference stays ~1e-12, so
# states, rewards and signals are all compared to EXACT.
CRAWL_MPS = 0.5
SPAWN_SEEDS = 500

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

U_TURN = RoadFidelityCase("u-turn", SEEDS, lambda seed: CALM_POLICY if seed >= CALM_FROM else None,
                          Crawl(CRAWL_MPS, any_vehicle=True))


@pytest.fixture(scope="module")
def replay() -> Replay:
    replay = U_TURN.replay()
    assert any(replay.crawled) and not all(replay.crawled), replay.crawled  # (SEEDS cover both)
    return replay


def test_a_copied_u_turn_road_steps_as_highway_env(replay):
    episodes = replay.episodes
    U_TURN.check_episode_ends(episodes, steps=10)  # by a crash or the 10 s duration at 1 Hz
    # the seeds use both lanes and several speeds
    assert {t["left_lane_reward"] for e in episodes for t in e.terms} == {0.0, 1.0}
    assert len({t["high_speed_reward"] for e in episodes for t in e.terms}) > 10
    offered = {a for e in episodes for available in e.available for a in available}
    assert {0, 2} <= offered


def test_frames_look_like_the_reference_camera(replay):
    U_TURN.check_frames_look_like_the_reference_camera(replay)


def test_the_reward_is_zero_off_the_road():
    """_reward multiplies by on_road_reward: an ego pushed 20 m off its lane earns nothing, as in
    highway-env (the same displaced state stepped on both)."""
    env = DrivingEnv("u-turn")
    sim = FastRoad(U_TURN.scenario(), 1, dtype=torch.float64, render=False)
    env.reset(seed=0)
    env.sim.vehicle.position[1] += 20.0
    sim.load(torch.zeros(1, dtype=torch.long), copy_road(sim, env.sim))
    _, reward, _, _, info = env.step(1)
    result = sim.step(torch.ones(1, dtype=torch.long))
    assert info["rewards"]["on_road_reward"] == 0 and reward == 0.0 and info["safety"]["off_road"]
    assert float(result.rewards["on_road_reward"][0]) == 0.0 and float(result.reward[0]) == 0.0
    assert bool(result.signals["off_road"][0])
    assert set(result.rewards) == set(info["rewards"])
    for name, value in info["rewards"].items():
        assert float(result.rewards[name][0]) == pytest.approx(float(value), abs=EXACT), name
    env.close()


def test_the_goal_is_the_straight_after_the_turn():
    """envs.goals' u-turn goal (the ego on ("c", "d")) as DrivingEnv reports it. Within the 10 s the
    recorded episodes never get there (191 m from the start to the straight, at 8-24 m/s behind
    blocking traffic), so the ego is placed on the straight and on the turn and stepped on both."""
    env = DrivingEnv("u-turn")
    sim = FastRoad(U_TURN.scenario(), 1, dtype=torch.float64, render=False)
    for lane_index, s, reached in ((("c", "d", 1), 60.0, True), (("b", "c", 0), 20.0, False)):
        env.reset(seed=1)
        u = env.sim
        for other in u.road.vehicles[1:]:
            other.position[0] += 1000.0  # out of the way
        lane = u.road.network.get_lane(lane_index)
        u.vehicle.position, u.vehicle.heading = lane.position(s, 0.0), lane.heading_at(s)
        sim.load(torch.zeros(1, dtype=torch.long), copy_road(sim, u))
        _, _, _, _, info = env.step(1)
        sim.step(torch.ones(1, dtype=torch.long))
        assert info["goal_reached"] is reached
        assert sim.goal_reached().tolist() == [reached]
    env.close()


# Spawn.


@functools.lru_cache(maxsize=None)
def highway_env_u_turn():
    return gym.make("u-turn-v1", config=U_TURN.scenario().highway_env_config(), disable_env_checker=True)


def recovered_draws(u) -> np.ndarray:
    """The (6, 3) draws (position normal, speed normal, DELTA uniform: the first vehicle's, 0.5 for
    the others) that make spawn_u_turn place UTurnEnv's six vehicles as it did (they have not moved
    yet)."""
    draws = []
    for n, ((lane_index, s, speed), vehicle) in enumerate(zip(U_TURN_TRAFFIC, u.road.vehicles[1:])):
        longitudinal, _ = u.road.network.get_lane(lane_index).local_coordinates(vehicle.position)
        delta = (vehicle.DELTA - IDM_DELTA_RANGE[0]) / (IDM_DELTA_RANGE[1] - IDM_DELTA_RANGE[0]) if n == 0 else 0.5
        draws.append([(longitudinal - s) / U_TURN_POSITION_DEVIATION_M,
                      (vehicle.speed - speed) / U_TURN_SPEED_DEVIATION_MPS, delta])
    return np.array(draws)


def test_spawn_is_u_turn_make_vehicles_given_its_draws():
    sim, env = U_TURN.simulator(1, False), highway_env_u_turn()
    for seed in range(10):
        env.reset(seed=seed)
        u = env.unwrapped
        assert len(u.road.vehicles) == COLUMNS and not u.road.objects
        assert all(v.enable_lane_change for v in u.road.vehicles[1:])
        assert [v.DELTA for v in u.road.vehicles[2:]] == [4.0] * 5
        draws = recovered_draws(u)
        # highway-env's own generator, replayed: the draws come in this order, nothing else drawn
        replayed = gym.utils.seeding.np_random(seed)[0]
        for n, (normal_s, normal_speed, delta_u) in enumerate(draws):
            assert replayed.normal() == pytest.approx(normal_s, abs=1e-9)
            assert replayed.normal() == pytest.approx(normal_speed, abs=1e-9)
            if n == 0:  # randomize_behavior
                assert replayed.uniform(*IDM_DELTA_RANGE) - IDM_DELTA_RANGE[0] == pytest.approx(delta_u, abs=1e-12)
        assert replayed.bit_generator.state == u.np_random.bit_generator.state
        copied = copy_road(sim, u)
        spawned = spawn_u_turn(torch.tensor(draws)[None], sim.road)
        check_same_traffic(spawned, copied, seed)


def test_spawn_has_highway_envs_distributions():
    sim, env = U_TURN.simulator(1, False), highway_env_u_turn()
    reference_draws, reference = [], []
    for seed in range(SPAWN_SEEDS):
        env.reset(seed=seed)
        u = env.unwrapped
        reference_draws.append(recovered_draws(u))
        reference.append([[o.position[0], o.position[1], o.speed, len(o.route)] for o in u.road.vehicles])
    reference_draws, reference = np.array(reference_draws), np.array(reference)  # (S, 6, 3), (S, N, 4)
    seeds = torch.arange(10**6, 10**6 + SPAWN_SEEDS)
    draws = u_turn_draws(seeds).numpy()
    fast = sim.spawn(seeds)
    v = fast.vehicles
    routes = (v.route_edge >= 0).sum(-1).double()
    mine = torch.stack([v.x, v.y, v.speed, routes], dim=-1).numpy()
    assert np.allclose(mine[:, 0], reference[:, 0], atol=1e-12)  # the ego: position, speed, route
    se = math.sqrt(2 / SPAWN_SEEDS)
    for n in range(len(U_TURN_TRAFFIC)):
        for k in (0, 1):  # the normals: mean 0, standard deviation 1
            a, b = draws[:, n, k], reference_draws[:, n, k]
            assert abs(a.mean() - b.mean()) < 4.5 * se, (n, k, a.mean(), b.mean())
            assert abs(a.std() - b.std()) < 0.12, (n, k, a.std(), b.std())
        # what the draws make: speeds, positions and route lengths
        a, b = mine[:, n + 1, 2], reference[:, n + 1, 2]
        assert abs(a.mean() - b.mean()) < 4.5 * U_TURN_SPEED_DEVIATION_MPS * se, n
        assert abs(mine[:, n + 1, 3].mean() - reference[:, n + 1, 3].mean()) < 0.5, n
        spread = np.hypot(mine[:, n + 1, 0] - mine[:, n + 1, 0].mean(), mine[:, n + 1, 1] - mine[:, n + 1, 1].mean())
        spread_ref = np.hypot(reference[:, n + 1, 0] - reference[:, n + 1, 0].mean(),
                              reference[:, n + 1, 1] - reference[:, n + 1, 1].mean())
        assert abs(spread.mean() - spread_ref.mean()) < 0.3, (n, spread.mean(), spread_ref.mean())
    a, b = draws[:, 0, 2], reference_draws[:, 0, 2]  # the first vehicle's DELTA uniform
    assert abs(a.mean() - b.mean()) < 4.5 * math.sqrt(2 / 12 / SPAWN_SEEDS) and a.min() >= 0 and a.max() < 1
    delta = fast.delta.numpy()
    assert (delta[:, 1] >= IDM_DELTA_RANGE[0]).all() and (delta[:, 1] < IDM_DELTA_RANGE[1]).all()
    assert (np.delete(delta, 1, axis=1) == 4).all() and fast.lane_change[:, 1:].all()
