"""intersection-v2 on the fast road-network simulator: IntersectionEnv's spawns, reward and end, batched.

highway-env (ConnectedLaneIntersectionEnv; IntersectionEnv with connected-lane neighbours) on a
RegulatedRoad (yielding by lane priority: road_traffic.py):

- _spawn_vehicle(longitudinal, position_deviation, speed_deviation, spawn_probability, go_straight):
  uniform() > spawn_probability: nothing more; else route = choice(4, 2, replace=False) (an ordered
  pair of distinct incoming/outgoing branches; the second is (first + 2) % 4 when go_straight), an
  IDMVehicle make_on_lane ("o{r0}", "ir{r0}", 0) at s = longitudinal + 5 + normal() x position_deviation
  [m], speed 8 + normal() x speed_deviation [m/s]; dropped if any vehicle on the road is closer than
  15 m; else plan_route_to("o{r1}"), randomize_behavior (DELTA ~ U(3.5, 4.5)) and appended.
- _make_vehicles (reset): IDMVehicle's DISTANCE_WANTED = 7, COMFORT_ACC_MAX = 6, COMFORT_ACC_MIN = -3
  written into the class (here: the scenario's IDM params, INTERSECTION_IDM_CONSTANTS, the class
  untouched); initial_vehicle_count - 1 spawns at longitudinal linspace(0, 80, count)[t] with the
  function's default probability 0.6; 3 s of Road.act/step (3 x simulation_frequency sub-steps,
  RegulatedRoad.steps counting); the "challenger" spawn at 60 m, probability 1, going straight,
  deviations 0.1 m and 0 m/s; the ego (MDPVehicle) on ("o0", "ir0", 0) at s = 60 + 5 normal(1.0),
  heading at s = 60, speed 10 (the lane's speed limit), target speed index of 10 on [0, 4.5, 9]
  (9 m/s), routed to config["destination"] ("o1"; "o{integers(1, 4)}" when None), appended last;
  then every other vehicle closer than 20 m to it removed.
- step: AbstractEnv.step (simulate, observe, reward, terminated, truncated, info), THEN
  _clear_vehicles (every vehicle but the ego whose lane goes "il*" -> "o*" and whose s >=
  lane length - 4 x 5 m) and _spawn_vehicle(spawn_probability=config["spawn_probability"]) with
  longitudinal 0 and deviations 1. DrivingEnv observes its frame and safety signals after that.
- reward (_agent_rewards, _agent_reward): collision = crashed, high_speed = clip(lmap(speed,
  reward_speed_range, [0, 1]), 0, 1), arrived = has_arrived (lane "il*" -> "o*", s >= 25 m),
  on_road; the weighted sum (config.get(name, 0)), replaced by arrived_reward when arrived, times
  on_road, lmap-ed from [collision_reward, arrived_reward] to [0, 1] when normalize_reward.
  Terminated: crashed, or arrived, or (offroad_terminal and off the road). Truncated: time >=
  duration (13 s: 13 steps). Goal (envs.goals): has_arrived.

The fast version (`intersection_draws`, `spawn_intersection`, `intersection_step_draws`,
`intersection_after_step`): the same rules, with our RNG (envs.fast.rng) instead of numpy's. Each
spawn attempt reads 6 uniforms (ATTEMPT_DRAWS: the spawn uniform, the ordered route pair drawn
uniformly as highway-env's choice is, two Box-Muller normals, the DELTA uniform), drawn whether
used or not: the same distributions as highway-env's, which draws only what it uses, so a seed
does not give highway-env's episode; the spawn and each step's spawn are highway-env's exactly
given the same draws (tests/envs/fast/test_road_intersection.py feeds highway-env's). The reset's
draws come from the seed's spawn stream, step k's from (seed, STEP_STREAM, counters 6k..6k+5): an
episode depends on its seed only. The warm-up is simulated in float64 on `road.graph64` (as
highway-env), then cast. Columns: N = initial_vehicle_count + 1 + the duration's steps, enough for
every spawn of an episode (at most one per step), so a spawn never finds the columns full (it would
be skipped); the reset compacts them to highway-env's list order (the ego in column 0, appended
last: the highest rank), later spawns take the first free column and the next rank.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from envs.fast import rng
from envs.fast.road_motion import route_to
from envs.fast.road_scenario import IDM_DELTA, IDM_DELTA_RANGE, RoadScenario, duration_steps, spawned_traffic
from envs.fast.road_traffic import RoadTraffic, substeps
from envs.fast.lanes import NO_LANE
from envs.fast.spawn import SPAWN_STREAM, speed_to_index

# IntersectionEnv._make_vehicles writes these into IDMVehicle's class at reset
INTERSECTION_IDM_CONSTANTS = {"DISTANCE_WANTED": 7.0, "COMFORT_ACC_MAX": 6.0, "COMFORT_ACC_MIN": -3.0}
BRANCHES = 4  # the intersection's four approaches: "o0" .. "o3"
ATTEMPT_DRAWS = 6  # per spawn attempt: spawn uniform, route start, route end, position normal, speed normal, DELTA uniform
STEP_STREAM = 4  # rng stream of the per-step spawns (SPAWN_STREAM: the reset's)
SPAWN_OFFSET_M = 5.0  # _spawn_vehicle: longitudinal + 5
SPAWN_SPEED_MPS = 8.0  # _spawn_vehicle: 8 + normal() x speed_deviation
SPAWN_CLEARANCE_M = 15.0  # _spawn_vehicle drops a vehicle closer than this to any other
WARM_UP_PROBABILITY = 0.6  # _spawn_vehicle's default spawn_probability (the reset's spawns use it)
WARM_UP_S = 3  # _make_vehicles' simulation_steps: seconds of Road.act/step before the ego
WARM_UP_END_M = 80.0  # linspace(0, 80, initial_vehicle_count)
CHALLENGER_S_M, CHALLENGER_POSITION_DEVIATION_M = 60.0, 0.1  # speed deviation 0, probability 1, straight
EGO_LANE = ("o0", "ir0", 0)  # controlled vehicle 0
EGO_S_M, EGO_S_SPREAD_M = 60.0, 5.0  # s = 60 + 5 normal(1.0); heading at 60
EARLY_COLLISION_M = 20.0  # vehicles this close to the ego are removed at reset
LEAVING_LENGTHS = 4  # _clear_vehicles: s >= lane length - 4 x Vehicle.LENGTH on an exit lane
ARRIVED_S_M = 25.0  # has_arrived's exit_distance
ABSENT_RANK = 10**6  # padding ranks: ABSENT_RANK + column - present count (unique, after every vehicle)


def intersection_columns(road: RoadScenario) -> int:
    """N: the ego, initial_vehicle_count - 1 warm-up spawns, the challenger, one spawn per step."""
    return int(road.config["initial_vehicle_count"]) + 1 + (duration_steps(road.config) or 0)


def _attempts(u: torch.Tensor) -> torch.Tensor:
    """(..., 6) uniforms -> (..., 6) draws of spawn attempts: (spawn uniform, route start in 0..3,
    route end in 0..3 (another branch: an ordered pair uniform over the 12, as choice(4, 2,
    replace=False)), position normal, speed normal, DELTA uniform). Normals: Box-Muller."""
    start = torch.floor(BRANCHES * u[..., 1])
    end = torch.remainder(start + 1 + torch.floor((BRANCHES - 1) * u[..., 2]), BRANCHES)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 3]))  # 1 - u in (0, 1]
    angle = 2.0 * math.pi * u[..., 4]
    return torch.stack([u[..., 0], start, end, radius * torch.cos(angle), radius * torch.sin(angle), u[..., 5]], -1)


def intersection_draws(seeds: torch.Tensor, road: RoadScenario) -> torch.Tensor:
    """(E,) int64 episode seeds -> (E, A + 1, 6) float64 draws of the reset: A = initial_vehicle_count
    spawn attempts (the warm-up's, then the challenger's; layout of `_attempts`), then the ego's row
    (its normal in slot 3 (normal(1.0) = 1 + it), the destination uniform in slot 0)."""
    attempts = int(road.config["initial_vehicle_count"])
    u = rng.uniform(seeds, SPAWN_STREAM, ATTEMPT_DRAWS * (attempts + 1), torch.float64)
    return _attempts(u.view(-1, attempts + 1, ATTEMPT_DRAWS))


def intersection_step_draws(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(E,) episode seeds and (E,) policy steps (1 = the first step) -> (E, 6) draws of that step's spawn."""
    first = (steps.to(seeds.device, torch.int64) - 1) * ATTEMPT_DRAWS
    return _attempts(rng.uniform_at(seeds, STEP_STREAM, first, ATTEMPT_DRAWS, torch.float64))


