"""FastRoad (envs/fast/road_sim.py) on intersection-v2 against highway-env and clearlane's DrivingEnv.

highway-env's random draws are recorded as its generator gives them (gymnasium's seeding wrapped
by `Recorder`, which logs every call: what is drawn, in which order, and that nothing else is).

1. Fidelity: DrivingEnv("intersection") reset with a seed, its road (routes, ranks, the
   RegulatedRoad's step count) copied into a FastRoad row (float64), both stepped with the same
   seeded actions until the episode ends (crash, arrival, or the 13 s duration); each step's
   clear-and-spawn fed highway-env's own draws of that step (FastRoad.step(actions, step_draws)).
   After every step: which columns hold a vehicle (the ego, others in the column they took: a
   spawn takes the first free one), every vehicle's position, heading and speed (1e-6), the reward
   and each reward term, terminated and truncated exactly, the safety signals, the available
   actions (SLOWER, IDLE, FASTER only), envs.goals' goal; all seeds as rows of one batch.
   Vehicles stop to yield (RegulatedRoad) and crawl: there highway-env's lateral loop amplifies
   round-off (test_road_traffic.py), so a row where a vehicle crawls below CRAWL_MPS is compared
   to CRAWL_TOLERANCE that step and re-synchronised with highway-env.
2. Spawn: spawn_intersection given highway-env's reset draws is IntersectionEnv._make_vehicles
   (warm-up spawns, 3 s of traffic, challenger, ego, early-collision removal) to 1e-6; the draws'
   order as the generator gave them; its own draws have highway-env's distributions (SPAWN_SEEDS
   resets each); per-step spawns: the rate and the route pairs over 1,000 episodes' draws; the
   columns never fill up.
3. IDM constants: IntersectionEnv's (DISTANCE_WANTED 7, COMFORT_ACC_MAX 6, COMFORT_ACC_MIN -3) in
   FastRoad's rules, IDMVehicle's class left as found.
4. Frames. (Seeds, float32, FastDrivingEnv / FastVecEnv with Discrete(3), the teacher:
   test_road_scenarios.py.)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from unittest import mock

import gymnasium as gym
import highway_env  # noqa: F401
import numpy as np
import pytest
import torch
from gymnasium.utils import seeding

from envs.driving_env import IDM_CLASS_DEFAULTS, DrivingEnv, restore_idm_class_defaults
from envs.fast.road_intersection import (
    INTERSECTION_IDM_CONSTANTS,
    intersection_columns,
    intersection_draws,
    intersection_step_draws,
    spawn_intersection,
)
from envs.fast.road_scenario import IDM_DELTA_RANGE
from envs.fast.road_sim import FastRoad
from envs.fast.road_tasks import SUPPORTED_ROAD_ENV_IDS
from envs.fast.road_traffic import RoadTraffic
from tests.envs.fast.road_episodes import RoadScenario, check_frames_match, check_signals, copy_road, stack

SEEDS = tuple(range(12))
CALM_FROM = 6  # seeds from here mostly keep or raise their speed (so that some arrive)
CALM_POLICY = (0.1, 0.5, 0.4)  # SLOWER, IDLE, FASTER
EXACT = 1e-6
CRAWL_MPS = 0.5
CRAWL_TOLERANCE = 1e-3  # [m], [rad], [m/s], reward: a crawling row's difference within one step
SPAWN_SEEDS = 80  # highway-env resets (78 ms each: 3 s of warm-up traffic)
STEP_EPISODES = 1000

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

INTERSECTION = RoadScenario("intersection")


# highway-env's draws.


class Recorder:
    """A numpy Generator that logs every draw: (method, args, kwargs, result)."""

    def __init__(self, generator: np.random.Generator) -> None:
        self.generator, self.log = generator, []

    def __getattr__(self, name):
        attribute = getattr(self.generator, name)
        if name not in ("uniform", "normal", "choice", "integers", "random"):
            return attribute

        def draw(*args, **kwargs):
            result = attribute(*args, **kwargs)
            self.log.append((name, args, kwargs, result))
            return result

        return draw


def recorded_reset(env, seed: int) -> Recorder:
    """env.reset(seed=seed) with highway-env's generator recorded (the env's own, not DrivingEnv's)."""
    made = []

    def np_random(seed=None):
        generator, used = original(seed)
        made.append(Recorder(generator))
        return made[-1], used

    original = seeding.np_random
    with mock.patch.object(seeding, "np_random", np_random):
        env.reset(seed=seed)
    u = env.sim if isinstance(env, DrivingEnv) else env.unwrapped
    assert any(u.np_random is m for m in made) and u.road.np_random is u.np_random
    return u.np_random


