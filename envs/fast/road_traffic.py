"""highway-env's traffic on any road network, batched: the ego, IDM/MOBIL vehicles and obstacles together.

road_motion.py moves controlled vehicles as if each were alone. Here they meet (issue 21): this
module is what highway-env's Road does between its vehicles on merge, roundabout, intersection,
exit, two-way and u-turn, for B envs of N road objects as (B, N) tensors on one LaneGraph:

    Road.act():   the ego's ControlledVehicle.act() (road_motion), every IDMVehicle.act():
                  follow_road, change_lane_policy (abort, or MOBIL on a timer), steering_control,
                  IDM behind the front vehicle of its lane (and of its target lane while changing)
    Road.step():  [RegulatedRoad: enforce_road_rules every REGULATION_FREQUENCY-th of a second]
                  Vehicle.step for every vehicle (IDM timers, crashed vehicles brake to a stop,
                  pending impacts), then handle_collisions for every pair (separating axes)

Columns. Column 0 is the ego (an MDPVehicle), the others IDMVehicles, static obstacles (highway-
env's road.objects: merge's Obstacle) or padding (`present` False). `rank` keeps each column's
place in highway-env's road.vehicles + road.objects list (obstacles after every vehicle; padding
last), because highway-env is sequential where this module is not, and three of its rules depend
on that order (see below). The ego need not be first there: intersection appends it last.
IDM constants other than DELTA are class-wide (`RoadRules.idm`; IntersectionEnv rewrites three of
them at reset, so read them after it). Obstacles never act or move, count as vehicles of speed 0 in neighbour searches and collisions,
have no IDM acceleration of their own (IDMVehicle.acceleration returns 0 for a non-Vehicle) and
are not in the abort rule's loop (road.vehicles only).

highway-env 1.12.1 details this mirrors:
- Road.neighbour_vehicles(v, lane): among every other vehicle and object on_lane(margin=1) of the
  lane, the nearest with s >= s_v (front) and s < s_v (rear), s in the lane's own coordinates;
  an equal s makes a front vehicle; ties go to the last (front) or first (rear) in list order. With
  `neighbour_vehicles_connected_lanes` (every *-v1 / v2 scenario here, not two-way-v0), a vehicle
  not on the lane is looked for on the lane's next lanes (same _id, else _id 0, offset by the
  lane's length) then previous lanes (offset by minus their length), the first that holds it.
- IDMVehicle.acceleration(ego_vehicle=f, front_vehicle=p) uses the *reasoning* vehicle's DELTA,
  f's target speed clipped to [0, f's lane's speed limit], and the gap p - f measured along f's
  current lane, whatever lane the neighbours were searched on; 0 for no f or an obstacle f.
- change_lane_policy: while changing lanes within a road, abort (target = lane) when another
  vehicle, not in that lane but targeting it, is 0 < d < desired_gap ahead; otherwise, when the
  timer passes LANE_CHANGE_DELAY, reset it and try the side lanes left then right (a later accepted
  one wins; the right one is judged against the target the left one may have just set), if
  reachable and the speed is >= 1 m/s. MOBIL: unsafe if the new follower would brake harder than
  LANE_CHANGE_MAX_BRAKING_IMPOSED; with a route whose head names a lane (_id not None, true on a
  vehicle's first road since plan_route_to starts with its lane), only a move towards that _id, and
  then without any gain test; else the acceleration gain (with POLITENESS) >= LANE_CHANGE_MIN_ACC_GAIN.
  Exit and two-way disable lane changes of their traffic (enable_lane_change False).
- order: vehicles act one after another, so the abort rule sees the final target lanes of the
  vehicles before it in road.vehicles and the previous sub-step's of those after it (solved here by
  iterating to the fixed point, exact, usually in one or two passes); neighbour ties (above); and
  which collision writes a vehicle's impact last (below).
- Vehicle.step: crashed vehicles steer 0 and brake at -speed; a pending impact moves the vehicle by
  its translation after the bicycle step and crashes it. IDM timers grow by dt, crashed or not.
- Road.step collisions: every pair of vehicles, and every vehicle with every object (checks on
  both sides are enabled on these scenarios; highway-fast's "others do not check" is not used),
  after all vehicles moved: a sphere pre-check (half the sum of diagonals + the first's speed * dt),
  then highway-env's separating-axis test on the footprints (intersecting: both crash now) and with
  the first swept by the relative displacement over dt (will_intersect: an impact, half the minimal
  translation each way, the whole of it against an obstacle; applied at the next step, and the last
  pair in loop order to write a vehicle's impact wins).
- RegulatedRoad (intersection): every int(1 / dt / 2) road steps, yielding IDM vehicles resume
  their lane's speed limit, then every pair whose constant-speed predictions along their routes
  (0.25 s to 2.75 s) overlap as 1.5 x longer, 0.9 x narrower rectangles, has the lower-priority
  lane's vehicle (else the one behind) yield: target speed 0. highway-env's rectangle test rotates
  points by +heading where it means -heading; mirrored as is. `road_steps` counts road steps.
- No decision draws random numbers during a step in this version (next_lane's np_random is unused,
  randomize_behavior runs at spawn only): stepping is deterministic given the state.

Not mirrored: intersection's per-step spawning and clearing of vehicles (env logic outside Road;
a caller can write new vehicles into free columns with `set_columns` and clear `present`);
recover_from_stop (commented out in highway-env); other vehicle classes (LinearVehicle, ...);
highway-fast's check_collisions=False; several egos.

Cost: policy_step runs its sub-steps on the columns some env uses (objects appear and leave only
between policy steps; intersection's 24 columns hold ~8 vehicles on average). Each sub-step
evaluates every object on every lane once ((L, B, N) LaneCoordinates, computed by Road.step's
closest-lane search and read again by the next Road.act) and each neighbour search gathers
(N, B, N) pairs from it; collisions run a sphere pre-check on the
N (N - 1) / 2 column pairs and the separating-axis test on the near ones only: meant for the
N <= ~30 of these scenarios. A few host syncs per sub-step decide whether MOBIL, the abort passes,
the target lanes' search, impacts or a regulation step are needed at all, and in which envs (rows
are selected for them: each touches a few envs per sub-step).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from highway_env.road.road import Road
from highway_env.road.regulation import RegulatedRoad
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.controller import ControlledVehicle, MDPVehicle
from highway_env.vehicle.kinematics import Vehicle
from highway_env.vehicle.objects import RoadObject

from envs.fast.behaviour import not_zero, take
from envs.fast.collisions import interval_distance
from envs.fast.dynamics import bicycle_step, clip_acceleration
from envs.fast.lanes import NO_LANE, VEHICLE_LENGTH_M, LaneGraph
from envs.fast.params import NEIGHBOUR_LANE_MARGIN_M, IdmParams
from envs.fast.road_motion import (
    ControlledVehicles,
    apply_action,
    edge_tables,
    follow_road,
    is_reachable_from,
    pack_routes,
    route_from_highway_env,
    route_head,
    speed_control,
    steering_control,
)

NO_VEHICLE = -1  # "none" in neighbour indices
PREDICTION_TIMES_S = tuple(float(t) for t in np.arange(0.25, 3, 0.25))  # RegulatedRoad.is_conflict_possible


def idm_params(vehicle_class: type = IDMVehicle) -> IdmParams:
    """The IDM/MOBIL constants `vehicle_class` has now (IntersectionEnv rewrites some at reset)."""
    c = vehicle_class
    return IdmParams(
        acc_max=float(c.ACC_MAX), comfort_acc_max=float(c.COMFORT_ACC_MAX), comfort_acc_min=float(c.COMFORT_ACC_MIN),
        distance_wanted=float(c.DISTANCE_WANTED), time_wanted=float(c.TIME_WANTED),
        delta_range=(float(c.DELTA_RANGE[0]), float(c.DELTA_RANGE[1])), politeness=float(c.POLITENESS),
        lane_change_min_acc_gain=float(c.LANE_CHANGE_MIN_ACC_GAIN),
        lane_change_max_braking_imposed=float(c.LANE_CHANGE_MAX_BRAKING_IMPOSED),
        lane_change_delay=float(c.LANE_CHANGE_DELAY),
    )  # fmt: skip


@dataclass(frozen=True)
class RoadRules:
    """What a scenario's Road does besides its vehicles."""

    connected_lanes: bool  # Road.neighbour_vehicles_connected_lanes
    regulated: bool = False  # a RegulatedRoad (intersection)
    idm: IdmParams = IdmParams()

    @classmethod
    def of(cls, road: Road) -> RoadRules:
        return cls(bool(road.neighbour_vehicles_connected_lanes), isinstance(road, RegulatedRoad), idm_params())


