"""exit-v1 on the fast road-network simulator: ExitEnv's spawn, reward and end, batched.

Exit (`spawn_exit`, `exit_reward`): ExitEnv._create_vehicles with our RNG. highway-env builds the
ego with Vehicle.create_random(speed=25, lane ("0", "1", 0), spacing=ego_spacing) and remakes it as
an MDPVehicle (target speeds 18, 24, 30 m/s) at that position, heading and speed (no route); then
vehicles_count IDM vehicles, each create_random(lane ("0", "1", L), speed = that lane's speed limit
26 - 3.4 L m/s, spacing = 1 / vehicles_density), L drawn by np_random.choice(lanes_count, p = lane
number / sum) (never lane 0), routed plan_route_to("3"), enable_lane_change = False, DELTA 4 (no
randomize_behavior). create_random puts a vehicle at s = (the largest s of all vehicles so far on
its lane, or 3 offset for the first) + offset U(0.9, 1.1) on its lane, offset = spacing (12 + speed)
exp(-5/40 lanes of ("0", "1")), heading the lane's, lane then the closest one. highway-env draws,
in that order: the ego's U(0.9, 1.1), then per vehicle the lane choice (one random(), searched in
the cumulative p) and its U(0.9, 1.1); `exit_draws` gives the same uniforms (24-bit). IDM timers
are IDMVehicle's (x + y) pi mod LANE_CHANGE_DELAY. Routes are (B, N, R), R = 3 (the spawn lane,
("1", "2"), ("2", "3")); the ego's is empty. Columns follow road.vehicles: the ego, then the IDM
vehicles in spawn order. Reward: collision = crashed, goal = `exit_goal`, high_speed =
clip(lmap(speed, reward_speed_range, [0, 1]), 0, 1) (the speed, not projected), right_lane = the
ego's target lane _id; the weighted sum, lmap-ed from [collision, goal] to [0, 1] and clipped to
[0, 1] when normalize_reward (no on-road factor). Terminated: crashed. Truncated: AbstractEnv's time
(+1 / policy_frequency per step) >= duration (18 s: 18 steps), or DrivingEnv's max_episode_steps.
Goal (`exit_goal`, ExitEnv._is_success, envs.goals): the ego's target lane is ("1", "2",
lanes_count) (the exit lane next to the highway) or ("2", "exit", 0).
"""

from __future__ import annotations

import numpy as np
import torch

from envs.fast import rng
from envs.fast.lanes import LaneGraph
from envs.fast.road_motion import NO_LANE
from envs.fast.road_roundabout import _route_table
from envs.fast.road_scenario import IDM_DELTA, RoadScenario, spawned_speeds, spawned_traffic
from envs.fast.road_traffic import RoadTraffic
from envs.fast.spawn import SPAWN_STREAM

# ExitEnv._create_vehicles / _is_success
EXIT_VEHICLES_COUNT = 20  # ExitEnv's default vehicles_count: what `exit_draws` draws for
EXIT_SPAWN_ROAD = ("0", "1")  # every vehicle's lane_from, lane_to
EXIT_EGO_LANE_NUMBER = 0  # lane_id=0
EXIT_EGO_SPEED_MPS = 25.0  # speed=25.0
EXIT_DESTINATION = "3"  # the IDM vehicles' plan_route_to("3")
EXIT_GAP_RANGE = (0.9, 1.1)  # create_random: offset * np_random.uniform(0.9, 1.1)
EXIT_FIRST_GAPS = 3.0  # create_random on an empty road: x0 = 3 * offset
EXIT_SLIP_ROAD = ("1", "2")  # its extra lane (_id = lanes_count) is the exit lane
EXIT_RAMP_LANE = ("2", "exit", 0)


def exit_draws(seeds: torch.Tensor, vehicles: int = EXIT_VEHICLES_COUNT) -> torch.Tensor:
    """(E,) int64 episode seeds -> (E, 1 + 2 vehicles) float64 uniforms in [0, 1), in the order
    ExitEnv draws them: the ego's gap, then per IDM vehicle its lane choice and its gap."""
    return rng.uniform(seeds, SPAWN_STREAM, 1 + 2 * vehicles, torch.float64)