# Lanes and routes, once per graph.


@dataclasses.dataclass(frozen=True)
class IntersectionLanes:
    incoming: torch.Tensor  # (4,) lane ids of ("o{k}", "ir{k}", 0)
    exit: torch.Tensor  # (L,) bool: the lane's road goes "il*" -> "o*" (is_leaving, has_arrived)
    route_edge: torch.Tensor  # (L, 4, R) plan_route_to("o{k}") from each lane, NO_LANE-padded
    route_lane: torch.Tensor


_LANES: dict[int, tuple[object, IntersectionLanes]] = {}  # id(network) -> (network, its lanes)


def intersection_lanes(road: RoadScenario) -> IntersectionLanes:
    """The lanes and routes the spawns and ends read (cached per road network and device)."""
    key = hash((id(road.network), str(road.graph.length.device)))
    cached = _LANES.get(key)
    if cached is not None and cached[0] is road.network:
        return cached[1]
    graph = road.graph
    device = graph.length.device
    destinations = [f"o{k}" for k in range(BRANCHES)]
    routes = [[route_to(graph, lane, d) for d in destinations] for lane in range(graph.lanes_count)]
    slots = max(len(r) for row in routes for r in row)
    edge = torch.full((graph.lanes_count, BRANCHES, slots), NO_LANE, dtype=torch.int64)
    lane = edge.clone()
    for i, row in enumerate(routes):
        for j, route in enumerate(row):
            for k, (e, lane_id) in enumerate(route):
                edge[i, j, k], lane[i, j, k] = e, lane_id
    exit_lane = [("il" in a and "o" in b) for a, b, _ in graph.indices]
    lanes = IntersectionLanes(
        incoming=torch.tensor([graph.lane_id((f"o{k}", f"ir{k}", 0)) for k in range(BRANCHES)], device=device),
        exit=torch.tensor(exit_lane, device=device), route_edge=edge.to(device), route_lane=lane.to(device))
    _LANES[key] = (road.network, lanes)
    return lanes