def parse_attempt(log: list, probability: float) -> list[float]:
    """Pop one _spawn_vehicle's draws off the log: (spawn uniform, route start, route end, position
    normal, speed normal, DELTA uniform); unused ones as 0 / 0.5 (never read)."""
    name, args, kwargs, u = log.pop(0)
    assert name == "uniform" and not args and not kwargs
    if u > probability:
        return [u, 0.0, 1.0, 0.0, 0.0, 0.5]
    name, args, kwargs, route = log.pop(0)
    assert name == "choice" and list(args[0]) == [0, 1, 2, 3] and kwargs == {"size": 2, "replace": False}
    normals = []
    for _ in range(2):
        name, args, kwargs, z = log.pop(0)
        assert name == "normal" and not args and not kwargs
        normals.append(z)
    delta = 0.5  # dropped (another vehicle within 15 m): no randomize_behavior
    if log and log[0][0] == "uniform" and log[0][2]:
        _, _, kwargs, value = log.pop(0)
        assert kwargs == {"low": IDM_DELTA_RANGE[0], "high": IDM_DELTA_RANGE[1]}
        delta = (value - IDM_DELTA_RANGE[0]) / (IDM_DELTA_RANGE[1] - IDM_DELTA_RANGE[0])
    return [u, float(route[0]), float(route[1]), *normals, delta]


def reset_draws(log: list, count: int) -> np.ndarray:
    """(count + 1, 6) draws of _make_vehicles: count - 1 warm-up spawns (probability 0.6), the
    challenger (probability 1), the ego's normal(1.0); checks nothing else was drawn."""
    log = list(log)
    draws = [parse_attempt(log, 0.6) for _ in range(count - 1)]
    draws.append(parse_attempt(log, 1.0))
    name, args, kwargs, value = log.pop(0)
    assert name == "normal" and args == (1.0,) and not kwargs
    draws.append([0.0, 0.0, 0.0, value - 1.0, 0.0, 0.0])
    assert not log, log
    return np.array(draws)


# Fidelity.


@dataclasses.dataclass(frozen=True)
class Episode:
    start: RoadTraffic
    actions: tuple[int, ...]
    available: tuple[tuple[int, ...], ...]
    step_draws: tuple[np.ndarray, ...]  # (6,) highway-env's clear-and-spawn draws of each step
    states: tuple[tuple[tuple | None, ...], ...]  # after each step, per column: (x, y, heading, speed) or None
    rewards: tuple[float, ...]
    terms: tuple[dict, ...]
    terminated: tuple[bool, ...]
    truncated: tuple[bool, ...]
    signals: tuple[dict, ...]  # reset signals first
    frames: tuple[np.ndarray, ...]
    goals: tuple[bool, ...]
    spawns: int
    clears: int


