"""Initial traffic, drawn as highway-env's HighwayEnv._create_vehicles draws it, for E envs at once.

highway-env places the ego first (speed 25 m/s, random lane, `ego_spacing`), then each other
vehicle in a random lane at a random speed in [0.7, 0.8] x the speed limit, a spacing of
(12 m + 1 s x speed) x exp(-5/40 x lanes) / density ahead of the frontmost vehicle so far
(x U(0.9, 1.1)). Every vehicle therefore starts ahead of the previous one: a cumulative sum.
IDM traffic then gets a random IDM exponent (`randomize_behavior`) and highway-env's
position-dependent MOBIL timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from envs.fast import rng
from envs.fast.params import CONTROLLER, IDM, LANE_WIDTH_M, SPEED_LIMIT_MPS
from envs.fast.state import TrafficState

EGO_INITIAL_SPEED_MPS = 25.0  # HighwayEnv._create_vehicles
SPAWN_STREAM = 1  # rng stream of the initial traffic


@dataclass(frozen=True)
class TrafficConfig:
    """The highway-env config keys that shape the initial traffic."""

    lanes_count: int
    vehicles_count: int
    vehicles_density: float
    ego_spacing: float
    initial_lane_id: int | None = None

    @classmethod
    def from_highway_env(cls, config: dict) -> "TrafficConfig":
        return cls(
            lanes_count=int(config["lanes_count"]),
            vehicles_count=int(config["vehicles_count"]),
            vehicles_density=float(config["vehicles_density"]),
            ego_spacing=float(config["ego_spacing"]),
            initial_lane_id=config.get("initial_lane_id"),
        )


def _spacing_m(speed: torch.Tensor, spacing: float, lanes: int) -> torch.Tensor:
    """Vehicle.create_random's gap to the vehicle in front [m]."""
    return spacing * (12.0 + 1.0 * speed) * math.exp(-5.0 / 40.0 * lanes)


def spawn(seeds: torch.Tensor, config: TrafficConfig, dtype: torch.dtype = torch.float32) -> TrafficState:
    """(E,) int64 episode seeds -> a TrafficState of E envs and N = 1 + vehicles_count vehicles."""
    envs, others, lanes = seeds.shape[0], config.vehicles_count, config.lanes_count
    device = seeds.device
    draws = rng.uniform(seeds, SPAWN_STREAM, 2 + 4 * others, dtype)  # (E, 2 + 4 V)
    ego_lane_u, ego_gap_u = draws[:, 0], draws[:, 1]
    lane_u, speed_u, gap_u, delta_u = draws[:, 2:].reshape(envs, others, 4).unbind(-1)  # each (E, V)

    ego_speed = torch.full((envs, 1), EGO_INITIAL_SPEED_MPS, dtype=dtype, device=device)
    other_speed = SPEED_LIMIT_MPS * (0.7 + 0.1 * speed_u)  # U(0.7, 0.8) x limit
    speed = torch.cat([ego_speed, other_speed], dim=1)  # (E, N)

    if config.initial_lane_id is None:
        ego_lane = torch.floor(ego_lane_u * lanes).long()
    else:
        ego_lane = torch.full((envs,), int(config.initial_lane_id), dtype=torch.long, device=device)
    lane = torch.cat([ego_lane[:, None], torch.floor(lane_u * lanes).long()], dim=1).clamp_(0, lanes - 1)

    ego_offset = _spacing_m(ego_speed[:, 0], config.ego_spacing, lanes)  # (E,)
    ego_x = 3.0 * ego_offset + ego_offset * (0.9 + 0.2 * ego_gap_u)
    other_gaps = _spacing_m(other_speed, 1.0 / config.vehicles_density, lanes) * (0.9 + 0.2 * gap_u)
    x = torch.cat([ego_x[:, None], ego_x[:, None] + torch.cumsum(other_gaps, dim=1)], dim=1)  # (E, N)
    y = lane.to(dtype) * LANE_WIDTH_M

    low, high = IDM.delta_range
    delta = torch.cat([torch.full_like(ego_x[:, None], 4.0), low + (high - low) * delta_u], dim=1)
    timer = torch.remainder((x + y) * math.pi, IDM.lane_change_delay)
    timer[:, 0] = 0.0  # the ego (an MDPVehicle) has no MOBIL timer

    target_speeds = torch.tensor(CONTROLLER.target_speeds, dtype=dtype, device=device)
    ego_index = speed_to_index(ego_speed[:, 0], target_speeds)
    target_speed = speed.clone()
    target_speed[:, 0] = target_speeds[ego_index]
    zeros = torch.zeros_like(x)
    return TrafficState(
        x=x, y=y, heading=zeros.clone(), speed=speed, target_speed=target_speed, delta=delta, timer=timer,
        lane=lane, target_lane=lane.clone(), steering=zeros.clone(), acceleration=zeros.clone(),
        crashed=torch.zeros_like(x, dtype=torch.bool), impact_pending=torch.zeros_like(x, dtype=torch.bool),
        present=torch.ones_like(x, dtype=torch.bool), ego_speed_index=ego_index,
    )


def speed_to_index(speed: torch.Tensor, target_speeds: torch.Tensor) -> torch.Tensor:
    """MDPVehicle.speed_to_index: the nearest of uniformly spaced target speeds, (E,) int64."""
    count = target_speeds.shape[0]
    fraction = (speed - target_speeds[0]) / (target_speeds[-1] - target_speeds[0])
    return torch.round(fraction * (count - 1)).clamp(0, count - 1).long()
