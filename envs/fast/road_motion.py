"""highway-env's controlled vehicles (ControlledVehicle / MDPVehicle) on any road network, batched.

The straight-highway simulator (dynamics.py) gets away with "lane = round(y / width)". On
highway-env's other road networks (merge, roundabout, intersection, exit, two-way, u-turn;
issue 21) a controlled vehicle follows lanes that curve and end: it steers towards its target
lane's centre line in that lane's own coordinates, switches its target to a next lane when it
nears the lane's end (following its route, if it has one), and changes lanes only within a
road. This module is that motion for (B, N) vehicles on one `LaneGraph`, as tensors, without
other vehicles (no IDM/MOBIL, no collisions: those come later).

One policy step of highway-env (AbstractEnv._simulate), for a vehicle without interactions:

    vehicle.act(action)          # apply_action: MDPVehicle.act, then the control it computes is
                                 #   overwritten by the next line, so only its follow_road and
                                 #   target changes matter
    repeat frames times:
        vehicle.act()            # act: follow_road, then steering_control and speed_control
        vehicle.step(dt)         # step: clip_actions, kinematic bicycle, closest lane

so follow_road runs twice in the first frame, as there (`policy_step` does all of this).

Routes. highway-env keeps a route as a list of lane indices (_from, _to, _id) whose first
entry is a concrete lane and the others have _id None; next_lane pops its head once the
vehicle finishes that road. Here a route is two (B, N, R) int64 tensors, `route_edge` (edge
ids) and `route_lane` (lane ids, NO_LANE where highway-env's _id is None), NO_LANE-padded,
plus a (B, N) cursor: the entry highway-env has at route[0]. Popping is cursor + 1, so a
route never moves in memory; an empty or exhausted route behaves as highway-env's None or [].
Routes are planned on the host at spawn time (`route_to`, highway-env's plan_route_to).

highway-env 1.12.1 details this mirrors (and the docstrings name):
- next_lane without a route is deterministic here, not random: of every next road, the lane
  closest to the current lane's projection (np_random is passed but unused).
- a road's lane count decides the next lane id: same count, the same _id (or the route's _id
  if it gives one); else the closest lane, whatever the route says.
- a lane with no next road (a dead end) keeps the target lane: the vehicle drives on past its
  end, following the lane's extrapolated geometry.
- lane changes clamp _id +- 1 to the road, then need `is_reachable_from` (not forbidden,
  |r| <= 2 widths, 0 <= s < length + 5 m); `side_lanes` is not used.
- u-turn sets `ego_vehicle.PURSUIT_TAU`, but steering_control reads `TAU_PURSUIT`: it has
  no effect, every vehicle pursues 0.1 s ahead (`tau_pursuit` stays an argument).
- on_state_update's closest lane weighs the heading (get_closest_lane_index(position,
  heading)).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from highway_env.road.road import LaneIndex, Route
from highway_env.vehicle.controller import MDPVehicle

from envs.fast.behaviour import steering_toward
from envs.fast.dynamics import FASTER, IDLE, LANE_LEFT, LANE_RIGHT, SLOWER, bicycle_step, clip_acceleration
from envs.fast.lanes import NO_LANE, VEHICLE_LENGTH_M, LaneGraph
from envs.fast.params import CONTROLLER
from envs.fast.spawn import speed_to_index

# DiscreteMetaAction's ACTIONS_ALL codes are dynamics.py's; NO_ACTION: the vehicle gets no act(action) call.
NO_ACTION = -1
ACTION_CODES = {"LANE_LEFT": LANE_LEFT, "IDLE": IDLE, "LANE_RIGHT": LANE_RIGHT, "FASTER": FASTER, "SLOWER": SLOWER}

RouteEntry = tuple[int, int]  # (edge id, lane id or NO_LANE for highway-env's _id None)


def action_codes(actions: dict[int, str], device: torch.device | str = "cpu") -> torch.Tensor:
    """An action type's {index: label} (DiscreteMetaAction.actions: all, longitudinal or
    lateral only) -> (A,) int64 table from its indices to this module's codes."""
    return torch.tensor([ACTION_CODES[actions[k]] for k in range(len(actions))], dtype=torch.int64, device=device)


