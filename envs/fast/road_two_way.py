"""two-way-v0 on the fast road-network simulator: TwoWayEnv's spawn, reward and end, batched.

Two-way (`spawn_two_way`, `two_way_reward`): TwoWayEnv._make_vehicles with our RNG: the ego
(MDPVehicle, target speeds 20, 25, 30 m/s) at ("a", "b", 1) s = 30 m, 30 m/s, heading 0; three IDM
vehicles ahead on ("a", "b", 1) at s = 70 + 40 i + 10 N(0, 1) m (i = 0, 1, 2), heading the lane's
at 70 + 40 i (0), 24 + 2 N m/s; two oncoming IDM vehicles on ("b", "a", 0) at s = 200 + 100 i + 10 N
m (i = 0, 1), heading the lane's (pi), 20 + 5 N m/s, target lane ("b", "a", 0). highway-env draws,
per vehicle in that order, normal (position), normal (speed); `two_way_draws` gives the same
distributions (Box-Muller normals). Every IDM vehicle is made with enable_lane_change=False; none
gets a route or randomize_behavior (DELTA stays 4); timers are IDMVehicle's (x + y) pi mod
LANE_CHANGE_DELAY; lanes are the closest lane with heading. No obstacles. Columns follow
road.vehicles: the ego, the three ahead, the two oncoming. Reward: high_speed = the ego's
speed_index / (its target_speeds.size - 1), left_lane = (side lanes of the ego's lane - 1 - its
target lane's _id) / (side lanes - 1); the weighted sum (no normalisation, no on-road factor,
collision_reward is not a term). Terminated: crashed. Truncated: TwoWayEnv._is_truncated is False
and it has no duration: DrivingEnv's max_episode_steps (20 policy steps).
"""

from __future__ import annotations

import math

import torch

from envs.fast import rng
from envs.fast.road_scenario import IDM_DELTA, RoadScenario, spawned_speeds, spawned_traffic
from envs.fast.road_traffic import RoadTraffic
from envs.fast.spawn import SPAWN_STREAM

# TwoWayEnv._make_vehicles
TWO_WAY_EGO_LANE = ("a", "b", 1)
TWO_WAY_EGO_S_M = 30.0
TWO_WAY_EGO_SPEED_MPS = 30.0
# (lane, s [m], position deviation [m], speed [m/s], speed deviation [m/s]) per traffic vehicle, in spawn order
TWO_WAY_TRAFFIC = tuple((("a", "b", 1), 70.0 + 40.0 * i, 10.0, 24.0, 2.0) for i in range(3)) + tuple(
    (("b", "a", 0), 200.0 + 100.0 * i, 10.0, 20.0, 5.0) for i in range(2))
ONCOMING_LANE = ("b", "a", 0)  # v.target_lane_index = ("b", "a", 0)


def two_way_draws(seeds: torch.Tensor) -> torch.Tensor:
    """(E,) int64 episode seeds -> (E, 5, 2) float64 draws, per traffic vehicle in spawn order:
    (position normal, speed normal), as TwoWayEnv draws them (normal(), normal()). The normals are
    Box-Muller pairs of 24-bit uniforms (|z| < 5.8)."""
    vehicles = len(TWO_WAY_TRAFFIC)
    u = rng.uniform(seeds, SPAWN_STREAM, 2 * vehicles, torch.float64).view(-1, vehicles, 2)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))  # 1 - u in (0, 1]
    angle = 2.0 * math.pi * u[..., 1]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)


def spawn_two_way(draws: torch.Tensor, road: RoadScenario) -> RoadTraffic:
    """TwoWayEnv._make_vehicles for E envs from (E, 5, 2) draws (`two_way_draws`): a RoadTraffic of
    E envs and N = 6 columns (the ego, three ahead, two oncoming), no routes. Computed in float64 on
    `road.graph64` (as highway-env), then cast."""
    graph, graph64 = road.graph, road.graph64
    device, f64 = graph.length.device, torch.float64
    draws = draws.to(device, f64)
    envs, columns = draws.shape[0], len(TWO_WAY_TRAFFIC) + 1
    z_s, z_speed = draws.unbind(-1)  # each (E, 5)
    spawn_lane = torch.tensor([graph.lane_id(TWO_WAY_EGO_LANE)] + [graph.lane_id(t[0]) for t in TWO_WAY_TRAFFIC],
                              device=device).expand(envs, columns)

    def row(values) -> torch.Tensor:
        return torch.tensor(values, dtype=f64, device=device).expand(envs, len(values))

    base_s = row([TWO_WAY_EGO_S_M] + [t[1] for t in TWO_WAY_TRAFFIC])
    s_deviation = row([0.0] + [t[2] for t in TWO_WAY_TRAFFIC])
    base_speed = row([TWO_WAY_EGO_SPEED_MPS] + [t[3] for t in TWO_WAY_TRAFFIC])
    speed_deviation = row([0.0] + [t[4] for t in TWO_WAY_TRAFFIC])
    no_draw = torch.zeros((envs, 1), dtype=f64, device=device)
    s = base_s + s_deviation * torch.cat([no_draw, z_s], dim=1)
    x, y = graph64.position(spawn_lane, s, torch.zeros_like(s))  # lane.position(s, 0)
    heading = graph64.heading_at(spawn_lane, base_s)  # heading_at(70 + 40 i): the undeviated s
    heading[:, 0] = 0.0  # the ego: Vehicle's default heading
    speed = base_speed + speed_deviation * torch.cat([no_draw, z_speed], dim=1)
    lane = graph64.closest_lane(x, y, heading)  # Vehicle.__init__: the closest lane, heading-weighted
    ego = torch.zeros((envs, columns), dtype=torch.bool, device=device)
    ego[:, 0] = True
    oncoming = torch.tensor([False] * 4 + [True] * 2, device=device).expand(envs, columns)
    target_lane = torch.where(oncoming, graph.lane_id(ONCOMING_LANE), lane)
    speed_index, target_speed = spawned_speeds(road, speed)
    return spawned_traffic(road, x, y, heading, speed, lane, target_speed, speed_index,
                           delta=torch.full_like(x, IDM_DELTA), target_lane=target_lane,
                           lane_change=torch.zeros_like(ego))  # enable_lane_change=False (the ego: not an IDMVehicle)


def two_way_reward(road: RoadScenario, traffic: RoadTraffic, actions: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """TwoWayEnv._rewards and _reward: high_speed_reward = the ego's speed_index / (its
    target_speeds.size - 1), left_lane_reward = (len(all_side_lanes(ego.lane_index)) - 1 -
    ego.target_lane_index[2]) / (len(...) - 1); the weighted sum. (highway-env divides by zero, and
    raises, on a one-lane edge; the ego never reaches ("b", "a", 0), closest lanes weigh heading.)"""
    config, graph, v = road.config, road.graph, traffic.vehicles
    dtype = v.x.dtype
    sides = (graph.side_lanes[v.lane[:, 0]] >= 0).sum(dim=-1).to(dtype)
    terms = {
        "high_speed_reward": v.speed_index[:, 0].to(dtype) / (road.target_speeds.shape[0] - 1),
        "left_lane_reward": (sides - 1 - graph.lane_number[v.target_lane[:, 0]].to(dtype)) / (sides - 1),
    }
    return sum(config.get(name, 0) * value for name, value in terms.items()), terms
