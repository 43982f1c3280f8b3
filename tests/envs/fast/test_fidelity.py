"""The fast backend against highway-env itself: same trajectories from the same state (a), same
episode statistics under fixed ego policies (b), and one act() giving highway-env's commands."""

from __future__ import annotations

import math

import gymnasium as gym
import highway_env  # noqa: F401
import numpy as np
import pytest
import torch
from highway_env.vehicle.behavior import IDMVehicle

from envs.fast.dynamics import act
from envs.fast.mirror import state_from_highway_env
from envs.fast.simulator import FastHighway
from scenarios import load_scenario

TRAJECTORY_TOLERANCE_M = 1e-6  # float64 on both sides: the same arithmetic, so the same numbers


def highway_env_sim(fast: FastHighway):
    """highway-env's own env with the scenario's config and no observation cost."""
    config = {**fast.config, "observation": {"type": "AttributesObservation", "attributes": []}}
    return gym.make(fast.scenario.highway_env.id, config=config, disable_env_checker=True).unwrapped


@pytest.fixture(scope="module", params=["highway", "highway-dense"])
def pair(request):
    fast = FastHighway(load_scenario(request.param), 1, dtype=torch.float64, render=False)
    return fast, highway_env_sim(fast)


@pytest.mark.parametrize("seed, actions", [(0, [4] * 25), (1, [1, 4, 2, 1, 4, 0, 1, 4] * 3), (2, [3, 1, 1, 4, 4] * 5)])
def test_traffic_trajectories_match_highway_env_from_a_copied_state(pair, seed, actions):
    fast, reference = pair
    reference.reset(seed=seed)
    fast.load(torch.tensor([0]), state_from_highway_env(reference))
    compared = 0
    for action in actions:
        _, reward, terminated, truncated, _ = reference.step(action)
        result = fast.step(torch.tensor([action]))
        expected = state_from_highway_env(reference)
        assert bool(result.terminated[0]) == terminated and bool(result.truncated[0]) == truncated
        if terminated:  # after a crash highway-env nudges the pair apart, which is not modelled
            break
        compared += 1
        for name in ("x", "y", "heading", "speed"):
            error = (getattr(expected, name) - getattr(fast.state, name)).abs().max().item()
            assert error < TRAJECTORY_TOLERANCE_M, (name, compared, error)
        assert torch.equal(expected.target_lane, fast.state.target_lane)
        assert torch.equal(expected.lane, fast.state.lane)
        assert float(result.reward[0]) == pytest.approx(reward, abs=1e-9)
    assert compared >= 20 or terminated


def test_one_act_gives_highway_env_commands_on_constructed_cases():
    """IDM and MOBIL on hand-built traffic: a slow leader that makes followers want to pass, a
    tail-gater in the target lane that vetoes it, a vehicle mid-lane-change."""
    fast = FastHighway(load_scenario("highway"), 1, dtype=torch.float64, render=False)
    reference = highway_env_sim(fast)
    reference.reset(seed=0)
    road, ego = reference.road, reference.vehicle
    lane = lambda i: road.network.get_lane(("0", "1", i))  # noqa: E731
    placed = [  # (lane, x, speed, target speed, timer)
        (1, ego.position[0] + 30, 15.0, 15.0, 1.1),  # slow leader ahead of the ego's lane
        (1, ego.position[0] + 60, 22.0, 22.0, 1.1),  # behind the slow leader: wants to pass -> MOBIL
        (0, ego.position[0] + 57, 28.0, 28.0, 1.1),  # fast car in lane 0 just behind: vetoes a left change
        (2, ego.position[0] - 20, 26.0, 30.0, 0.3),  # right lane, timer not due
        (2, ego.position[0] + 90, 24.0, 24.0, 1.1),
    ]
    vehicles = [ego]
    for index, x, speed, target, timer in placed:
        vehicle = IDMVehicle(road, lane(index).position(x, 0.0), 0.0, speed, target_speed=target, timer=timer)
        vehicle.DELTA = 4.2
        vehicles.append(vehicle)
    mid_change = IDMVehicle(road, lane(1).position(ego.position[0] + 45, 1.5), 0.05, 23.0, target_lane_index=("0", "1", 2), timer=0.5)
    vehicles.append(mid_change)
    road.vehicles = vehicles
    fast.load(torch.tensor([0]), state_from_highway_env(reference))

    road.act()
    act(fast.state, fast.traffic.lanes_count)
    expected = state_from_highway_env(reference)
    ours = fast.state.select(torch.tensor([0]))
    count = len(vehicles)  # the simulator pads the rest with absent vehicles
    assert torch.equal(expected.target_lane, ours.target_lane[:, :count])
    assert torch.allclose(expected.acceleration, ours.acceleration[:, :count], atol=1e-9)
    assert torch.allclose(expected.steering, ours.steering[:, :count], atol=1e-9)
    assert torch.allclose(expected.timer, ours.timer[:, :count], atol=1e-12)
    placed_lanes = torch.tensor([lane_index for lane_index, *_ in placed])
    assert (expected.target_lane[0, 1 : len(placed) + 1] != placed_lanes).any(), "MOBIL should move someone"
    assert (expected.target_lane[0, 1 : len(placed) + 1] == placed_lanes).any(), "and keep someone"


def fixed_policy(name: str, rng: np.random.Generator) -> int:
    return {"idle": 1, "faster": 3}.get(name) if name != "random" else int(rng.integers(5))


def episode_statistics(play_step, reset, policy: str, episodes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    stats = {"collision": [], "speed": [], "lane_changes": [], "return": []}
    for episode in range(episodes):
        lane = reset(episode)
        total, speeds, changes, crashed = 0.0, [], 0, False
        for _ in range(30):
            reward, done, crashed, speed, new_lane = play_step(fixed_policy(policy, rng))
            total += reward
            speeds.append(speed)
            changes += int(new_lane != lane)
            lane = new_lane
            if done:
                break
        for key, value in zip(stats, (float(crashed), np.mean(speeds), changes, total)):
            stats[key].append(value)
    return {key: np.array(values) for key, values in stats.items()}


@pytest.mark.parametrize("policy", ["idle", "random", "faster"])
def test_episode_statistics_agree_with_highway_env(policy):
    """Each backend spawns its own traffic (its own random numbers); the means must agree within
    the two samples' combined 99 % confidence interval."""
    episodes = 24
    scenario = load_scenario("highway")
    fast = FastHighway(scenario, 1, render=False)
    reference = highway_env_sim(fast)

    def reference_reset(episode):
        reference.reset(seed=episode)
        return reference.vehicle.lane_index[2]

    def reference_step(action):
        _, reward, terminated, truncated, _ = reference.step(action)
        ego = reference.vehicle
        return reward, terminated or truncated, ego.crashed, ego.speed, ego.lane_index[2]

    def fast_reset(episode):
        fast.reset(torch.tensor([0]), torch.tensor([episode]))
        return int(fast.state.lane[0, 0])

    def fast_step(action):
        result = fast.step(torch.tensor([action]))
        done = bool(result.terminated[0] or result.truncated[0])
        return float(result.reward[0]), done, bool(result.terminated[0]), float(fast.state.speed[0, 0]), int(fast.state.lane[0, 0])

    ours = episode_statistics(fast_step, fast_reset, policy, episodes)
    theirs = episode_statistics(reference_step, reference_reset, policy, episodes)
    for key in ours:
        a, b = ours[key], theirs[key]
        standard_error = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert abs(a.mean() - b.mean()) <= 2.58 * standard_error + 1e-9, (key, a.mean(), b.mean(), standard_error)
