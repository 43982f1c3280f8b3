"""merge-v1 on the fast road-network simulator: MergeEnv's spawn, reward and end, batched.

Spawn (`spawn_merge`): MergeEnv._make_vehicles with the counter-based RNG of envs.fast.rng keyed by
the episode seed (so an episode depends on its seed alone, not on its row or batch): the ego (an
MDPVehicle) at ("a", "b", 1) s = 30 m, 30 m/s; three IDM vehicles from s = 90, 70, 5 m +- U(-5, 5)
at 29, 31, 31.5 m/s +- U(-1, 1), each on ("a", "b", integers(2)); the merging IDM vehicle at
("j", "k", 0) s = 110 m, 20 m/s, target speed 30 m/s; the Obstacle (2 x 2 m) at the end of
("b", "c", 2). Merge does not call randomize_behavior (IDM DELTA stays 4) and gives no routes; IDM
timers are IDMVehicle's (x + y) pi mod LANE_CHANGE_DELAY; lanes are the closest lane with heading.
Columns follow road.vehicles + road.objects: ego, the three, the merging vehicle, the obstacle.
"""

from __future__ import annotations


import torch

from envs.fast import rng
from envs.fast.lanes import LaneGraph
from envs.fast.road_scenario import (
    IDM_DELTA, VEHICLE_LENGTH_M, VEHICLE_WIDTH_M, RoadScenario, lane_change_actions, spawned_traffic)
from envs.fast.road_traffic import RoadTraffic
from envs.fast.spawn import SPAWN_STREAM, speed_to_index

# MergeEnv._make_vehicles / _make_road / _is_terminated
MERGE_EGO_LANE = ("a", "b", 1)
MERGE_EGO_S_M = 30.0
MERGE_EGO_SPEED_MPS = 30.0
MERGE_TRAFFIC = ((90.0, 29.0), (70.0, 31.0), (5.0, 31.5))  # (s [m], speed [m/s]) on ("a", "b", random _id)
MERGE_TRAFFIC_LANES = 2  # np_random.integers(2)
MERGE_POSITION_JITTER_M = 5.0  # s + U(-5, 5)
MERGE_SPEED_JITTER_MPS = 1.0  # speed + U(-1, 1)
MERGING_LANE = ("j", "k", 0)
MERGING_S_M = 110.0
MERGING_SPEED_MPS = 20.0
MERGING_TARGET_SPEED_MPS = 30.0
RAMP_LANE = ("b", "c", 2)  # the obstacle's lane, and the lane of merging_speed_reward
RAMP_PARALLEL_M = 80.0  # ends[2]: the obstacle stands at lbc.position(ends[2], 0)
OBSTACLE_SIZE_M = 2.0  # Obstacle LENGTH = WIDTH
MERGE_END_X_M = 370.0  # the episode ends once the ego's x is past this
LEFT, IDLE, RIGHT, FASTER, SLOWER = range(5)  # DiscreteMetaAction indices (lane_change_reward counts 0 and 2)


def merge_draws(seeds: torch.Tensor) -> torch.Tensor:
    """(E,) int64 episode seeds -> (E, 3, 3) uniforms in [0, 1): per traffic vehicle (lane, s, speed)."""
    return rng.uniform(seeds, SPAWN_STREAM, 3 * len(MERGE_TRAFFIC), torch.float64).view(-1, len(MERGE_TRAFFIC), 3)


