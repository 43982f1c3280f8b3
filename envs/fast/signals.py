"""The safety signals of envs.safety, batched: one (B,) tensor per signal.

Definitions are envs.safety's: the leader is the nearest vehicle ahead in the ego's current lane
(highway-env's neighbour rule), gaps are bumper to bumper along the lane, TTC and headway are
inf when undefined, acceleration and jerk are finite differences over a policy step.
"""

from __future__ import annotations

import math

import torch

from envs.fast.behaviour import in_lane
from envs.fast.params import LANE_WIDTH_M, VEHICLE
from envs.fast.state import TrafficState
from envs.safety import HARD_BRAKE_MPS2, STOPPED_SPEED_MPS



def leader_gap(state: TrafficState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gap [m], ttc [s], headway [s]), each (B,), to the leader in the ego's lane."""
    ego_lane_y = state.lane[:, :1].to(state.y.dtype) * LANE_WIDTH_M  # (B, 1)
    others = slice(1, None)
    same_lane = in_lane(state.y[:, others], ego_lane_y) & state.present[:, others]
    ahead = state.x[:, others] - state.x[:, :1]  # (B, M) [m]
    candidates = torch.where(same_lane & (ahead >= 0), ahead, torch.full_like(ahead, math.inf))
    distance, leader = candidates.min(dim=1)  # (B,)
    has_leader = torch.isfinite(distance)
    gap = torch.where(has_leader, distance - VEHICLE.length, torch.full_like(distance, math.inf))
    ego_speed = state.speed[:, 0] * torch.cos(state.heading[:, 0])  # along the lane [m/s]
    leader_speed = torch.gather(state.speed[:, others] * torch.cos(state.heading[:, others]), 1, leader[:, None])[:, 0]
    return (gap, *time_margins(gap, ego_speed, leader_speed, has_leader))


def time_margins(gap: torch.Tensor, ego_speed: torch.Tensor, leader_speed: torch.Tensor,
                 has_leader: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """envs.safety's time-to-collision and headway [s], each (B,), from the bumper gap [m] and both
    speeds along the lane [m/s]; inf without a leader, while not closing in, or while stopped."""
    closing = torch.where(has_leader, ego_speed - leader_speed, torch.zeros_like(ego_speed))
    inf = torch.full_like(gap, math.inf)
    ttc = torch.where(closing > 0, gap.clamp(min=0) / closing.clamp(min=1e-12), inf)
    headway = torch.where((ego_speed > STOPPED_SPEED_MPS) & has_leader, gap.clamp(min=0) / ego_speed.clamp(min=1e-12), inf)
    return ttc, headway


class SignalTracker:
    """Batched envs.safety.StepTracker: remembers the previous policy step of every env.

    The straight highway's; a simulator on other roads overrides `ego` (the ego's x, y, speed and
    lane id), `lane_changed` and `observe` (road_sim.RoadSignalTracker)."""

    def __init__(self, batch_size: int, dt_s: float, device: torch.device, dtype: torch.dtype) -> None:
        self.dt_s = dt_s
        zeros = torch.zeros(batch_size, device=device, dtype=dtype)
        self.speed, self.acceleration, self.distance = zeros.clone(), zeros.clone(), zeros.clone()
        self.x, self.y = zeros.clone(), zeros.clone()
        self.lane = torch.zeros(batch_size, device=device, dtype=torch.long)

    def ego(self, state) -> tuple[torch.Tensor, ...]:
        """(x [m], y [m], speed [m/s], lane id), each (B,) copies, of the ego of every env."""
        return tuple(t[:, 0].clone() for t in (state.x, state.y, state.speed, state.lane))

    def lane_changed(self, lane: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the lane id changed on the same road segment."""
        return lane != previous

    def observe(self, state, distance: torch.Tensor) -> dict[str, torch.Tensor]:
        return observe(state, distance)

    def reset(self, rows: torch.Tensor, state) -> dict[str, torch.Tensor]:
        """Start the envs `rows`; returns their signals at reset, (E,) each."""
        sub = state.select(rows)
        x, y, speed, lane = self.ego(sub)
        self.speed[rows], self.lane[rows] = speed, lane
        self.acceleration[rows] = 0.0
        self.distance[rows] = 0.0
        self.x[rows], self.y[rows] = x, y
        signals = self.observe(sub, self.distance[rows])
        zeros = torch.zeros_like(signals["speed"])
        signals.update(acceleration=zeros, jerk=zeros.clone(), lane_change=torch.zeros_like(signals["crashed"]),
                       hard_brake=torch.zeros_like(signals["crashed"]))
        return signals

    def step(self, state) -> dict[str, torch.Tensor]:
        """Signals of all B envs after a policy step."""
        x, y, speed, lane = self.ego(state)
        acceleration = (speed - self.speed) / self.dt_s
        jerk = (acceleration - self.acceleration) / self.dt_s
        lane_change = self.lane_changed(lane, self.lane)
        self.distance = self.distance + torch.hypot(x - self.x, y - self.y)
        self.speed, self.acceleration, self.lane = speed, acceleration, lane
        self.x, self.y = x, y
        signals = self.observe(state, self.distance)
        signals.update(acceleration=acceleration, jerk=jerk, lane_change=lane_change,
                       hard_brake=acceleration < -HARD_BRAKE_MPS2)
        return signals


def on_road(state: TrafficState) -> torch.Tensor:
    """(B,) bool: the ego is within its closest lane (StraightLane.on_lane, no margin)."""
    lateral = state.y[:, 0] - state.lane[:, 0].to(state.y.dtype) * LANE_WIDTH_M
    return lateral.abs() <= LANE_WIDTH_M / 2


def observe(state: TrafficState, distance: torch.Tensor) -> dict[str, torch.Tensor]:
    gap, ttc, headway = leader_gap(state)
    return {
        "crashed": state.crashed[:, 0].clone(),
        "off_road": ~on_road(state),
        "speed": state.speed[:, 0].clone(),
        "ttc": ttc,
        "headway": headway,
        "gap": gap,
        "distance": distance.clone(),
        "lane_id": state.lane[:, 0].clone(),
    }
