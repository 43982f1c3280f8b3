"""roundabout-v1 on the fast road-network simulator: RoundaboutEnv's spawn, reward and end, batched.

Roundabout (`spawn_roundabout`, `roundabout_reward`): RoundaboutEnv._make_vehicles with our RNG:
the ego (MDPVehicle, target speeds 0, 8, 16 m/s) at ("ser", "ses", 0) s = 125 m, 8 m/s, route to
"nxs"; the incoming IDM vehicle on ("we", "sx", 1) at s = 5 + 2 N(0, 1) m, the two others on
("we", "sx", 0) at +-20 + 2 N m, the entering one on ("eer", "ees", 0) at 50 + 2 N m, each at
16 + 2 N m/s (positions past a lane's end extrapolated along it, as make_on_lane; the lane is then
the closest one), routed to a uniform choice of "exr", "sxr", "nxr" (the incoming one to
config["incoming_vehicle_destination"] when set), DELTA ~ U(3.5, 4.5) (randomize_behavior).
highway-env draws, per vehicle in that order, normal, normal, choice, uniform; `roundabout_draws`
gives the same distributions (Box-Muller normals). Routes are (B, N, R) with R = the longest route
any lane plans to those destinations (11). Reward: collision = crashed, high_speed = speed_index /
2, lane_change = action in (0, 2), on_road = ego.on_road; the weighted sum lmap-ed from
[collision, high_speed] to [0, 1] (normalize_reward), times on_road. Terminated: crashed.
Truncated: AbstractEnv's time (+1 / policy_frequency per step) >= duration (11 s: 11 steps), or
DrivingEnv's max_episode_steps.
"""

from __future__ import annotations

import functools
import math

import torch

from envs.fast import rng
from envs.fast.road_motion import NO_LANE, route_to
from envs.fast.road_scenario import (
    IDM_DELTA, IDM_DELTA_RANGE, RoadScenario, lane_change_actions, spawned_speeds, spawned_traffic)
from envs.fast.road_traffic import RoadTraffic
from envs.fast.spawn import SPAWN_STREAM

# RoundaboutEnv._make_vehicles
ROUNDABOUT_EGO_LANE = ("ser", "ses", 0)
ROUNDABOUT_EGO_S_M = 125.0
ROUNDABOUT_EGO_HEADING_S_M = 140.0  # heading=ego_lane.heading_at(140.0) (a straight lane: the same heading)
ROUNDABOUT_EGO_SPEED_MPS = 8.0
ROUNDABOUT_EGO_DESTINATION = "nxs"  # ego_vehicle.plan_route_to("nxs")
# (lane, s [m]) of the incoming vehicle, the two others on the ring, the entering vehicle, in spawn order
ROUNDABOUT_TRAFFIC = ((("we", "sx", 1), 5.0), (("we", "sx", 0), 20.0), (("we", "sx", 0), -20.0),
                      (("eer", "ees", 0), 50.0))
ROUNDABOUT_TRAFFIC_SPEED_MPS = 16.0
ROUNDABOUT_POSITION_DEVIATION_M = 2.0  # s + N(0, 1) * 2
ROUNDABOUT_SPEED_DEVIATION_MPS = 2.0  # speed + N(0, 1) * 2
ROUNDABOUT_DESTINATIONS = ("exr", "sxr", "nxr")  # np_random.choice(destinations)


def roundabout_draws(seeds: torch.Tensor) -> torch.Tensor:
    """(E,) int64 episode seeds -> (E, 4, 4) float64 draws, per traffic vehicle in spawn order:
    (position normal, speed normal, destination uniform, DELTA uniform), as RoundaboutEnv draws
    them (normal(), normal(), choice(destinations), randomize_behavior's uniform). The normals are
    Box-Muller pairs of 24-bit uniforms (|z| < 5.8)."""
    vehicles = len(ROUNDABOUT_TRAFFIC)
    u = rng.uniform(seeds, SPAWN_STREAM, 4 * vehicles, torch.float64).view(-1, vehicles, 4)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))  # 1 - u in (0, 1]
    angle = 2.0 * math.pi * u[..., 1]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), u[..., 2], u[..., 3]], dim=-1)