# State.


@dataclass
class RoadTraffic:
    """B envs of N road objects: column 0 the ego, then IDM vehicles, obstacles, padding."""

    vehicles: ControlledVehicles  # (B, N) kinematics, lanes, targets, routes, commands
    delta: torch.Tensor  # (B, N) IDM exponent (IDMVehicle.DELTA, randomize_behavior's draw)
    timer: torch.Tensor  # (B, N) [s] MOBIL's decision timer
    lane_change: torch.Tensor  # (B, N) bool: enable_lane_change
    crashed: torch.Tensor  # (B, N) bool
    impact: torch.Tensor  # (B, N, 2) [m] translation the next step applies where impact_pending
    impact_pending: torch.Tensor  # (B, N) bool: highway-env's impact is not None
    present: torch.Tensor  # (B, N) bool
    is_object: torch.Tensor  # (B, N) bool: a static obstacle (road.objects)
    rank: torch.Tensor  # (B, N) int64: place in road.vehicles + road.objects (padding last)
    length: torch.Tensor  # (B, N) [m] footprint
    width: torch.Tensor  # (B, N) [m]
    yielding: torch.Tensor  # (B, N) bool: RegulatedRoad's is_yielding
    yield_timer: torch.Tensor  # (B, N) int64
    road_steps: torch.Tensor  # (B,) int64: RegulatedRoad.steps

    @classmethod
    def from_highway_env(
        cls,
        graph: LaneGraph,
        roads: Sequence[Road],
        egos: Sequence[ControlledVehicle],
        columns: int | None = None,
        route_slots: int | None = None,
    ) -> RoadTraffic:
        """Each road's vehicles and objects at their current state, one env per road: the ego in
        column 0, the others in list order, padded to `columns` (default: the most objects)."""
        rows = [[ego] + [o for o in road.vehicles + road.objects if o is not ego] for road, ego in zip(roads, egos)]
        ranks = [[(road.vehicles + road.objects).index(o) for o in row] for road, row in zip(roads, rows)]
        return cls.from_objects(graph, rows, ranks, columns, route_slots, [getattr(r, "steps", 0) for r in roads])

    @classmethod
    def from_objects(
        cls,
        graph: LaneGraph,
        rows: Sequence[Sequence[RoadObject]],
        ranks: Sequence[Sequence[int]],
        columns: int | None = None,
        route_slots: int | None = None,
        road_steps: Sequence[int] | None = None,
    ) -> RoadTraffic:
        """B rows of highway-env road objects (vehicles or obstacles) with their list ranks."""
        device, dtype = graph.length.device, graph.length.dtype
        columns = max(len(row) for row in rows) if columns is None else columns
        padded = [list(row) + [None] * (columns - len(row)) for row in rows]
        if any(len(row) > columns for row in rows):
            raise ValueError(f"a road has more than {columns} objects")

        def table(get, default, tensor_dtype) -> torch.Tensor:
            values = [[default if o is None else get(o) for o in row] for row in padded]
            return torch.tensor(values, dtype=tensor_dtype, device=device)

        def floats(get, default: float = 0.0) -> torch.Tensor:
            return table(lambda o: float(get(o)), default, dtype)

        def ints(get, default: int = 0) -> torch.Tensor:
            return table(lambda o: int(get(o)), default, torch.int64)

        def flags(get) -> torch.Tensor:
            return table(lambda o: bool(get(o)), False, torch.bool)

        controlled = lambda o: isinstance(o, ControlledVehicle)  # noqa: E731
        lane = lambda o: graph.lane_id(o.lane_index)  # noqa: E731
        routes = [[route_from_highway_env(graph, getattr(o, "route", None)) if o is not None else [] for o in row]
                  for row in padded]
        route_edge, route_lane = pack_routes(routes, route_slots, device)
        action = lambda o, key: getattr(o, "action", {}).get(key, 0.0)  # noqa: E731
        pending = lambda o: isinstance(o, Vehicle) and o.impact is not None  # noqa: E731
        impact = [[[float(o.impact[0]), float(o.impact[1])] if pending(o) else [0.0, 0.0] for o in row]
                  for row in padded]
        vehicles = ControlledVehicles(
            x=floats(lambda o: o.position[0]),
            y=floats(lambda o: o.position[1]),
            heading=floats(lambda o: o.heading),
            speed=floats(lambda o: o.speed),
            lane=ints(lane),
            target_lane=ints(lambda o: graph.lane_id(o.target_lane_index) if controlled(o) else lane(o)),
            target_speed=floats(lambda o: o.target_speed if controlled(o) else 0.0),
            speed_index=ints(lambda o: MDPVehicle.get_speed_index(o) if controlled(o) else 0),
            route_edge=route_edge,
            route_lane=route_lane,
            route_cursor=torch.zeros(route_edge.shape[:2], dtype=torch.int64, device=device),
            steering=floats(lambda o: action(o, "steering")),
            acceleration=floats(lambda o: action(o, "acceleration")),
        )
        rank_rows = [list(r) + list(range(10**6, 10**6 + columns - len(r))) for r in ranks]
        return cls(
            vehicles=vehicles,
            delta=floats(lambda o: getattr(o, "DELTA", IDMVehicle.DELTA), IDMVehicle.DELTA),
            timer=floats(lambda o: getattr(o, "timer", 0.0) or 0.0),
            lane_change=flags(lambda o: getattr(o, "enable_lane_change", False)),
            crashed=flags(lambda o: o.crashed),
            impact=torch.tensor(impact, dtype=dtype, device=device),
            impact_pending=flags(pending),
            present=flags(lambda o: True),
            is_object=flags(_is_obstacle),
            rank=torch.tensor(rank_rows, dtype=torch.int64, device=device),
            length=floats(lambda o: o.LENGTH, 5.0),
            width=floats(lambda o: o.WIDTH, 2.0),
            yielding=flags(lambda o: getattr(o, "is_yielding", False)),
            yield_timer=ints(lambda o: getattr(o, "yield_timer", 0)),
            road_steps=torch.tensor(list(road_steps or [0] * len(rows)), dtype=torch.int64, device=device),
        )

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "vehicles"}

    def map(self, function: Callable[[torch.Tensor], torch.Tensor], per_env: bool = True) -> RoadTraffic:
        """`function` applied to every (B, N, ...) tensor, and to the (B,) road_steps if `per_env`
        (else they are shared): selections, copies, views of columns."""
        return RoadTraffic(vehicles=self.vehicles.map(function), **{
            k: function(v) if per_env or k != "road_steps" else v for k, v in self._tensors().items()})

    def select(self, rows: torch.Tensor) -> RoadTraffic:
        """A copy of the envs `rows`."""
        return self.map(lambda t: t[rows])

    def clone(self) -> RoadTraffic:
        return self.map(torch.clone)

    def columns_in_use(self) -> int:
        """1 + the last column that holds an object in any env (the ego's column at least)."""
        used = self.present.any(dim=0).nonzero()
        return int(used.max()) + 1 if used.numel() else 1

    def narrow(self, count: int) -> RoadTraffic:
        """The first `count` columns of every env, as views (road_steps, per env, is shared)."""
        return self.map(lambda t: t[:, :count], per_env=False)

    def take_columns(self, narrowed: RoadTraffic) -> None:
        """Adopt `narrowed` (what narrow(count) gave, since stepped) as the first count columns, in
        place: new tensors, the columns after count as they were."""
        count = narrowed.present.shape[1]
        for f in fields(self.vehicles):
            whole = getattr(self.vehicles, f.name)
            setattr(self.vehicles, f.name, torch.cat([getattr(narrowed.vehicles, f.name), whole[:, count:]], dim=1))
        for name, whole in self._tensors().items():
            part = getattr(narrowed, name)
            setattr(self, name, part if name == "road_steps" else torch.cat([part, whole[:, count:]], dim=1))

    def set_columns(
        self, row: int, columns: Sequence[int], source: RoadTraffic, source_columns: Sequence[int]
    ) -> None:
        """Overwrite vehicles `columns` of env `row` with `source`'s env 0 `source_columns`, in place
        (e.g. a vehicle an env spawned; as many route slots on both sides)."""
        to, at = list(columns), list(source_columns)
        for f in fields(self.vehicles):
            getattr(self.vehicles, f.name)[row, to] = getattr(source.vehicles, f.name)[0, at]
        for name, value in self._tensors().items():
            if name != "road_steps":
                value[row, to] = getattr(source, name)[0, at]


