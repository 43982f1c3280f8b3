"""Episode starts spawned ahead, in one batch, for the envs that will reset soon.

A VecEnv resets a few envs per step (those whose episode just ended), and a road-network spawn
runs the same tensor operations whether it makes 3 episodes or 300: intersection's spawn simulates
45 warm-up sub-steps of traffic, 19 ms a start in a batch of 16 against 7.5 ms in one of 256 (one
thread), and resetting ~13 of 256 envs per step took about a third of the time. Spawning the next
episodes of every env at once, when one is missing, pays the per-call cost once per batch. A spawn
is a function of its seed alone, row by row (the same bits alone as in any batch), so a start taken
from the reserve is the one `spawn` makes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from envs.fast.road_traffic import RoadTraffic


RESERVE_STARTS = 512  # starts spawned ahead at most (intersection, one thread: 19 ms a start at 16, 7.5 at 256, 9.4 at 1,024)
MOST_EPISODES_AHEAD = 8  # per env: enough that a batch of a few envs refills rarely


def episodes_ahead(envs: int) -> int:
    """How many upcoming episodes of each of `envs` envs to spawn ahead (1 to MOST_EPISODES_AHEAD)."""
    return max(1, min(MOST_EPISODES_AHEAD, RESERVE_STARTS // envs))


class SpawnReserve:
    """Starts of episodes by seed, made by `spawn` ((E,) int64 seeds -> RoadTraffic of E envs)."""

    def __init__(self, spawn: Callable[[torch.Tensor], RoadTraffic]) -> None:
        self._spawn = spawn
        self._seeds = torch.empty(0, dtype=torch.long)  # (H,) the held episodes' seeds, sorted, on the CPU
        self._held: RoadTraffic | None = None  # their starts, in the same order

    def __len__(self) -> int:
        return int(self._seeds.numel())

    def holds(self, seeds: torch.Tensor) -> bool:
        """Whether every one of `seeds` ((E,) int64) is held."""
        return bool(torch.isin(seeds.cpu(), self._seeds).all())

    def fill(self, seeds: torch.Tensor) -> None:
        """Hold the starts of `seeds` ((E,) int64, any order, repeats allowed): the held ones are
        kept, the others spawned in one batch, and any held start not among `seeds` is dropped."""
        wanted = torch.unique(seeds.cpu())  # sorted
        kept = torch.isin(self._seeds, wanted)
        new = wanted[~torch.isin(wanted, self._seeds)]
        parts, part_seeds = [], []
        if self._held is not None and bool(kept.any()):
            parts.append(self._held.select(kept.nonzero(as_tuple=True)[0].to(self._device)))
            part_seeds.append(self._seeds[kept])
        if new.numel():
            parts.append(self._spawn(new))
            part_seeds.append(new)
        if not parts:
            self._seeds, self._held = torch.empty(0, dtype=torch.long), None
            return
        all_seeds = torch.cat(part_seeds)
        order = all_seeds.argsort()
        self._seeds = all_seeds[order]
        self._held = _concat(parts).select(order.to(self._device_of(parts[0])))

    def take(self, seeds: torch.Tensor, upcoming: Callable[[], torch.Tensor] | None = None) -> RoadTraffic:
        """The starts of `seeds` ((E,) int64), each then dropped (an episode is played once). When one
        is not held: with `upcoming` (-> the seeds the next resets will ask for), they and `seeds` are
        spawned now in one batch and held; without it, `seeds` are spawned now and not held."""
        cpu_seeds = seeds.cpu()
        if self._held is None and not cpu_seeds.numel():  # nothing asked of an empty reserve
            return self._spawn(seeds)
        if not self.holds(cpu_seeds):
            if upcoming is None:
                return self._spawn(seeds)
            self.fill(torch.cat([cpu_seeds, upcoming().cpu()]))
        where = torch.searchsorted(self._seeds, cpu_seeds)  # (E,) positions of the seeds among the held
        start = self._held.select(where.to(self._device))
        left = torch.ones(len(self), dtype=torch.bool)
        left[where] = False
        self._seeds = self._seeds[left]
        self._held = self._held.select(left.nonzero(as_tuple=True)[0].to(self._device)) if bool(left.any()) else None
        return start

    @property
    def _device(self) -> torch.device:
        return self._device_of(self._held)

    @staticmethod
    def _device_of(traffic: RoadTraffic | None) -> torch.device:
        return traffic.present.device if traffic is not None else torch.device("cpu")


def _concat(parts: list[RoadTraffic]) -> RoadTraffic:
    """The envs of several RoadTraffic batches (as many columns and route slots) as one."""
    if len(parts) == 1:
        return parts[0]

    def joined(holders: list) -> dict[str, torch.Tensor]:
        return {f.name: torch.cat([getattr(h, f.name) for h in holders])
                for f in dataclasses.fields(holders[0]) if f.name != "vehicles"}

    vehicles = type(parts[0].vehicles)(**joined([p.vehicles for p in parts]))
    return RoadTraffic(vehicles=vehicles, **joined(parts))