@functools.lru_cache(maxsize=None)
def episode(seed: int) -> Episode:
    env, sim = INTERSECTION.driving_env(), INTERSECTION.simulator(len(SEEDS), True)
    recorder = recorded_reset(env, seed)
    u = env.sim
    start = copy_road(sim, u)
    columns = [u.vehicle] + [o for o in u.road.vehicles if o is not u.vehicle]
    columns += [None] * (sim.columns - len(columns))
    rng = np.random.default_rng(zlib.crc32(f"intersection/{seed}".encode()))
    record = {k: [] for k in ("actions", "available", "step_draws", "states", "rewards", "terms", "terminated",
                              "truncated", "goals")}
    signals, frames, spawns, clears = [env._info(env.tracker.observe(u.road, u.vehicle), {})["safety"]], [
        env.clean_frame.copy()], 0, 0
    while True:
        n = env.action_space.n
        action = int(rng.choice(n, p=CALM_POLICY) if seed >= CALM_FROM else rng.integers(n))
        record["available"].append(tuple(u.action_type.get_available_actions()))
        recorder.log.clear()
        _, reward, terminated, truncated, info = env.step(action)
        draws = parse_attempt(recorder.log, u.config["spawn_probability"])
        assert not recorder.log
        on_road = u.road.vehicles
        clears += sum(o is not None and o not in on_road for o in columns)
        columns = [o if o in on_road else None for o in columns]
        for o in on_road:
            if o not in columns:
                columns[columns.index(None)] = o
                spawns += 1
        record["actions"].append(action)
        record["step_draws"].append(np.array(draws))
        record["states"].append(tuple(None if o is None else (o.position[0], o.position[1], o.heading, o.speed)
                                      for o in columns))
        record["rewards"].append(reward)
        record["terms"].append({k: float(v) for k, v in info["rewards"].items()})
        record["terminated"].append(terminated)
        record["truncated"].append(truncated)
        record["goals"].append(info["goal_reached"])
        signals.append(info["safety"])
        frames.append(env.clean_frame.copy())
        if terminated or truncated:
            return Episode(start, signals=tuple(signals), frames=tuple(frames), spawns=spawns, clears=clears,
                           **{k: tuple(v) for k, v in record.items()})


@pytest.fixture(scope="module")
def replay():
    """All seeds' episodes replayed as rows of one FastRoad; per row, the fast frames it drew."""
    sim = INTERSECTION.simulator(len(SEEDS), True)
    episodes = [episode(seed) for seed in SEEDS]
    rows = torch.arange(len(SEEDS))
    sim.load(rows, stack([e.start for e in episodes]), torch.tensor(SEEDS))
    frames = [[sim.clean_frames[b].permute(1, 2, 0).numpy().copy()] for b in range(len(SEEDS))]
    for b, e in enumerate(episodes):
        check_signals(sim.reset_signals, b, e.signals[0], (SEEDS[b], "reset"))
    crawled = [0] * len(SEEDS)
    for k in range(max(len(e.actions) for e in episodes)):
        for b, e in enumerate(episodes):
            if k < len(e.actions):
                assert tuple(sim.available_actions(b)) == e.available[k], (SEEDS[b], k)
        present = sim.state.present
        before = torch.where(present, sim.state.vehicles.speed.abs(), math.inf).min(dim=1).values.clone()
        playing = [k < len(e.actions) for e in episodes]
        actions = torch.tensor([e.actions[k] if p else 1 for e, p in zip(episodes, playing)])
        draws = torch.tensor(np.stack([e.step_draws[k] if p else np.array([1.0, 0, 1, 0, 0, 0.5])
                                       for e, p in zip(episodes, playing)]))
        result = sim.step(actions, step_draws=draws)
        goal = sim.goal_reached()
        v = sim.state.vehicles
        for b, e in enumerate(episodes):
            if not playing[b]:
                continue
            where, states = (SEEDS[b], k), e.states[k]
            assert sim.state.present[b].tolist() == [s is not None for s in states], where
            expected = torch.tensor([s if s is not None else (0.0, 0.0, 0.0, 0.0) for s in states], dtype=torch.float64)
            fast = torch.stack([v.x[b], v.y[b], v.heading[b], v.speed[b]], dim=-1)
            mask = sim.state.present[b]
            error = float((fast - expected)[mask].abs().max())
            crawl = min(float(before[b]), float(expected[mask, 3].abs().min())) < CRAWL_MPS
            tolerance = CRAWL_TOLERANCE if crawl else EXACT
            assert error <= tolerance, (where, error)
            if crawl:  # re-synchronise
                crawled[b] += 1
                for i, name in enumerate(("x", "y", "heading", "speed")):
                    getattr(v, name)[b, mask] = expected[mask, i]
            assert float(result.reward[b]) == pytest.approx(e.rewards[k], abs=tolerance), where
            assert set(result.rewards) == set(e.terms[k]), where
            for name, value in e.terms[k].items():
                assert float(result.rewards[name][b]) == pytest.approx(value, abs=tolerance), (where, name)
            assert bool(result.terminated[b]) == e.terminated[k], where
            assert bool(result.truncated[b]) == e.truncated[k], where
            if not crawl:
                check_signals(result.signals, b, e.signals[k + 1], where)
            assert bool(goal[b]) == e.goals[k], where
            frames[b].append(sim.clean_frames[b].permute(1, 2, 0).numpy().copy())
    return episodes, frames, crawled


