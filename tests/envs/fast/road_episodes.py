"""Recorded highway-env episodes of a road-network scenario, the reference FastRoad's fidelity tests
(test_road_sim.py, test_road_roundabout.py) replay: DrivingEnv reset with a seed, seeded actions
(random, or a calm mix for the later seeds) to the episode's end, everything each step produced."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable

import numpy as np

from envs.driving_env import DrivingEnv
from envs.fast.road_traffic import RoadTraffic


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


def objects(u) -> list:
    """An unwrapped highway-env env's road objects in FastRoad's column order (the ego, the other
    vehicles, then the objects)."""
    return [u.vehicle] + [o for o in u.road.vehicles + u.road.objects if o is not u.vehicle]


def record_episode(env: DrivingEnv, seed: int, copy_road: Callable[[object], RoadTraffic], calm: bool,
                   calm_policy: tuple[float, ...]) -> Episode:
    """One episode of `env` from `seed`: random actions, or drawn from `calm_policy` (probabilities of
    LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER) when `calm`; `copy_road(unwrapped env)` copies the
    start into FastRoad's state."""
    _, info = env.reset(seed=seed)
    start = copy_road(env.sim)
    rng = np.random.default_rng(zlib.crc32(f"{env.scenario.name}/{seed}".encode()))
    actions, available, states, rewards, terms, terminated, truncated = [], [], [], [], [], [], []
    signals, frames, goals = [info["safety"]], [env.clean_frame.copy()], []
    while True:
        if calm:
            action = int(rng.choice(env.action_space.n, p=calm_policy))
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
