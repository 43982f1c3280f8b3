"""Safety signals for every step, and the `SafetyMonitor` that turns an episode into aggregates.

Definitions (all in SI units):
- gap [m]: bumper-to-bumper distance to the leader, the nearest vehicle ahead in the ego's lane,
  measured along the lane; inf when there is none.
- time-to-collision [s]: gap / closing speed while the ego is faster than its leader, else inf.
- headway time [s]: gap / ego speed (inf when stopped or without a leader).
- hard brake: a deceleration stronger than HARD_BRAKE_MPS2 over one policy step.
- lane change: the lane id changes while the ego stays on the same road segment.
- driving score: route completion x 0.60 per vehicle collision x (1 - fraction of time
  off the road), the CARLA leaderboard's form with its vehicle-collision coefficient.
- success (scenarios with a goal: exit, intersection, u-turn; envs.goals): the goal was reached
  at some step and the ego never crashed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HARD_BRAKE_MPS2 = 4.0  # [m/s^2] ~0.4 g over a policy step
UNSAFE_TTC_S = 2.0  # [s]
UNSAFE_HEADWAY_S = 1.0  # [s]
VEHICLE_COLLISION_PENALTY = 0.60  # CARLA leaderboard coefficient for hitting a vehicle
STOPPED_SPEED_MPS = 0.1  # [m/s] below this, headway is undefined (inf)


@dataclass(frozen=True)
class LeaderGap:
    """The ego's relation to the nearest vehicle ahead in its lane."""

    gap_m: float  # bumper to bumper [m]; inf without a leader
    closing_speed_mps: float  # ego speed minus leader speed along the lane [m/s]; 0 without one
    ttc_s: float  # [s]; inf unless closing
    headway_s: float  # [s]; inf when stopped or without a leader


def leader_gap(road, ego) -> LeaderGap:
    """Measure gap, TTC and headway to the leader in the ego's current lane."""
    leader, _ = road.neighbour_vehicles(ego, ego.lane_index)
    lane = ego.lane
    s_ego = lane.local_coordinates(ego.position)[0]
    ego_speed = _speed_along_lane(ego, lane, s_ego)
    if leader is None:
        return LeaderGap(math.inf, 0.0, math.inf, math.inf)
    s_leader = lane.local_coordinates(leader.position)[0]
    gap = s_leader - s_ego - (ego.LENGTH + leader.LENGTH) / 2.0
    closing = ego_speed - _speed_along_lane(leader, lane, s_leader)
    return LeaderGap(
        gap_m=float(gap),
        closing_speed_mps=float(closing),
        ttc_s=time_to_collision(gap, closing),
        headway_s=headway_time(gap, ego_speed),
    )


def time_to_collision(gap_m: float, closing_speed_mps: float) -> float:
    """[s] until bumpers touch at constant speeds; inf when not closing, 0 when touching."""
    if closing_speed_mps <= 0.0:
        return math.inf
    return max(gap_m, 0.0) / closing_speed_mps


def headway_time(gap_m: float, ego_speed_mps: float) -> float:
    """[s] the ego needs to cover the gap at its current speed."""
    if ego_speed_mps <= STOPPED_SPEED_MPS or not math.isfinite(gap_m):
        return math.inf
    return max(gap_m, 0.0) / ego_speed_mps


def _speed_along_lane(vehicle, lane, s: float) -> float:
    """Velocity component along the lane's direction at station s [m/s]."""
    direction = lane.heading_at(s)
    return float(vehicle.velocity @ np.array([math.cos(direction), math.sin(direction)]))


@dataclass
class StepTracker:
    """Turns consecutive simulator states into per-step signals (acceleration, jerk, events)."""

    dt_s: float  # policy step [s]
    _speed: float | None = None
    _acceleration: float = 0.0
    _lane_index: tuple | None = None
    _position: np.ndarray | None = None
    distance_m: float = 0.0

    def reset(self, ego) -> None:
        self._speed = float(ego.speed)
        self._acceleration = 0.0
        self._lane_index = ego.lane_index
        self._position = np.array(ego.position, dtype=float)
        self.distance_m = 0.0

    def step(self, road, ego) -> dict[str, float | bool]:
        """Signals after one policy step; `reset` must have been called at episode start."""
        speed = float(ego.speed)
        acceleration = (speed - self._speed) / self.dt_s
        jerk = (acceleration - self._acceleration) / self.dt_s
        lane_index = ego.lane_index
        lane_change = bool(
            self._lane_index is not None
            and lane_index[:2] == self._lane_index[:2]
            and lane_index[2] != self._lane_index[2]
        )
        position = np.array(ego.position, dtype=float)
        self.distance_m += float(np.linalg.norm(position - self._position))
        self._speed, self._acceleration = speed, acceleration
        self._lane_index, self._position = lane_index, position
        signals = self.observe(road, ego)
        signals.update(
            acceleration=acceleration,  # [m/s^2]
            jerk=jerk,  # [m/s^3]
            lane_change=lane_change,
            hard_brake=bool(acceleration < -HARD_BRAKE_MPS2),
            distance=self.distance_m,  # [m] travelled since reset
        )
        return signals

    def observe(self, road, ego) -> dict[str, float | bool]:
        """Signals that need no history (also valid right after reset)."""
        gap = leader_gap(road, ego)
        return {
            "crashed": bool(ego.crashed),
            "off_road": not bool(ego.on_road),
            "speed": float(ego.speed),  # [m/s]
            "ttc": gap.ttc_s,  # [s]
            "headway": gap.headway_s,  # [s]
            "gap": gap.gap_m,  # [m]
            "acceleration": 0.0,
            "jerk": 0.0,
            "lane_change": False,
            "hard_brake": False,
            "distance": self.distance_m,
            "lane_id": int(ego.lane_index[2]) if ego.lane_index else -1,
        }


