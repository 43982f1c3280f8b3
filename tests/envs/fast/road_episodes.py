"""Recorded highway-env episodes of a road-network scenario, and their replay on FastRoad: the
fidelity check every test_road_<scenario>.py runs. An episode is DrivingEnv reset with a seed,
seeded actions (random, or a calm mix for the later seeds) to the episode's end, and everything
each step produced; `replay_episodes` steps FastRoad through all of them as rows of one batch.
`RoadFidelityCase` bundles one scenario's seeds, policies and crawl settings with the cached
FastRoads and DrivingEnv its module's tests share."""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Callable

import numpy as np
import pytest
import torch

from envs import palette
from envs.driving_env import DrivingEnv
from envs.fast.road_sim import FastRoad
from envs.fast.road_traffic import RoadTraffic
from scenarios import Scenario, load_scenario
from tests.envs.fast.test_camera_networks import MIN_REAL_EGO_IOU
from tests.envs.test_fast_camera import (
    MAX_FRAME_MEAN_ABS_DIFF,
    MAX_MEAN_ABS_DIFF,
    MIN_VEHICLE_IOU,
    colour_mask,
    iou,
)


@dataclasses.dataclass(frozen=True)
class Episode:
    start: RoadTraffic
    actions: tuple[int, ...]
    available: tuple[tuple[int, ...], ...]  # DiscreteMetaAction's available actions before each step
    states: tuple[np.ndarray, ...]  # after each step: (columns, 4) x, y, heading, speed
    rewards: tuple[float, ...]
    terms: tuple[dict, ...]
    terminated: tuple[bool, ...]
    truncated: tuple[bool, ...]
    signals: tuple[dict, ...]  # reset signals first
    frames: tuple[np.ndarray, ...]  # env.clean_frame (H, W, 3) at reset and after each step
    goals: tuple[bool | None, ...]  # info.get("goal_reached") after each step (None: no goal)


def copy_road(sim: FastRoad, u) -> RoadTraffic:
    """The road of an unwrapped highway-env env `u` as one row of `sim`'s state (its columns and route slots)."""
    return RoadTraffic.from_highway_env(sim.graph, [u.road], [u.vehicle], sim.columns, sim.route_slots)


def objects(u) -> list:
    """An unwrapped highway-env env's road objects in FastRoad's column order (the ego, the other
    vehicles, then the objects)."""
    return [u.vehicle] + [o for o in u.road.vehicles + u.road.objects if o is not u.vehicle]


def record_episode(env: DrivingEnv, seed: int, copy_road: Callable[[object], RoadTraffic],
                   policy: tuple[float, ...] | None) -> Episode:
    """One episode of `env` from `seed`: uniformly random actions when `policy` is None, else drawn
    from it (probabilities of LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER); `copy_road(unwrapped
    env)` copies the start into FastRoad's state."""
    _, info = env.reset(seed=seed)
    start = copy_road(env.sim)
    rng = np.random.default_rng(zlib.crc32(f"{env.scenario.name}/{seed}".encode()))
    actions, available, states, rewards, terms, terminated, truncated = [], [], [], [], [], [], []
    signals, frames, goals = [info["safety"]], [env.clean_frame.copy()], []
    while True:
        if policy is not None:
            action = int(rng.choice(env.action_space.n, p=policy))
        else:
            action = int(rng.integers(env.action_space.n))
        available.append(tuple(env.sim.action_type.get_available_actions()))
        _, reward, term, trunc, info = env.step(action)
        actions.append(action)
        states.append(np.array([[o.position[0], o.position[1], o.heading, o.speed] for o in objects(env.sim)]))
        rewards.append(reward)
        terms.append({k: float(v) for k, v in info["rewards"].items()})
        terminated.append(term)
        truncated.append(trunc)
        signals.append(info["safety"])
        frames.append(env.clean_frame.copy())
        goals.append(info.get("goal_reached"))
        if term or trunc:
            return Episode(start, tuple(actions), tuple(available), tuple(states), tuple(rewards), tuple(terms),
                           tuple(terminated), tuple(truncated), tuple(signals), tuple(frames), tuple(goals))


def stack(parts: list[RoadTraffic]) -> RoadTraffic:
    """One RoadTraffic whose rows are `parts`' rows, in order."""
    first = parts[0]
    vehicles = type(first.vehicles)(**{
        f.name: torch.cat([getattr(p.vehicles, f.name) for p in parts]) for f in dataclasses.fields(first.vehicles)})
    return RoadTraffic(vehicles=vehicles, **{f.name: torch.cat([getattr(p, f.name) for p in parts])
                                             for f in dataclasses.fields(first) if f.name != "vehicles"})


