"""highway-env's lane geometry and lane graph as tensors: any road network, batched.

The fast backend's straight highway needs no lane geometry (s = x, r = y - lane * width).
Its road networks (merge, roundabout, intersection, exit, two-way, u-turn; issue 21) do:
`LaneGraph` holds every lane of a highway-env `RoadNetwork` as parameter tensors, and its
methods evaluate highway-env's per-lane methods for any batch of (lane id, point) at once,
with `torch.where` over the lane kinds instead of Python dispatch.

Conventions are highway-env's: a lane id is a row of `LaneGraph.indices` (the network's
(_from, _to, _id) lane indices, in the order `RoadNetwork.graph` iterates them); s is the
longitudinal coordinate along the lane from its start [m], r the lateral one, positive to
the right of the driving direction on screen (y points down) [m]; headings in rad, not
wrapped (a circular lane's heading grows past pi as highway-env's does). Formulas are
highway-env 1.12's, term by term: equal to it to rounding in float64 (~1e-15 m), to ~1e-3 m
/ rad in float32 (half an ulp of s, 5e-4 m, on highway-fast's 10 km lanes).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from highway_env.road.lane import AbstractLane, CircularLane, SineLane, StraightLane
from highway_env.road.road import LaneIndex, RoadNetwork

STRAIGHT, SINE, CIRCULAR = 0, 1, 2  # LaneGraph.kind
KINDS = {StraightLane: STRAIGHT, SineLane: SINE, CircularLane: CIRCULAR}  # exact classes only
NO_LANE = -1  # padding of the graph tables
VEHICLE_LENGTH_M = AbstractLane.VEHICLE_LENGTH  # on_lane's longitudinal margin [m]


def wrap_to_pi(angle: torch.Tensor) -> torch.Tensor:
    """highway_env.utils.wrap_to_pi: into [-pi, pi), with a floor modulo as numpy's %."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def first_argmin(values: torch.Tensor) -> torch.Tensor:
    """values.argmin(dim=0) (the first index of the minimum) of (K, ...) values without NaN, as an
    amin of uint8 keys: argmin's CPU kernel is ~10x slower over an outer dimension."""
    count = values.shape[0]
    if count > 127:  # the keys below must fit in uint8
        return values.argmin(dim=0)
    position = torch.arange(count, dtype=torch.uint8, device=values.device).view(-1, *([1] * (values.dim() - 1)))
    return ((values != values.amin(dim=0)).view(torch.uint8) * count + position).amin(dim=0).long()