@dataclass
class _EpisodeTotals:
    steps: int = 0
    collided: bool = False
    min_ttc_s: float = math.inf
    min_headway_s: float = math.inf
    unsafe_steps: int = 0
    ttc_unsafe_steps: int = 0  # steps with TTC < UNSAFE_TTC_S alone
    off_road_steps: int = 0
    hard_brakes: int = 0
    lane_changes: int = 0
    speed_sum: float = 0.0
    jerk_square_sum: float = 0.0  # [m^2/s^6]
    distance_m: float = 0.0
    reached_goal: bool | None = None  # None: the scenario has no goal (envs.goals)


class SafetyMonitor:
    """Accumulates per-step `info` dicts into one episode's safety aggregates.

    With `record_ground_truth`, it also keeps each step's privileged state
    (`info["ground_truth"]`), which perception uses as labels.
    """

    def __init__(self, route_length_m: float, record_ground_truth: bool = False) -> None:
        self.route_length_m = route_length_m
        self.record_ground_truth = record_ground_truth
        self.reset()

    def reset(self) -> None:
        self.totals = _EpisodeTotals()
        self.ground_truth: list[dict[str, np.ndarray]] = []

    def update(self, info: dict) -> None:
        """Add one step's info (from `env.step`)."""
        signals, totals = info["safety"], self.totals
        totals.steps += 1
        totals.collided |= bool(signals["crashed"])
        totals.min_ttc_s = min(totals.min_ttc_s, float(signals["ttc"]))
        totals.min_headway_s = min(totals.min_headway_s, float(signals["headway"]))
        unsafe = signals["ttc"] < UNSAFE_TTC_S or signals["headway"] < UNSAFE_HEADWAY_S
        totals.unsafe_steps += int(unsafe)
        totals.ttc_unsafe_steps += int(signals["ttc"] < UNSAFE_TTC_S)
        totals.off_road_steps += int(signals["off_road"])
        totals.hard_brakes += int(signals["hard_brake"])
        totals.lane_changes += int(signals["lane_change"])
        totals.speed_sum += float(signals["speed"])
        totals.jerk_square_sum += float(signals["jerk"]) ** 2
        totals.distance_m = float(signals["distance"])
        if "goal_reached" in info:
            totals.reached_goal = bool(totals.reached_goal) or bool(info["goal_reached"])
        if self.record_ground_truth:
            self.ground_truth.append(info["ground_truth"])

    def summary(self) -> dict[str, float | None]:
        """Episode aggregates; per-km rates use the distance actually driven. "success" (goal reached
        without a collision) is None in scenarios without a goal."""
        totals = self.totals
        if totals.steps == 0:
            raise ValueError("SafetyMonitor.summary() needs at least one update()")
        km = totals.distance_m / 1000.0
        off_road_fraction = totals.off_road_steps / totals.steps
        route_completion = min(1.0, totals.distance_m / self.route_length_m)
        return {
            "collision": float(totals.collided),
            "min_ttc": totals.min_ttc_s,
            "min_headway": totals.min_headway_s,
            "unsafe_fraction": totals.unsafe_steps / totals.steps,
            "ttc_unsafe_fraction": totals.ttc_unsafe_steps / totals.steps,  # share of steps with TTC < 2 s
            "off_road_fraction": off_road_fraction,
            "hard_brakes_per_km": totals.hard_brakes / km if km > 0 else 0.0,
            "lane_changes_per_km": totals.lane_changes / km if km > 0 else 0.0,
            "mean_speed": totals.speed_sum / totals.steps,
            "rms_jerk": math.sqrt(totals.jerk_square_sum / totals.steps),
            "distance": totals.distance_m,
            "route_completion": route_completion,
            "driving_score": driving_score(route_completion, int(totals.collided), off_road_fraction),
            "success": None if totals.reached_goal is None else float(totals.reached_goal and not totals.collided),
        }


def driving_score(route_completion: float, vehicle_collisions: int, off_road_fraction: float) -> float:
    """CARLA-leaderboard-style score in [0, 1]: completion x infraction penalties."""
    penalty = VEHICLE_COLLISION_PENALTY**vehicle_collisions * (1.0 - off_road_fraction)
    return float(route_completion * penalty)