def spawn_merge(draws: torch.Tensor, road: RoadScenario) -> RoadTraffic:
    """MergeEnv._make_vehicles for E envs from (E, 3, 3) uniforms (`merge_draws`): a RoadTraffic of
    E envs and N = 6 columns (ego, three IDM vehicles, the merging one, the obstacle), no routes.
    Computed in float64 (as highway-env), then cast to the graph's dtype."""
    graph = road.graph
    device = graph.length.device
    f64 = torch.float64
    draws = draws.to(device, f64)
    envs, others = draws.shape[0], len(MERGE_TRAFFIC)
    lane_u, s_u, speed_u = draws.unbind(-1)  # each (E, 3)
    ab = [graph.lane_id(("a", "b", i)) for i in range(MERGE_TRAFFIC_LANES)]
    lane_number = torch.floor(lane_u * MERGE_TRAFFIC_LANES).long().clamp_(0, MERGE_TRAFFIC_LANES - 1)
    traffic_lane = torch.tensor(ab, device=device)[lane_number]  # (E, 3)
    base_s = torch.tensor([s for s, _ in MERGE_TRAFFIC], dtype=f64, device=device)
    base_speed = torch.tensor([v for _, v in MERGE_TRAFFIC], dtype=f64, device=device)
    traffic_s = base_s + MERGE_POSITION_JITTER_M * (2 * s_u - 1)  # np_random.uniform(-5, 5)
    traffic_speed = base_speed + MERGE_SPEED_JITTER_MPS * (2 * speed_u - 1)

    def column(value: float) -> torch.Tensor:
        return torch.full((envs, 1), value, dtype=f64, device=device)

    def lane_column(index: tuple) -> torch.Tensor:
        return torch.full((envs, 1), graph.lane_id(index), dtype=torch.int64, device=device)

    start_lane = torch.cat([lane_column(MERGE_EGO_LANE), traffic_lane, lane_column(MERGING_LANE),
                            lane_column(RAMP_LANE)], dim=1)  # (E, 6): the lanes positions are taken on
    s = torch.cat([column(MERGE_EGO_S_M), traffic_s, column(MERGING_S_M), column(RAMP_PARALLEL_M)], dim=1)
    x, y = _position64(graph, start_lane, s)
    heading = torch.zeros_like(x)  # every vehicle and the obstacle start with heading 0
    speed = torch.cat([column(MERGE_EGO_SPEED_MPS), traffic_speed, column(MERGING_SPEED_MPS), column(0.0)], dim=1)
    lane = graph.closest_lane(x.to(graph.length.dtype), y.to(graph.length.dtype), heading.to(graph.length.dtype))
    columns = others + 3
    ego = torch.zeros((envs, columns), dtype=torch.bool, device=device)
    ego[:, 0] = True
    obstacle = torch.zeros_like(ego)
    obstacle[:, -1] = True
    target_speeds = road.target_speeds.to(f64)
    speed_index = speed_to_index(speed, target_speeds)  # MDPVehicle.get_speed_index (ego: its speed_index)
    target_speed = speed.clone()  # ControlledVehicle: target_speed = speed
    target_speed[:, 0] = target_speeds[speed_index[:, 0]]  # MDPVehicle: index_to_speed(speed_to_index(speed))
    target_speed[:, -2] = MERGING_TARGET_SPEED_MPS
    target_speed[:, -1] = 0.0  # the obstacle is not a ControlledVehicle
    return spawned_traffic(
        road, x, y, heading, speed, lane, target_speed, speed_index,
        delta=torch.full_like(x, IDM_DELTA),  # IDMVehicle.DELTA: merge never calls randomize_behavior
        lane_change=~ego & ~obstacle, is_object=obstacle,
        length=torch.where(obstacle, OBSTACLE_SIZE_M, VEHICLE_LENGTH_M).to(x),
        width=torch.where(obstacle, OBSTACLE_SIZE_M, VEHICLE_WIDTH_M).to(x),
    )


def _position64(graph: LaneGraph, lane: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lane.position(s, 0) in float64 whatever the graph's dtype (merge's spawn lanes are straight)."""
    start, direction = graph.start[lane].double(), graph.direction[lane].double()
    return start[..., 0] + s * direction[..., 0], start[..., 1] + s * direction[..., 1]


def merge_reward(road: RoadScenario, traffic: RoadTraffic, actions: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """MergeEnv._rewards and _reward (see the module docstring): (B,) rewards and the (B,) terms."""
    config, graph, v = road.config, road.graph, traffic.vehicles
    dtype = v.x.dtype
    low, high = config["reward_speed_range"]
    controlled = traffic.present & ~traffic.is_object
    merging = controlled & (v.lane == graph.lane_id(RAMP_LANE))
    slowdown = (v.target_speed - v.speed) / v.target_speed
    terms = {
        "collision_reward": traffic.crashed[:, 0].to(dtype),
        "right_lane_reward": graph.lane_number[v.lane[:, 0]].to(dtype) / 1,
        "high_speed_reward": (v.speed[:, 0] - low) / (high - low),  # utils.lmap, not clipped
        "lane_change_reward": lane_change_actions(actions).to(dtype),
        "merging_speed_reward": torch.where(merging, slowdown, torch.zeros_like(slowdown)).sum(dim=1),
    }
    reward = sum(config.get(name, 0) * value for name, value in terms.items())
    floor = config["collision_reward"] + config["merging_speed_reward"]
    ceiling = config["high_speed_reward"] + config["right_lane_reward"]
    return (reward - floor) / (ceiling - floor), terms


def merge_terminated(road: RoadScenario, traffic: RoadTraffic) -> torch.Tensor:
    """MergeEnv._is_terminated: the ego crashed, or its x is past 370 m. (B,) bool."""
    return traffic.crashed[:, 0] | (traffic.vehicles.x[:, 0] > MERGE_END_X_M)
