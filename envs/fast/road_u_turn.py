"""u-turn-v1 on the fast road-network simulator: UTurnEnv's spawn, reward and end, batched.

U-turn (`spawn_u_turn`, `u_turn_reward`): UTurnEnv._make_vehicles with our RNG: the ego
(MDPVehicle, target speeds 8, 16, 24 m/s) at ("a", "b", 0) s = 0, 16 m/s, heading 0, route to "d"
(its PURSUIT_TAU has no effect: steering reads TAU_PURSUIT, road_motion.py); six IDM vehicles,
each make_on_lane (position lane.position(s, 0), heading lane.heading_at(s); the lane is then the
closest one) at s = base + 2 N(0, 1) m, base + 2 N m/s, routed to "d", lane changes enabled:
("a", "b", 0) 25 m at 13.5 m/s (the only one randomize_behavior-ed: DELTA ~ U(3.5, 4.5)),
("a", "b", 1) 56 m at 14.5 m/s, ("b", "c", 1) 0.5 m at 4.5 m/s, ("b", "c", 0) 17.5 m at 5.5 m/s,
("c", "d", 0) 1 m at 3.5 m/s, ("c", "d", 1) 30 m at 5.5 m/s (positions before a lane's start
extrapolated along it). highway-env draws normal, normal per vehicle in that order, and the first
vehicle's uniform after its two normals; `u_turn_draws` gives the same distributions (Box-Muller
normals). The others keep DELTA = 4; IDM timers are IDMVehicle's (x + y) pi mod LANE_CHANGE_DELAY.
Routes are (B, N, R) with R = the longest route any lane plans to "d". Columns follow
road.vehicles: the ego, then the six in spawn order. Reward: collision = crashed, left_lane = the
ego's lane _id / max(side lanes - 1, 1), high_speed = clip(lmap(speed, reward_speed_range, [0, 1]),
0, 1), on_road = ego.on_road; the weighted sum, lmap-ed from [collision, high_speed + left_lane] to
[0, 1] when normalize_reward, times on_road. Terminated: crashed. Truncated: AbstractEnv's time
(+1 / policy_frequency per step) >= duration (10 s: 10 steps), or DrivingEnv's max_episode_steps.
Goal (`u_turn_goal`, envs.goals): the ego's lane is on the straight after the turn, ("c", "d").
"""

from __future__ import annotations

import math

import torch

from envs.fast import rng
from envs.fast.road_roundabout import _route_table
from envs.fast.road_scenario import IDM_DELTA, IDM_DELTA_RANGE, RoadScenario, spawned_speeds, spawned_traffic
from envs.fast.road_traffic import RoadTraffic
from envs.goals import UTURN_RETURN_ROAD
from envs.fast.spawn import SPAWN_STREAM

# UTurnEnv._make_vehicles
U_TURN_EGO_LANE = ("a", "b", 0)
U_TURN_EGO_S_M = 0.0
U_TURN_EGO_SPEED_MPS = 16.0
U_TURN_DESTINATION = "d"  # plan_route_to("d"), the ego's and every vehicle's
# (lane, s [m], speed [m/s]) of the six IDM vehicles, in spawn order
U_TURN_TRAFFIC = ((("a", "b", 0), 25.0, 13.5), (("a", "b", 1), 56.0, 14.5), (("b", "c", 1), 0.5, 4.5),
                  (("b", "c", 0), 17.5, 5.5), (("c", "d", 0), 1.0, 3.5), (("c", "d", 1), 30.0, 5.5))
U_TURN_POSITION_DEVIATION_M = 2.0  # position_deviation
U_TURN_SPEED_DEVIATION_MPS = 2.0  # speed_deviation
U_TURN_RANDOMIZED = 0  # the traffic vehicle whose behaviour is randomised (vehicle 1)


def u_turn_draws(seeds: torch.Tensor) -> torch.Tensor:
    """(E,) int64 episode seeds -> (E, 6, 3) float64 draws, per traffic vehicle in spawn order:
    (position normal, speed normal, DELTA uniform), as UTurnEnv draws them (normal(), normal(),
    and for the first vehicle only randomize_behavior's uniform; the others' third draw is unused).
    The normals are Box-Muller pairs of 24-bit uniforms (|z| < 5.8)."""
    vehicles = len(U_TURN_TRAFFIC)
    u = rng.uniform(seeds, SPAWN_STREAM, 3 * vehicles, torch.float64).view(-1, vehicles, 3)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))  # 1 - u in (0, 1]
    angle = 2.0 * math.pi * u[..., 1]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), u[..., 2]], dim=-1)


