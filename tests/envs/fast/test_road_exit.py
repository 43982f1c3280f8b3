"""FastRoad (envs/fast/road_sim.py) on exit-v1 against highway-env and clearlane's DrivingEnv.

1. Fidelity: DrivingEnv("exit") reset with a seed, its road (routes included) copied into a
   FastRoad row (float64), both stepped with the same seeded actions until the episode ends (the
   ego crashes, or the 18 s duration): every vehicle's position, heading and speed (1e-6), the
   reward and each reward term (1e-6), terminated and truncated exactly, the safety signals, and
   at every state the actions DiscreteMetaAction offers, and envs.goals' goal (info["goal_reached"],
   FastRoad.goal_reached); all seeds as rows of one batch, under random, calm and rightward actions
   (the last reach the exit lane). The goal and its clipped reward also from placed egos.
2. Spawn: spawn_exit reproduces ExitEnv._create_vehicles exactly given highway-env's draws (its
   generator replayed: the draws come in the order spawn_exit reads them, and it draws nothing
   else); its own draws (envs.fast.rng) give highway-env's distributions over 500 seeds (lanes,
   positions, speeds); other vehicles_count are refused.
3. Frames: uint8 of the scenario's shape, like the reference camera's.
4. What every road scenario must do on the fast backend (seeds, float32, FastDrivingEnv, FastVecEnv,
   the teacher): test_road_scenarios.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import gymnasium as gym
import highway_env  # noqa: F401
import numpy as np
import pytest
import torch

from envs.driving_env import DrivingEnv
from envs.fast.road_exit import (
    EXIT_GAP_RANGE,
    EXIT_VEHICLES_COUNT,
    exit_draws,
    lane_choice_cdf,
    spawn_exit,
)
from envs.fast.road_sim import FastRoad
from envs.fast.simulator import UnsupportedScenario
from envs.fast.simulators import simulator_class
from tests.envs.fast.road_episodes import EXACT, Replay, RoadFidelityCase, check_same_traffic, copy_road

SEEDS = tuple(range(14))
# (LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER) per seed: uniform (None), calm (episodes that run to
# the duration), rightward (towards the exit lane, six lanes to the right of the ego's start, slowing
# down behind the slower right lanes: seeds 10 and 13 get there, 13 then crashes)
CALM_POLICY = (0.05, 0.5, 0.05, 0.0, 0.4)
RIGHTWARD_POLICY = (0.0, 0.3, 0.4, 0.0, 0.3)
POLICIES = (None,) * 4 + (CALM_POLICY,) * 4 + (RIGHTWARD_POLICY,) * 6
COLUMNS = 1 + EXIT_VEHICLES_COUNT  # the ego, twenty IDM vehicles
DRAWS = 1 + 2 * EXIT_VEHICLES_COUNT  # the ego's gap, each vehicle's lane and gap
SPAWN_SEEDS = 500

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

EXIT = RoadFidelityCase("exit", SEEDS, lambda seed: POLICIES[seed])


@pytest.fixture(scope="module")
def replay() -> Replay:
    return EXIT.replay()


def test_a_copied_exit_road_steps_as_highway_env(replay):
    episodes = replay.episodes
    EXIT.check_episode_ends(episodes, steps=18)  # by a crash or the 18 s duration at 1 Hz
    # the seeds reach the exit lane, use many lanes and several speeds
    assert [SEEDS[b] for b, e in enumerate(episodes) if any(e.goals)] == [10, 13]
    assert {t["goal_reward"] for e in episodes for t in e.terms} == {0.0, 1.0}
    assert len({t["right_lane_reward"] for e in episodes for t in e.terms}) >= 4
    assert len({t["high_speed_reward"] for e in episodes for t in e.terms}) > 10
    offered = {a for e in episodes for available in e.available for a in available}
    assert {0, 2, 3, 4} <= offered


def test_frames_look_like_the_reference_camera(replay):
    EXIT.check_frames_look_like_the_reference_camera(replay)


@pytest.mark.parametrize("lane_index, s, reached", [
    (("1", "2", 6), 50.0, True),  # the exit lane beside the highway
    (("2", "exit", 0), 30.0, True),  # the ramp
    (("1", "2", 5), 50.0, False),  # the rightmost through lane
    (("2", "3", 5), 20.0, False),  # past the exit
])
def test_the_goal_is_the_exit_lane(lane_index, s, reached):
    """envs.goals' exit goal (ExitEnv._is_success: the ego's target lane) as DrivingEnv reports it,
    with the goal_reward term and the normalised reward clipped to 1, from an ego placed on a lane
    (traffic out of the way) and stepped on both."""
    env = DrivingEnv("exit")
    sim = FastRoad(EXIT.scenario(), 1, dtype=torch.float64, render=False)
    env.reset(seed=1)
    u = env.sim
    for other in u.road.vehicles[1:]:
        other.position[0] += 1000.0  # out of the way
    lane = u.road.network.get_lane(lane_index)
    ego = u.vehicle
    ego.position, ego.heading = lane.position(s, 0.0), lane.heading_at(s)
    ego.lane_index = ego.target_lane_index = lane_index
    ego.lane = lane
    sim.load(torch.zeros(1, dtype=torch.long), copy_road(sim, u))
    _, reward, _, _, info = env.step(1)
    result = sim.step(torch.ones(1, dtype=torch.long))
    assert info["goal_reached"] is reached
    assert sim.goal_reached().tolist() == [reached]
    assert info["rewards"]["goal_reward"] == float(reached) == float(result.rewards["goal_reward"][0])
    assert reward == (1.0 if reached else pytest.approx(0.1 * info["rewards"]["high_speed_reward"], abs=1e-12))
    assert float(result.reward[0]) == pytest.approx(reward, abs=EXACT)
    for name, value in info["rewards"].items():
        assert float(result.rewards[name][0]) == pytest.approx(float(value), abs=EXACT), name
    env.close()


def test_other_vehicle_counts_are_refused():
    """exit_draws draws for ExitEnv's default twenty vehicles; other counts are refused by name."""
    other = dataclasses.replace(EXIT.scenario(), traffic={**EXIT.scenario().traffic, "vehicles_count": 10})
    for make in (lambda: FastRoad(other, 1, render=False), lambda: simulator_class(other)):
        with pytest.raises(UnsupportedScenario, match="vehicles_count is 10"):
            make()