def _is_obstacle(o: RoadObject | None) -> bool:
    return o is not None and not isinstance(o, ControlledVehicle)


def _columns(traffic: RoadTraffic) -> tuple[torch.Tensor, torch.Tensor]:
    """(ego, idm) masks (B, N): the ego column, and present IDM vehicles."""
    ego = torch.zeros_like(traffic.present)
    ego[:, 0] = True
    return ego & traffic.present, ~ego & traffic.present & ~traffic.is_object


# Neighbours.


@dataclass(frozen=True, eq=False)
class SearchLanes:
    """Road.neighbour_vehicles' lanes per lane: itself, then (connected) next and previous lanes."""

    lanes: torch.Tensor  # (L, C) int64, NO_LANE-padded
    offsets: torch.Tensor  # (L, C) [m] added to s on that lane to express it in the first lane's s


_SEARCH_LANES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def search_lanes(graph: LaneGraph, connected: bool) -> SearchLanes:
    """Built once per graph: [lane] or, connected, [lane, next lanes by road, previous lanes by road]
    in highway-env's order (graph iteration order), as neighbour_vehicles builds lanes_offsets."""
    cached = _SEARCH_LANES.setdefault(graph, {})
    if connected not in cached:
        edges = {key: [] for key in graph.edges}
        for n, (a, b, _) in enumerate(graph.indices):
            edges[(a, b)].append(n)  # by _id
        rows: list[list[tuple[int, float]]] = []
        for n, (a, b, i) in enumerate(graph.indices):
            row = [(n, 0.0)]
            if connected:
                length = float(graph.length[n])
                for (c, d), lanes in edges.items():
                    if c == b and lanes:
                        row.append((lanes[i] if i < len(lanes) else lanes[0], length))
                for (c, d), lanes in edges.items():
                    if d == a and lanes:
                        previous = lanes[i] if i < len(lanes) else lanes[0]
                        row.append((previous, -float(graph.length[previous])))
            rows.append(row)
        width = max(len(row) for row in rows)
        lanes = torch.full((len(rows), width), NO_LANE, dtype=torch.int64)
        offsets = torch.zeros((len(rows), width), dtype=torch.float64)
        for n, row in enumerate(rows):
            lanes[n, : len(row)] = torch.tensor([lane for lane, _ in row])
            offsets[n, : len(row)] = torch.tensor([offset for _, offset in row], dtype=torch.float64)
        cached[connected] = SearchLanes(lanes.to(graph.kind.device), offsets.to(graph.length))
    return cached[connected]