def test_a_copied_intersection_steps_as_highway_env(replay):
    episodes, _, crawled = replay
    ends = {"crash": 0, "arrived": 0, "time": 0}
    for e in episodes:
        if e.terminated[-1]:
            ends["arrived" if e.goals[-1] else "crash"] += 1
        else:
            assert e.truncated[-1] and len(e.actions) == INTERSECTION.scenario().episode_steps == 13  # 13 s at 1 Hz
            ends["time"] += 1
    assert all(ends.values()), ends  # the seeds end all three ways
    # vehicles need ~13 s from their spawn to the last 20 m of an exit: test_leaving_vehicles_are_cleared
    assert sum(e.spawns for e in episodes) >= 20
    assert any(crawled) and sum(crawled) < sum(len(e.actions) for e in episodes) / 2, crawled
    assert {a for e in episodes for available in e.available for a in available} == {0, 1, 2}


def test_frames_look_like_the_reference_camera(replay):
    episodes, fast_frames, _ = replay
    check_frames_match(fast_frames, [e.frames for e in episodes], INTERSECTION.scenario().camera.size)


def test_episodes_are_truncated_at_the_duration_and_the_reward_is_zero_off_the_road():
    assert "intersection-v2" in SUPPORTED_ROAD_ENV_IDS
    assert INTERSECTION.simulator(2, False).max_steps == 13
    env, sim = INTERSECTION.driving_env(), FastRoad(INTERSECTION.scenario(), 1, dtype=torch.float64, render=False)
    env.reset(seed=0)
    env.sim.vehicle.position[0] += 20.0  # off its lane (the approach runs along y)
    sim.load(torch.zeros(1, dtype=torch.long), copy_road(sim, env.sim))
    _, reward, _, _, info = env.step(1)
    result = sim.step(torch.ones(1, dtype=torch.long))
    assert info["rewards"]["on_road_reward"] == 0 and reward == 0.0
    assert float(result.rewards["on_road_reward"][0]) == 0.0 and float(result.reward[0]) == 0.0


def test_leaving_vehicles_are_cleared_as_highway_env_clears_them():
    """_clear_vehicles: two vehicles placed on exit lanes (s = 75 m and 50 m of 100 m), one step: the
    first passes s = 80 m and is cleared, the second is not; a spawn takes the first free column
    (the freed one), as in the replay above."""
    env, sim = INTERSECTION.driving_env(), FastRoad(INTERSECTION.scenario(), 1, dtype=torch.float64, render=False)
    for seed in (3, 4):
        recorder = recorded_reset(env, seed)
        u = env.sim
        others = [o for o in u.road.vehicles if o is not u.vehicle]
        for vehicle, lane_index, s in zip(others, [("il2", "o2", 0), ("il3", "o3", 0)], [75.0, 50.0]):
            lane = u.road.network.get_lane(lane_index)
            vehicle.position, vehicle.heading = lane.position(s, 0.0), lane.heading_at(s)
            vehicle.lane_index, vehicle.lane = lane_index, lane
            vehicle.target_lane_index, vehicle.route = lane_index, [lane_index]
        leaving, staying = others[0], others[1]
        columns = [u.vehicle] + others + [None] * (sim.columns - 1 - len(others))
        sim.load(torch.zeros(1, dtype=torch.long), copy_road(sim, u))
        recorder.log.clear()
        env.step(1)
        draws = parse_attempt(recorder.log, u.config["spawn_probability"])
        sim.step(torch.ones(1, dtype=torch.long), step_draws=torch.tensor([draws]))
        assert leaving not in u.road.vehicles and staying in u.road.vehicles
        columns = [o if o in u.road.vehicles else None for o in columns]
        for o in u.road.vehicles:
            if o not in columns:
                columns[columns.index(None)] = o
        assert sim.state.present[0].tolist() == [o is not None for o in columns], seed
        v = sim.state.vehicles
        for n, o in enumerate(columns):
            if o is not None:
                assert [float(v.x[0, n]), float(v.y[0, n]), float(v.speed[0, n])] == pytest.approx(
                    [o.position[0], o.position[1], o.speed], abs=EXACT), (seed, n)


