"""FastRoad (envs/fast/road_sim.py) on roundabout-v1 against highway-env and clearlane's DrivingEnv.

1. Fidelity: DrivingEnv("roundabout") reset with a seed, its road (routes included) copied into a
   FastRoad row (float64), both stepped with the same seeded actions until the episode ends (the
   ego crashes, or the 11 s duration): every vehicle's position, heading and speed (1e-6), the
   reward and each reward term (1e-6), terminated and truncated exactly, the safety signals, and
   at every state the actions DiscreteMetaAction offers; all seeds as rows of one batch.
2. Spawn: spawn_roundabout reproduces RoundaboutEnv._make_vehicles exactly given highway-env's
   draws (recovered from its vehicles; the order of its draws checked against its generator); its
   own draws (envs.fast.rng) have highway-env's distributions over 500 seeds; an episode depends
   on its seed only.
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
from envs.fast.road_roundabout import (
    IDM_DELTA_RANGE,
    ROUNDABOUT_DESTINATIONS,
    ROUNDABOUT_TRAFFIC,
    roundabout_draws,
    spawn_roundabout,
)
from envs.fast.road_sim import FastRoad
from tests.envs.fast.road_episodes import (
    EXACT,
    Crawl,
    Replay,
    RoadFidelityCase,
    check_same_traffic,
    copy_road,
)

SEEDS = tuple(range(12))
CALM_FROM = 6  # seeds from here drive mostly IDLE / FASTER (so that some episodes run to the time limit)
CALM_POLICY = (0.05, 0.55, 0.05, 0.3, 0.05)  # LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER
COLUMNS = 5  # the ego, the incoming vehicle, two others on the ring, the entering vehicle
# Near standstill (the ego slowed to target speed 0) highway-env's lateral loop amplifies round-off
# (tests/envs/fast/test_road_motion.py: highway-env against itself, the heading one ulp off, differs
# by 2e-4 m after such a stop). Policy steps where the ego's speed drops below CRAWL_MPS are
# compared to CRAWL_TOLERANCE and the vehicles re-synchronised with highway-env; a row's safety
# signals from its first crawl on (distance, acceleration and jerk keep the difference; time margins
# divide by the crawling speed) to CRAWL_TOLERANCE or CRAWL_RELATIVE.
CRAWL_MPS = 0.5
CRAWL_TOLERANCE = 1e-3
CRAWL_RELATIVE = 1e-2
SPAWN_SEEDS = 500

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

ROUNDABOUT = RoadFidelityCase("roundabout", SEEDS, lambda seed: CALM_POLICY if seed >= CALM_FROM else None,
                              Crawl(CRAWL_MPS, CRAWL_TOLERANCE, CRAWL_RELATIVE))


@pytest.fixture(scope="module")
def replay() -> Replay:
    replay = ROUNDABOUT.replay()
    assert any(replay.crawled) and not all(replay.crawled), replay.crawled  # (SEEDS cover both)
    return replay


def test_a_copied_roundabout_steps_as_highway_env(replay):
    episodes = replay.episodes
    ROUNDABOUT.check_episode_ends(episodes, steps=11)  # by a crash or the 11 s duration at 1 Hz
    # the seeds change lanes on the two-lane ring and use every target speed
    assert any(t["lane_change_reward"] for e in episodes for t in e.terms)
    assert {t["high_speed_reward"] for e in episodes for t in e.terms} == {0.0, 0.5, 1.0}
    offered = {a for e in episodes for available in e.available for a in available}
    assert {0, 2} & offered  # some states offered a lane change


def test_frames_look_like_the_reference_camera(replay):
    ROUNDABOUT.check_frames_look_like_the_reference_camera(replay)


def test_the_reward_is_zero_off_the_road():
    """_reward multiplies by on_road_reward: an ego pushed 20 m off its lane earns nothing, as in
    highway-env (the same displaced state stepped on both)."""
    env = DrivingEnv("roundabout")
    sim = FastRoad(ROUNDABOUT.scenario(), 1, dtype=torch.float64, render=False)
    env.reset(seed=0)
    env.sim.vehicle.position[0] += 20.0
    sim.load(torch.zeros(1, dtype=torch.long), copy_road(sim, env.sim))
    _, reward, _, _, info = env.step(1)
    result = sim.step(torch.ones(1, dtype=torch.long))
    assert info["rewards"]["on_road_reward"] == 0 and reward == 0.0 and info["safety"]["off_road"]
    assert float(result.rewards["on_road_reward"][0]) == 0.0 and float(result.reward[0]) == 0.0
    assert bool(result.signals["off_road"][0])
    for name, value in info["rewards"].items():
        assert float(result.rewards[name][0]) == pytest.approx(float(value), abs=EXACT), name
    env.close()


# Spawn.


@functools.lru_cache(maxsize=None)
def highway_env_roundabout():
    return gym.make("roundabout-v1", config=ROUNDABOUT.scenario().highway_env_config(), disable_env_checker=True)


def recovered_draws(u) -> np.ndarray:
    """The (4, 4) draws (position normal, speed normal, destination uniform, DELTA uniform) that make
    spawn_roundabout place RoundaboutEnv's four vehicles as it did (they have not moved yet)."""
    draws = []
    for ((lane_index, s), speed_base), vehicle in zip(((t, 16.0) for t in ROUNDABOUT_TRAFFIC), u.road.vehicles[1:]):
        longitudinal, _ = u.road.network.get_lane(lane_index).local_coordinates(vehicle.position)
        destination = ROUNDABOUT_DESTINATIONS.index(vehicle.route[-1][1])
        draws.append([(longitudinal - s) / 2.0, (vehicle.speed - speed_base) / 2.0,
                      (destination + 0.5) / len(ROUNDABOUT_DESTINATIONS),
                      (vehicle.DELTA - IDM_DELTA_RANGE[0]) / (IDM_DELTA_RANGE[1] - IDM_DELTA_RANGE[0])])
    return np.array(draws)