def check_same_traffic(mine: RoadTraffic, theirs: RoadTraffic, where) -> None:
    """Every field of two RoadTraffics (and of their vehicles) has the same shape and dtype, and the
    same values: floats to 1e-9 (a spawn computed as highway-env computes it), the rest exactly."""
    for ours, other in [(mine.vehicles, theirs.vehicles), (mine, theirs)]:
        for f in dataclasses.fields(ours):
            if f.name == "vehicles":
                continue
            a, b = getattr(ours, f.name), getattr(other, f.name)
            assert a.shape == b.shape and a.dtype == b.dtype, (where, f.name)
            if a.dtype.is_floating_point:
                assert torch.allclose(a, b, atol=1e-9, rtol=0), (where, f.name, a, b)
            else:
                assert torch.equal(a, b), (where, f.name, a, b)


# Replaying recorded episodes on FastRoad.

EXACT = 1e-6  # [m], [rad], [m/s], reward units: float64 round-off of the same arithmetic


@dataclasses.dataclass(frozen=True)
class Crawl:
    """Near standstill highway-env's steering amplifies its own round-off (test_road_motion): a
    policy step where a vehicle is slower than `below_mps` at its start or end may differ by
    `tolerance` (EXACT where the step itself is still exact), and the row is then re-synchronised
    with highway-env; once a row has crawled, its safety signals (some divide by the crawling speed)
    are compared to `tolerance` or `relative`."""

    below_mps: float = 0.5
    tolerance: float = EXACT
    relative: float = 0.0
    any_vehicle: bool = False  # watch every vehicle's speed, not only the ego's


def check_signals(fast: dict[str, torch.Tensor], row: int, expected: dict, where, crawl: Crawl | None = None) -> None:
    """Safety signals of env `row` against DrivingEnv's: booleans and counts exactly, infinities as
    such, the rest to EXACT (to the crawl tolerances when `crawl` is given)."""
    assert set(fast) == set(expected), where
    for name, value in expected.items():
        got = fast[name][row].item()
        if isinstance(value, bool):
            assert bool(got) == value, (where, name)
        elif isinstance(value, int):
            assert int(got) == value, (where, name)
        elif math.isinf(value):
            assert got == value, (where, name, got)
        elif crawl is not None:
            assert got == pytest.approx(value, abs=crawl.tolerance, rel=crawl.relative), (where, name, got, value)
        else:
            assert got == pytest.approx(value, abs=EXACT), (where, name, got, value)


@dataclasses.dataclass(frozen=True)
class Replay:
    episodes: list[Episode]
    reset_stacks: torch.Tensor  # (E, 3k, H, W) uint8: the observation right after the copied start
    frames: list[list[np.ndarray]]  # per episode, the fast clean frames (H, W, 3) at reset and after each step
    crawled: list[bool]  # per episode: whether a step crawled (and was re-synchronised)


def replay_episodes(sim: FastRoad, episodes: list[Episode], seeds: tuple[int, ...],
                    crawl: Crawl | None = None) -> Replay:
    """All `episodes` replayed as rows of one FastRoad (float64, with frames), checked step by step
    against what highway-env did: the actions offered, every object's position, heading and speed
    (EXACT), the reward and each term, terminated and truncated, the safety signals, and the goal
    where the scenario has one. Without `crawl` every step must be exact."""
    rows = torch.arange(len(episodes))
    sim.load(rows, stack([e.start for e in episodes]), torch.tensor(seeds))
    reset_stacks = sim.observation().clone()
    frames = [[sim.clean_frames[b].permute(1, 2, 0).numpy().copy()] for b in range(len(episodes))]
    for b, e in enumerate(episodes):
        check_signals(sim.reset_signals, b, e.signals[0], (seeds[b], "reset"))
    crawled = [False] * len(episodes)
    for k in range(max(len(e.actions) for e in episodes)):
        for b, e in enumerate(episodes):
            if k < len(e.actions):
                assert tuple(sim.available_actions(b)) == e.available[k], (seeds[b], k)
        speeds = sim.state.vehicles.speed.abs()
        before = (speeds.min(dim=1).values if crawl and crawl.any_vehicle else speeds[:, 0]).clone()
        result = sim.step(torch.tensor([e.actions[k] if k < len(e.actions) else 1 for e in episodes]))
        goal = sim.goal_reached()
        v = sim.state.vehicles
        fast = torch.stack([v.x, v.y, v.heading, v.speed], dim=-1)  # (E, N, 4)
        for b, e in enumerate(episodes):
            if k >= len(e.actions):
                continue
            where = (seeds[b], k)
            after = np.abs(e.states[k][:, 3]).min() if crawl and crawl.any_vehicle else abs(e.states[k][0, 3])
            crawling = crawl is not None and min(float(before[b]), after) < crawl.below_mps
            crawled[b] |= crawling
            error = np.abs(fast[b].numpy() - e.states[k]).max()
            assert error <= (crawl.tolerance if crawling else EXACT), (where, error)
            if crawling:  # re-synchronise
                for i, name in enumerate(("x", "y", "heading", "speed")):
                    getattr(v, name)[b] = torch.as_tensor(e.states[k][:, i])
            assert float(result.reward[b]) == pytest.approx(e.rewards[k], abs=EXACT), where
            assert set(result.rewards) == set(e.terms[k]), where
            for name, value in e.terms[k].items():
                assert float(result.rewards[name][b]) == pytest.approx(value, abs=EXACT), (where, name)
            assert bool(result.terminated[b]) == e.terminated[k], where
            assert bool(result.truncated[b]) == e.truncated[k], where
            check_signals(result.signals, b, e.signals[k + 1], where, crawl if crawled[b] else None)
            assert (None if goal is None else bool(goal[b])) == e.goals[k], where
            frames[b].append(sim.clean_frames[b].permute(1, 2, 0).numpy().copy())
    return Replay(episodes, reset_stacks, frames, crawled)