# Spawns.


def _place(traffic: RoadTraffic, where: torch.Tensor, road: RoadScenario, x: torch.Tensor, y: torch.Tensor,
           heading: torch.Tensor, speed: torch.Tensor, lane: torch.Tensor, route_edge: torch.Tensor,
           route_lane: torch.Tensor, delta: torch.Tensor, rank: torch.Tensor) -> None:
    """Write a new IDMVehicle into the (E, N) columns `where` (at most one per env), in place:
    (E,) x, y [m], heading [rad], speed [m/s], lane, (E, R) route, DELTA, rank. As IDMVehicle sets
    itself up: target lane its own, target speed = speed, MOBIL timer (x + y) pi mod
    LANE_CHANGE_DELAY, lane changes enabled, nothing crashed, pending or yielding."""
    v, dtype = traffic.vehicles, traffic.vehicles.x.dtype

    def put(tensor: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        value = value.to(tensor.dtype)
        mask = where.view(*where.shape, *([1] * (tensor.dim() - 2)))
        return torch.where(mask, value.view(value.shape[0], 1, *value.shape[1:]), tensor)

    timer = torch.remainder((x + y) * math.pi, road.rules.idm.lane_change_delay)
    zero = torch.zeros_like(x)
    speed_index = speed_to_index(speed[:, None], road.default_target_speeds.to(speed))[:, 0]
    for name, value in (("x", x), ("y", y), ("heading", heading), ("speed", speed), ("lane", lane),
                        ("target_lane", lane), ("target_speed", speed), ("speed_index", speed_index),
                        ("route_edge", route_edge), ("route_lane", route_lane), ("route_cursor", zero.long()),
                        ("steering", zero), ("acceleration", zero)):
        setattr(v, name, put(getattr(v, name), value))
    false = torch.zeros_like(where[:, 0])
    for name, value in (("delta", delta), ("timer", timer), ("lane_change", ~false), ("crashed", false),
                        ("impact", torch.zeros((x.shape[0], 2), dtype=dtype, device=x.device)),
                        ("impact_pending", false), ("present", ~false), ("is_object", false), ("rank", rank),
                        ("length", torch.full_like(x, 5.0)), ("width", torch.full_like(x, 2.0)),
                        ("yielding", false), ("yield_timer", zero.long())):
        setattr(traffic, name, put(getattr(traffic, name), value))


def spawn_attempt(road: RoadScenario, traffic: RoadTraffic, draws: torch.Tensor, column: torch.Tensor,
                  longitudinal: float, probability: float, position_deviation: float = 1.0,
                  speed_deviation: float = 1.0, go_straight: bool = False) -> torch.Tensor:
    """IntersectionEnv._spawn_vehicle for E envs, in place: (E, 6) draws (`_attempts`), (E,) column to
    write the vehicle into (-1: none free, the spawn is skipped). Returns (E,) bool: spawned.
    Computed in float64 on road.graph64, written in the traffic's dtype."""
    graph64, lanes = road.graph64, intersection_lanes(road)
    draws = draws.to(torch.float64)
    spawn_u, start, end, z_s, z_speed, delta_u = draws.unbind(-1)
    start, end = start.long(), end.long()
    if go_straight:
        end = torch.remainder(start + 2, BRANCHES)
    lane = lanes.incoming[start]
    s = longitudinal + SPAWN_OFFSET_M + z_s * position_deviation
    speed = SPAWN_SPEED_MPS + z_speed * speed_deviation
    x, y = graph64.position(lane, s, torch.zeros_like(s))  # make_on_lane: lane.position(s, 0)
    heading = graph64.heading_at(lane, s)
    lane = graph64.closest_lane(x, y, heading)  # Vehicle.__init__
    v = traffic.vehicles
    near = torch.hypot(v.x.double() - x[:, None], v.y.double() - y[:, None]) < SPAWN_CLEARANCE_M
    spawned = (spawn_u <= probability) & ~(near & traffic.present).any(dim=1) & (column >= 0)
    low, high = IDM_DELTA_RANGE
    rank = torch.where(traffic.present, traffic.rank, -1).amax(dim=1) + 1
    where = spawned[:, None] & (torch.arange(v.x.shape[1], device=v.x.device) == column[:, None])
    _place(traffic, where, road, x, y, heading, speed, lane, lanes.route_edge[lane, end], lanes.route_lane[lane, end],
           low + (high - low) * delta_u, rank)
    return spawned


def _absent_ranks(traffic: RoadTraffic) -> None:
    """Padding ranks as RoadTraffic.from_objects gives them (ABSENT_RANK + column - present count):
    unique, after every vehicle's."""
    columns = torch.arange(traffic.present.shape[1], device=traffic.present.device)
    padding = ABSENT_RANK + columns - traffic.present.sum(dim=1, keepdim=True)
    traffic.rank = torch.where(traffic.present, traffic.rank, padding)


def _reorder(traffic: RoadTraffic, order: torch.Tensor) -> RoadTraffic:
    """The traffic with its columns gathered by (E, N) `order`."""
    def take(t: torch.Tensor) -> torch.Tensor:
        index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(*order.shape, *t.shape[2:])
        return t.gather(1, index)

    return traffic.map(take, per_env=False)


def spawn_intersection(draws: torch.Tensor, road: RoadScenario) -> RoadTraffic:
    """IntersectionEnv._make_vehicles for E envs from (E, A + 1, 6) draws (`intersection_draws`): a
    RoadTraffic of N = `intersection_columns` columns, the ego in column 0, the others in highway-env's
    list order (ranks 0..), the ego's rank after them, padding absent."""
    config, graph64, lanes = road.config, road.graph64, intersection_lanes(road)
    device, f64 = graph64.length.device, torch.float64
    draws = draws.to(device, f64)
    envs, columns, count = draws.shape[0], intersection_columns(road), int(config["initial_vehicle_count"])
    road64 = dataclasses.replace(road, graph=graph64)
    zeros = torch.zeros((envs, columns), dtype=f64, device=device)
    slots = lanes.route_edge.shape[-1]
    no_route = torch.full((envs, columns, slots), NO_LANE, dtype=torch.int64, device=device)
    lane0 = torch.full((envs, columns), int(lanes.incoming[0]), device=device)
    traffic = spawned_traffic(road64, zeros, zeros, zeros, zeros, lane0, zeros, lane0 * 0, zeros + IDM_DELTA,
                              lane_change=torch.zeros_like(lane0, dtype=torch.bool), routes=(no_route, no_route))
    traffic.present[:] = False
    _absent_ranks(traffic)
    column = torch.empty(envs, dtype=torch.int64, device=device)
    for t, longitudinal in enumerate(np.linspace(0, WARM_UP_END_M, count)[:-1]):
        spawn_attempt(road64, traffic, draws[:, t], column.fill_(1 + t), float(longitudinal), WARM_UP_PROBABILITY)
    frequency = int(config["simulation_frequency"])
    substeps(graph64, traffic, WARM_UP_S * frequency, 1.0 / frequency, road.rules)
    spawn_attempt(road64, traffic, draws[:, count - 1], column.fill_(count), CHALLENGER_S_M, 1.0,
                  CHALLENGER_POSITION_DEVIATION_M, 0.0, go_straight=True)
    # the ego: MDPVehicle on ("o0", "ir0", 0), appended last
    ego_draws = draws[:, count]
    ego_lane = torch.full((envs,), graph64.lane_id(EGO_LANE), device=device)
    s = EGO_S_M + EGO_S_SPREAD_M * (1.0 + ego_draws[:, 3])
    x, y = graph64.position(ego_lane, s, torch.zeros_like(s))
    heading = graph64.heading_at(ego_lane, torch.full_like(s, EGO_S_M))
    speed = graph64.speed_limit[ego_lane]
    lane = graph64.closest_lane(x, y, heading)
    destination = config["destination"]
    end = (torch.full((envs,), int(destination[1:]), device=device) if destination
           else 1 + torch.floor(3 * ego_draws[:, 0]).long())  # "o" + integers(1, 4)
    ego = torch.zeros((envs, columns), dtype=torch.bool, device=device)
    ego[:, 0] = True
    _place(traffic, ego, road64, x, y, heading, speed, lane, lanes.route_edge[lane, end], lanes.route_lane[lane, end],
           torch.full_like(s, IDM_DELTA), torch.full((envs,), ABSENT_RANK - 1, device=device))
    target_speeds = road.target_speeds.to(f64)
    speed_index = speed_to_index(speed[:, None], target_speeds)[:, 0]
    v = traffic.vehicles
    v.speed_index[:, 0], v.target_speed[:, 0] = speed_index, target_speeds[speed_index]
    traffic.timer[:, 0], traffic.lane_change[:, 0] = 0.0, False  # an MDPVehicle: no MOBIL
    near = torch.hypot(v.x - x[:, None], v.y - y[:, None]) < EARLY_COLLISION_M  # "prevent early collisions"
    traffic.present &= ~(near & ~ego)
    # highway-env's list order: column 0 the ego, then the others by rank, padding last
    key = torch.where(traffic.present, traffic.rank, 2 * ABSENT_RANK + torch.arange(columns, device=device))
    key = torch.where(ego, -1, key)
    traffic = _reorder(traffic, key.argsort(dim=1))
    others = traffic.present.sum(dim=1) - 1
    traffic.rank = torch.arange(columns, device=device).expand(envs, columns) - 1
    traffic.rank[:, 0] = others
    _absent_ranks(traffic)
    dtype = road.graph.length.dtype  # warmed up in float64, stepped in the road's dtype
    return traffic.map(lambda t: t.to(dtype) if t.is_floating_point() else t)


def intersection_after_step(road: RoadScenario, traffic: RoadTraffic, draws: torch.Tensor) -> None:
    """IntersectionEnv.step after AbstractEnv.step, in place: _clear_vehicles, then
    _spawn_vehicle(spawn_probability=config["spawn_probability"]) from (B, 6) draws into the first
    free column (skipped where none is free; intersection_columns leaves room for every step's)."""
    graph, lanes, v = road.graph, intersection_lanes(road), traffic.vehicles
    s, _ = graph.local_coordinates(v.lane, v.x, v.y)
    leaving = lanes.exit[v.lane] & (s >= graph.length[v.lane] - LEAVING_LENGTHS * traffic.length)
    leaving[:, 0] = False  # the controlled vehicle stays
    traffic.present &= ~leaving
    free = ~traffic.present
    column = torch.where(free.any(dim=1), free.long().argmax(dim=1), -1)
    spawn_attempt(road, traffic, draws, column, 0.0, float(road.config["spawn_probability"]))
    _absent_ranks(traffic)


# Routes as a camera sees them.


def guess_routes(road: RoadScenario, traffic: RoadTraffic, uniforms: torch.Tensor) -> None:
    """Replace, in place, the route of every vehicle (not the ego) that has not yet committed to a turn
    (on an incoming lane "o{k}" -> "ir{k}", its target that same lane) by a route to a destination
    drawn from (B, N) `uniforms` in [0, 1): one of the three other branches, uniformly, as its spawn
    draws it. A camera cannot tell where such a vehicle is going (highway-env's vehicles do not
    signal); a planner that plans on such guesses (agents.teacher, routes="guessed") plans as it could."""
    lanes, v = intersection_lanes(road), traffic.vehicles
    if v.route_edge.shape[-1] != lanes.route_edge.shape[-1]:
        raise ValueError(f"the traffic holds routes of {v.route_edge.shape[-1]} slots, intersection's are "
                         f"{lanes.route_edge.shape[-1]}: it was not spawned by spawn_intersection")
    on_branch = v.lane[..., None] == lanes.incoming  # (B, N, 4)
    undecided = on_branch.any(dim=-1) & (v.target_lane == v.lane) & traffic.present
    undecided[:, 0] = False
    start = on_branch.long().argmax(dim=-1)  # (B, N) the branch it comes from (0 where none)
    guess = torch.remainder(start + 1 + torch.floor((BRANCHES - 1) * uniforms.to(v.x.device)).long(), BRANCHES)
    lane = v.lane.clamp(min=0)
    v.route_edge = torch.where(undecided[..., None], lanes.route_edge[lane, guess], v.route_edge)
    v.route_lane = torch.where(undecided[..., None], lanes.route_lane[lane, guess], v.route_lane)
    v.route_cursor = torch.where(undecided, 0, v.route_cursor)


# Reward and end.


def arrived(road: RoadScenario, traffic: RoadTraffic) -> torch.Tensor:
    """has_arrived(ego): its lane goes "il*" -> "o*" and its s there is >= 25 m. (B,) bool."""
    graph, v = road.graph, traffic.vehicles
    lane = v.lane[:, 0]
    s, _ = graph.local_coordinates(lane, v.x[:, 0], v.y[:, 0])
    return intersection_lanes(road).exit[lane] & (s >= ARRIVED_S_M)


def intersection_reward(road: RoadScenario, traffic: RoadTraffic, actions: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """IntersectionEnv._agent_rewards and _agent_reward for the ego (the only controlled vehicle)."""
    config, graph, v = road.config, road.graph, traffic.vehicles
    dtype = v.x.dtype
    low, high = config["reward_speed_range"]
    terms = {
        "collision_reward": traffic.crashed[:, 0].to(dtype),
        "high_speed_reward": ((v.speed[:, 0] - low) / (high - low)).clamp(0, 1),
        "arrived_reward": arrived(road, traffic).to(dtype),
        "on_road_reward": graph.on_lane(v.lane[:, 0], v.x[:, 0], v.y[:, 0]).to(dtype),  # ego.on_road
    }
    reward = sum(config.get(name, 0) * value for name, value in terms.items())
    reward = torch.where(terms["arrived_reward"] > 0, torch.full_like(reward, config["arrived_reward"]), reward)
    reward = reward * terms["on_road_reward"]
    if config["normalize_reward"]:
        floor, ceiling = config["collision_reward"], config["arrived_reward"]
        reward = (reward - floor) / (ceiling - floor)
    return reward, terms


def intersection_terminated(road: RoadScenario, traffic: RoadTraffic) -> torch.Tensor:
    """IntersectionEnv._is_terminated: crashed, arrived, or off the road with offroad_terminal. (B,) bool."""
    done = traffic.crashed[:, 0] | arrived(road, traffic)
    if road.config.get("offroad_terminal", False):
        v = traffic.vehicles
        done |= ~road.graph.on_lane(v.lane[:, 0], v.x[:, 0], v.y[:, 0])
    return done
