"""`FastRoad`: B copies of a highway-env road-network scenario stepped as tensors (issue 21).

The road-network counterpart of `envs.fast.simulator.FastHighway`, with the same public interface
where it applies: `FastRoad(scenario, batch_size, device, dtype, render, corruptions)`,
`reset(rows, seeds)`, `load(rows, traffic, seeds)`, `step(actions) -> StepResult`, `observation()`,
`observations_of(rows)`, `clean_frames`, `reset_signals`, `episode_seeds`, `steps`.

Supported: highway-env's merge-v1 and roundabout-v1 (clearlane's scenarios/merge.yaml and
roundabout.yaml). What differs between them is one `RoadTask` each in `ROAD_TASKS` (its spawn's
draws, the spawn, reward, termination, whether it truncates at its duration); the stepping, the
signals and the frames are shared. One `step(actions)` is one policy step of highway-env's
ConnectedLaneMergeEnv (ConnectedLaneRoundaboutEnv) for every env:

    road_traffic.policy_step     the ego's DiscreteMetaAction (index -> road_motion code), then
                                 simulation_frequency / policy_frequency sub-steps of Road.act()
                                 and Road.step() (IDM, MOBIL, collisions; the obstacle at the end
                                 of the ramp included)
    MergeEnv._rewards            collision_reward = crashed, right_lane_reward = lane _id / 1,
                                 high_speed_reward = lmap(speed, reward_speed_range, [0, 1]) (not
                                 clipped, the speed not projected: as MergeEnv), lane_change_reward
                                 = action index in (0, 2), merging_speed_reward = sum over the
                                 controlled vehicles (ego and IDM, not the obstacle) whose closest
                                 lane is ("b", "c", 2) of (target_speed - speed) / target_speed
    MergeEnv._reward             the weighted sum, lmap-ed from [collision + merging_speed,
                                 high_speed + right_lane] to [0, 1] (always: merge has no
                                 normalize_reward key; lane_change_reward is summed but not in the
                                 range; no on-road factor)
    MergeEnv._is_terminated      the ego crashed, or its x > 370 m
    truncated                    steps >= scenario.episode_steps (MergeEnv._is_truncated is False,
                                 merge has no duration: DrivingEnv's limit, max_episode_steps)
    signals                      envs.safety's StepTracker, on the lane graph (`RoadSignalTracker`)
    frame                        BatchedBevCamera(..., network=the scenario's network), stacked as
                                 FastHighway stacks them (simulator.FrameStack), sensor corruptions too

Spawn (`spawn_merge`): MergeEnv._make_vehicles with the counter-based RNG of envs.fast.rng keyed by
the episode seed (so an episode depends on its seed alone, not on its row or batch): the ego (an
MDPVehicle) at ("a", "b", 1) s = 30 m, 30 m/s; three IDM vehicles from s = 90, 70, 5 m +- U(-5, 5)
at 29, 31, 31.5 m/s +- U(-1, 1), each on ("a", "b", integers(2)); the merging IDM vehicle at
("j", "k", 0) s = 110 m, 20 m/s, target speed 30 m/s; the Obstacle (2 x 2 m) at the end of
("b", "c", 2). Merge does not call randomize_behavior (IDM DELTA stays 4) and gives no routes; IDM
timers are IDMVehicle's (x + y) pi mod LANE_CHANGE_DELAY; lanes are the closest lane with heading.
Columns follow road.vehicles + road.objects: ego, the three, the merging vehicle, the obstacle.

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

Exactness: in float64, equal to highway-env / DrivingEnv to rounding (tests/envs/fast/test_road_sim.py,
test_road_roundabout.py: positions ~1e-14 m over whole episodes, rewards, terms, terminated,
truncated and signals; on the roundabout, policy steps where the ego crawls below 0.5 m/s to 1e-3,
where highway-env's own lateral loop amplifies round-off); each spawn is its env's given the same draws, but its draws are our RNG's, not numpy's (same
distributions, not the same episodes per seed). IDM constants are highway-env's defaults, read
without touching IDMVehicle's class (IntersectionEnv rewrites them; DrivingEnv restores them).
Cost: road_traffic's per-sub-step neighbour searches dominate (~0.4 s per policy step at B = 256
on one loaded CPU thread); the camera is a few percent.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from envs.fast import rng
from envs.fast.lanes import LaneGraph
from envs.fast.road_motion import NO_LANE, ControlledVehicles, action_codes, is_reachable_from, route_to
from envs.fast.scenes import scenes_of_columns
from envs.fast.road_traffic import RoadRules, RoadTraffic, neighbour_vehicles, policy_step
from envs.fast.simulator import FrameStack, StepResult, UnsupportedScenario
from envs.fast.spawn import SPAWN_STREAM, speed_to_index
from envs.fast.signals import SignalTracker, time_margins
from envs.scene import Scene
from scenarios import Scenario
from scenarios.schema import BevCameraConfig

if TYPE_CHECKING:
    from envs.fast.camera import BatchedBevCamera

IDM_VEHICLE_TYPE = "highway_env.vehicle.behavior.IDMVehicle"

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
VEHICLE_LENGTH_M, VEHICLE_WIDTH_M = 5.0, 2.0
MERGE_END_X_M = 370.0  # the episode ends once the ego's x is past this
LEFT, IDLE, RIGHT, FASTER, SLOWER = range(5)  # DiscreteMetaAction indices (lane_change_reward counts 0 and 2)

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
IDM_DELTA_RANGE = (3.5, 4.5)  # IDMVehicle.DELTA_RANGE: randomize_behavior's uniform
IDM_DELTA = 4.0  # IDMVehicle.DELTA (vehicles that never randomize_behavior, and the ego's unused slot)


def road_unsupported_reasons(scenario: Scenario) -> list[str]:
    """Why FastRoad cannot reproduce this scenario faithfully; empty when it can."""
    env_id = scenario.highway_env.id
    if env_id not in SUPPORTED_ROAD_ENV_IDS:
        return [f"its highway-env id is {env_id}"]
    reasons = []
    if scenario.camera.view != "bev":
        reasons.append(f"its camera is {scenario.camera.view!r} (only 'bev' is batched)")
    config = scenario.highway_env_config()
    if config.get("other_vehicles_type", IDM_VEHICLE_TYPE) != IDM_VEHICLE_TYPE:
        reasons.append(f"its other vehicles are {config['other_vehicles_type']} (only IDMVehicle)")
    if config.get("controlled_vehicles", 1) != 1:
        reasons.append("it has several controlled vehicles")
    action = config.get("action", {"type": "DiscreteMetaAction"})
    if action.get("type") != "DiscreteMetaAction":
        reasons.append(f"its action type is {action.get('type')} (only DiscreteMetaAction)")
    return reasons


def check_road_supported(scenario: Scenario) -> None:
    """Raise UnsupportedScenario (a ValueError), naming the supported ids, unless FastRoad supports it."""
    reasons = road_unsupported_reasons(scenario)
    if reasons:
        name = scenario.source or scenario.name or "this scenario"
        raise UnsupportedScenario(
            f"the fast road-network simulator does not support {name}: {'; '.join(reasons)}. "
            f"Supported highway-env ids: {', '.join(SUPPORTED_ROAD_ENV_IDS)}"
        )


@dataclass(frozen=True, eq=False)
class RoadScenario:
    """What FastRoad reads from highway-env once per simulator: the road and its rules."""

    graph: LaneGraph
    network: object  # highway_env RoadNetwork (for the camera)
    rules: RoadRules
    target_speeds: torch.Tensor  # (S,) MDPVehicle.target_speeds [m/s] (the ego's, from the action config)
    action_table: torch.Tensor  # (A,) DiscreteMetaAction index -> road_motion code
    config: dict  # the env's full config after reset
    graph64: LaneGraph  # the same graph in float64 (spawns are computed in float64, as highway-env)
    default_target_speeds: torch.Tensor  # (S0,) float64 MDPVehicle.DEFAULT_TARGET_SPEEDS (IDM vehicles'
    # get_speed_index, roundabout's high_speed_reward)

    @classmethod
    def of(cls, scenario: Scenario, device: torch.device, dtype: torch.dtype) -> RoadScenario:
        """gymnasium.make(scenario's id, config=its config), reset once: its network and rules."""
        import gymnasium as gym
        import highway_env  # noqa: F401  (registers the ids)

        from highway_env.vehicle.controller import MDPVehicle

        from envs.driving_env import IDM_CLASS_DEFAULTS

        env = gym.make(scenario.highway_env.id, config=scenario.highway_env_config(), disable_env_checker=True)
        try:
            env.reset(seed=0)
            u = env.unwrapped
            road = u.road
            graph = LaneGraph.from_network(road.network, device=device, dtype=dtype)
            return cls(
                graph=graph,
                network=road.network,
                rules=_with_idm_defaults(RoadRules.of(road), IDM_CLASS_DEFAULTS),
                target_speeds=torch.as_tensor([float(s) for s in u.vehicle.target_speeds], dtype=dtype, device=device),
                action_table=action_codes(u.action_type.actions, device),
                config=dict(u.config),
                graph64=graph if dtype == torch.float64 else LaneGraph.from_network(
                    road.network, device=device, dtype=torch.float64),
                default_target_speeds=torch.as_tensor(MDPVehicle.DEFAULT_TARGET_SPEEDS, dtype=torch.float64,
                                                      device=device),
            )
        finally:
            env.close()


def _with_idm_defaults(rules: RoadRules, defaults: dict[str, float]) -> RoadRules:
    """The rules with highway-env's own IDM constants where an IntersectionEnv reset may have
    rewritten IDMVehicle's (DrivingEnv restores them at every reset; MergeEnv never sets them).
    Read, not written back: IDMVehicle's class is left as it is."""
    idm = dataclasses.replace(
        rules.idm,
        distance_wanted=float(defaults["DISTANCE_WANTED"]),
        comfort_acc_max=float(defaults["COMFORT_ACC_MAX"]),
        comfort_acc_min=float(defaults["COMFORT_ACC_MIN"]),
    )
    return dataclasses.replace(rules, idm=idm)


# Spawn.


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
    # IDMVehicle: timer = (sum(position) * pi) % LANE_CHANGE_DELAY; 0 for the ego and the obstacle
    timer = torch.remainder((x + y) * math.pi, road.rules.idm.lane_change_delay)
    timer = torch.where(ego | obstacle, torch.zeros_like(timer), timer)
    dtype = graph.length.dtype
    no_route = torch.zeros((envs, columns, 0), dtype=torch.int64, device=device)
    zeros = torch.zeros((envs, columns), dtype=dtype, device=device)
    vehicles = ControlledVehicles(
        x=x.to(dtype), y=y.to(dtype), heading=heading.to(dtype), speed=speed.to(dtype), lane=lane,
        target_lane=lane.clone(), target_speed=target_speed.to(dtype), speed_index=speed_index,
        route_edge=no_route, route_lane=no_route.clone(),
        route_cursor=torch.zeros((envs, columns), dtype=torch.int64, device=device),
        steering=zeros.clone(), acceleration=zeros.clone(),
    )  # fmt: skip
    idm = ~ego & ~obstacle
    size = torch.where(obstacle, OBSTACLE_SIZE_M, VEHICLE_LENGTH_M).to(dtype)
    return RoadTraffic(
        vehicles=vehicles,
        delta=torch.full_like(zeros, 4.0),  # IDMVehicle.DELTA: merge never calls randomize_behavior
        timer=timer.to(dtype),
        lane_change=idm,
        crashed=torch.zeros_like(ego),
        impact=torch.zeros((envs, columns, 2), dtype=dtype, device=device),
        impact_pending=torch.zeros_like(ego),
        present=torch.ones_like(ego),
        is_object=obstacle,
        rank=torch.arange(columns, device=device).expand(envs, columns).clone(),
        length=size,
        width=torch.where(obstacle, OBSTACLE_SIZE_M, VEHICLE_WIDTH_M).to(dtype),
        yielding=torch.zeros_like(ego),
        yield_timer=torch.zeros((envs, columns), dtype=torch.int64, device=device),
        road_steps=torch.zeros(envs, dtype=torch.int64, device=device),
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
        "lane_change_reward": ((actions == LEFT) | (actions == RIGHT)).to(dtype),
        "merging_speed_reward": torch.where(merging, slowdown, torch.zeros_like(slowdown)).sum(dim=1),
    }
    reward = sum(config.get(name, 0) * value for name, value in terms.items())
    floor = config["collision_reward"] + config["merging_speed_reward"]
    ceiling = config["high_speed_reward"] + config["right_lane_reward"]
    return (reward - floor) / (ceiling - floor), terms


def merge_terminated(road: RoadScenario, traffic: RoadTraffic) -> torch.Tensor:
    """MergeEnv._is_terminated: the ego crashed, or its x is past 370 m. (B,) bool."""
    return traffic.crashed[:, 0] | (traffic.vehicles.x[:, 0] > MERGE_END_X_M)


# Roundabout.


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
    device, dtype, f64 = graph.length.device, graph.length.dtype, torch.float64
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
    # MDPVehicle.get_speed_index: the ego's own speed_index; IDM vehicles' from DEFAULT_TARGET_SPEEDS
    target_speeds = road.target_speeds.to(f64)
    speed_index = torch.where(ego, speed_to_index(speed, target_speeds),
                              speed_to_index(speed, road.default_target_speeds.to(device)))
    target_speed = speed.clone()  # ControlledVehicle: target_speed = speed
    target_speed[:, 0] = target_speeds[speed_index[:, 0]]  # MDPVehicle: index_to_speed(speed_to_index(speed))
    # IDMVehicle: timer = (sum(position) * pi) % LANE_CHANGE_DELAY (0 for the ego); randomize_behavior: DELTA
    timer = torch.remainder((x + y) * math.pi, road.rules.idm.lane_change_delay)
    timer = torch.where(ego, torch.zeros_like(timer), timer)
    low, high = IDM_DELTA_RANGE
    delta = torch.cat([column(IDM_DELTA), low + (high - low) * delta_u], dim=1)
    zeros = torch.zeros((envs, columns), dtype=dtype, device=device)
    vehicles = ControlledVehicles(
        x=x.to(dtype), y=y.to(dtype), heading=heading.to(dtype), speed=speed.to(dtype), lane=lane,
        target_lane=lane.clone(), target_speed=target_speed.to(dtype), speed_index=speed_index,
        route_edge=route_edge, route_lane=route_lane,
        route_cursor=torch.zeros((envs, columns), dtype=torch.int64, device=device),
        steering=zeros.clone(), acceleration=zeros.clone(),
    )  # fmt: skip
    no = torch.zeros_like(ego)
    return RoadTraffic(
        vehicles=vehicles,
        delta=delta.to(dtype),
        timer=timer.to(dtype),
        lane_change=~ego,  # IDMVehicle.enable_lane_change
        crashed=no.clone(),
        impact=torch.zeros((envs, columns, 2), dtype=dtype, device=device),
        impact_pending=no.clone(),
        present=torch.ones_like(ego),
        is_object=no.clone(),
        rank=torch.arange(columns, device=device).expand(envs, columns).clone(),
        length=torch.full_like(zeros, VEHICLE_LENGTH_M),
        width=torch.full_like(zeros, VEHICLE_WIDTH_M),
        yielding=no.clone(),
        yield_timer=torch.zeros((envs, columns), dtype=torch.int64, device=device),
        road_steps=torch.zeros(envs, dtype=torch.int64, device=device),
    )


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
        "lane_change_reward": ((actions == LEFT) | (actions == RIGHT)).to(dtype),
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


# The scenarios.


@dataclass(frozen=True)
class RoadTask:
    """What one highway-env road-network env adds to the shared stepping: its spawn and its ends.

    draws(seeds) -> the spawn's random draws ((E,) int64 episode seeds, envs.fast.rng); spawn(draws,
    road) -> RoadTraffic (its _make_vehicles); reward(road, traffic, actions) -> ((B,) reward, terms)
    (its _reward and _rewards, after the step); terminated(road, traffic) -> (B,) bool (its
    _is_terminated); truncates_at_duration: its _is_truncated is time >= config["duration"]."""

    draws: Callable[[torch.Tensor], torch.Tensor]
    spawn: Callable[[torch.Tensor, RoadScenario], RoadTraffic]
    reward: Callable[[RoadScenario, RoadTraffic, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    terminated: Callable[[RoadScenario, RoadTraffic], torch.Tensor]
    truncates_at_duration: bool


ROAD_TASKS: dict[str, RoadTask] = {
    "merge-v1": RoadTask(merge_draws, spawn_merge, merge_reward, merge_terminated, truncates_at_duration=False),
    "roundabout-v1": RoadTask(roundabout_draws, spawn_roundabout, roundabout_reward, crashed_terminated,
                              truncates_at_duration=True),
}
SUPPORTED_ROAD_ENV_IDS = tuple(ROAD_TASKS)


def duration_steps(config: dict) -> int | None:
    """The first policy step at which AbstractEnv's time (+= 1 / policy_frequency per step, in
    floating point) reaches config["duration"]; None without a duration."""
    duration = config.get("duration")
    if duration is None:
        return None
    time, steps = 0.0, 0
    while time < duration:
        time += 1 / config["policy_frequency"]
        steps += 1
    return steps


def assign_traffic(target: RoadTraffic, rows: torch.Tensor, source: RoadTraffic) -> None:
    """Overwrite the envs `rows` of `target` with `source` (E envs, as many columns and route slots)."""
    for f in fields(target.vehicles):
        getattr(target.vehicles, f.name)[rows] = getattr(source.vehicles, f.name).to(getattr(target.vehicles, f.name))
    for f in fields(target):
        if f.name != "vehicles":
            getattr(target, f.name)[rows] = getattr(source, f.name).to(getattr(target, f.name))


# Safety signals on the lane graph.


def leader_gap(graph: LaneGraph, traffic: RoadTraffic, connected: bool) -> tuple[torch.Tensor, ...]:
    """envs.safety.leader_gap on a lane graph: (gap [m], ttc [s], headway [s], leader column), each (B,).

    The leader is Road.neighbour_vehicles(ego, ego.lane_index)'s front vehicle (obstacles
    included, connected lanes as the road has them); s of both on the ego's lane (extrapolated
    past its ends), gap bumper to bumper with each one's length, speeds projected on the lane's
    heading at each one's s."""
    v = traffic.vehicles
    lane = v.lane[:, :1]  # (B, 1)
    front, _ = neighbour_vehicles(graph, traffic, v.lane, connected)
    leader = front[:, 0]  # (B,)
    has_leader = leader >= 0
    index = leader.clamp(min=0)[:, None]
    s_ego, _ = graph.local_coordinates(lane, v.x[:, :1], v.y[:, :1])
    lx, ly = v.x.gather(1, index), v.y.gather(1, index)
    s_leader, _ = graph.local_coordinates(lane, lx, ly)

    def along(speed, heading, s):
        direction = graph.heading_at(lane, s)
        return (speed * torch.cos(heading) * torch.cos(direction) + speed * torch.sin(heading) * torch.sin(direction))[:, 0]

    ego_speed = along(v.speed[:, :1], v.heading[:, :1], s_ego)
    leader_speed = along(v.speed.gather(1, index), v.heading.gather(1, index), s_leader)
    half = (traffic.length[:, 0] + traffic.length.gather(1, index)[:, 0]) / 2
    gap = torch.where(has_leader, (s_leader - s_ego)[:, 0] - half, torch.full_like(ego_speed, math.inf))
    return (gap, *time_margins(gap, ego_speed, leader_speed, has_leader), leader)


class RoadSignalTracker(SignalTracker):
    """envs.safety.StepTracker for B envs on a lane graph: the same keys as envs.fast.signals."""

    def __init__(self, graph: LaneGraph, connected: bool, batch_size: int, dt_s: float,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(batch_size, dt_s, device, dtype)
        self.graph, self.connected = graph, connected

    def ego(self, traffic: RoadTraffic) -> tuple[torch.Tensor, ...]:
        v = traffic.vehicles
        return tuple(t[:, 0].clone() for t in (v.x, v.y, v.speed, v.lane))

    def lane_changed(self, lane: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """The lane id (lane_index[2]) changed within one road (edge), as envs.safety counts it."""
        graph = self.graph
        return (graph.edge[lane] == graph.edge[previous]) & (graph.lane_number[lane] != graph.lane_number[previous])

    def observe(self, traffic: RoadTraffic, distance: torch.Tensor) -> dict[str, torch.Tensor]:
        v, graph = traffic.vehicles, self.graph
        gap, ttc, headway, _ = leader_gap(graph, traffic, self.connected)
        lane = v.lane[:, 0]
        return {
            "crashed": traffic.crashed[:, 0].clone(),
            "off_road": ~graph.on_lane(lane, v.x[:, 0], v.y[:, 0]),  # not ego.on_road
            "speed": v.speed[:, 0].clone(),
            "ttc": ttc,
            "headway": headway,
            "gap": gap,
            "distance": distance.clone(),
            "lane_id": graph.lane_number[lane].clone(),  # lane_index[2]
        }


# The simulator.


class FastRoad(FrameStack):
    """B copies of a road-network scenario (ROAD_TASKS: merge-v1, roundabout-v1), on the CPU or a GPU."""

    def __init__(
        self,
        scenario: Scenario,
        batch_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        render: bool = True,
        corruptions: bool = True,
    ) -> None:
        """corruptions: apply the scenario's sensor corruptions to the frames (when it has any)."""
        check_road_supported(scenario)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.scenario = scenario
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.task = ROAD_TASKS[scenario.highway_env.id]
        self.road = RoadScenario.of(scenario, self.device, dtype)
        self.graph = self.road.graph
        self.config = self.road.config
        policy_hz, sim_hz = self.config["policy_frequency"], self.config["simulation_frequency"]
        self.substeps = int(sim_hz // policy_hz)
        self.dt = 1.0 / sim_hz  # [s] per sub-step
        # DrivingEnv's step limit, and the env's own time limit where its _is_truncated has one
        by_duration = duration_steps(self.config) if self.task.truncates_at_duration else None
        self.max_steps = min(scenario.episode_steps, by_duration or scenario.episode_steps)
        self.camera = None
        if render:
            from envs.fast.camera import BatchedBevCamera

            self.camera = BatchedBevCamera(scenario.camera.bev, device=self.device, network=self.road.network)
        self._init_frames(scenario, batch_size, corruptions)
        self.tracker = RoadSignalTracker(self.graph, self.road.rules.connected_lanes, batch_size, 1.0 / policy_hz,
                                         self.device, dtype)
        self.steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.episode_seeds = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.state = self.spawn(torch.zeros(batch_size, dtype=torch.long, device=self.device))
        self.reset_signals: dict[str, torch.Tensor] = {}

    # -- episodes ------------------------------------------------------------------------------
    def spawn(self, seeds: torch.Tensor) -> RoadTraffic:
        """The initial traffic of episodes `seeds` ((E,) int64), as `reset` draws it."""
        return self.task.spawn(self.task.draws(seeds.to(self.device, torch.long)), self.road)

    @property
    def columns(self) -> int:
        """N: the objects per env (the scenario's spawn)."""
        return self.state.present.shape[1]

    @property
    def route_slots(self) -> int:
        """R: the route entries each vehicle can hold (0 where the scenario plans no routes)."""
        return self.state.vehicles.route_edge.shape[-1]

    def reset(self, rows: torch.Tensor | None = None, seeds: torch.Tensor | None = None) -> None:
        """Respawn the envs `rows` ((E,) int64; all when None) from episode `seeds` ((E,) int64)."""
        rows = torch.arange(self.batch_size, device=self.device) if rows is None else rows.to(self.device)
        if seeds is None:
            raise ValueError("reset needs one episode seed per env")
        seeds = seeds.to(self.device, torch.long)
        if seeds.shape != rows.shape:
            raise ValueError(f"{rows.shape[0]} envs to reset but {seeds.shape[0]} seeds")
        self.load(rows, self.spawn(seeds), seeds)

    def load(self, rows: torch.Tensor, traffic: RoadTraffic, seeds: torch.Tensor | None = None) -> None:
        """Start the envs `rows` from a given state (used by reset, and to copy highway-env states:
        RoadTraffic.from_highway_env(graph, roads, egos, self.columns, self.route_slots))."""
        rows = rows.to(self.device)
        assign_traffic(self.state, rows, traffic)
        self.steps[rows] = 0
        if seeds is not None:
            self.episode_seeds[rows] = seeds.to(self.device, torch.long)
        self.reset_signals = self.tracker.reset(rows, self.state)
        if self.camera is not None:
            self._start_stacks(rows)

    # -- stepping ------------------------------------------------------------------------------
    def step(self, actions: torch.Tensor) -> StepResult:
        """One policy step of every env for (B,) int64 DiscreteMetaAction indices."""
        actions = actions.to(self.device, torch.long)
        codes = self.road.action_table[actions]
        policy_step(self.graph, self.state, codes, self.road.target_speeds, self.substeps, self.dt, self.road.rules)
        self.steps += 1
        reward, terms = self.task.reward(self.road, self.state, actions)
        terminated = self.task.terminated(self.road, self.state)
        truncated = self.steps >= self.max_steps
        signals = self.tracker.step(self.state)
        if self.camera is not None:
            self._push_frame()
        return StepResult(reward=reward, terminated=terminated, truncated=truncated, signals=signals, rewards=terms)

    # -- views of one env, for FastDrivingEnv (the same methods as FastHighway's) --------------------
    def scenes(self, rows: list[int]) -> list[Scene]:
        """Envs `rows` as envs.scene.Scene: the ego, the other vehicles, then the obstacle (DrivingEnv's
        snapshot order); each object's own size."""
        traffic = self.state
        v = traffic.vehicles
        return scenes_of_columns(rows, traffic.present, v.x, v.y, v.heading, v.speed, traffic.length, traffic.width)

    def make_camera(self, view: BevCameraConfig, device: torch.device | str) -> BatchedBevCamera:
        """A camera of another view (top-down, counterfactual renders) on this road network."""
        from envs.fast.camera import BatchedBevCamera

        return BatchedBevCamera(view, device=device, network=self.road.network)

    def render_with(self, camera: BatchedBevCamera, traffic: RoadTraffic,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """(E, 3, H, W) uint8 frames of E envs through `camera` (into `out` when given); each object's own size."""
        v = traffic.vehicles
        as32 = [t.to(torch.float32) for t in (v.x, v.y, v.heading, traffic.length, traffic.width)]
        return camera.render(*as32, traffic.present, out=out)

    def available_actions(self, row: int) -> list[int]:
        """DiscreteMetaAction.get_available_actions of env `row`: a lane change only to a lane of the
        same road that is reachable from the ego's position, no speed change past the last or first
        target speed."""
        v, graph = self.state.vehicles, self.graph
        a, b, number = graph.indices[int(v.lane[row, 0])]
        x, y = v.x[row, 0], v.y[row, 0]
        actions = [IDLE]
        for side_number, action in ((number - 1, LEFT), (number + 1, RIGHT)):
            side = graph.lane_ids.get((a, b, side_number))
            if side is not None and bool(is_reachable_from(graph, torch.tensor(side, device=self.device), x, y)):
                actions.append(action)
        speed_index = int(v.speed_index[row, 0])
        if speed_index < len(self.road.target_speeds) - 1:
            actions.append(FASTER)
        if speed_index > 0:
            actions.append(SLOWER)
        return actions

    def ego_lane_numbers(self, rows: list[int]) -> list[int]:
        """The ego's lane _id within its road (0 = leftmost) in envs `rows`."""
        return self.graph.lane_number[self.state.vehicles.lane[rows, 0]].tolist()

    def ego_lane_width(self, row: int) -> float:
        """[m] the width of env `row`'s ego lane (ground truth's lane offsets), as DrivingEnv reads it."""
        return float(self.graph.width[self.state.vehicles.lane[row, 0]])

    def _render(self, traffic: RoadTraffic, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.render_with(self.camera, traffic, out)