def exit_unsupported(config: dict) -> list[str]:
    """Why `exit_draws` cannot spawn this config: it draws for EXIT_VEHICLES_COUNT vehicles."""
    count = int(config.get("vehicles_count", EXIT_VEHICLES_COUNT))
    if count != EXIT_VEHICLES_COUNT:
        return [f"its vehicles_count is {count} (the fast exit spawn draws for {EXIT_VEHICLES_COUNT})"]
    return []


def lane_choice_cdf(lanes: int) -> list[float]:
    """Generator.choice(arange(lanes), p=lanes / lanes.sum())'s table: cumsum(p) / its last entry,
    in float64 as numpy computes it (a uniform u picks searchsorted(cdf, u, side="right"))."""
    p = np.arange(lanes) / np.arange(lanes).sum()
    cdf = p.cumsum()
    return (cdf / cdf[-1]).tolist()


def spawn_exit(draws: torch.Tensor, road: RoadScenario) -> RoadTraffic:
    """ExitEnv._create_vehicles for E envs from (E, 1 + 2 V) uniforms (`exit_draws`): a RoadTraffic
    of E envs and N = 1 + V columns (the ego, the V IDM vehicles in spawn order), the IDM vehicles
    routed to "3" (R = 3). Computed in float64 on `road.graph64` (as highway-env), then cast."""
    graph, graph64, config = road.graph, road.graph64, road.config
    device, f64 = graph.length.device, torch.float64
    draws = draws.to(device, f64)
    envs, vehicles = draws.shape[0], (draws.shape[1] - 1) // 2
    if vehicles != int(config["vehicles_count"]):
        raise ValueError(f"draws for {vehicles} vehicles, the config has {config['vehicles_count']}")
    lanes = int(config["lanes_count"])
    road_lanes = torch.tensor([graph.lane_id((*EXIT_SPAWN_ROAD, i)) for i in range(lanes)], device=device)
    ego_u, lane_u, gap_u = draws[:, 0], draws[:, 1::2], draws[:, 2::2]  # (E,), (E, V), (E, V)
    cdf = torch.tensor(lane_choice_cdf(lanes), dtype=f64, device=device)
    lane_number = torch.searchsorted(cdf, lane_u.contiguous(), right=True).clamp_(0, lanes - 1)  # choice(p=...)
    spawn_lane = torch.cat([torch.full((envs, 1), EXIT_EGO_LANE_NUMBER, dtype=torch.int64, device=device),
                            lane_number], dim=1)
    spawn_lane = road_lanes[spawn_lane]  # (E, N)
    speed = graph64.speed_limit[spawn_lane]  # lane.speed_limit (26 - 3.4 _id)
    speed[:, 0] = EXIT_EGO_SPEED_MPS
    spacing = torch.full_like(speed, 1.0 / float(config["vehicles_density"]))
    spacing[:, 0] = float(config["ego_spacing"])
    exponent = float(np.exp(-5 / 40 * lanes))  # np.exp(-5 / 40 * len(graph[_from][_to]))
    offset = spacing * (12 + 1.0 * speed) * exponent  # spacing * default_spacing * exp(...)
    low, high = EXIT_GAP_RANGE
    gap = offset * (low + (high - low) * torch.cat([ego_u[:, None], gap_u], dim=1))  # offset * uniform(0.9, 1.1)
    s = torch.empty_like(speed)
    x, y = torch.empty_like(speed), torch.empty_like(speed)
    s[:, 0] = EXIT_FIRST_GAPS * offset[:, 0] + gap[:, 0]
    for n in range(1 + vehicles):  # each ahead of the frontmost so far, measured along its own lane
        if n > 0:
            lane_n = spawn_lane[:, n:n + 1].expand(envs, n)
            s[:, n] = _longitudinal(graph64, lane_n, x[:, :n], y[:, :n]).max(dim=1).values + gap[:, n]
        x[:, n], y[:, n] = graph64.position(spawn_lane[:, n], s[:, n], torch.zeros_like(s[:, n]))
    heading = graph64.heading_at(spawn_lane, s)  # lane.heading_at(x0)
    lane = graph64.closest_lane(x, y, heading)  # Vehicle.__init__: the closest lane, heading-weighted
    table_edge, table_lane = _route_table(road, (EXIT_DESTINATION,))
    route_edge, route_lane = table_edge[lane, 0].clone(), table_lane[lane, 0].clone()  # (E, N, R)
    route_edge[:, 0], route_lane[:, 0] = NO_LANE, NO_LANE  # the ego: no route
    speed_index, target_speed = spawned_speeds(road, speed)
    return spawned_traffic(road, x, y, heading, speed, lane, target_speed, speed_index,
                           delta=torch.full_like(x, IDM_DELTA), lane_change=torch.zeros_like(lane, dtype=torch.bool),
                           routes=(route_edge, route_lane))  # enable_lane_change = False (the ego: not an IDMVehicle)


