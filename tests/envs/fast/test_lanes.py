"""Batched lanes against highway-env's own lanes, on the road networks of its real scenarios:
geometry to 1e-9 in float64 (~1e-3 in float32), closest/next lane and graph tables equal."""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import gymnasium as gym
import highway_env  # noqa: F401
import numpy as np
import pytest
import torch
from highway_env.road.lane import (
    AbstractLane,
    CircularLane,
    PolyLaneFixedWidth,
    SineLane,
    StraightLane,
)
from highway_env.road.road import RoadNetwork

from envs.fast.lanes import CIRCULAR, NO_LANE, SINE, STRAIGHT, LaneGraph

ENV_IDS = ["merge-v0", "roundabout-v0", "intersection-v0", "exit-v0", "two-way-v0", "u-turn-v0", "highway-fast-v0"]
SAMPLES = 300
BATCH_SHAPE = (30, 10)  # samples are laid out 2-D: any batch shape works
EXACT = 1e-9  # float64 on both sides: the same formulas, rounding only
FLOAT32_M = 1e-3  # float32: half an ulp of s ~ 1e4 m on highway-fast's 10 km lanes is 5e-4 m
KIND_OF = {StraightLane: STRAIGHT, SineLane: SINE, CircularLane: CIRCULAR}

pytestmark = pytest.mark.filterwarnings("ignore:.*is out of date:DeprecationWarning")  # the -v0 ids


@dataclass(frozen=True)
class Case:
    network: RoadNetwork
    graph: LaneGraph
    lanes: list[AbstractLane]  # by lane id
    lane: np.ndarray  # (SAMPLES,) lane ids of the (s, r) samples
    s: np.ndarray  # (SAMPLES,) [m], from 10 m before the lane's start to 10 m past its end
    r: np.ndarray  # (SAMPLES,) [m], within one lane width
    point_lane: np.ndarray  # (SAMPLES,) lane ids the points are evaluated on: half their own lane
    xy: np.ndarray  # (SAMPLES, 2) [m], points near some lane
    heading: np.ndarray  # (SAMPLES,) [rad], near that lane's heading, some anywhere in [-2pi, 2pi)

    def t(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values).reshape(BATCH_SHAPE)


@functools.lru_cache(maxsize=None)
def network(env_id: str) -> RoadNetwork:
    env = gym.make(env_id)
    env.reset(seed=0)
    road_network = env.unwrapped.road.network
    env.close()
    return road_network


@functools.lru_cache(maxsize=None)
def case(env_id: str) -> Case:
    net = network(env_id)
    graph = LaneGraph.from_network(net)
    lanes = net.lanes_list()
    rng = np.random.default_rng(zlib.crc32(env_id.encode()))
    count = len(lanes)
    lane = rng.integers(count, size=SAMPLES)
    s = np.array([rng.uniform(-10, lanes[n].length + 10) for n in lane])
    r = np.array([rng.uniform(-1, 1) * lanes[n].width for n in lane])
    base = rng.integers(count, size=SAMPLES)
    xy, heading = np.zeros((SAMPLES, 2)), np.zeros(SAMPLES)
    for k, n in enumerate(base):
        along = rng.uniform(-8, lanes[n].length + 8)
        xy[k] = lanes[n].position(along, rng.uniform(-1.5, 1.5) * lanes[n].width) + rng.normal(0, 1, 2)
        heading[k] = lanes[n].heading_at(along) + rng.normal(0, 0.3)
    anywhere = rng.random(SAMPLES) < 0.25
    heading[anywhere] = rng.uniform(-2 * math.pi, 2 * math.pi, anywhere.sum())
    point_lane = np.where(rng.random(SAMPLES) < 0.5, base, rng.integers(count, size=SAMPLES))
    return Case(net, graph, lanes, lane, s, r, point_lane, xy, heading)