# IDM constants.


def test_rules_use_intersections_idm_constants_and_leave_the_class_as_found():
    from highway_env.vehicle.behavior import IDMVehicle

    env = gym.make("intersection-v2", disable_env_checker=True)
    try:
        env.reset(seed=0)
        assert {name: getattr(IDMVehicle, name) for name in IDM_CLASS_DEFAULTS} == INTERSECTION_IDM_CONSTANTS
        restore_idm_class_defaults()
        idm = FastRoad(INTERSECTION.scenario(), 1, render=False).road.rules.idm
        assert (idm.distance_wanted, idm.comfort_acc_max, idm.comfort_acc_min) == (7.0, 6.0, -3.0)
        assert {name: getattr(IDMVehicle, name) for name in IDM_CLASS_DEFAULTS} == IDM_CLASS_DEFAULTS
    finally:
        env.close()
        restore_idm_class_defaults()


# Spawn.


@functools.lru_cache(maxsize=None)
def highway_env_intersection():
    return gym.make("intersection-v2", config=INTERSECTION.scenario().highway_env_config(), disable_env_checker=True)


def test_spawn_is_make_vehicles_given_its_draws():
    """Warm-up spawns, 3 s of traffic (yields and route progress included), the challenger, the ego
    and the removal of vehicles near it, from highway-env's draws: the copied road to 1e-6."""
    sim, env = INTERSECTION.simulator(1, False), highway_env_intersection()
    removed = 0
    for seed in range(8):
        recorder = recorded_reset(env, seed)
        u = env.unwrapped
        draws = reset_draws(recorder.log, u.config["initial_vehicle_count"])
        copied = copy_road(sim, u)
        spawned = spawn_intersection(torch.tensor(draws)[None], sim.road)
        present = copied.present[0]
        assert torch.equal(spawned.present, copied.present), seed
        assert torch.equal(spawned.rank, copied.rank) and torch.equal(spawned.road_steps, copied.road_steps), seed
        for mine, theirs in [(spawned.vehicles, copied.vehicles), (spawned, copied)]:
            for f in dataclasses.fields(mine):
                if f.name in ("vehicles", "road_steps", "route_edge", "route_lane", "route_cursor"):
                    continue
                a, b = getattr(mine, f.name)[0, present], getattr(theirs, f.name)[0, present]
                if a.dtype.is_floating_point:
                    assert torch.allclose(a, b, atol=EXACT, rtol=0), (seed, f.name, a, b)
                else:
                    assert torch.equal(a, b), (seed, f.name, a, b)
        for n in range(int(present.sum())):  # the routes left (highway-env pops the entries passed)
            assert spawned.vehicles.route(sim.graph, 0, n) == copied.vehicles.route(sim.graph, 0, n), (seed, n)
        removed += u.config["initial_vehicle_count"] + 1 - int(present.sum())
    assert removed > 0  # some spawns are dropped (too close, or no draw) or removed near the ego