def _table(rows: list[list[int]], device: torch.device | str) -> torch.Tensor:
    """(len(rows), longest row) int64, NO_LANE-padded."""
    width = max((len(row) for row in rows), default=0)
    table = torch.full((len(rows), width), NO_LANE, dtype=torch.int64)
    for n, row in enumerate(rows):
        table[n, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return table.to(device)


@dataclass(frozen=True, eq=False)
class LaneGraph:
    """Every lane of a RoadNetwork: (L,) or (L, 2) parameters, (L, K) graph tables.

    Parameters a lane's class does not have are neutral (a straight lane's amplitude 0, a
    circular lane's start/end/direction 0, a straight lane's radius 1), so each formula
    runs on every lane and `torch.where` keeps the right one.
    """

    indices: tuple[LaneIndex, ...]  # (_from, _to, _id) of each lane id
    edges: tuple[tuple[str, str], ...]  # (_from, _to) of each edge id
    kind: torch.Tensor  # (L,) int64: STRAIGHT, SINE or CIRCULAR
    # straight and sine lanes
    start: torch.Tensor  # (L, 2) [m]
    end: torch.Tensor  # (L, 2) [m]
    direction: torch.Tensor  # (L, 2) unit vector from start to end
    direction_lateral: torch.Tensor  # (L, 2) unit vector, direction turned by +90 deg
    heading: torch.Tensor  # (L,) [rad] of direction
    amplitude: torch.Tensor  # (L,) [m], sine lanes only
    pulsation: torch.Tensor  # (L,) [rad/m]
    phase: torch.Tensor  # (L,) [rad]
    # circular lanes
    center: torch.Tensor  # (L, 2) [m]
    radius: torch.Tensor  # (L,) [m]
    start_phase: torch.Tensor  # (L,) [rad]
    end_phase: torch.Tensor  # (L,) [rad]
    clockwise_sign: torch.Tensor  # (L,) +1 clockwise (on screen), -1 not: CircularLane.direction
    # every lane
    length: torch.Tensor  # (L,) [m]
    width: torch.Tensor  # (L,) [m]
    speed_limit: torch.Tensor  # (L,) [m/s]
    forbidden: torch.Tensor  # (L,) bool: lane changes into it are forbidden
    priority: torch.Tensor  # (L,) int64: right of way, higher first
    line_types: torch.Tensor  # (L, 2) int64: highway_env LineType of the (left, right) sides
    # graph
    edge: torch.Tensor  # (L,) int64: edge id of the lane's (_from, _to)
    lane_number: torch.Tensor  # (L,) int64: the lane's _id within its edge
    side_lanes: torch.Tensor  # (L, K) int64: RoadNetwork.all_side_lanes (own edge, by _id), NO_LANE-padded
    successors: torch.Tensor  # (L, S) int64: what next_lane may pick without a route, NO_LANE-padded
    lane_ids: dict[LaneIndex, int]  # inverse of indices

    @classmethod
    def from_network(
        cls, network: RoadNetwork, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ) -> LaneGraph:
        """Reads every lane of `network`; raises ValueError on a lane class it cannot mirror."""
        indices = [(a, b, i) for a, tos in network.graph.items() for b, lanes in tos.items() for i in range(len(lanes))]
        edges = [(a, b) for a, tos in network.graph.items() for b in tos]
        lane_ids = {index: n for n, index in enumerate(indices)}
        edge_ids = {key: n for n, key in enumerate(edges)}
        columns: dict[str, list] = {name: [] for name in _FLOAT_COLUMNS + _INT_COLUMNS}
        successors, side_lanes = [], []
        for index in indices:
            a, b, i = index
            lane = network.graph[a][b][i]
            kind = KINDS.get(type(lane))
            if kind is None:
                raise ValueError(f"lane {index}: unsupported lane class {type(lane).__name__}")
            straight = kind != CIRCULAR
            row = {
                "kind": kind,
                "start": _vec(lane.start) if straight else [0.0, 0.0],
                "end": _vec(lane.end) if straight else [0.0, 0.0],
                "direction": _vec(lane.direction) if straight else [0.0, 0.0],
                "direction_lateral": _vec(lane.direction_lateral) if straight else [0.0, 0.0],
                "heading": float(lane.heading) if straight else 0.0,
                "amplitude": float(lane.amplitude) if kind == SINE else 0.0,
                "pulsation": float(lane.pulsation) if kind == SINE else 0.0,
                "phase": float(lane.phase) if kind == SINE else 0.0,
                "center": [0.0, 0.0] if straight else _vec(lane.center),
                "radius": 1.0 if straight else float(lane.radius),
                "start_phase": 0.0 if straight else float(lane.start_phase),
                "end_phase": 0.0 if straight else float(lane.end_phase),
                "clockwise_sign": 1.0 if straight else float(lane.direction),
                "length": float(lane.length),
                "width": float(lane.width),
                "speed_limit": float(lane.speed_limit),
                "forbidden": bool(lane.forbidden),
                "priority": int(lane.priority),
                "line_types": [int(t) for t in lane.line_types],
                "edge": edge_ids[(a, b)],
                "lane_number": i,
            }
            for name, value in row.items():
                columns[name].append(value)
            side_lanes.append([lane_ids[side] for side in network.all_side_lanes(index)])
            successors.append([lane_ids[n] for n in _next_lane_candidates(network, index)])
        floats = {name: torch.tensor(columns[name], dtype=dtype, device=device) for name in _FLOAT_COLUMNS}
        ints = {name: torch.tensor(columns[name], dtype=torch.int64, device=device) for name in _INT_COLUMNS}
        ints["forbidden"] = ints["forbidden"].bool()
        return cls(
            indices=tuple(indices),
            edges=tuple(edges),
            side_lanes=_table(side_lanes, device),
            successors=_table(successors, device),
            lane_ids=lane_ids,
            **floats,
            **ints,
        )

    @property
    def lanes_count(self) -> int:
        return len(self.indices)

    def lane_id(self, index: LaneIndex) -> int:
        """Row of a highway-env lane index (KeyError if the network has no such lane)."""
        return self.lane_ids[tuple(index)]

    # Geometry. `lane` is an int64 tensor of lane ids of any shape; the other tensors have
    # (or broadcast to) its shape and the graph's dtype and device. Parameters are gathered
    # with one index_select per packed table, and the formulas of lane kinds the graph lacks
    # are skipped: they are what torch.where would have dropped, so the results are the same.

    @functools.cached_property
    def has_sine(self) -> bool:
        return bool((self.kind == SINE).any())

    @functools.cached_property
    def has_circular(self) -> bool:
        return bool((self.kind == CIRCULAR).any())

    @functools.cached_property
    def _line_table(self) -> torch.Tensor:
        """(6, L): start x, y, direction x, y, direction_lateral x, y (straight and sine lanes)."""
        return torch.cat([self.start.T, self.direction.T, self.direction_lateral.T])

    @functools.cached_property
    def _sine_table(self) -> torch.Tensor:
        """(3, L): amplitude, pulsation, phase."""
        return torch.stack([self.amplitude, self.pulsation, self.phase])

    @functools.cached_property
    def _arc_table(self) -> torch.Tensor:
        """(5, L): center x, y, radius, start_phase, clockwise_sign; then kind (as the dtype)."""
        kind = self.kind.to(self.radius.dtype)
        return torch.stack([self.center[:, 0], self.center[:, 1], self.radius, self.start_phase,
                            self.clockwise_sign, kind])

    @staticmethod
    def _gather(table: torch.Tensor, lane: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """table (P, L) at lane ids of any shape: P contiguous tensors of lane's shape."""
        return table.index_select(1, lane.reshape(-1)).view(table.shape[0], *lane.shape).unbind(0)

    def _sine_argument(self, lane: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(amplitude, pulsation * s + phase) of sine lanes (0, 0 elsewhere: sin and atan give 0)."""
        amplitude, pulsation, phase = self._gather(self._sine_table, lane)
        return amplitude, pulsation * s + phase

    def position(self, lane: torch.Tensor, s: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lane.position(s, r): world (x, y) [m] of lane coordinates s, r [m]."""
        # straight / sine: start + s * direction + (r + A sin(w s + phase)) * direction_lateral
        start_x, start_y, dir_x, dir_y, side_x, side_y = self._gather(self._line_table, lane)
        lateral = r
        if self.has_sine:
            amplitude, argument = self._sine_argument(lane, s)
            lateral = r + amplitude * torch.sin(argument)
        x = start_x + s * dir_x + lateral * side_x
        y = start_y + s * dir_y + lateral * side_y
        if not self.has_circular:
            return x, y
        # circular: center + (radius - r * sign) * (cos phi, sin phi)
        center_x, center_y, radius, start_phase, sign, kind = self._gather(self._arc_table, lane)
        phi = sign * s / radius + start_phase
        rho = radius - r * sign
        circular = kind == CIRCULAR
        return (
            torch.where(circular, center_x + rho * torch.cos(phi), x),
            torch.where(circular, center_y + rho * torch.sin(phi), y),
        )

    def local_coordinates(
        self, lane: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """lane.local_coordinates((x, y)): lane coordinates (s, r) [m] of a world point [m].

        Circular lanes measure the angle within +-pi of their start (highway-env's wrap), so a
        point more than half a turn along the arc maps back near its start, as there.
        """
        start_x, start_y, dir_x, dir_y, side_x, side_y = self._gather(self._line_table, lane)
        dx, dy = x - start_x, y - start_y
        s = dx * dir_x + dy * dir_y
        r = dx * side_x + dy * side_y
        if self.has_sine:
            amplitude, argument = self._sine_argument(lane, s)
            r = r - amplitude * torch.sin(argument)
        if not self.has_circular:
            return s, r
        center_x, center_y, radius, start_phase, sign, kind = self._gather(self._arc_table, lane)
        cx, cy = x - center_x, y - center_y
        phi = start_phase + wrap_to_pi(torch.atan2(cy, cx) - start_phase)
        circular = kind == CIRCULAR
        return (
            torch.where(circular, sign * (phi - start_phase) * radius, s),
            torch.where(circular, sign * (radius - torch.hypot(cx, cy)), r),
        )

    def heading_at(self, lane: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """lane.heading_at(s): the lane's heading [rad] at s [m] (not wrapped)."""
        heading = self.heading.index_select(0, lane.reshape(-1)).view(lane.shape)
        if self.has_sine:
            amplitude, pulsation, phase = self._gather(self._sine_table, lane)
            heading = heading + torch.atan(amplitude * pulsation * torch.cos(pulsation * s + phase))
        if not self.has_circular:
            return heading.expand(torch.broadcast_shapes(lane.shape, s.shape))
        _, _, radius, start_phase, sign, kind = self._gather(self._arc_table, lane)
        phi = sign * s / radius + start_phase
        return torch.where(kind == CIRCULAR, phi + math.pi / 2 * sign, heading)

    def width_at(self, lane: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """lane.width_at(s) [m]: constant along every supported lane."""
        return self.width[lane].expand(torch.broadcast_shapes(lane.shape, s.shape))

    def on_lane(self, lane: torch.Tensor, x: torch.Tensor, y: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        """lane.on_lane((x, y), margin=margin): |r| <= width / 2 + margin and
        -VEHICLE_LENGTH <= s < length + VEHICLE_LENGTH. Bool, shape of the inputs."""
        s, r = self.local_coordinates(lane, x, y)
        return (
            (r.abs() <= self.width_at(lane, s) / 2 + margin)
            & (s >= -VEHICLE_LENGTH_M)
            & (s < self.length[lane] + VEHICLE_LENGTH_M)
        )

    def distance(self, lane: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """lane.distance((x, y)): L1 distance [m] to the lane, |r| plus how far s is outside [0, length]."""
        return self._distance(lane, *self.local_coordinates(lane, x, y))

    def _distance(self, lane: torch.Tensor, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return r.abs() + (s - self.length[lane]).clamp(min=0) + (0 - s).clamp(min=0)

    def distance_with_heading(
        self,
        lane: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        heading: torch.Tensor | None,
        heading_weight: float = 1.0,
    ) -> torch.Tensor:
        """lane.distance_with_heading((x, y), heading): distance [m] + heading_weight * |angle
        between heading and the lane's heading at s, wrapped| [rad]; distance() if heading is None."""
        if heading is None:
            return self.distance(lane, x, y)
        return self._distance_with_heading(lane, *self.local_coordinates(lane, x, y), heading, heading_weight)

    def _distance_with_heading(self, lane: torch.Tensor, s: torch.Tensor, r: torch.Tensor, heading: torch.Tensor,
                               heading_weight: float = 1.0) -> torch.Tensor:
        angle = wrap_to_pi(heading - self.heading_at(lane, s)).abs()
        return self._distance(lane, s, r) + heading_weight * angle

    def closest_lane(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        heading: torch.Tensor | None = None,
        coordinates: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """RoadNetwork.get_closest_lane_index((x, y), heading): lane id (int64, shape of x) of the
        smallest distance_with_heading over all L lanes; ties go to the lower id, as there.
        Builds (L, ...) temporaries (lanes first: the reduction runs over the outer dimension).
        coordinates: the point's (s, r) [m] on every lane, (L, ...) each, where already computed."""
        lanes = torch.arange(self.lanes_count, device=x.device).view(-1, *([1] * x.dim()))
        if coordinates is None or heading is None:
            return first_argmin(self.distance_with_heading(lanes, x, y, heading))
        return first_argmin(self._distance_with_heading(lanes, *coordinates, heading))

    def next_lane(self, lane: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """RoadNetwork.next_lane(lane, position=(x, y)) with no route: of `successors`, the one
        closest (L1) to the point projected on the lane's centre; the lane itself at a dead end.

        highway-env takes, over the next roads in order, the first road whose best lane is
        closest: that is the first minimum over `successors` rows, which list them in that order.
        """
        s, _ = self.local_coordinates(lane, x, y)
        px, py = self.position(lane, s, torch.zeros_like(s))
        candidates = self.successors[lane]  # (..., S)
        valid = candidates != NO_LANE
        d = self.distance(candidates.clamp(min=0), px[..., None], py[..., None])
        d = torch.where(valid, d, torch.full_like(d, math.inf))
        best = candidates.gather(-1, d.argmin(dim=-1, keepdim=True)).squeeze(-1) if candidates.shape[-1] else lane
        return torch.where(valid.any(dim=-1), best, lane)


_FLOAT_COLUMNS = [
    "start", "end", "direction", "direction_lateral", "heading", "amplitude", "pulsation", "phase",
    "center", "radius", "start_phase", "end_phase", "clockwise_sign", "length", "width", "speed_limit",
]  # fmt: skip
_INT_COLUMNS = ["kind", "forbidden", "priority", "line_types", "edge", "lane_number"]


def _vec(value) -> list[float]:
    return [float(value[0]), float(value[1])]


def _next_lane_candidates(network: RoadNetwork, index: LaneIndex) -> list[LaneIndex]:
    """The lanes RoadNetwork.next_lane can return from `index` without a route, in the order
    its min() meets them: for each next road, the same _id if both roads have as many
    lanes, else any of its lanes (the closest one wins)."""
    _from, _to, _id = index
    same_count = len(network.graph[_from][_to])
    candidates = []
    for next_to, lanes in network.graph.get(_to, {}).items():
        ids = [_id] if len(lanes) == same_count else range(len(lanes))
        candidates += [(_to, next_to, i) for i in ids]
    return candidates