def check_frames_match(fast_frames: list, reference_frames: list, size: tuple[int, int]) -> None:
    """Per episode, the fast frames against highway-env's ((H, W, 3) uint8 each, `size` = (H, W)):
    tests/envs/test_fast_camera.py's tolerances on the mean difference and the vehicles' overlap."""
    fast = np.concatenate([np.stack(f) for f in fast_frames]).astype(int)
    reference = np.concatenate([np.stack(f) for f in reference_frames]).astype(int)
    assert fast.shape == reference.shape and fast.shape[1:3] == tuple(size)
    per_frame = np.abs(fast - reference).mean(axis=(1, 2, 3))
    assert per_frame.max() <= MAX_FRAME_MEAN_ABS_DIFF, per_frame.max()
    assert per_frame.mean() <= MAX_MEAN_ABS_DIFF, per_frame.mean()
    for colour, least in ((palette.EGO_VEHICLE, MIN_REAL_EGO_IOU), (palette.OTHER_VEHICLE, MIN_VEHICLE_IOU)):
        mask = colour_mask(reference, colour)
        assert mask.sum() > 50
        assert iou(colour_mask(fast, colour), mask) >= least, colour


# One scenario's fidelity case.


class RoadScenario:
    """A road scenario's float64 FastRoads and its DrivingEnv, built once per session and shared by
    its module's tests (a FastRoad builds a lane graph and a camera raster, a DrivingEnv a highway-env
    env)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @functools.lru_cache(maxsize=None)
    def scenario(self) -> Scenario:
        return load_scenario(self.name)

    @functools.lru_cache(maxsize=None)
    def simulator(self, batch: int, render: bool) -> FastRoad:
        """float64: the fidelity checks compare with highway-env's doubles to EXACT."""
        return FastRoad(self.scenario(), batch, dtype=torch.float64, render=render)

    @functools.lru_cache(maxsize=None)
    def driving_env(self) -> DrivingEnv:
        return DrivingEnv(self.name)


class RoadFidelityCase(RoadScenario):
    """What a test_road_<scenario>.py replays: one episode per seed of `seeds`, its actions drawn
    from `policy_of_seed(seed)` (None: uniformly random; see record_episode), all replayed as rows
    of one FastRoad, within `crawl`'s tolerances where given (replay_episodes)."""

    def __init__(self, name: str, seeds: tuple[int, ...],
                 policy_of_seed: Callable[[int], tuple[float, ...] | None], crawl: Crawl | None = None) -> None:
        super().__init__(name)
        self.seeds, self.policy_of_seed, self.crawl = seeds, policy_of_seed, crawl

    def episode(self, seed: int) -> Episode:
        """highway-env's episode from `seed`, its start copied for the replay's FastRoad."""
        sim = self.simulator(len(self.seeds), True)
        return record_episode(self.driving_env(), seed, lambda u: copy_road(sim, u), self.policy_of_seed(seed))

    def replay(self) -> Replay:
        """Every seed's episode replayed and checked step by step. Not cached: a module-scoped
        fixture holds it while the module's tests run (its frames take memory)."""
        episodes = [self.episode(seed) for seed in self.seeds]
        return replay_episodes(self.simulator(len(self.seeds), True), episodes, self.seeds, self.crawl)

    def check_episode_ends(self, episodes: list[Episode], steps: int) -> None:
        """Each episode ends by a crash (terminated) or at the scenario's `steps` policy steps
        (truncated only), and the seeds end both ways: the replay covers both."""
        ends = {"crash": 0, "time": 0}
        for e in episodes:
            assert e.terminated[-1] or e.truncated[-1]
            ends["crash" if e.terminated[-1] else "time"] += 1
            if e.truncated[-1] and not e.terminated[-1]:
                assert len(e.actions) == self.scenario().episode_steps == steps
        assert ends["crash"] > 0 and ends["time"] > 0, ends

    def check_frames_look_like_the_reference_camera(self, replay: Replay) -> None:
        """The replay's frames: uint8 stacks of the scenario's camera size (H, W), the first frame
        `stack` times at reset, and each fast frame like highway-env's (`check_frames_match`)."""
        stack_size, size = self.simulator(1, True).stack, self.scenario().camera.size
        height, width = size
        stacks = replay.reset_stacks
        assert stacks.dtype == torch.uint8
        assert stacks.shape == (len(replay.episodes), 3 * stack_size, height, width)
        assert all(torch.equal(stacks[:, 3 * i: 3 * i + 3], stacks[:, :3]) for i in range(stack_size))
        check_frames_match(replay.frames, [e.frames for e in replay.episodes], size)