@dataclass(frozen=True, eq=False)
class EdgeTables:
    """A LaneGraph's roads (edges) and nodes, as route following needs them."""

    nodes: tuple[str, ...]  # node names, by node id
    edge_from: torch.Tensor  # (E,) int64 node id
    edge_to: torch.Tensor  # (E,) int64 node id
    edge_lanes: torch.Tensor  # (E, K) int64 lane ids by _id, NO_LANE-padded
    lanes_count: torch.Tensor  # (E,) int64


_EDGE_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def edge_tables(graph: LaneGraph) -> EdgeTables:
    """The graph's EdgeTables, built once per graph."""
    tables = _EDGE_TABLES.get(graph)
    if tables is None:
        nodes: dict[str, int] = {}
        for a, b in graph.edges:
            nodes.setdefault(a, len(nodes))
            nodes.setdefault(b, len(nodes))
        lanes: list[list[int]] = [[] for _ in graph.edges]
        for n, (a, b, i) in enumerate(graph.indices):
            lanes[graph.edges.index((a, b))].append(n)  # in _id order: indices list them so
        width = max(len(row) for row in lanes)
        table = torch.full((len(lanes), width), NO_LANE, dtype=torch.int64)
        for e, row in enumerate(lanes):
            table[e, : len(row)] = torch.tensor(row)
        device = graph.kind.device
        tables = EdgeTables(
            nodes=tuple(nodes),
            edge_from=torch.tensor([nodes[a] for a, _ in graph.edges], dtype=torch.int64, device=device),
            edge_to=torch.tensor([nodes[b] for _, b in graph.edges], dtype=torch.int64, device=device),
            edge_lanes=table.to(device),
            lanes_count=torch.tensor([len(row) for row in lanes], dtype=torch.int64, device=device),
        )
        _EDGE_TABLES[graph] = tables
    return tables


# Routes, on the host (per vehicle, at spawn time).


def shortest_path(graph: LaneGraph, start: str, goal: str) -> list[str]:
    """RoadNetwork.shortest_path: the first path bfs_paths yields (fewest roads; at each node
    the next nodes in sorted order, none already on the path), [] if there is none."""
    successors: dict[str, list[str]] = {}
    for a, b in graph.edges:
        successors.setdefault(a, []).append(b)
    if start not in successors:
        return []
    queue = [(start, [start])]
    while queue:
        node, path = queue.pop(0)
        for nxt in sorted(key for key in successors[node] if key not in path):
            if nxt == goal:
                return path + [nxt]
            if nxt in successors:
                queue.append((nxt, path + [nxt]))
    return []


def route_to(graph: LaneGraph, start_lane: int, destination: str) -> list[RouteEntry]:
    """ControlledVehicle.plan_route_to(destination) of a vehicle whose lane_index is
    `start_lane`: that lane, then each road of the shortest path from its end node with _id
    None; just the lane if the destination cannot be reached."""
    _from, _to, _ = graph.indices[start_lane]
    edges = {key: e for e, key in enumerate(graph.edges)}
    path = shortest_path(graph, _to, destination)
    return [(int(graph.edge[start_lane]), int(start_lane))] + [
        (edges[(path[i], path[i + 1])], NO_LANE) for i in range(len(path) - 1)
    ]


def route_from_highway_env(graph: LaneGraph, route: Route | None) -> list[RouteEntry]:
    """A highway-env route (lane indices, _id possibly None; None for no route) as entries."""
    edges = {key: e for e, key in enumerate(graph.edges)}
    return [
        (edges[(a, b)], NO_LANE if i is None else graph.lane_id((a, b, int(i)))) for a, b, i in (route or [])
    ]


def route_to_highway_env(graph: LaneGraph, entries: Sequence[RouteEntry]) -> list[LaneIndex]:
    """Entries back to highway-env lane indices (_id None where the entry gives no lane)."""
    return [(*graph.edges[e], None if lane == NO_LANE else graph.indices[lane][2]) for e, lane in entries]


