"""FastRoad (envs/fast/road_sim.py) on merge-v1 against highway-env and clearlane's DrivingEnv.

1. Fidelity: DrivingEnv("merge") reset with a seed, its road copied into a FastRoad row (float64),
   both stepped with the same seeded random actions until the episode ends (the ego crashes, passes
   x = 370 m, or the scenario's step limit): every object's position, heading and speed (1e-6), the
   reward and each reward term (1e-6), terminated and truncated exactly, and the safety signals
   (envs.safety's, computed on the lane graph); all seeds as rows of one batch.
2. Spawn: spawn_merge reproduces MergeEnv._make_vehicles exactly given highway-env's draws; its
   own draws (envs.fast.rng) have highway-env's distributions; an episode depends on its seed only.
3. Frames: uint8 of the scenario's shape, the first frame `stack` times, equal to the camera's
   render of the state, and like the reference camera's (tests/envs/test_fast_camera.py's tolerances).
4. Other scenarios are refused, naming the supported ids.
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

from envs.fast.road_merge import MERGE_TRAFFIC, spawn_merge
from envs.fast.road_sim import FastRoad
from envs.fast.road_tasks import SUPPORTED_ROAD_ENV_IDS
from envs.fast.road_traffic import RoadTraffic
from envs.fast.simulator import UnsupportedScenario
from scenarios import load_scenario
from tests.envs.fast.road_episodes import Replay, RoadFidelityCase, objects

SEEDS = tuple(range(12))
CALM_FROM = 6  # seeds from here drive mostly IDLE / FASTER (random actions crash early: few reach 370 m)
CALM_POLICY = (0.04, 0.6, 0.04, 0.3, 0.02)  # LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER
COLUMNS = 6  # ego, three IDM vehicles, the merging vehicle, the obstacle
SPAWN_SEEDS = 500

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

MERGE = RoadFidelityCase("merge", SEEDS, lambda seed: CALM_POLICY if seed >= CALM_FROM else None)


@pytest.fixture(scope="module")
def replay() -> Replay:
    return MERGE.replay()


def test_a_copied_road_steps_as_highway_env(replay):
    episodes = replay.episodes
    ends = {"crash": 0, "past 370 m": 0, "time": 0}
    for e in episodes:
        ends["crash" if e.terms[-1]["collision_reward"] else "past 370 m" if e.terminated[-1] else "time"] += 1
    # the seeds cover more than one way of ending, and merging traffic (the ramp term) at some step
    assert sum(ends.values()) == len(SEEDS)
    assert ends["crash"] > 0 and ends["past 370 m"] > 0, ends
    assert any(abs(t["merging_speed_reward"]) > 0 for e in episodes for t in e.terms)
    assert any(t["lane_change_reward"] for e in episodes for t in e.terms)


def test_frames_look_like_the_reference_camera(replay):
    MERGE.check_frames_look_like_the_reference_camera(replay)


def test_the_reset_frame_is_the_cameras_render_of_the_state():
    sim = MERGE.simulator(3, True)
    sim.reset(torch.arange(3), torch.tensor([11, 12, 13]))
    expected = sim.camera.render(*(t.float() for t in (sim.state.vehicles.x, sim.state.vehicles.y,
                                                       sim.state.vehicles.heading, sim.state.length,
                                                       sim.state.width)), sim.state.present)
    observation = sim.observation()
    assert observation.dtype == torch.uint8 and observation.shape == (3, 3 * sim.stack, *MERGE.scenario().camera.size)
    for i in range(sim.stack):
        assert torch.equal(observation[:, 3 * i: 3 * i + 3], expected)
    sim.step(torch.ones(3, dtype=torch.long))
    after = sim.observation()
    assert torch.equal(after[:, :-3], observation[:, 3:])  # the stack slides by one frame
    assert torch.equal(sim.observations_of(torch.tensor([2, 0])), after[[2, 0]])


# Spawn.


def recovered_draws(env) -> np.ndarray:
    """The (3, 3) uniforms that make spawn_merge place MergeEnv's three traffic vehicles as it did."""
    u = env.unwrapped
    traffic = u.road.vehicles[1:4]
    draws = []
    for (s, speed), vehicle in zip(MERGE_TRAFFIC, traffic):
        lane = vehicle.lane_index[2]
        draws.append([(lane + 0.5) / 2, (vehicle.position[0] - s + 5.0) / 10.0, (vehicle.speed - speed + 1.0) / 2.0])
    return np.array(draws)


@functools.lru_cache(maxsize=None)
def highway_env_merge():
    return gym.make("merge-v1", config=MERGE.scenario().highway_env_config(), disable_env_checker=True)


def test_spawn_is_merge_make_vehicles_given_its_draws():
    sim, env = MERGE.simulator(1, False), highway_env_merge()
    for seed in range(8):
        env.reset(seed=seed)
        u = env.unwrapped
        copied = RoadTraffic.from_highway_env(sim.graph, [u.road], [u.vehicle], COLUMNS, route_slots=0)
        spawned = spawn_merge(torch.tensor(recovered_draws(env))[None], sim.road)
        for source, mine, theirs in [("vehicles", spawned.vehicles, copied.vehicles), ("traffic", spawned, copied)]:
            for f in dataclasses.fields(mine):
                if f.name == "vehicles":
                    continue
                a, b = getattr(mine, f.name), getattr(theirs, f.name)
                assert a.shape == b.shape and a.dtype == b.dtype, (seed, f.name)
                if a.dtype.is_floating_point:
                    assert torch.allclose(a, b, atol=1e-9, rtol=0), (seed, f.name, a, b)
                else:
                    assert torch.equal(a, b), (seed, source, f.name, a, b)