def spawn_u_turn(draws: torch.Tensor, road: RoadScenario) -> RoadTraffic:
    """UTurnEnv._make_vehicles for E envs from (E, 6, 3) draws (`u_turn_draws`): a RoadTraffic of E
    envs and N = 7 columns (the ego, the six IDM vehicles), each routed to "d" (R = the longest route
    any lane plans there). Computed in float64 on `road.graph64` (as highway-env), then cast."""
    graph, graph64 = road.graph, road.graph64
    device, f64 = graph.length.device, torch.float64
    draws = draws.to(device, f64)
    envs, columns = draws.shape[0], len(U_TURN_TRAFFIC) + 1
    z_s, z_speed, delta_u = draws.unbind(-1)  # each (E, 6)
    spawn_lane = torch.tensor([graph.lane_id(U_TURN_EGO_LANE)] + [graph.lane_id(t[0]) for t in U_TURN_TRAFFIC],
                              device=device).expand(envs, columns)

    def row(values) -> torch.Tensor:
        return torch.tensor(values, dtype=f64, device=device).expand(envs, len(values))

    no_draw = torch.zeros((envs, 1), dtype=f64, device=device)
    s = row([U_TURN_EGO_S_M] + [t[1] for t in U_TURN_TRAFFIC]) + torch.cat(
        [no_draw, U_TURN_POSITION_DEVIATION_M * z_s], dim=1)
    speed = row([U_TURN_EGO_SPEED_MPS] + [t[2] for t in U_TURN_TRAFFIC]) + torch.cat(
        [no_draw, U_TURN_SPEED_DEVIATION_MPS * z_speed], dim=1)
    x, y = graph64.position(spawn_lane, s, torch.zeros_like(s))  # make_on_lane: lane.position(s, 0)
    heading = graph64.heading_at(spawn_lane, s)  # make_on_lane: lane.heading_at(s)
    heading[:, 0] = 0.0  # the ego: Vehicle's default heading
    lane = graph64.closest_lane(x, y, heading)  # Vehicle.__init__: the closest lane, heading-weighted
    table_edge, table_lane = _route_table(road, (U_TURN_DESTINATION,))
    route_edge, route_lane = table_edge[lane, 0], table_lane[lane, 0]  # (E, N, R): plan_route_to("d")
    ego = torch.zeros((envs, columns), dtype=torch.bool, device=device)
    ego[:, 0] = True
    speed_index, target_speed = spawned_speeds(road, speed)
    low, high = IDM_DELTA_RANGE
    delta = torch.full((envs, columns), IDM_DELTA, dtype=f64, device=device)
    delta[:, 1 + U_TURN_RANDOMIZED] = low + (high - low) * delta_u[:, U_TURN_RANDOMIZED]  # randomize_behavior
    return spawned_traffic(road, x, y, heading, speed, lane, target_speed, speed_index, delta,
                           lane_change=~ego, routes=(route_edge, route_lane))  # IDMVehicle.enable_lane_change (default True)


def u_turn_reward(road: RoadScenario, traffic: RoadTraffic, actions: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """UTurnEnv._rewards and _reward: collision_reward = crashed, left_lane_reward = the ego's lane
    _id / max(len(all_side_lanes(ego.lane_index)) - 1, 1), high_speed_reward = clip(lmap(speed,
    reward_speed_range, [0, 1]), 0, 1), on_road_reward = ego.on_road; the weighted sum, lmap-ed from
    [collision_reward, high_speed_reward + left_lane_reward] to [0, 1] when normalize_reward, times
    on_road_reward."""
    config, graph, v = road.config, road.graph, traffic.vehicles
    dtype = v.x.dtype
    lane = v.lane[:, 0]
    sides = (graph.side_lanes[lane] >= 0).sum(dim=-1).to(dtype)
    low, high = config["reward_speed_range"]
    on_road = graph.on_lane(lane, v.x[:, 0], v.y[:, 0])  # ego.lane.on_lane(ego.position)
    terms = {
        "collision_reward": traffic.crashed[:, 0].to(dtype),
        "left_lane_reward": graph.lane_number[lane].to(dtype) / torch.clamp(sides - 1, min=1),
        "high_speed_reward": ((v.speed[:, 0] - low) / (high - low)).clamp(0, 1),
        "on_road_reward": on_road.to(dtype),
    }
    reward = sum(config.get(name, 0) * value for name, value in terms.items())
    if config["normalize_reward"]:
        floor = config["collision_reward"]
        ceiling = config["high_speed_reward"] + config["left_lane_reward"]
        reward = (reward - floor) / (ceiling - floor)
    return reward * terms["on_road_reward"], terms


def u_turn_goal(road: RoadScenario, traffic: RoadTraffic) -> torch.Tensor:
    """envs.goals' u-turn goal: the ego's lane_index[:2] is UTURN_RETURN_ROAD ("c", "d"). (B,) bool."""
    graph = road.graph
    return graph.edge[traffic.vehicles.lane[:, 0]] == graph.edges.index(UTURN_RETURN_ROAD)