def test_spawn_has_highway_envs_distributions():
    sim, env = INTERSECTION.simulator(1, False), highway_env_intersection()
    count = 10
    reference, reference_draws = [], []
    for seed in range(SPAWN_SEEDS):
        recorder = recorded_reset(env, seed)
        u = env.unwrapped
        reference_draws.append(reset_draws(recorder.log, count))
        others = [o for o in u.road.vehicles if o is not u.vehicle]
        reference.append((len(others), np.mean([o.speed for o in others]) if others else np.nan,
                          u.vehicle.position[1], sum(o.lane_index[0].startswith("o") for o in others)))
    reference, reference_draws = np.array(reference), np.array(reference_draws)
    seeds = torch.arange(10**6, 10**6 + SPAWN_SEEDS)
    draws = intersection_draws(seeds, sim.road).numpy()
    fast = sim.spawn(seeds)
    v, present = fast.vehicles, fast.present.clone()
    present[:, 0] = False
    approaching = (present & torch.tensor([i[0].startswith("o") for i in sim.graph.indices])[v.lane]).sum(1)
    mine = np.stack([present.sum(1).numpy(), (torch.where(present, v.speed, 0).sum(1) / present.sum(1)).numpy(),
                     v.y[:, 0].numpy(), approaching.numpy()], axis=1)
    # the draws: the ego's normal, the spawn uniforms, the position normals
    used = reference_draws[:, :-2, 0] <= 0.6  # highway-env draws the normals of spawned vehicles only
    for a, b in ((draws[:, -1, 3], reference_draws[:, -1, 3]), (draws[:, :-2, 3].ravel(), reference_draws[:, :-2, 3][used])):
        se = math.sqrt(1 / len(a) + 1 / len(b))  # of the difference of the means (and ~ of the standard deviations x 1.4)
        assert abs(a.mean() - b.mean()) < 4.5 * se and abs(a.std() - b.std()) < 4.5 * se / math.sqrt(2), (a.std(), b.std())
    assert abs((draws[:, :-2, 0] <= 0.6).mean() - 0.6) < 0.05 and abs((reference_draws[:, :-2, 0] <= 0.6).mean() - 0.6) < 0.05
    # what they make: vehicles kept, their mean speed, the ego's position, vehicles still approaching
    for n, name in enumerate(("vehicles", "speed", "ego y", "approaching")):
        a, b = mine[:, n], reference[:, n]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        tolerance = 4.5 * math.sqrt(a.var() / len(a) + b.var() / len(b))  # 4.5 standard errors
        assert abs(a.mean() - b.mean()) < tolerance, (name, a.mean(), b.mean(), tolerance)


def test_step_spawns_have_highway_envs_rate_and_routes():
    """The per-step draws over STEP_EPISODES episodes x 13 steps: spawn rate 0.6, the 12 ordered route
    pairs equally likely (highway-env's choice(4, 2, replace=False)), normals N(0, 1), DELTA uniform."""
    seeds = torch.arange(STEP_EPISODES).repeat_interleave(13)
    steps = torch.arange(1, 14).repeat(STEP_EPISODES)
    draws = intersection_step_draws(seeds, steps).numpy()
    n = len(draws)
    assert abs((draws[:, 0] <= 0.6).mean() - 0.6) < 4.5 * math.sqrt(0.24 / n)
    pairs = draws[:, 1] * 4 + draws[:, 2]
    assert (draws[:, 1] != draws[:, 2]).all()
    counts = np.bincount(pairs.astype(int), minlength=16)
    assert counts[[0, 5, 10, 15]].sum() == 0
    expected = n / 12
    chi2 = ((counts[counts > 0] - expected) ** 2 / expected).sum()
    assert chi2 < 35  # 11 degrees of freedom: p ~ 3e-4
    for k in (3, 4):
        assert abs(draws[:, k].mean()) < 4.5 / math.sqrt(n) and abs(draws[:, k].std() - 1) < 0.02
    assert 0 <= draws[:, 5].min() and draws[:, 5].max() < 1 and abs(draws[:, 5].mean() - 0.5) < 0.01
    # highway-env's generator gives the same rate and pairs (its draws, as recorded above)
    generator = np.random.default_rng(0)
    theirs = np.array([generator.choice(range(4), size=2, replace=False) for _ in range(n)])
    counts_theirs = np.bincount(theirs[:, 0] * 4 + theirs[:, 1], minlength=16)
    assert counts_theirs[[0, 5, 10, 15]].sum() == 0 and ((counts_theirs[counts_theirs > 0] - expected) ** 2 / expected).sum() < 35


def test_the_columns_never_fill():
    """(An episode depends on its seed only: test_road_scenarios.py.)"""
    big = INTERSECTION.simulator(4, False)
    # room for the reset's vehicles and one spawn per step of the longest episode
    assert intersection_columns(big.road) == big.columns == 1 + 10 + big.max_steps == 24