@functools.lru_cache(maxsize=16)
def _route_table(road: RoadScenario, destinations: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """ControlledVehicle.plan_route_to(destination) of a vehicle on each lane: (L, D, R) route
    edge and lane ids (NO_LANE-padded), R the longest route planned (from any lane to any of them)."""
    graph = road.graph
    routes = [[route_to(graph, lane, d) for d in destinations] for lane in range(graph.lanes_count)]
    slots = max(len(r) for row in routes for r in row)
    edge = torch.full((graph.lanes_count, len(destinations), slots), NO_LANE, dtype=torch.int64)
    lane = edge.clone()
    for i, row in enumerate(routes):
        for j, route in enumerate(row):
            for k, (e, lane_id) in enumerate(route):
                edge[i, j, k], lane[i, j, k] = e, lane_id
    device = graph.length.device
    return edge.to(device), lane.to(device)


def spawn_roundabout(draws: torch.Tensor, road: RoadScenario) -> RoadTraffic:
    """RoundaboutEnv._make_vehicles for E envs from (E, 4, 4) draws (`roundabout_draws`): a
    RoadTraffic of E envs and N = 5 columns (the ego, the incoming vehicle, the two others on the
    ring, the entering vehicle), each with its route (R = the longest route any lane plans to the
    destinations). Computed in float64 on `road.graph64` (as highway-env), then cast."""
    graph, graph64 = road.graph, road.graph64
    device, f64 = graph.length.device, torch.float64
    draws = draws.to(device, f64)
    envs, columns = draws.shape[0], len(ROUNDABOUT_TRAFFIC) + 1
    z_s, z_speed, destination_u, delta_u = draws.unbind(-1)  # each (E, 4)
    spawn_lane = torch.tensor([graph.lane_id(ROUNDABOUT_EGO_LANE)] + [graph.lane_id(lane) for lane, _ in
                                                                      ROUNDABOUT_TRAFFIC], device=device)
    spawn_lane = spawn_lane.expand(envs, columns)
    base_s = torch.tensor([s for _, s in ROUNDABOUT_TRAFFIC], dtype=f64, device=device)

    def column(value: float) -> torch.Tensor:
        return torch.full((envs, 1), value, dtype=f64, device=device)

    s = torch.cat([column(ROUNDABOUT_EGO_S_M), base_s + ROUNDABOUT_POSITION_DEVIATION_M * z_s], dim=1)
    x, y = graph64.position(spawn_lane, s, torch.zeros_like(s))  # make_on_lane: lane.position(s, 0)
    heading = graph64.heading_at(spawn_lane, torch.cat([column(ROUNDABOUT_EGO_HEADING_S_M), s[:, 1:]], dim=1))
    speed = torch.cat([column(ROUNDABOUT_EGO_SPEED_MPS),
                       ROUNDABOUT_TRAFFIC_SPEED_MPS + ROUNDABOUT_SPEED_DEVIATION_MPS * z_speed], dim=1)
    lane = graph64.closest_lane(x, y, heading)  # Vehicle.__init__: the closest lane, heading-weighted
    # plan_route_to(destination) from that lane; the ego's destination is the table's last column
    destinations = ROUNDABOUT_DESTINATIONS + (ROUNDABOUT_EGO_DESTINATION,)
    count = len(ROUNDABOUT_DESTINATIONS)
    choice = torch.floor(destination_u * count).long().clamp_(0, count - 1)  # np_random.choice(destinations)
    fixed = road.config.get("incoming_vehicle_destination")
    if fixed is not None:  # the incoming vehicle's destination is the config's (no choice drawn)
        choice[:, 0] = int(fixed)
    destination = torch.cat([torch.full((envs, 1), len(destinations) - 1, dtype=torch.int64, device=device), choice], 1)
    table_edge, table_lane = _route_table(road, destinations)
    route_edge, route_lane = table_edge[lane, destination], table_lane[lane, destination]  # (E, N, R)
    ego = torch.zeros((envs, columns), dtype=torch.bool, device=device)
    ego[:, 0] = True
    speed_index, target_speed = spawned_speeds(road, speed)
    low, high = IDM_DELTA_RANGE  # randomize_behavior: DELTA
    delta = torch.cat([column(IDM_DELTA), low + (high - low) * delta_u], dim=1)
    return spawned_traffic(road, x, y, heading, speed, lane, target_speed, speed_index, delta,
                           lane_change=~ego, routes=(route_edge, route_lane))  # IDMVehicle.enable_lane_change


def roundabout_reward(road: RoadScenario, traffic: RoadTraffic, actions: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """RoundaboutEnv._rewards and _reward: collision_reward = crashed, high_speed_reward = the ego's
    speed_index / (DEFAULT_TARGET_SPEEDS.size - 1), lane_change_reward = action in (0, 2),
    on_road_reward = ego.on_road; the weighted sum, lmap-ed from [collision_reward,
    high_speed_reward] to [0, 1] when normalize_reward, times on_road_reward."""
    config, graph, v = road.config, road.graph, traffic.vehicles
    dtype = v.x.dtype
    on_road = graph.on_lane(v.lane[:, 0], v.x[:, 0], v.y[:, 0])  # ego.lane.on_lane(ego.position)
    terms = {
        "collision_reward": traffic.crashed[:, 0].to(dtype),
        "high_speed_reward": v.speed_index[:, 0].to(dtype) / (road.default_target_speeds.shape[0] - 1),
        "lane_change_reward": lane_change_actions(actions).to(dtype),
        "on_road_reward": on_road.to(dtype),
    }
    reward = sum(config.get(name, 0) * value for name, value in terms.items())
    if config["normalize_reward"]:
        floor, ceiling = config["collision_reward"], config["high_speed_reward"]
        reward = (reward - floor) / (ceiling - floor)
    return reward * terms["on_road_reward"], terms


def crashed_terminated(road: RoadScenario, traffic: RoadTraffic) -> torch.Tensor:
    """RoundaboutEnv._is_terminated: the ego crashed. (B,) bool."""
    return traffic.crashed[:, 0].clone()