@dataclass(eq=False)
class LaneCoordinates:
    """Every object's lane coordinates on every lane of the graph, s and r (L, B, N) [m], and what
    neighbour searches and gaps read from them.

    Positions do not change during Road.act, so one evaluation of L lanes serves all of its
    neighbour searches (up to four, each (B, N, N, C) coordinates otherwise) and lane gaps; the
    values are the same elementwise formulas on the same inputs, gathered. Lanes come first so
    that reductions over lanes run over the outer dimension (vectorised on CPU)."""

    graph: LaneGraph
    s: torch.Tensor  # (L, B, N) [m]
    r: torch.Tensor  # (L, B, N) [m]
    searches: dict[bool, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # by `connected`

    @classmethod
    def of(cls, graph: LaneGraph, traffic: RoadTraffic) -> LaneCoordinates:
        v = traffic.vehicles
        lanes = torch.arange(graph.lanes_count, device=v.x.device)[:, None, None]
        return cls(graph, *graph.local_coordinates(lanes, v.x, v.y))

    def select(self, rows: torch.Tensor) -> LaneCoordinates:
        """The envs `rows`, with the searches built so far."""
        searches = {key: (found[:, rows], s[:, rows]) for key, (found, s) in self.searches.items()}
        return LaneCoordinates(self.graph, self.s[:, rows], self.r[:, rows], searches)

    def at(self, lane: torch.Tensor) -> torch.Tensor:
        """s [m] of each object on its own lane of `lane` (B, N)."""
        return self.s.gather(0, lane[None])[0]

    def along(self, lane: torch.Tensor) -> torch.Tensor:
        """(B, N, N) [m]: s of every object j along lane[b, i] (B, N) of each vehicle i."""
        return _take(self.s, _pair_index(lane))

    def searched(self, connected: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(found, s), each (L, B, N) for every query lane q and object j: whether j is on_lane
        (margin 1 m) of one of q's search lanes, and its s there expressed in q's coordinates (the
        first search lane that holds it, plus that lane's offset). Built once per `connected`."""
        if connected not in self.searches:
            graph, table = self.graph, search_lanes(self.graph, connected)
            lanes, offsets = table.lanes.T.clamp(min=0), table.offsets.T  # (C, L)
            searched_count, lanes_count = lanes.shape
            on = (
                (self.r.abs() <= (graph.width / 2 + NEIGHBOUR_LANE_MARGIN_M)[:, None, None])
                & (self.s >= -VEHICLE_LENGTH_M)
                & (self.s < (graph.length + VEHICLE_LENGTH_M)[:, None, None])
            )  # (L, B, N): on_lane(margin=1) of every lane
            on = on.index_select(0, lanes.reshape(-1)).view(*lanes.shape, *on.shape[1:])  # (C, L, B, N)
            on &= (table.lanes.T != NO_LANE)[..., None, None]
            # the first search lane holding j: the least c where on, C where none (uint8 amin: fast)
            position = torch.arange(searched_count, dtype=torch.uint8, device=on.device)[:, None, None, None]
            first = ((~on).to(torch.uint8) * searched_count + position).amin(dim=0)  # (L, B, N)
            entry = first.clamp(max=searched_count - 1).long() * lanes_count + torch.arange(
                lanes_count, device=on.device)[:, None, None]  # (L, B, N) flat index into (C, L)
            s = self.s.gather(0, _take(lanes, entry)) + _take(offsets, entry)
            self.searches[connected] = (first < searched_count, s)
        return self.searches[connected]


def _pair_index(lane: torch.Tensor, objects_first: bool = False) -> torch.Tensor:
    """Flat indices of [lane[b, i], b, j] in (L, B, N) tensors, for (B, N) lane ids: (B, N_i, N_j),
    or (N_j, B, N_i) if objects_first."""
    batch, count = lane.shape
    base = lane * (batch * count) + torch.arange(0, batch * count, count, device=lane.device)[:, None]  # (B, N_i)
    j = torch.arange(count, device=lane.device)
    return base[None] + j[:, None, None] if objects_first else base[..., None] + j


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """torch.take(values, index) as a 1-D index_select (several times faster on CPU)."""
    return values.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)


def _inf_unless(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where mask, inf elsewhere: finite values + this are torch.where(mask, values, inf) (exactly,
    but for -0 -> 0), several times faster on CPU than torch.where (and bool -> float) kernels."""
    return 1 / mask.view(torch.uint8).to(dtype) - 1


def neighbour_vehicles(
    graph: LaneGraph,
    traffic: RoadTraffic,
    lane: torch.Tensor,
    connected: bool,
    coordinates: LaneCoordinates | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Road.neighbour_vehicles(vehicle i, lane[i]) for every i: (front, rear) column indices (B, N),
    NO_VEHICLE where none (or where lane is NO_LANE). coordinates: the objects' LaneCoordinates,
    computed if not given. Pairs are laid out (N_j, B, N_i) so that the reductions over the other
    objects j run over the outer dimension, as amin/amax (argmax is slow on CPU)."""
    v = traffic.vehicles
    count = v.x.shape[1]
    coordinates = LaneCoordinates.of(graph, traffic) if coordinates is None else coordinates
    query = lane.clamp(min=0)
    s_self = coordinates.at(query)[None]  # (1, B, N_i) [m]
    found, s_found = coordinates.searched(connected)  # (L, B, N)
    index = _pair_index(query, objects_first=True)  # (N_j, B, N_i)
    s_other = _take(s_found, index)  # j in i's query lane's coordinates
    others = ~torch.eye(count, dtype=torch.bool, device=v.x.device)[:, None, :]
    candidate = _take(found, index) & traffic.present.T[..., None] & others & (lane != NO_LANE)[None]
    ahead = candidate & (s_self <= s_other)
    behind = candidate & (s_other < s_self)
    nearest_ahead = (s_other + _inf_unless(ahead, s_other.dtype)).amin(dim=0)  # (B, N_i)
    nearest_behind = (s_other - _inf_unless(behind, s_other.dtype)).amax(dim=0)
    # ties: the last (front) or first (rear) in road.vehicles + road.objects order. The key
    # rank * N + j orders by rank (unique in an env) and names the column.
    key = traffic.rank.T[..., None] * count + torch.arange(count, device=v.x.device)[:, None, None]  # (N_j, B, 1)
    front = ((ahead & (s_other == nearest_ahead)) * (key + 1)).amax(dim=0) - 1  # the largest tied key; -1: none
    top = 2**62  # above every key
    rear = top - ((behind & (s_other == nearest_behind)) * (top - key)).amax(dim=0)  # the smallest; top: none
    return torch.where(front >= 0, front % count, NO_VEHICLE), torch.where(rear < top, rear % count, NO_VEHICLE)


# IDM and MOBIL. "Reasoner" is the vehicle whose constants (DELTA) are used: column i of the result.


def desired_gap(
    idm: IdmParams,
    speed: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    velocity: tuple[torch.Tensor, torch.Tensor],
    front_velocity: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """IDMVehicle.desired_gap(ego, front) [m]: d0 + v tau + v dv / (2 sqrt(ab)), dv the velocity
    difference projected on the ego's direction (cos, sin of its heading; velocities (x, y) [m/s]
    are speed * (cos, sin), as IdmInputs holds them)."""
    dv = (velocity[0] - front_velocity[0]) * cos + (velocity[1] - front_velocity[1]) * sin
    sqrt_ab = math.sqrt(-idm.comfort_acc_max * idm.comfort_acc_min)
    return idm.distance_wanted + speed * idm.time_wanted + speed * dv / (2 * sqrt_ab)


@dataclass(frozen=True)
class IdmInputs:
    """What IDM, MOBIL and the abort rule read of the traffic. Positions, speeds, lanes and target
    speeds do not change during Road.act, so these are computed once there and gathered per call."""

    along: torch.Tensor  # (B, N, N) [m]: s of every object j along vehicle i's current lane
    rows: torch.Tensor  # (7, B, N) per object: see `at`

    @classmethod
    def of(
        cls, graph: LaneGraph, traffic: RoadTraffic, coordinates: LaneCoordinates | None = None
    ) -> IdmInputs:
        v = traffic.vehicles
        coordinates = LaneCoordinates.of(graph, traffic) if coordinates is None else coordinates
        along = coordinates.along(v.lane)
        cos, sin = torch.cos(v.heading), torch.sin(v.heading)
        target_speed = torch.minimum(v.target_speed.clamp(min=0), graph.speed_limit[v.lane])
        free_ratio = v.speed.clamp(min=0) / not_zero(target_speed).abs()  # IDM's free-road term's base
        s_own = along.diagonal(dim1=1, dim2=2)
        return cls(along, torch.stack([v.speed, cos, sin, v.speed * cos, v.speed * sin, free_ratio, s_own]))

    def select(self, rows: torch.Tensor) -> IdmInputs:
        return IdmInputs(self.along[rows], self.rows[:, rows])

    def at(self, columns: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(speed, cos, sin, (vx, vy), free_ratio, s_own), each (B, M), of the objects `columns`
        ((B, M), NO_VEHICLE read as column 0: mask it): speed [m/s], the heading's cos and sin,
        velocity [m/s], speed / not_zero(target speed clipped to [0, the lane's limit]), and s [m]
        on its own lane."""
        index = columns.clamp(min=0)[None].expand(self.rows.shape[0], -1, -1)
        speed, cos, sin, vx, vy, free_ratio, s_own = self.rows.gather(2, index)
        return speed, cos, sin, (vx, vy), free_ratio, s_own


def _pair(values: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """values[b, i, j] for (B, N, N) values and (B, N) indices (NO_VEHICLE read as 0: mask it)."""
    count = values.shape[-1]
    return values.reshape(values.shape[0], -1).gather(1, i.clamp(min=0) * count + j.clamp(min=0))


def idm_acceleration(
    traffic: RoadTraffic,
    follower: torch.Tensor,
    front: torch.Tensor,
    idm: IdmParams,
    inputs: IdmInputs,
) -> torch.Tensor:
    """IDMVehicle.acceleration(ego_vehicle=follower, front_vehicle=front) [m/s^2] as each vehicle i
    reasons it (its DELTA): follower, front (B, N) column indices or NO_VEHICLE, or (B, K, N) for K
    (follower, front) pairs per vehicle at once; 0 where there is no follower or it is an obstacle."""
    shape = follower.shape
    delta = traffic.delta.view(shape[0], *([1] * (len(shape) - 2)), -1)  # the reasoner's: column i
    follower, front = follower.reshape(shape[0], -1), front.reshape(shape[0], -1)  # (B, K * N)
    has_follower = (follower != NO_VEHICLE) & ~take(traffic.is_object, follower)
    speed, cos, sin, velocity, free_ratio, s_own = inputs.at(follower)
    front_velocity = inputs.at(front)[3]
    d = _pair(inputs.along, follower, front) - s_own  # lane_distance_to, the follower's lane
    gap = desired_gap(idm, speed, cos, sin, velocity, front_velocity)
    interaction = idm.comfort_acc_max * torch.pow(gap / not_zero(d), 2)
    interaction = torch.where(front != NO_VEHICLE, interaction, torch.zeros_like(interaction)).view(shape)
    acceleration = idm.comfort_acc_max * (1 - torch.pow(free_ratio.view(shape), delta)) - interaction
    return torch.where(has_follower.view(shape), acceleration, torch.zeros_like(acceleration))


def _route_head_lane_number(graph: LaneGraph, vehicles: ControlledVehicles) -> torch.Tensor:
    """route[0][2] of each vehicle, NO_LANE where the route is empty or its head's _id is None."""
    if vehicles.route_lane.shape[-1] == 0:
        return torch.full_like(vehicles.lane, NO_LANE)
    exists, _, head = route_head(vehicles, vehicles.route_cursor)
    head = torch.where(exists, head, NO_LANE)
    return torch.where(head != NO_LANE, graph.lane_number[head.clamp(min=0)], NO_LANE)


def mobil(
    graph: LaneGraph,
    traffic: RoadTraffic,
    candidate: torch.Tensor,
    current: tuple[torch.Tensor, torch.Tensor],
    rules: RoadRules,
    inputs: IdmInputs | None = None,
    coordinates: LaneCoordinates | None = None,
) -> torch.Tensor:
    """IDMVehicle.mobil(candidate lane) for every vehicle, (B, N) bool. `current`: the (front, rear)
    neighbours in the vehicles' lanes; the route test reads vehicles.target_lane as it is now.
    inputs, coordinates: the traffic's IdmInputs and LaneCoordinates, computed if not given."""
    idm, v = rules.idm, traffic.vehicles
    coordinates = LaneCoordinates.of(graph, traffic) if coordinates is None else coordinates
    inputs = IdmInputs.of(graph, traffic, coordinates) if inputs is None else inputs
    me = torch.arange(v.x.shape[1], device=v.x.device).expand_as(v.lane)
    new_front, new_rear = neighbour_vehicles(graph, traffic, candidate, rules.connected_lanes, coordinates)
    old_front, old_rear = current
    # the six accelerations MOBIL compares, in one call: (B, 6, N)
    followers = torch.stack([new_rear, new_rear, me, me, old_rear, old_rear], dim=1)
    fronts = torch.stack([new_front, me, new_front, old_front, me, old_front], dim=1)
    (new_following_a, new_following_pred_a, self_pred_a, self_a, old_following_a,
     old_following_pred_a) = idm_acceleration(traffic, followers, fronts, idm, inputs).unbind(1)
    unsafe = new_following_pred_a < -idm.lane_change_max_braking_imposed
    # a route whose head names a lane: only towards that _id, without a gain test
    route_id = _route_head_lane_number(graph, v)
    target_id = graph.lane_number[v.target_lane]
    wrong_way = torch.sign(graph.lane_number[candidate.clamp(min=0)] - target_id) != torch.sign(route_id - target_id)
    route_ok = ~wrong_way & ~(self_pred_a < -idm.lane_change_max_braking_imposed)
    jerk = self_pred_a - self_a + idm.politeness * (
        new_following_pred_a - new_following_a + old_following_pred_a - old_following_a)
    gain_ok = ~(jerk < idm.lane_change_min_acc_gain)
    return ~unsafe & torch.where(route_id != NO_LANE, route_ok, gain_ok)


def _side_lane(graph: LaneGraph, lane: torch.Tensor, step: int) -> torch.Tensor:
    """RoadNetwork.side_lanes' lane _id + step of the same road, NO_LANE outside it."""
    road = graph.side_lanes[lane]  # (B, N, K) lanes of the road by _id
    number = graph.lane_number[lane] + step
    inside = (number >= 0) & (number < (road != NO_LANE).sum(dim=-1))
    side = road.gather(-1, number.clamp(0, road.shape[-1] - 1)[..., None])[..., 0]
    return torch.where(inside, side, NO_LANE)


def aborted_lane_changes(
    graph: LaneGraph,
    traffic: RoadTraffic,
    changing: torch.Tensor,
    before: torch.Tensor,
    idm: IdmParams,
    inputs: IdmInputs | None = None,
) -> torch.Tensor:
    """change_lane_policy's abort, (B, N) bool, for the vehicles `changing` (within a road).

    Vehicle i gives up when a vehicle j (not an obstacle), not in i's target lane but targeting it,
    is 0 < d < desired_gap(i, j) ahead along i's lane. highway-env decides in list order, so i sees
    the final target of the vehicles before it and `before` (the target at the start of Road.act)
    of those after it: iterated to the unique fixed point of that triangular system.
    """
    v = traffic.vehicles
    if not bool(changing.any()):
        return torch.zeros_like(changing)
    inputs = IdmInputs.of(graph, traffic) if inputs is None else inputs
    d = inputs.along - inputs.along.diagonal(dim1=1, dim2=2)[..., None]  # (B, N, N): lane_distance_to(j), i's lane
    speed, cos, sin, vx, vy = inputs.rows[:5]
    gap = desired_gap(idm, speed[..., None], cos[..., None], sin[..., None], (vx[..., None], vy[..., None]),
                      (vx[:, None, :], vy[:, None, :]))  # (B, N, N): i behind j
    target = v.target_lane[..., None]  # (B, N, 1): i's target
    close = (changing[..., None] & traffic.present[:, None, :] & ~traffic.is_object[:, None, :]
             & ~torch.eye(v.x.shape[1], dtype=torch.bool, device=v.x.device)
             & (v.lane[:, None, :] != target) & (0 < d) & (d < gap))
    earlier = traffic.rank[:, None, :] < traffic.rank[..., None]  # (B, N, N): j acts before i
    final = v.target_lane
    for _ in range(v.x.shape[1] + 1):
        seen = torch.where(earlier, final[:, None, :], before[:, None, :])
        aborted = (close & (seen == target)).any(dim=-1)
        updated = torch.where(aborted, v.lane, v.target_lane)
        if torch.equal(updated, final):
            break
        final = updated
    return aborted


# Road.act and Road.step.


def act(graph: LaneGraph, traffic: RoadTraffic, rules: RoadRules, coordinates: LaneCoordinates | None = None) -> None:
    """Road.act(), in place: the ego's ControlledVehicle.act() and every IDMVehicle.act().
    coordinates: the objects' LaneCoordinates at their current positions, if `step` gave them."""
    v, idm = traffic.vehicles, rules.idm
    ego, idm_vehicles = _columns(traffic)
    active = idm_vehicles & ~traffic.crashed  # IDMVehicle.act returns early once crashed
    before = v.target_lane.clone()
    follow_road(graph, v, ego | active)
    if coordinates is None:  # positions and lanes stay as they are during Road.act
        coordinates = LaneCoordinates.of(graph, traffic)
    inputs = IdmInputs.of(graph, traffic, coordinates)
    current = neighbour_vehicles(graph, traffic, v.lane, rules.connected_lanes, coordinates)

    # change_lane_policy: MOBIL on a timer for those not changing lanes, then aborts for those that are
    policy = active & traffic.lane_change
    changing = policy & (v.lane != v.target_lane)
    within_road = changing & (graph.edge[v.lane] == graph.edge[v.target_lane])
    deciding = policy & ~changing & (idm.lane_change_delay < traffic.timer)  # utils.do_every
    traffic.timer = torch.where(deciding, torch.zeros_like(traffic.timer), traffic.timer)
    if bool(deciding.any()):
        moving = v.speed.abs() >= 1
        for step in (-1, 1):  # side_lanes: left, then right
            side = _side_lane(graph, v.lane, step)
            accept = deciding & (side != NO_LANE) & is_reachable_from(graph, side.clamp(min=0), v.x, v.y) & moving
            rows = accept.any(dim=1).nonzero()[:, 0]  # MOBIL only in the envs where it may accept a change
            if rows.numel():
                accept[rows] &= mobil(graph, traffic.select(rows), side[rows], (current[0][rows], current[1][rows]),
                                      rules, inputs.select(rows), coordinates.select(rows))
            v.target_lane = torch.where(accept, side, v.target_lane)
    aborted = torch.zeros_like(within_road)
    rows = within_road.any(dim=1).nonzero()[:, 0]  # the abort rule only in the envs with a lane change under way
    if rows.numel():
        aborted[rows] = aborted_lane_changes(graph, traffic.select(rows), within_road[rows], before[rows], idm,
                                             inputs.select(rows))
    v.target_lane = torch.where(aborted, v.lane, v.target_lane)

    # commands: steering towards the target lane; IDM behind the lane's front vehicle, and the
    # target lane's while changing lanes
    steering = steering_control(graph, v)
    me = torch.arange(v.x.shape[1], device=v.x.device).expand_as(v.lane)
    acceleration = idm_acceleration(traffic, me, current[0], idm, inputs)
    changing = v.lane != v.target_lane
    rows = (changing & active).any(dim=1).nonzero()[:, 0]  # (others' rows: only the ego's or unused commands)
    if rows.numel():
        changers = traffic.select(rows)
        target_front, _ = neighbour_vehicles(graph, changers, changers.vehicles.target_lane, rules.connected_lanes,
                                             coordinates.select(rows))
        on_target = idm_acceleration(changers, me[rows], target_front, idm, inputs.select(rows))
        own = acceleration[rows]
        acceleration[rows] = torch.where(changing[rows], torch.minimum(own, on_target), own)
    acceleration = acceleration.clamp(-idm.acc_max, idm.acc_max)
    acceleration = torch.where(ego, speed_control(v), acceleration)
    updates = ego | active
    v.steering = torch.where(updates, steering, v.steering)
    v.acceleration = torch.where(updates, acceleration, v.acceleration)


def step(graph: LaneGraph, traffic: RoadTraffic, dt: float, rules: RoadRules) -> LaneCoordinates:
    """Road.step(dt) (RegulatedRoad.step with rules.regulated), in place: every vehicle's
    Vehicle.step, then the collision checks of every pair. Returns the objects' LaneCoordinates at
    their new positions (the closest lane reads them; so can the next Road.act)."""
    if rules.regulated:
        traffic.road_steps = traffic.road_steps + 1
        due = traffic.road_steps % int(1 / dt / RegulatedRoad.REGULATION_FREQUENCY) == 0
        enforce_road_rules(graph, traffic, due)
    v = traffic.vehicles
    ego, idm_vehicles = _columns(traffic)
    moves = ego | idm_vehicles
    traffic.timer = torch.where(idm_vehicles, traffic.timer + dt, traffic.timer)
    # clip_actions: crashed vehicles steer straight and brake to a stop; speed limits
    steering = torch.where(traffic.crashed, torch.zeros_like(v.steering), v.steering)
    acceleration = clip_acceleration(v.speed, torch.where(traffic.crashed, -1.0 * v.speed, v.acceleration))
    v.steering = torch.where(moves, steering, v.steering)
    v.acceleration = torch.where(moves, acceleration, v.acceleration)
    x, y, heading, speed = bicycle_step(v.x, v.y, v.heading, v.speed, v.steering, v.acceleration, dt)
    hit = traffic.impact_pending & moves
    x = torch.where(hit, x + traffic.impact[..., 0], x)
    y = torch.where(hit, y + traffic.impact[..., 1], y)
    traffic.crashed = traffic.crashed | hit
    traffic.impact_pending = traffic.impact_pending & ~moves
    v.x, v.y = torch.where(moves, x, v.x), torch.where(moves, y, v.y)
    v.heading, v.speed = torch.where(moves, heading, v.heading), torch.where(moves, speed, v.speed)
    coordinates = LaneCoordinates.of(graph, traffic)
    v.lane = torch.where(moves, graph.closest_lane(v.x, v.y, v.heading, (coordinates.s, coordinates.r)), v.lane)
    handle_collisions(traffic, dt)
    return coordinates


def _footprints(x, y, heading, length, width) -> torch.Tensor:
    """RoadObject.polygon() without the closing point: (..., 4, 2) corners [m] of objects (...)."""
    half_l, half_w = (length / 2)[..., None], (width / 2)[..., None]
    px = torch.cat([-half_l, -half_l, half_l, half_l], dim=-1)  # (..., 4)
    py = torch.cat([-half_w, half_w, half_w, -half_w], dim=-1)
    c, s = torch.cos(heading)[..., None], torch.sin(heading)[..., None]
    return torch.stack([c * px + -s * py + x[..., None], s * px + c * py + y[..., None]], dim=-1)


def _edge_normals(corners: torch.Tensor) -> torch.Tensor:
    """Unit normals of a polygon's 4 edges p1 -> p2, as are_polygons_intersecting builds them."""
    p1, p2 = corners, corners.roll(-1, dims=-2)
    normal = torch.stack([-p2[..., 1] + p1[..., 1], p2[..., 0] - p1[..., 0]], dim=-1)
    return normal / torch.sqrt(normal[..., 0] ** 2 + normal[..., 1] ** 2)[..., None]


def collisions(traffic: RoadTraffic, dt: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoadObject._is_colliding for every ordered pair (i before j in list order): (intersecting,
    will_intersect) (B, N, N) bool and the translation (B, N, N, 2) [m] that pushes i out of j
    (0 where the pair fails the sphere pre-check).

    The sphere pre-check runs on the N (N - 1) / 2 unordered column pairs (its distance and
    diagonals are symmetric; the speed is the first one's in list order), the separating-axis test
    only on the E pairs that pass it, as (E, 8 axes, 4 corners) projections."""
    v = traffic.vehicles
    batch, count = v.x.shape
    c1, c2 = torch.triu_indices(count, count, 1, device=v.x.device)  # (P,) columns c1 < c2

    def columns(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return values.index_select(1, c1), values.index_select(1, c2)  # (B, P) each

    (x1, x2), (y1, y2), (speed1, speed2) = columns(v.x), columns(v.y), columns(v.speed)
    (rank1, rank2), (present1, present2) = columns(traffic.rank), columns(traffic.present)
    (object1, object2), (diagonal1, diagonal2) = columns(traffic.is_object), columns(
        torch.sqrt(traffic.length**2 + traffic.width**2))
    c1_first = rank1 < rank2  # ranks are unique in an env
    dx, dy = x2 - x1, y2 - y1
    near = torch.sqrt(dx**2 + dy**2) <= (diagonal1 + diagonal2) / 2 + torch.where(c1_first, speed1, speed2) * dt
    valid = present1 & present2 & ~(object1 & object2) & near  # (B, P)
    intersecting = torch.zeros((batch, count, count), dtype=torch.bool, device=v.x.device)
    will_intersect = torch.zeros_like(intersecting)
    translation = torch.zeros((batch, count, count, 2), dtype=v.x.dtype, device=v.x.device)
    b, p = valid.nonzero(as_tuple=True)  # (E,) each
    if b.numel() == 0:
        return intersecting, will_intersect, translation
    swap = ~c1_first[b, p]
    i, j = torch.where(swap, c2[p], c1[p]), torch.where(swap, c1[p], c2[p])  # columns, i first in list order
    first, second = b * count + i, b * count + j

    def objects(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """values (B, N) at the pairs' i and j: (E,) each."""
        values = values.reshape(-1)
        return values.index_select(0, first), values.index_select(0, second)

    (x_a, x_b), (y_a, y_b), (h_a, h_b) = objects(v.x), objects(v.y), objects(v.heading)
    (speed_a, speed_b), (l_a, l_b), (w_a, w_b) = objects(v.speed), objects(traffic.length), objects(traffic.width)
    a, b = _footprints(x_a, y_a, h_a, l_a, w_a), _footprints(x_b, y_b, h_b, l_b, w_b)  # (E, 4, 2)
    axes = torch.cat([_edge_normals(a), _edge_normals(b)], dim=-2)  # (E, 8, 2)
    ax, ay = axes[..., None, 0], axes[..., None, 1]  # (E, 8, 1)
    project_a = a[:, None, :, 0] * ax + a[:, None, :, 1] * ay  # (E, 8, 4)
    project_b = b[:, None, :, 0] * ax + b[:, None, :, 1] * ay
    min_a, max_a = project_a.amin(dim=-1), project_a.amax(dim=-1)  # (E, 8)
    min_b, max_b = project_b.amin(dim=-1), project_b.amax(dim=-1)
    now = (interval_distance(min_a, max_a, min_b, max_b) <= 0).all(dim=-1)  # (E,)
    # the relative displacement over dt (velocity = speed * heading direction)
    rel_x = speed_a * torch.cos(h_a) * dt - speed_b * torch.cos(h_b) * dt
    rel_y = speed_a * torch.sin(h_a) * dt - speed_b * torch.sin(h_b) * dt
    projection = axes[..., 0] * rel_x[..., None] + axes[..., 1] * rel_y[..., None]  # (E, 8)
    min_a = torch.where(projection < 0, min_a + projection, min_a)
    max_a = torch.where(projection < 0, max_a, max_a + projection)
    distance = interval_distance(min_a, max_a, min_b, max_b)
    soon = (distance <= 0).all(dim=-1)
    smallest = distance.abs().argmin(dim=-1, keepdim=True)  # the first minimal axis
    min_distance = distance.abs().gather(-1, smallest)[..., 0]
    axis = axes.gather(-2, smallest[..., None].expand(-1, 1, 2))[:, 0]  # (E, 2)
    axis = torch.where(((a.mean(dim=-2) - b.mean(dim=-2)) * axis).sum(dim=-1, keepdim=True) > 0, axis, -axis)
    pairs = first * count + j  # b * N * N + i * N + j
    intersecting.view(-1)[pairs] = now
    will_intersect.view(-1)[pairs] = soon
    translation.view(-1, 2)[pairs] = min_distance[..., None] * axis
    return intersecting, will_intersect, translation


def handle_collisions(traffic: RoadTraffic, dt: float) -> None:
    """Road.step's collision loop, in place: intersecting pairs both crash; will_intersect pairs
    get impacts (half the translation each way, all of it against an obstacle), the last write in
    highway-env's loop order (i by rank, then j by rank) winning. Impacts are resolved only in the
    envs that have one."""
    intersecting, will_intersect, translation = collisions(traffic, dt)
    traffic.crashed = traffic.crashed | intersecting.any(dim=2) | intersecting.any(dim=1)
    rows = will_intersect.flatten(1).any(dim=1).nonzero()[:, 0]
    if rows.numel() == 0:
        return
    will_intersect, translation, is_object = will_intersect[rows], translation[rows], traffic.is_object[rows]
    count = traffic.rank.shape[1]
    rank = traffic.rank[rows].clamp(max=count + 10**6)
    key = rank[..., None] * (2 * 10**6 + 2 * count) + rank[:, None, :]  # (R, N, N): loop position of (i, j)
    other_static = is_object[:, None, :, None]
    as_self = torch.where(other_static, translation, translation / 2)  # written on i
    as_other = -translation / 2  # written on j (i is never an obstacle: obstacles come last)
    key = torch.where(will_intersect, key, -1)
    keys = torch.cat([key, key.transpose(1, 2)], dim=2)  # (R, N, 2N): writes on k as i, then as j
    values = torch.cat([as_self, as_other.transpose(1, 2)], dim=2)  # (R, N, 2N, 2)
    last = keys.argmax(dim=2, keepdim=True)  # (R, N, 1)
    written = keys.gather(2, last)[..., 0] >= 0
    impact = values.gather(2, last[..., None].expand(-1, -1, 1, 2))[:, :, 0]
    written &= ~is_object
    traffic.impact, traffic.impact_pending = traffic.impact.clone(), traffic.impact_pending.clone()  # not in place
    traffic.impact[rows] = torch.where(written[..., None], impact, traffic.impact[rows])
    traffic.impact_pending[rows] |= written


# RegulatedRoad.


def predict_along_route(
    graph: LaneGraph, traffic: RoadTraffic, times: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ControlledVehicle.predict_trajectory_constant_speed(times): (x, y, heading), (B, N, T), at
    s = s_now (in the current lane) + speed * t, r = 0, along the remaining route (or the lane):
    position_heading_along_route moves to the next entry while one is left and s exceeds the
    entry's lane length; an entry without _id takes the current lane's _id (clamped to the road
    here, where highway-env would raise)."""
    v = traffic.vehicles
    s_now = graph.local_coordinates(v.lane, v.x, v.y)[0]
    longitudinal = s_now[..., None] + v.speed[..., None] * times  # (B, N, T)
    slots = v.route_edge.shape[-1]
    if slots == 0:
        lane = v.lane[..., None].expand_as(longitudinal)
        x, y = graph.position(lane, longitudinal, torch.zeros_like(longitudinal))
        return x, y, graph.heading_at(lane, longitudinal)
    tables = edge_tables(graph)
    edge = v.route_edge.clamp(min=0)
    number = torch.minimum(graph.lane_number[v.lane][..., None], tables.lanes_count[edge] - 1)  # (B, N, R)
    by_id = tables.edge_lanes[edge].gather(-1, number[..., None])[..., 0]
    entries = torch.where(v.route_lane != NO_LANE, v.route_lane, by_id)  # (B, N, R) route entries as lanes
    index = torch.arange(slots, device=v.x.device)
    left = ((index >= v.route_cursor[..., None]) & (v.route_edge != NO_LANE)).sum(dim=-1)  # (B, N) len(route)
    cursor = v.route_cursor.clamp(max=slots - 1)
    head = torch.where(left > 0, entries.gather(-1, cursor[..., None])[..., 0], v.lane)  # route or [lane_index]
    lane = head[..., None].expand_as(longitudinal)
    cursor = cursor[..., None].expand_as(longitudinal)
    left = left[..., None].expand_as(longitudinal)
    entries = entries[..., None, :].expand(*longitudinal.shape, slots)  # (B, N, T, R)
    for _ in range(slots - 1):
        move = (left > 1) & (longitudinal > graph.length[lane])
        longitudinal = torch.where(move, longitudinal - graph.length[lane], longitudinal)
        cursor = (cursor + move.long()).clamp(max=slots - 1)
        left = left - move.long()
        lane = torch.where(move, entries.gather(-1, cursor[..., None])[..., 0], lane)
    x, y = graph.position(lane, longitudinal, torch.zeros_like(longitudinal))
    return x, y, graph.heading_at(lane, longitudinal)


def _corners_inside(points_x, points_y, cx, cy, length, width, angle) -> torch.Tensor:
    """utils.point_in_rotated_rectangle for points (..., P): rotated by +angle about the centre
    (as highway-env does), then inside [-length/2, length/2] x [-width/2, width/2]."""
    c, s = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    dx, dy = points_x - cx[..., None], points_y - cy[..., None]
    ux, uy = c * dx + -s * dy, s * dx + c * dy
    half_l, half_w = (length / 2)[..., None], (width / 2)[..., None]
    return ((-half_l <= ux) & (ux <= half_l) & (-half_w <= uy) & (uy <= half_w)).any(dim=-1)


def _rect_points(cx, cy, length, width, angle) -> tuple[torch.Tensor, torch.Tensor]:
    """utils.rect_corners(..., include_midpoints=True, include_center=True): (..., 9) x and y."""
    half_l, half_w = length / 2, width / 2
    ux = torch.stack([-half_l, -half_l, half_l, half_l, torch.zeros_like(half_l), -half_l, torch.zeros_like(half_l),
                      half_l, torch.zeros_like(half_l)], dim=-1)
    uy = torch.stack([-half_w, half_w, half_w, -half_w, torch.zeros_like(half_w), torch.zeros_like(half_w), half_w,
                      torch.zeros_like(half_w), -half_w], dim=-1)
    c, s = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    return c * ux + -s * uy + cx[..., None], s * ux + c * uy + cy[..., None]


def conflicts(graph: LaneGraph, traffic: RoadTraffic, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """RegulatedRoad.is_conflict_possible for every pair (B, N, N) bool (symmetric in effect; the
    pre-check uses the first vehicle's length, all vehicles here are as long); only the pairs
    `candidates` ((B, N, N) bool; all when None) are checked, the others are False. The rectangle
    test runs only on the (pair, time) points that pass the sphere pre-check, as highway-env's loop
    `continue`s past the others (few are near: most of the cost otherwise)."""
    v = traffic.vehicles
    times = torch.tensor(PREDICTION_TIMES_S, dtype=v.x.dtype, device=v.x.device)
    x, y, h = predict_along_route(graph, traffic, times)  # (B, N, T)
    near = torch.sqrt((x[:, None] - x[:, :, None]) ** 2 + (y[:, None] - y[:, :, None]) ** 2) <= traffic.length[
        :, :, None, None]  # (B, N, N, T): |p_j - p_i| <= v_i.LENGTH
    if candidates is not None:
        near &= candidates[..., None]
    b, i, j, t = near.nonzero(as_tuple=True)
    found = torch.zeros_like(near)
    if b.numel():
        l1, w1 = 1.5 * traffic.length[b, i], 0.9 * traffic.width[b, i]
        l2, w2 = 1.5 * traffic.length[b, j], 0.9 * traffic.width[b, j]
        x1, y1, h1 = x[b, i, t], y[b, i, t], h[b, i, t]
        x2, y2, h2 = x[b, j, t], y[b, j, t], h[b, j, t]
        p1 = _rect_points(x1, y1, l1, w1, h1)
        p2 = _rect_points(x2, y2, l2, w2, h2)
        found[b, i, j, t] = _corners_inside(*p1, x2, y2, l2, w2, h2) | _corners_inside(*p2, x1, y1, l1, w1, h1)
    return found.any(dim=-1)


def enforce_road_rules(graph: LaneGraph, traffic: RoadTraffic, due: torch.Tensor) -> None:
    """RegulatedRoad.enforce_road_rules for the envs `due` ((B,) bool), in place: yielding IDM
    vehicles resume their lane's speed limit (YIELD_DURATION 0: at the next enforcement), then of
    each conflicting pair the vehicle on the lower-priority lane (else the one behind) yields.
    Only the due envs are computed (about 1 in 7 at a time once episodes drift apart)."""
    rows = due.nonzero(as_tuple=True)[0]
    if rows.numel() == 0:
        return
    target_speed, yielding, yield_timer = _regulated(graph, traffic.select(rows))
    v = traffic.vehicles
    v.target_speed = v.target_speed.index_put((rows,), target_speed)  # new tensors, not in place
    traffic.yielding = traffic.yielding.index_put((rows,), yielding)
    traffic.yield_timer = traffic.yield_timer.index_put((rows,), yield_timer)


def _regulated(graph: LaneGraph, traffic: RoadTraffic) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """enforce_road_rules on every env of `traffic`: the new (target_speed, yielding, yield_timer), (B, N) each."""
    v = traffic.vehicles
    _, idm_vehicles = _columns(traffic)
    duration = RegulatedRoad.YIELD_DURATION * RegulatedRoad.REGULATION_FREQUENCY
    done = traffic.yielding & (traffic.yield_timer >= duration)
    target_speed = torch.where(done, graph.speed_limit[v.lane], v.target_speed)
    yield_timer = torch.where(traffic.yielding & ~done, traffic.yield_timer + 1, traffic.yield_timer)
    yielding = traffic.yielding & ~done
    vehicles = traffic.present & ~traffic.is_object
    pair = (traffic.rank[..., None] < traffic.rank[:, None, :]) & vehicles[..., None] & vehicles[:, None, :]
    conflict = pair & conflicts(graph, traffic, pair)
    # respect_priorities(v1 = i, v2 = j): the lower priority yields; equal: v1 if it is behind
    p1, p2 = graph.priority[v.lane][..., None], graph.priority[v.lane][:, None, :]
    cos, sin = torch.cos(v.heading), torch.sin(v.heading)
    dx, dy = v.x[:, None, :] - v.x[..., None], v.y[:, None, :] - v.y[..., None]  # p_j - p_i
    front_1 = cos[..., None] * dx + sin[..., None] * dy  # v1.front_distance_to(v2)
    front_2 = cos[:, None, :] * -dx + sin[:, None, :] * -dy  # v2.front_distance_to(v1)
    first_yields = (p1 < p2) | ((p1 == p2) & (front_1 > front_2))
    yields = (conflict & first_yields).any(dim=2) | (conflict & ~first_yields).any(dim=1)
    yields &= idm_vehicles  # only IDM vehicles (ControlledVehicle, not MDPVehicle) yield
    target_speed = torch.where(yields, torch.zeros_like(target_speed), target_speed)
    yielding = yielding | yields
    yield_timer = torch.where(yields, torch.zeros_like(yield_timer), yield_timer)
    return target_speed, yielding, yield_timer


def policy_step(
    graph: LaneGraph,
    traffic: RoadTraffic,
    action: torch.Tensor,
    target_speeds: torch.Tensor,
    frames: int,
    dt: float,
    rules: RoadRules,
) -> None:
    """AbstractEnv._simulate(action), in place: the ego's MDPVehicle.act(action) ((B,) codes, as
    road_motion.apply_action), then `frames` sub-steps of Road.act() and Road.step(dt)."""
    apply_action(graph, traffic.vehicles, action, target_speeds)
    substeps(graph, traffic, frames, dt, rules)


def substeps(graph: LaneGraph, traffic: RoadTraffic, frames: int, dt: float, rules: RoadRules) -> None:
    """`frames` sub-steps of Road.act() and Road.step(dt), in place.

    Objects neither appear nor leave within them, and a column that holds none in any env takes
    part in nothing (every rule masks by `present`), so they run on the columns in use only:
    intersection fills ~8 of its 24 on average and ~17 at most (its pairwise rules cost columns
    squared). Bit for bit the same states but for the last bit of some float results (vectorised
    kernels round differently on tensors of other sizes)."""
    used = traffic.columns_in_use()
    stepped = traffic.narrow(used) if used < traffic.present.shape[1] else traffic
    coordinates = None  # positions do not change between a sub-step's end and the next Road.act
    for _ in range(frames):
        act(graph, stepped, rules, coordinates)
        coordinates = step(graph, stepped, dt, rules)
    if stepped is not traffic:
        traffic.take_columns(stepped)