# Spawn.


@functools.lru_cache(maxsize=None)
def highway_env_exit():
    return gym.make("exit-v1", config=EXIT.scenario().highway_env_config(), disable_env_checker=True)


def replayed_draws(seed: int) -> tuple[np.ndarray, np.random.Generator]:
    """The DRAWS doubles highway-env's generator gives after reset(seed=seed), and the generator."""
    generator = gym.utils.seeding.np_random(seed)[0]
    return np.array([generator.random() for _ in range(DRAWS)]), generator


def test_numpys_draws_are_one_double_each():
    """create_random's uniform(0.9, 1.1) and ExitEnv's choice(lanes, size=1, p) each take one double
    of the generator: low + (high - low) u, and searchsorted(cumsum(p) / its last, u, "right")."""
    lanes = np.arange(EXIT.scenario().traffic["lanes_count"])
    for seed in range(50):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        low, high = EXIT_GAP_RANGE
        assert a.uniform(low, high) == low + (high - low) * b.random()
        u = b.random()
        picked = np.searchsorted(lane_choice_cdf(len(lanes)), u, "right")
        assert a.choice(lanes, size=1, p=lanes / lanes.sum())[0] == picked
        assert a.bit_generator.state == b.bit_generator.state


def test_spawn_is_exit_create_vehicles_given_its_draws():
    sim, env = EXIT.simulator(1, False), highway_env_exit()
    for seed in range(10):
        env.reset(seed=seed)
        u = env.unwrapped
        assert len(u.road.vehicles) == COLUMNS and not u.road.objects
        assert not any(v.enable_lane_change for v in u.road.vehicles[1:])
        assert {v.DELTA for v in u.road.vehicles[1:]} == {4.0} and u.vehicle.route is None
        draws, replayed = replayed_draws(seed)
        # highway-env's own generator, replayed: these draws and nothing else
        assert replayed.bit_generator.state == u.np_random.bit_generator.state
        copied = copy_road(sim, u)
        spawned = spawn_exit(torch.tensor(draws)[None], sim.road)
        check_same_traffic(spawned, copied, seed)