def _longitudinal(graph: LaneGraph, lane: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """lane.local_coordinates(v.position)[0] [m]."""
    return graph.local_coordinates(lane, x, y)[0]


def exit_goal(road: RoadScenario, traffic: RoadTraffic) -> torch.Tensor:
    """ExitEnv._is_success (envs.goals' exit goal): the ego's target_lane_index is ("1", "2",
    lanes_count) or ("2", "exit", 0). (B,) bool."""
    graph = road.graph
    target = traffic.vehicles.target_lane[:, 0]
    slip = graph.lane_id((*EXIT_SLIP_ROAD, int(road.config["lanes_count"])))
    return (target == slip) | (target == graph.lane_id(EXIT_RAMP_LANE))


def exit_steps_to_goal(road: RoadScenario, traffic: RoadTraffic) -> torch.Tensor:
    """(B,) float: a lower bound on the policy steps each ego needs to reach the exit (0 there, inf
    where it cannot any more), the planner's estimate beyond its horizon (agents/teacher.py).

    The exit lane ("1", "2", lanes_count) exists only between the slip road's start and end (x 400
    to 500 m), and a lane change is offered only within a road, so an ego k lanes to its left needs
    k changes (one policy step each) of which the last starts on the slip road: max(k, the steps to
    the slip road's start + 1). It misses the exit when it cannot start its last change before the
    slip road ends at its speed, or once it is past the slip road."""
    graph, v = road.graph, traffic.vehicles
    dtype = v.x.dtype
    lanes = int(road.config["lanes_count"])
    slip = graph.lane_id((*EXIT_SLIP_ROAD, lanes))
    slip_start, slip_end = graph.start[slip, 0].to(dtype), graph.end[slip, 0].to(dtype)  # [m] along x
    step_s = 1.0 / road.config["policy_frequency"]
    target = v.target_lane[:, 0]
    x, speed = v.x[:, 0], v.speed[:, 0].clamp(min=1.0)  # [m], [m/s]
    edge = graph.edge[target]
    before_exit = (edge == graph.edge[graph.lane_id((*EXIT_SPAWN_ROAD, 0))]) | (edge == graph.edge[slip])
    changes = (lanes - graph.lane_number[target]).to(dtype)  # lane changes to the exit lane
    to_slip = torch.ceil(((slip_start - x) / (speed * step_s)).clamp(min=0)) + 1  # [steps] the last change's earliest
    steps = torch.maximum(changes, to_slip)
    in_time = x + (changes - 1).clamp(min=0) * speed * step_s < slip_end
    steps = torch.where(before_exit & in_time, steps, torch.full_like(steps, torch.inf))
    return torch.where(exit_goal(road, traffic), torch.zeros_like(steps), steps)


def exit_reward(road: RoadScenario, traffic: RoadTraffic, actions: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """ExitEnv._rewards and _reward: collision_reward = crashed, goal_reward = _is_success,
    high_speed_reward = clip(lmap(speed, reward_speed_range, [0, 1]), 0, 1), right_lane_reward = the
    ego's target lane _id; the weighted sum, lmap-ed from [collision_reward, goal_reward] to [0, 1]
    and clipped to [0, 1] when normalize_reward."""
    config, graph, v = road.config, road.graph, traffic.vehicles
    dtype = v.x.dtype
    low, high = config["reward_speed_range"]
    terms = {
        "collision_reward": traffic.crashed[:, 0].to(dtype),
        "goal_reward": exit_goal(road, traffic).to(dtype),
        "high_speed_reward": ((v.speed[:, 0] - low) / (high - low)).clamp(0, 1),
        "right_lane_reward": graph.lane_number[v.target_lane[:, 0]].to(dtype),
    }
    reward = sum(config.get(name, 0) * value for name, value in terms.items())
    if config["normalize_reward"]:
        floor, ceiling = config["collision_reward"], config["goal_reward"]
        reward = ((reward - floor) / (ceiling - floor)).clamp(0, 1)
    return reward, terms