def test_spawn_has_highway_envs_distributions():
    sim, env = MERGE.simulator(1, False), highway_env_merge()
    reference = []
    for seed in range(SPAWN_SEEDS):
        env.reset(seed=seed)
        u = env.unwrapped
        assert len(u.road.vehicles) + len(u.road.objects) == COLUMNS
        reference.append([[o.position[0], o.position[1], o.speed, o.lane_index[2]] for o in objects(u)])
    reference = np.array(reference)  # (S, N, 4)
    fast = sim.spawn(torch.arange(10**6, 10**6 + SPAWN_SEEDS))
    v = fast.vehicles
    assert bool(fast.present.all()) and v.x.shape == (SPAWN_SEEDS, COLUMNS)
    mine = torch.stack([v.x, v.y, v.speed, sim.graph.lane_number[v.lane].double()], dim=-1).numpy()
    # deterministic columns: the ego, the merging vehicle, the obstacle
    for n in (0, 4, 5):
        assert np.allclose(mine[:, n], reference[:, n], atol=1e-12), n
    # the three traffic vehicles: lane shares, mean and spread of x and speed (>= 4 standard errors)
    for n in (1, 2, 3):
        share, share_ref = mine[:, n, 3].mean(), reference[:, n, 3].mean()
        assert abs(share - share_ref) < 0.13, (n, share, share_ref)
        assert np.allclose(mine[:, n, 1], 4.0 * mine[:, n, 3])  # on the lane's centre line
        for column, spread in ((0, 10.0), (2, 2.0)):  # U(-5, 5) m, U(-1, 1) m/s
            a, b = mine[:, n, column], reference[:, n, column]
            se = spread / math.sqrt(12) * math.sqrt(2 / SPAWN_SEEDS)
            assert abs(a.mean() - b.mean()) < 4.5 * se, (n, column, a.mean(), b.mean())
            assert abs(a.std() - b.std()) < 0.06 * spread, (n, column, a.std(), b.std())
            assert a.min() >= b.min() - 0.02 * spread and a.max() <= b.max() + 0.02 * spread


def test_an_episode_depends_on_its_seed_only():
    big, small = MERGE.simulator(4, False), FastRoad(MERGE.scenario(), 1, dtype=torch.float64, render=False)
    big.reset(torch.arange(4), torch.tensor([5, 6, 7, 8]))
    big.reset(torch.tensor([2, 0]), torch.tensor([42, 7]))
    small.reset(torch.tensor([0]), torch.tensor([42]))
    actions = [3, 0, 1, 2, 4, 1]
    for a in actions:
        r_big = big.step(torch.full((4,), a))
        r_small = small.step(torch.tensor([a]))
        assert torch.equal(big.state.vehicles.x[2], small.state.vehicles.x[0])
        assert torch.equal(r_big.reward[2:3], r_small.reward)
    assert not torch.equal(big.state.vehicles.x[0], big.state.vehicles.x[2])


# Unsupported scenarios.


@pytest.mark.parametrize("name", ["highway", "racetrack"])
def test_other_scenarios_are_refused_naming_the_supported_ids(name, unsupported_scenario):
    scenario = load_scenario(unsupported_scenario if name == "racetrack" else name)
    with pytest.raises(ValueError, match="Supported highway-env ids: " + ", ".join(SUPPORTED_ROAD_ENV_IDS)) as error:
        FastRoad(scenario, 1, render=False)
    assert isinstance(error.value, UnsupportedScenario)


def test_a_front_camera_merge_is_refused():
    merge = MERGE.scenario()
    front = dataclasses.replace(merge, camera=dataclasses.replace(merge.camera, view="front"))
    with pytest.raises(UnsupportedScenario, match="only 'bev'"):
        FastRoad(front, 1, render=False)


def test_rules_use_highway_envs_idm_constants_whatever_another_env_wrote():
    """IntersectionEnv's reset rewrites IDMVehicle's class constants; merge drives with the defaults
    (DrivingEnv restores them at every reset), and FastRoad reads them without writing the class."""
    from highway_env.vehicle.behavior import IDMVehicle

    from envs.driving_env import IDM_CLASS_DEFAULTS, restore_idm_class_defaults
    from envs.fast.params import IdmParams

    env = gym.make("intersection-v1", disable_env_checker=True)
    try:
        env.reset(seed=0)
        rewritten = {name: getattr(IDMVehicle, name) for name in IDM_CLASS_DEFAULTS}
        assert rewritten != IDM_CLASS_DEFAULTS  # the hazard is real
        assert FastRoad(MERGE.scenario(), 1, render=False).road.rules.idm == IdmParams()
        assert {name: getattr(IDMVehicle, name) for name in IDM_CLASS_DEFAULTS} == rewritten
    finally:
        env.close()
        restore_idm_class_defaults()