def test_spawn_is_roundabout_make_vehicles_given_its_draws():
    from highway_env.vehicle.behavior import IDMVehicle

    assert tuple(IDMVehicle.DELTA_RANGE) == IDM_DELTA_RANGE
    sim, env = ROUNDABOUT.simulator(1, False), highway_env_roundabout()
    for seed in range(10):
        env.reset(seed=seed)
        u = env.unwrapped
        assert len(u.road.vehicles) == COLUMNS and not u.road.objects
        draws = recovered_draws(u)
        # highway-env's own generator, replayed: the draws come in this order, nothing else drawn
        replayed = gym.utils.seeding.np_random(seed)[0]
        for normal_s, normal_speed, destination_u, delta_u in draws:
            assert replayed.normal() == pytest.approx(normal_s, abs=1e-9)
            assert replayed.normal() == pytest.approx(normal_speed, abs=1e-9)
            assert ROUNDABOUT_DESTINATIONS.index(replayed.choice(ROUNDABOUT_DESTINATIONS)) == int(destination_u * 3)
            assert replayed.uniform(*IDM_DELTA_RANGE) - IDM_DELTA_RANGE[0] == pytest.approx(delta_u, abs=1e-12)
        copied = copy_road(sim, u)
        spawned = spawn_roundabout(torch.tensor(draws)[None], sim.road)
        check_same_traffic(spawned, copied, seed)


def test_spawn_has_highway_envs_distributions():
    sim, env = ROUNDABOUT.simulator(1, False), highway_env_roundabout()
    reference_draws, reference = [], []
    for seed in range(SPAWN_SEEDS):
        env.reset(seed=seed)
        u = env.unwrapped
        reference_draws.append(recovered_draws(u))
        reference.append([[o.position[0], o.position[1], o.speed, len(o.route)] for o in u.road.vehicles])
    reference_draws, reference = np.array(reference_draws), np.array(reference)  # (S, 4, 4), (S, N, 4)
    seeds = torch.arange(10**6, 10**6 + SPAWN_SEEDS)
    draws = roundabout_draws(seeds).numpy()
    fast = sim.spawn(seeds)
    v = fast.vehicles
    routes = (v.route_edge >= 0).sum(-1).double()
    mine = torch.stack([v.x, v.y, v.speed, routes], dim=-1).numpy()
    assert np.allclose(mine[:, 0], reference[:, 0], atol=1e-12)  # the ego: position, speed, route
    for n in range(4):
        for k, spread in ((0, 1.0), (1, 1.0)):  # the normals: mean 0, standard deviation 1
            a, b = draws[:, n, k], reference_draws[:, n, k]
            se = spread * math.sqrt(2 / SPAWN_SEEDS)
            assert abs(a.mean() - b.mean()) < 4.5 * se, (n, k, a.mean(), b.mean())
            assert abs(a.std() - b.std()) < 0.12, (n, k, a.std(), b.std())
        mine_destination = np.floor(draws[:, n, 2] * 3)
        theirs_destination = np.floor(reference_draws[:, n, 2] * 3)
        for d in range(3):
            assert abs((mine_destination == d).mean() - (theirs_destination == d).mean()) < 0.1, (n, d)
        a, b = draws[:, n, 3], reference_draws[:, n, 3]  # DELTA's uniform
        assert abs(a.mean() - b.mean()) < 4.5 * math.sqrt(2 / 12 / SPAWN_SEEDS) and a.min() >= 0 and a.max() < 1
        # what the draws make: speeds, positions and route lengths
        for column, tolerance in ((2, 0.4), (3, 0.5)):
            assert abs(mine[:, n + 1, column].mean() - reference[:, n + 1, column].mean()) < tolerance, (n, column)
        spread = np.hypot(mine[:, n + 1, 0] - mine[:, n + 1, 0].mean(), mine[:, n + 1, 1] - mine[:, n + 1, 1].mean())
        spread_ref = np.hypot(reference[:, n + 1, 0] - reference[:, n + 1, 0].mean(),
                              reference[:, n + 1, 1] - reference[:, n + 1, 1].mean())
        assert abs(spread.mean() - spread_ref.mean()) < 0.3, (n, spread.mean(), spread_ref.mean())
    delta = fast.delta[:, 1:].numpy()
    assert (delta >= IDM_DELTA_RANGE[0]).all() and (delta < IDM_DELTA_RANGE[1]).all() and (fast.delta[:, 0] == 4).all()