def close(actual: torch.Tensor, expected, tolerance: float = EXACT) -> bool:
    expected = torch.as_tensor(np.asarray(expected, dtype=np.float64)).reshape(actual.shape)
    return torch.allclose(actual.double(), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_tables_match_the_network(env_id):
    c = case(env_id)
    net, graph = c.network, c.graph
    assert list(graph.indices) == list(net.lanes_dict()) and len(c.lanes) == graph.lanes_count
    for n, index in enumerate(graph.indices):
        lane = net.get_lane(index)
        assert lane is c.lanes[n] and graph.lane_id(index) == n
        assert graph.kind[n] == KIND_OF[type(lane)]
        assert graph.lane_number[n] == index[2] and graph.edges[graph.edge[n]] == index[:2]
        assert graph.length[n] == lane.length and graph.width[n] == lane.width
        assert graph.speed_limit[n] == lane.speed_limit and graph.priority[n] == lane.priority
        assert bool(graph.forbidden[n]) == bool(lane.forbidden)
        assert graph.line_types[n].tolist() == list(lane.line_types)
        sides = {graph.indices[k] for k in graph.side_lanes[n].tolist() if k != NO_LANE}
        assert sides == set(net.all_side_lanes(index))
        # next_lane without a route: per next road, the same lane id when it has as many
        # lanes as this one's road, else whichever of its lanes is closest
        _from, _to, _id = index
        expected = {
            (_to, next_to, i)
            for next_to, next_lanes in net.graph.get(_to, {}).items()
            for i in range(len(next_lanes))
            if len(next_lanes) != len(net.graph[_from][_to]) or i == _id
        }
        assert {graph.indices[k] for k in graph.successors[n].tolist() if k != NO_LANE} == expected


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_geometry_equals_highway_env(env_id):
    c = case(env_id)
    g, lane, s, r = c.graph, c.t(c.lane), c.t(c.s), c.t(c.r)
    x, y = g.position(lane, s, r)
    expected = np.array([c.lanes[n].position(sk, rk) for n, sk, rk in zip(c.lane, c.s, c.r)])
    assert x.shape == BATCH_SHAPE and close(x, expected[:, 0]) and close(y, expected[:, 1])
    assert close(g.heading_at(lane, s), [c.lanes[n].heading_at(sk) for n, sk in zip(c.lane, c.s)])
    assert close(g.width_at(lane, s), [c.lanes[n].width_at(sk) for n, sk in zip(c.lane, c.s)])

    on, px, py, heading = c.t(c.point_lane), c.t(c.xy[:, 0]), c.t(c.xy[:, 1]), c.t(c.heading)
    lanes = [c.lanes[n] for n in c.point_lane]
    local = np.array([lane.local_coordinates(p) for lane, p in zip(lanes, c.xy)])
    ps, pr = g.local_coordinates(on, px, py)
    assert close(ps, local[:, 0]) and close(pr, local[:, 1])
    for margin in (0.0, 1.0):
        inside = g.on_lane(on, px, py, margin=margin)
        expected_inside = [bool(lane.on_lane(p, margin=margin)) for lane, p in zip(lanes, c.xy)]
        assert inside.flatten().tolist() == expected_inside
        assert 0 < sum(expected_inside) < SAMPLES  # both cases are exercised
    for weight in (1.0, 0.3):
        expected = [lane.distance_with_heading(p, h, weight) for lane, p, h in zip(lanes, c.xy, c.heading)]
        assert close(g.distance_with_heading(on, px, py, heading, heading_weight=weight), expected)
    expected = [lane.distance_with_heading(p, None) for lane, p in zip(lanes, c.xy)]
    assert close(g.distance_with_heading(on, px, py, None), expected)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_local_coordinates_invert_position(env_id):
    c = case(env_id)
    g, lane, s, r = c.graph, c.t(c.lane), c.t(c.s), c.t(c.r)
    s2, r2 = g.local_coordinates(lane, *g.position(lane, s, r))
    # a circular lane's angle is read within +-pi of its start: more than half a turn wraps
    circular = g.kind[lane] == CIRCULAR
    wraps = circular & ((s / g.radius[lane]).abs() >= math.pi - 1e-6)
    assert not wraps.all()
    assert torch.allclose(s2[~wraps], s[~wraps], rtol=0, atol=EXACT)
    assert torch.allclose(r2[~wraps], r[~wraps], rtol=0, atol=EXACT)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_closest_and_next_lane_equal_highway_env(env_id):
    c = case(env_id)
    g, px, py, heading = c.graph, c.t(c.xy[:, 0]), c.t(c.xy[:, 1]), c.t(c.heading)
    for h, hs in ((heading, c.heading), (None, [None] * SAMPLES)):
        closest = g.closest_lane(px, py, h)
        assert closest.shape == BATCH_SHAPE and closest.dtype == torch.int64
        expected = [c.network.get_closest_lane_index(p, hk) for p, hk in zip(c.xy, hs)]
        assert [g.indices[k] for k in closest.flatten().tolist()] == expected
    on = c.t(c.point_lane)
    following = g.next_lane(on, px, py)
    expected = [c.network.next_lane(g.indices[n], position=p) for n, p in zip(c.point_lane, c.xy)]
    assert [g.indices[k] for k in following.flatten().tolist()] == expected


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_float32_agrees(env_id):
    c = case(env_id)
    g64, g32 = c.graph, LaneGraph.from_network(c.network, dtype=torch.float32)
    assert g32.length.dtype == torch.float32
    lane, s, r = c.t(c.lane), c.t(c.s), c.t(c.r)
    for a, b in zip(g32.position(lane, s.float(), r.float()), g64.position(lane, s, r)):
        assert a.dtype == torch.float32 and close(a, b, FLOAT32_M)
    assert close(g32.heading_at(lane, s.float()), g64.heading_at(lane, s), 1e-3)
    on, px, py, heading = c.t(c.point_lane), c.t(c.xy[:, 0]), c.t(c.xy[:, 1]), c.t(c.heading)
    for a, b in zip(g32.local_coordinates(on, px.float(), py.float()), g64.local_coordinates(on, px, py)):
        assert close(a, b, FLOAT32_M)
    d32 = g32.distance_with_heading(on, px.float(), py.float(), heading.float())
    assert close(d32, g64.distance_with_heading(on, px, py, heading), FLOAT32_M)


def test_unsupported_lane_classes_are_refused():
    class CustomStraightLane(StraightLane):  # a subclass may override any formula
        pass

    for lane in (PolyLaneFixedWidth([(0, 0), (10, 0), (20, 5)]), CustomStraightLane([0, 0], [10, 0])):
        net = RoadNetwork()
        net.add_lane("a", "b", StraightLane([0, 0], [10, 0]))
        net.add_lane("b", "c", lane)
        with pytest.raises(ValueError, match=rf"\('b', 'c', 0\).*{type(lane).__name__}"):
            LaneGraph.from_network(net)