def pack_routes(
    routes: Sequence[Sequence[Sequence[RouteEntry]]], slots: int | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """B x N lists of entries -> (route_edge, route_lane), each (B, N, R) int64, NO_LANE-padded;
    R = `slots` or the longest route."""
    longest = max((len(r) for row in routes for r in row), default=0)
    slots = longest if slots is None else slots
    if slots < longest:
        raise ValueError(f"a route has {longest} entries, more than {slots} slots")
    rows, cols = len(routes), max((len(row) for row in routes), default=0)
    edge = torch.full((rows, cols, slots), NO_LANE, dtype=torch.int64)
    lane = torch.full((rows, cols, slots), NO_LANE, dtype=torch.int64)
    for b, row in enumerate(routes):
        for n, route in enumerate(row):
            for k, (e, l) in enumerate(route):
                edge[b, n, k], lane[b, n, k] = e, l
    return edge.to(device), lane.to(device)


# State.


@dataclass
class ControlledVehicles:
    """B envs of N controlled vehicles on one LaneGraph: (B, N) tensors (routes (B, N, R))."""

    x: torch.Tensor  # (B, N) [m] world
    y: torch.Tensor  # (B, N) [m] world, y down on screen
    heading: torch.Tensor  # (B, N) [rad], not wrapped (as highway-env's)
    speed: torch.Tensor  # (B, N) [m/s]
    lane: torch.Tensor  # (B, N) int64 lane id: the closest lane (lane_index)
    target_lane: torch.Tensor  # (B, N) int64 lane id the controller follows (target_lane_index)
    target_speed: torch.Tensor  # (B, N) [m/s]
    speed_index: torch.Tensor  # (B, N) int64 MDPVehicle.speed_index into the target speeds
    route_edge: torch.Tensor  # (B, N, R) int64 edge ids, NO_LANE-padded
    route_lane: torch.Tensor  # (B, N, R) int64 lane ids, NO_LANE where highway-env's _id is None
    route_cursor: torch.Tensor  # (B, N) int64: the entry that is highway-env's route[0]
    steering: torch.Tensor  # (B, N) [rad] last steering command (clipped)
    acceleration: torch.Tensor  # (B, N) [m/s^2] last acceleration command (clipped)

    @classmethod
    def from_highway_env(
        cls, graph: LaneGraph, vehicles: Sequence[Sequence[MDPVehicle]], route_slots: int | None = None
    ) -> ControlledVehicles:
        """B rows of N highway-env controlled vehicles at their current state (graph's dtype
        and device). speed_index is MDPVehicle.get_speed_index's (plain ControlledVehicles too)."""
        device, dtype = graph.length.device, graph.length.dtype

        def floats(get) -> torch.Tensor:
            return torch.tensor([[float(get(v)) for v in row] for row in vehicles], dtype=dtype, device=device)

        def ints(get) -> torch.Tensor:
            return torch.tensor([[int(get(v)) for v in row] for row in vehicles], dtype=torch.int64, device=device)

        routes = [[route_from_highway_env(graph, v.route) for v in row] for row in vehicles]
        route_edge, route_lane = pack_routes(routes, route_slots, device)
        return cls(
            x=floats(lambda v: v.position[0]),
            y=floats(lambda v: v.position[1]),
            heading=floats(lambda v: v.heading),
            speed=floats(lambda v: v.speed),
            lane=ints(lambda v: graph.lane_id(v.lane_index)),
            target_lane=ints(lambda v: graph.lane_id(v.target_lane_index)),
            target_speed=floats(lambda v: v.target_speed),
            speed_index=ints(MDPVehicle.get_speed_index),
            route_edge=route_edge,
            route_lane=route_lane,
            route_cursor=torch.zeros(route_edge.shape[:2], dtype=torch.int64, device=device),
            steering=floats(lambda v: v.action["steering"]),
            acceleration=floats(lambda v: v.action["acceleration"]),
        )

    def route(self, graph: LaneGraph, b: int, n: int) -> list[LaneIndex]:
        """Vehicle (b, n)'s remaining route as highway-env holds it (route[0] first)."""
        start = int(self.route_cursor[b, n])
        edges, lanes = self.route_edge[b, n, start:].tolist(), self.route_lane[b, n, start:].tolist()
        return route_to_highway_env(graph, [(e, lane) for e, lane in zip(edges, lanes) if e != NO_LANE])

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> ControlledVehicles:
        """`function` applied to every (B, N, ...) tensor: selections, copies, views of columns."""
        return ControlledVehicles(**{f.name: function(getattr(self, f.name)) for f in fields(self)})

    def select(self, rows: torch.Tensor) -> ControlledVehicles:
        """A copy of the envs `rows`."""
        return self.map(lambda t: t[rows])

    def clone(self) -> ControlledVehicles:
        return self.map(torch.clone)


# Lane following. The state's tensors are (B, N); everything is in place and loop-free.


def route_head(state: ControlledVehicles, cursor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exists, edge, lane) of the route entry at `cursor`, (B, N) each."""
    slots = state.route_edge.shape[-1]
    at = cursor.clamp(max=slots - 1)[..., None]
    edge = state.route_edge.gather(-1, at)[..., 0]
    lane = state.route_lane.gather(-1, at)[..., 0]
    return (cursor < slots) & (edge != NO_LANE), edge, lane


def next_lane(
    graph: LaneGraph, state: ControlledVehicles, lane: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoadNetwork.next_lane(lane, route, position): (next lane ids, route cursors), (B, N).

    With a route: its head is dropped when it is `lane`'s road; if the next entry starts where
    `lane` ends it gives the next road (its _id, or `lane`'s _id if None, when both roads have
    as many lanes; else the next road's lane closest to the projection of the position on
    `lane`'s centre). Otherwise (no route, route exhausted, or a route that does not continue
    here, which highway-env logs): LaneGraph.next_lane, the closest lane of every next road,
    `lane` itself at a dead end.
    """
    free = graph.next_lane(lane, state.x, state.y)
    cursor = state.route_cursor
    if state.route_edge.shape[-1] == 0:
        return free, cursor
    tables = edge_tables(graph)
    edge = graph.edge[lane]
    exists, head, _ = route_head(state, cursor)
    cursor = cursor + (exists & (head == edge)).long()  # route.pop(0)
    exists, head, head_lane = route_head(state, cursor)
    head = head.clamp(min=0)
    follows = exists & (tables.edge_from[head] == tables.edge_to[edge])

    same_count = tables.lanes_count[head] == tables.lanes_count[edge]
    next_lanes = tables.edge_lanes[head]  # (B, N, K)
    same_id = next_lanes.gather(-1, graph.lane_number[lane].clamp(max=next_lanes.shape[-1] - 1)[..., None])[..., 0]
    same_id = torch.where(head_lane != NO_LANE, head_lane, same_id)
    s, _ = graph.local_coordinates(lane, state.x, state.y)
    px, py = graph.position(lane, s, torch.zeros_like(s))  # projected position
    d = graph.distance(next_lanes.clamp(min=0), px[..., None], py[..., None])
    d = torch.where(next_lanes != NO_LANE, d, torch.full_like(d, math.inf))
    closest = next_lanes.gather(-1, d.argmin(dim=-1, keepdim=True))[..., 0]  # first minimum, as min()
    routed = torch.where(same_count, same_id, closest)
    return torch.where(follows, routed, free), cursor


def follow_road(graph: LaneGraph, state: ControlledVehicles, mask: torch.Tensor | None = None) -> None:
    """ControlledVehicle.follow_road for the vehicles in `mask` ((B, N) bool, default all), in
    place: when the position is past the target lane's end minus half a vehicle length
    (after_end: s > length - 2.5 m), the target becomes next_lane(target) and the route may pop."""
    target = state.target_lane
    s, _ = graph.local_coordinates(target, state.x, state.y)
    after_end = s > graph.length[target] - VEHICLE_LENGTH_M / 2
    if mask is not None:
        after_end = after_end & mask
    env, column = after_end.nonzero(as_tuple=True)  # (K,) each: few vehicles reach a lane's end per sub-step
    if env.numel() == 0:
        return
    # next_lane is per vehicle, so it runs on those K alone (a (1, K) env), not on all B x N
    new_target, cursor = next_lane(graph, state.map(lambda t: t[env, column][None]), target[env, column][None])
    state.target_lane = target.index_put((env, column), new_target[0])  # new tensors, as torch.where made
    state.route_cursor = state.route_cursor.index_put((env, column), cursor[0])


def apply_action(
    graph: LaneGraph, state: ControlledVehicles, action: torch.Tensor, target_speeds: torch.Tensor
) -> None:
    """MDPVehicle.act(action) for every vehicle, in place.

    action: (B, N) int64 codes (LANE_LEFT .. SLOWER, as ACTIONS_ALL; `action_codes` maps an
    action type's indices) or NO_ACTION where the vehicle gets no call; a (B,) tensor acts for
    column 0 (the ego) only. target_speeds: (S,) [m/s], uniformly spaced (MDPVehicle's).
    FASTER / SLOWER: speed_index = speed_to_index(current speed) +- 1, clamped, and its target
    speed. Every call then runs follow_road; LANE_LEFT / LANE_RIGHT afterwards move the
    (followed) target lane to _id -+ 1 in its road, clamped to the road, if is_reachable_from
    the position. The control commands it would compute are recomputed by `act` anyway.
    """
    if action.dim() == 1:
        full = torch.full_like(state.target_lane, NO_ACTION)
        full[:, 0] = action
        action = full
    acting = action != NO_ACTION
    speed_step = torch.where(action == FASTER, 1, torch.where(action == SLOWER, -1, 0))
    changes_speed = speed_step != 0
    index = (speed_to_index(state.speed, target_speeds) + speed_step).clamp(0, target_speeds.shape[0] - 1)
    state.speed_index = torch.where(changes_speed, index, state.speed_index)
    state.target_speed = torch.where(changes_speed, target_speeds[index].to(state.speed.dtype), state.target_speed)

    follow_road(graph, state, acting)

    lane_step = torch.where(action == LANE_LEFT, -1, torch.where(action == LANE_RIGHT, 1, 0))
    target = state.target_lane
    road = graph.side_lanes[target]  # (B, N, K): the target's road's lanes by _id
    count = (road != NO_LANE).sum(dim=-1)
    number = torch.minimum((graph.lane_number[target] + lane_step).clamp(min=0), count - 1)
    candidate = road.gather(-1, number[..., None])[..., 0]
    state.target_lane = torch.where((lane_step != 0) & is_reachable_from(graph, candidate, state.x, state.y),
                                    candidate, target)


def is_reachable_from(graph: LaneGraph, lane: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AbstractLane.is_reachable_from((x, y)): not forbidden, |r| <= 2 widths, 0 <= s < length + 5 m."""
    s, r = graph.local_coordinates(lane, x, y)
    return (
        ~graph.forbidden[lane]
        & (r.abs() <= 2 * graph.width_at(lane, s))
        & (s >= 0)
        & (s < graph.length[lane] + VEHICLE_LENGTH_M)
    )


def steering_control(
    graph: LaneGraph, state: ControlledVehicles, tau_pursuit: float = CONTROLLER.tau_pursuit
) -> torch.Tensor:
    """ControlledVehicle.steering_control(target_lane) [rad], (B, N): behaviour.steering_toward on
    the target lane's r and its heading tau_pursuit seconds ahead (s + speed * tau)."""
    target = state.target_lane
    s, r = graph.local_coordinates(target, state.x, state.y)
    future_heading = graph.heading_at(target, s + state.speed * tau_pursuit)
    return steering_toward(r, future_heading, state.heading, state.speed)


def speed_control(state: ControlledVehicles) -> torch.Tensor:
    """ControlledVehicle.speed_control(target_speed): KP_A * (target - speed) [m/s^2], (B, N)."""
    return CONTROLLER.kp_a * (state.target_speed - state.speed)


def act(graph: LaneGraph, state: ControlledVehicles, tau_pursuit: float = CONTROLLER.tau_pursuit) -> None:
    """ControlledVehicle.act() without an action (Road.act's call), in place: follow_road, then
    the steering and acceleration commands."""
    follow_road(graph, state)
    state.steering = steering_control(graph, state, tau_pursuit)
    state.acceleration = speed_control(state)


def step(graph: LaneGraph, state: ControlledVehicles, dt: float) -> None:
    """Vehicle.step(dt), in place: clip_actions (speed within [MIN_SPEED, MAX_SPEED]; crashed
    vehicles are not modelled), the kinematic bicycle model (slip angle beta = atan(tan(steering)
    / 2), the speed of the step's start), then on_state_update: lane = the closest lane to the
    position and heading."""
    state.acceleration = clip_acceleration(state.speed, state.acceleration)
    state.x, state.y, state.heading, state.speed = bicycle_step(
        state.x, state.y, state.heading, state.speed, state.steering, state.acceleration, dt)
    state.lane = graph.closest_lane(state.x, state.y, state.heading)


def policy_step(
    graph: LaneGraph,
    state: ControlledVehicles,
    action: torch.Tensor,
    target_speeds: torch.Tensor,
    frames: int,
    dt: float,
    tau_pursuit: float = CONTROLLER.tau_pursuit,
) -> None:
    """AbstractEnv._simulate(action) for vehicles without interactions, in place: apply_action,
    then `frames` (simulation_frequency // policy_frequency) sub-steps of act and step(dt)."""
    apply_action(graph, state, action, target_speeds)
    for _ in range(frames):
        act(graph, state, tau_pursuit)
        step(graph, state, dt)
