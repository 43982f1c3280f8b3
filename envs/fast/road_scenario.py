"""`RoadScenario`: what the fast road-network simulator reads from highway-env once per simulator
(the lane graph, the rules, the ego's target speeds and action table, the env's config), and the
conventions every road-network task shares (vehicle size, DiscreteMetaAction's indices)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from envs.fast.lanes import LaneGraph
from envs.fast.road_motion import ControlledVehicles, action_codes
from envs.fast.road_traffic import RoadRules, RoadTraffic
from envs.fast.spawn import speed_to_index
from scenarios import Scenario

VEHICLE_LENGTH_M, VEHICLE_WIDTH_M = 5.0, 2.0  # highway-env's Vehicle.LENGTH, WIDTH
IDM_DELTA_RANGE = (3.5, 4.5)  # IDMVehicle.DELTA_RANGE: randomize_behavior's uniform
IDM_DELTA = 4.0  # IDMVehicle.DELTA (vehicles that never randomize_behavior, and the ego's unused slot)
LEFT, IDLE, RIGHT, FASTER, SLOWER = range(5)  # DiscreteMetaAction indices (lane_change_reward counts 0 and 2)


def lane_change_actions(actions: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the action is LANE_LEFT or LANE_RIGHT (highway-env's `action in [0, 2]`)."""
    return (actions == LEFT) | (actions == RIGHT)


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
    action_names: tuple[str, ...]  # index -> name
    # (DiscreteMetaAction.actions: ACTIONS_ALL, or ACTIONS_LONGI where the env is longitudinal only)

    @property
    def action_indexes(self) -> dict[str, int]:
        """DiscreteMetaAction.actions_indexes: name -> index."""
        return {name: index for index, name in enumerate(self.action_names)}

    @classmethod
    def of(cls, scenario: Scenario, device: torch.device, dtype: torch.dtype,
           idm_constants: dict[str, float] | None = None) -> RoadScenario:
        """gymnasium.make(scenario's id, config=its config), reset once: its network and rules.
        idm_constants: the IDMVehicle class constants the env's reset writes (IntersectionEnv's),
        used instead of highway-env's defaults; IDMVehicle's class is left as it was found."""
        import gymnasium as gym
        import highway_env  # noqa: F401  (registers the ids)

        from highway_env.vehicle.behavior import IDMVehicle
        from highway_env.vehicle.controller import MDPVehicle

        from envs.driving_env import IDM_CLASS_DEFAULTS

        found = {name: getattr(IDMVehicle, name) for name in IDM_CLASS_DEFAULTS}
        env = gym.make(scenario.highway_env.id, config=scenario.highway_env_config(), disable_env_checker=True)
        try:
            env.reset(seed=0)
            u = env.unwrapped
            road = u.road
            graph = LaneGraph.from_network(road.network, device=device, dtype=dtype)
            return cls(
                graph=graph,
                network=road.network,
                rules=_with_idm_defaults(RoadRules.of(road), {**IDM_CLASS_DEFAULTS, **(idm_constants or {})}),
                target_speeds=torch.as_tensor([float(s) for s in u.vehicle.target_speeds], dtype=dtype, device=device),
                action_table=action_codes(u.action_type.actions, device),
                config=dict(u.config),
                graph64=graph if dtype == torch.float64 else LaneGraph.from_network(
                    road.network, device=device, dtype=torch.float64),
                default_target_speeds=torch.as_tensor(MDPVehicle.DEFAULT_TARGET_SPEEDS, dtype=torch.float64,
                                                      device=device),
                action_names=tuple(u.action_type.actions[i] for i in range(len(u.action_type.actions))),
            )
        finally:
            env.close()
            for name, value in found.items():  # an IntersectionEnv reset rewrote them: put them back
                setattr(IDMVehicle, name, value)


def _with_idm_defaults(rules: RoadRules, defaults: dict[str, float]) -> RoadRules:
    """The rules with the given IDM class constants (highway-env's own, or those the scenario's reset
    writes: IntersectionEnv's) whatever an IntersectionEnv reset left in IDMVehicle's class
    (DrivingEnv restores them at every reset; MergeEnv never sets them)."""
    idm = dataclasses.replace(
        rules.idm,
        distance_wanted=float(defaults["DISTANCE_WANTED"]),
        comfort_acc_max=float(defaults["COMFORT_ACC_MAX"]),
        comfort_acc_min=float(defaults["COMFORT_ACC_MIN"]),
    )
    return dataclasses.replace(rules, idm=idm)