def test_spawn_has_highway_envs_distributions():
    sim, env = EXIT.simulator(1, False), highway_env_exit()
    lanes = EXIT.scenario().traffic["lanes_count"]
    reference = []
    for seed in range(SPAWN_SEEDS):
        env.reset(seed=seed)
        u = env.unwrapped
        reference.append([[o.position[0], o.lane_index[2], o.speed, len(o.route or [])] for o in u.road.vehicles])
    reference = np.array(reference, dtype=float)  # (S, N, 4)
    seeds = torch.arange(10**6, 10**6 + SPAWN_SEEDS)
    draws = exit_draws(seeds).numpy()
    assert draws.shape == (SPAWN_SEEDS, DRAWS) and draws.min() >= 0 and draws.max() < 1
    fast = sim.spawn(seeds)
    v = fast.vehicles
    routes = (v.route_edge >= 0).sum(-1).double()
    mine = torch.stack([v.x, sim.graph.lane_number[v.lane].double(), v.speed, routes], dim=-1).numpy()
    # the lanes: never lane 0 (p = 0), lane L with p = L / 15, pooled over the twenty vehicles
    p = np.arange(lanes) / np.arange(lanes).sum()
    count = SPAWN_SEEDS * EXIT_VEHICLES_COUNT
    for ours in (mine, reference):
        assert (ours[:, 0, 1] == 0).all() and (ours[:, 1:, 1] >= 1).all()
        assert (ours[:, 0, 2] == 25).all() and (ours[:, 0, 3] == 0).all() and (ours[:, 1:, 3] == 3).all()
        frequency = np.bincount(ours[:, 1:, 1].astype(int).ravel(), minlength=lanes) / count
        assert np.all(np.abs(frequency - p) < 4.5 * np.sqrt(p * (1 - p) / count) + 1e-12), frequency
        assert np.allclose(ours[:, 1:, 2], 26 - 3.4 * ours[:, 1:, 1], atol=1e-12)  # the lane's speed limit
        assert (np.diff(ours[:, :, 0], axis=1) > 0).all()  # each ahead of the one before
    # positions: the ego's (U(0.9, 1.1) x 34.9 m after 3 offsets), the gaps between vehicles, the last one's
    for a, b, what in ((mine[:, 0, 0], reference[:, 0, 0], "ego"),
                       (np.diff(mine[:, :, 0], axis=1).ravel(), np.diff(reference[:, :, 0], axis=1).ravel(), "gaps"),
                       (mine[:, -1, 0], reference[:, -1, 0], "last")):
        se = math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4.5 * se, (what, a.mean(), b.mean())
        assert abs(a.std() - b.std()) < 0.15 * b.std(), (what, a.std(), b.std())
        assert a.min() >= b.min() - 0.1 * b.std() and a.max() <= b.max() + 0.1 * b.std() or what == "last", what
    assert (fast.delta == 4).all() and not fast.lane_change.any()


def placed_ego(lane_index: tuple[str, str, int], s: float, speed: float) -> FastRoad:
    """A float64 FastRoad whose ego drives on `lane_index` at `s` [m] and `speed` [m/s], the traffic
    1 km ahead (out of the way)."""
    sim = FastRoad(EXIT.scenario(), 1, dtype=torch.float64, render=False)
    sim.reset(torch.zeros(1, dtype=torch.long), torch.tensor([5]))
    v, graph = sim.state.vehicles, sim.graph
    lane = graph.lane_id(lane_index)
    x, y = graph.position(torch.tensor([lane]), torch.tensor([s], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    v.x[0, 1:] += 1000.0
    v.x[0, 0], v.y[0, 0], v.speed[0, 0] = float(x[0]), float(y[0]), speed
    v.heading[0, 0] = float(graph.heading_at(torch.tensor([lane]), torch.tensor([s], dtype=torch.float64))[0])
    v.lane[0, 0] = v.target_lane[0, 0] = lane
    return sim


@pytest.mark.parametrize("lane_index, s, speed, steps", [
    (("1", "2", 6), 50.0, 25.0, 0.0),  # at the goal
    (("2", "exit", 0), 30.0, 25.0, 0.0),
    (("1", "2", 5), 50.0, 25.0, 1.0),  # one change away, on the slip road
    (("1", "2", 3), 10.0, 25.0, 3.0),
    (("1", "2", 0), 60.0, 25.0, math.inf),  # six changes need 125 m more than the 40 m left
    (("0", "1", 0), 140.0, 25.0, 12.0),  # the start: 260 m to the slip road at 25 m/s, then one step
    (("0", "1", 5), 390.0, 20.0, 2.0),  # waits for the slip road (1 step), then changes
    (("2", "3", 5), 20.0, 25.0, math.inf),  # past the exit
])
def test_steps_to_the_exit_are_a_lower_bound_from_lanes_and_distance(lane_index, s, speed, steps):
    sim = placed_ego(lane_index, s, speed)
    assert sim.steps_to_goal().tolist() == [steps]


def test_the_teacher_heads_for_the_exit_only_when_the_goal_is_valued():
    """Without the goal's value beyond its horizon the planner keeps the fast left lanes and never
    exits (return 1.79, 0 % success over 200 episodes: docs/BENCHMARKS.md); with it, an ego on the
    slip road one lane from the exit changes right."""
    from agents.teacher import LookaheadTeacher

    sim = placed_ego(("1", "2", 5), 20.0, 25.0)
    assert int(LookaheadTeacher(sim, depth=1).act()[0]) == 2  # LANE_RIGHT
    sim = placed_ego(("0", "1", 0), 300.0, 25.0)  # six changes from the exit lane, 100 m before the slip road
    assert int(LookaheadTeacher(sim, depth=1, goal_value=0.0).act()[0]) != 2
    assert int(LookaheadTeacher(sim, depth=1).act()[0]) == 2
    sim = placed_ego(("0", "1", 0), 150.0, 25.0)  # far enough for the changes later: the lane does not matter yet
    far = LookaheadTeacher(sim, depth=1).action_values()[0]
    assert far[2] == far[1]
