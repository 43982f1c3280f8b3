"""Starts spawned ahead (envs.fast.spawn_reserve) are the starts spawned now, bit for bit, and the
reserve holds what it was last asked for; FastVecEnv's resets ask for the seeds its slots draw next."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from envs.fast.episodes import EpisodeSeeds
from envs.fast.road_sim import FastRoad
from envs.fast.road_traffic import RoadTraffic
from envs.fast.spawn_reserve import SpawnReserve, episodes_ahead
from envs.fast.vec_env import FastVecEnv
from scenarios import load_scenario

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def assert_same_starts(a: RoadTraffic, b: RoadTraffic) -> None:
    for mine, theirs in ((a, b), (a.vehicles, b.vehicles)):
        for f in dataclasses.fields(mine):
            value = getattr(mine, f.name)
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, getattr(theirs, f.name)), f.name


class CountingSpawn:
    """FastRoad.spawn, counting the episodes it is asked to spawn."""

    def __init__(self, sim: FastRoad) -> None:
        self.sim, self.spawned = sim, 0

    def __call__(self, seeds: torch.Tensor) -> RoadTraffic:
        self.spawned += int(seeds.numel())
        return self.sim.spawn(seeds)


@pytest.mark.parametrize("name", ["merge", "intersection"])  # intersection: the spawn with a warm-up
def test_a_start_from_the_reserve_is_the_start_spawned_now(name):
    sim = FastRoad(load_scenario(name), 2, dtype=torch.float64, render=False)
    reserve = SpawnReserve(sim.spawn)
    reserve.fill(torch.tensor([12, 5, 9, 7, 5]))
    asked = torch.tensor([9, 5, 9])  # out of order, repeated
    assert reserve.holds(asked)
    assert_same_starts(reserve.take(asked), sim.spawn(asked))
    assert len(reserve) == 2 and reserve.holds(torch.tensor([7, 12])) and not reserve.holds(torch.tensor([9]))


def test_the_reserve_spawns_only_what_it_lacks_and_drops_what_is_not_asked_for():
    sim = FastRoad(load_scenario("merge"), 2, dtype=torch.float64, render=False)
    spawn = CountingSpawn(sim)
    reserve = SpawnReserve(spawn)
    reserve.fill(torch.tensor([1, 2, 3]))
    reserve.fill(torch.tensor([2, 3, 4, 5]))
    assert spawn.spawned == 5  # 1, 2, 3, then only 4 and 5
    assert len(reserve) == 4 and not reserve.holds(torch.tensor([1]))
    assert_same_starts(reserve.take(torch.tensor([4, 2])), sim.spawn(torch.tensor([4, 2])))
    missing = torch.tensor([3, 99])  # 99 was never spawned ahead: both are spawned now, the reserve kept
    assert_same_starts(reserve.take(missing), sim.spawn(missing))
    assert len(reserve) == 2 and reserve.holds(torch.tensor([3, 5]))
    before = spawn.spawned  # with the upcoming seeds, a missing start refills: the asked and the upcoming in one batch
    assert_same_starts(reserve.take(torch.tensor([7]), upcoming=lambda: torch.tensor([8, 5])), sim.spawn(torch.tensor([7])))
    assert spawn.spawned - before == 2 and len(reserve) == 2 and reserve.holds(torch.tensor([5, 8]))


def test_an_empty_reserve_asked_for_nothing_gives_no_envs():
    sim = FastRoad(load_scenario("merge"), 2, dtype=torch.float64, render=False)
    assert SpawnReserve(sim.spawn).take(torch.empty(0, dtype=torch.long)).present.shape[0] == 0


def test_reset_with_upcoming_seeds_plays_the_same_episodes():
    scenario = load_scenario("merge")
    ahead = FastRoad(scenario, 3, dtype=torch.float64, render=False)
    now = FastRoad(scenario, 3, dtype=torch.float64, render=False)
    for sim, upcoming in ((ahead, lambda: torch.tensor([20, 21, 22])), (now, None)):
        sim.reset(torch.arange(3), torch.tensor([10, 11, 12]), upcoming=upcoming)
    assert len(ahead.reserve) == 3  # 20, 21, 22 held; 10, 11, 12 taken
    ahead.reset(torch.tensor([1]), torch.tensor([21]), upcoming=lambda: 1 / 0)  # held: not even asked for
    now.reset(torch.tensor([1]), torch.tensor([21]))
    assert len(ahead.reserve) == 2
    for _ in range(3):
        ahead.step(torch.ones(3, dtype=torch.long))
        now.step(torch.ones(3, dtype=torch.long))
    assert_same_starts(ahead.state, now.state)


def test_upcoming_seeds_are_the_seeds_next_draws():
    seeds = EpisodeSeeds(3, torch.device("cpu"))
    seeds.restart(torch.arange(3), torch.tensor([7, 8, 9]))
    seeds.next(torch.tensor([1]))  # slot 1 one episode further
    upcoming = seeds.upcoming(2).view(3, 2)  # (slot, episode ahead)
    first, second = seeds.next(torch.arange(3)), seeds.next(torch.arange(3))
    assert torch.equal(upcoming[:, 0], first) and torch.equal(upcoming[:, 1], second)
    assert (episodes_ahead(4), episodes_ahead(256), episodes_ahead(4096)) == (8, 2, 1)


def test_fast_vec_env_resets_from_its_slots_next_seeds_ahead():
    env = FastVecEnv(load_scenario("merge"), 4)
    env.seed(100)
    env.reset()
    slower = env.sim.action_indexes["SLOWER"]
    ended = 0
    for _ in range(60):
        _, _, dones, _ = env.step(np.full(4, slower, dtype=np.int64))
        ended += int(dones.sum())
    assert ended >= 4  # merge truncates at 40 steps
    assert env.sim.reserve.holds(env.seeds.upcoming(1))  # what each slot draws next is waiting
    assert len(env.sim.reserve) <= 4 * (episodes_ahead(4) + 1)