def spawned_speeds(road: RoadScenario, speed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(speed_index, target_speed), each (E, N), of vehicles spawned at `speed` [m/s] (column 0 the ego):
    MDPVehicle.get_speed_index (the ego's on its own target speeds, IDM vehicles' on
    DEFAULT_TARGET_SPEEDS) and ControlledVehicle's target_speed = speed (the ego's: index_to_speed)."""
    target_speeds = road.target_speeds.to(speed)
    speed_index = speed_to_index(speed, road.default_target_speeds.to(speed))
    speed_index[:, 0] = speed_to_index(speed[:, :1], target_speeds)[:, 0]
    target_speed = speed.clone()
    target_speed[:, 0] = target_speeds[speed_index[:, 0]]
    return speed_index, target_speed


def spawned_traffic(road: RoadScenario, x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, speed: torch.Tensor,
                    lane: torch.Tensor, target_speed: torch.Tensor, speed_index: torch.Tensor, delta: torch.Tensor,
                    lane_change: torch.Tensor, *, target_lane: torch.Tensor | None = None,
                    routes: tuple[torch.Tensor, torch.Tensor] | None = None, is_object: torch.Tensor | None = None,
                    length: torch.Tensor | None = None, width: torch.Tensor | None = None) -> RoadTraffic:
    """A new episode's `RoadTraffic` from a spawn's (E, N) columns (column 0 the ego; [m], [rad], [m/s],
    float64 as highway-env computes them), cast to the graph's dtype. What every spawn shares: IDM
    timers as IDMVehicle sets them ((x + y) pi mod LANE_CHANGE_DELAY; 0 for the ego and objects), each
    vehicle targets its own lane unless `target_lane`, `routes` ((E, N, R) edge and lane ids) or none,
    nothing crashed, pending or yielding, list order = column order, highway-env's vehicle size unless
    `length`/`width` [m]."""
    envs, columns = x.shape
    device, dtype = x.device, road.graph.length.dtype
    ego = torch.zeros((envs, columns), dtype=torch.bool, device=device)
    ego[:, 0] = True
    is_object = torch.zeros_like(ego) if is_object is None else is_object
    timer = torch.remainder((x + y) * math.pi, road.rules.idm.lane_change_delay)
    timer = torch.where(ego | is_object, torch.zeros_like(timer), timer)
    if routes is None:
        no_route = torch.zeros((envs, columns, 0), dtype=torch.int64, device=device)
        routes = (no_route, no_route.clone())
    zeros = torch.zeros((envs, columns), dtype=dtype, device=device)
    vehicles = ControlledVehicles(
        x=x.to(dtype), y=y.to(dtype), heading=heading.to(dtype), speed=speed.to(dtype), lane=lane,
        target_lane=lane.clone() if target_lane is None else target_lane, target_speed=target_speed.to(dtype),
        speed_index=speed_index, route_edge=routes[0], route_lane=routes[1],
        route_cursor=torch.zeros((envs, columns), dtype=torch.int64, device=device),
        steering=zeros.clone(), acceleration=zeros.clone(),
    )  # fmt: skip
    return RoadTraffic(
        vehicles=vehicles,
        delta=delta.to(dtype),
        timer=timer.to(dtype),
        lane_change=lane_change,
        crashed=torch.zeros_like(ego),
        impact=torch.zeros((envs, columns, 2), dtype=dtype, device=device),
        impact_pending=torch.zeros_like(ego),
        present=torch.ones_like(ego),
        is_object=is_object,
        rank=torch.arange(columns, device=device).expand(envs, columns).clone(),
        length=torch.full_like(zeros, VEHICLE_LENGTH_M) if length is None else length.to(dtype),
        width=torch.full_like(zeros, VEHICLE_WIDTH_M) if width is None else width.to(dtype),
        yielding=torch.zeros_like(ego),
        yield_timer=torch.zeros((envs, columns), dtype=torch.int64, device=device),
        road_steps=torch.zeros(envs, dtype=torch.int64, device=device),
    )


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
