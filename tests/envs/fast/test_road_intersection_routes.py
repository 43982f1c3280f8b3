"""intersection's routes as a camera sees them: `guess_routes` redraws the destinations of the vehicles
not yet committed to a turn, and only theirs."""

from __future__ import annotations

import functools

import pytest
import torch

from envs.fast.road_intersection import BRANCHES, guess_routes, intersection_lanes
from envs.fast.road_sim import FastRoad
from envs.fast.simulators import routes_can_be_guessed
from scenarios import load_scenario

ENVS = 32
IDLE = 1  # intersection's actions: SLOWER, IDLE, FASTER


@functools.lru_cache(maxsize=None)
def traffic_after_two_steps() -> tuple[FastRoad, object]:
    """32 envs two policy steps in: vehicles waiting on the approaches, others turning or leaving."""
    sim = FastRoad(load_scenario("intersection"), ENVS, render=False)
    sim.reset(seeds=torch.arange(ENVS))
    for _ in range(2):
        sim.step(torch.full((ENVS,), IDLE))
    return sim, sim.state.clone()


def undecided(sim: FastRoad, traffic) -> torch.Tensor:
    """(B, N) bool: present, not the ego, on an approach and still targeting it."""
    lanes, v = intersection_lanes(sim.road), traffic.vehicles
    mask = torch.isin(v.lane, lanes.incoming) & (v.target_lane == v.lane) & traffic.present
    mask[:, 0] = False
    return mask


def true_destinations(sim: FastRoad, traffic, mask: torch.Tensor) -> torch.Tensor:
    """(B, N) the branch k whose route from the vehicle's lane is its route (-1 outside `mask`)."""
    table, v = intersection_lanes(sim.road).route_edge, traffic.vehicles
    destination = torch.full(mask.shape, -1)
    for k in range(BRANCHES):
        same = (table[v.lane.clamp(min=0), k] == v.route_edge).all(dim=-1) & mask
        destination = torch.where(same, k, destination)
    return destination


def test_the_scene_has_undecided_and_committed_vehicles():
    sim, traffic = traffic_after_two_steps()
    mask = undecided(sim, traffic)
    others = traffic.present.clone()
    others[:, 0] = False
    assert mask.sum() >= 20 and (others & ~mask).sum() >= 20
    assert (true_destinations(sim, traffic, mask)[mask] >= 0).all()  # each route is one of the table's
    assert (traffic.vehicles.route_cursor[mask] == 0).all()


def test_guesses_reroute_the_undecided_to_another_branch_and_leave_the_rest():
    sim, traffic = traffic_after_two_steps()
    mask = undecided(sim, traffic)
    guessed = traffic.clone()
    uniforms = torch.rand(mask.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    guess_routes(sim.road, guessed, uniforms)
    lanes = intersection_lanes(sim.road)
    start = (traffic.vehicles.lane[..., None] == lanes.incoming).long().argmax(dim=-1)
    destination = true_destinations(sim, guessed, mask)
    assert (destination[mask] >= 0).all() and (destination[mask] != start[mask]).all()  # never back where it came from
    # a third of the uniform interval per other branch, in order: u < 1/3 -> the next branch, ...
    assert torch.equal(destination[mask], (start[mask] + 1 + (3 * uniforms[mask]).long()) % BRANCHES)
    changed = (guessed.vehicles.route_edge != traffic.vehicles.route_edge).any(dim=-1)
    assert changed.any() and not (changed & ~mask).any()  # the ego, the turning and the leaving keep theirs
    for name in ("x", "y", "speed", "lane", "target_lane"):
        assert torch.equal(getattr(guessed.vehicles, name), getattr(traffic.vehicles, name))


def test_guessing_the_true_destinations_changes_nothing():
    sim, traffic = traffic_after_two_steps()
    mask = undecided(sim, traffic)
    lanes = intersection_lanes(sim.road)
    start = (traffic.vehicles.lane[..., None] == lanes.incoming).long().argmax(dim=-1)
    offset = (true_destinations(sim, traffic, mask) - start - 1) % BRANCHES  # 0, 1 or 2 where undecided
    guessed = traffic.clone()
    guess_routes(sim.road, guessed, (offset.double() + 0.5) / 3)
    for name in ("route_edge", "route_lane", "route_cursor"):
        assert torch.equal(getattr(guessed.vehicles, name), getattr(traffic.vehicles, name)), name


def test_guesses_are_uniform_over_the_three_other_branches():
    sim, traffic = traffic_after_two_steps()
    mask = undecided(sim, traffic)
    lanes = intersection_lanes(sim.road)
    start = (traffic.vehicles.lane[..., None] == lanes.incoming).long().argmax(dim=-1)
    counts = torch.zeros(3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        guessed = traffic.clone()
        guess_routes(sim.road, guessed, torch.rand(mask.shape, generator=generator, dtype=torch.float64))
        offset = (true_destinations(sim, guessed, mask) - start - 1) % BRANCHES
        counts += torch.bincount(offset[mask], minlength=3)
    share = counts / counts.sum()
    assert share.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)  # >= 4,000 guesses: std ~0.007


def test_the_fast_road_refuses_guesses_where_routes_are_no_choice():
    sim = FastRoad(load_scenario("merge"), 1, render=False)
    sim.reset(seeds=torch.zeros(1, dtype=torch.long))
    assert not routes_can_be_guessed(sim.scenario) and routes_can_be_guessed(load_scenario("intersection"))
    with pytest.raises(ValueError, match="intersection"):
        sim.guess_routes(sim.state.clone(), torch.zeros(sim.state.present.shape))
