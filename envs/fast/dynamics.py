"""One simulation sub-step of highway-env's Road for B envs: every vehicle decides, then moves.

Mirrors AbstractEnv._simulate's inner loop: `road.act()` (MDPVehicle control for the ego,
IDM + MOBIL for traffic) then `road.step(dt)` (kinematic bicycle model, lane update,
collisions). Decisions are taken simultaneously from the state at the start of the sub-step;
highway-env takes them one vehicle after another, which only differs when two vehicles decide
to change into the same lane in the same sub-step.
"""

from __future__ import annotations

import torch

from envs.fast.behaviour import (
    aborted_lane_changes,
    closest_lane,
    find_neighbours,
    lane_neighbour,
    mobil_targets,
    own_acceleration,
    steering_control,
)
from envs.fast.collisions import ego_collisions
from envs.fast.params import CONTROLLER, IDM, LANE_WIDTH_M, VEHICLE
from envs.fast.spawn import speed_to_index
from envs.fast.state import TrafficState

# DiscreteMetaAction's ACTIONS_ALL
LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER = range(5)


def apply_ego_action(state: TrafficState, action: torch.Tensor, lanes_count: int, target_speeds: torch.Tensor) -> None:
    """MDPVehicle.act(action) for (B,) int64 actions, in place: new target speed or target lane."""
    speed_step = torch.where(action == FASTER, 1, torch.where(action == SLOWER, -1, 0))
    changes_speed = speed_step != 0
    index = (speed_to_index(state.speed[:, 0], target_speeds) + speed_step).clamp(0, target_speeds.shape[0] - 1)
    state.ego_speed_index = torch.where(changes_speed, index, state.ego_speed_index)
    state.target_speed[:, 0] = torch.where(changes_speed, target_speeds[index], state.target_speed[:, 0])

    lane_step = torch.where(action == LANE_LEFT, -1, torch.where(action == LANE_RIGHT, 1, 0))
    new_lane = (state.target_lane[:, 0] + lane_step).clamp(0, lanes_count - 1)
    # StraightLane.is_reachable_from: within two lane widths laterally
    reachable = (state.y[:, 0] - new_lane.to(state.y.dtype) * LANE_WIDTH_M).abs() <= 2 * LANE_WIDTH_M
    state.target_lane[:, 0] = torch.where((lane_step != 0) & reachable, new_lane, state.target_lane[:, 0])


def act(state: TrafficState, lanes_count: int) -> None:
    """Road.act(): every vehicle's steering and acceleration commands, in place."""
    neighbours = find_neighbours(state, lanes_count)
    is_traffic = torch.ones_like(state.present)
    is_traffic[:, 0] = False
    active = is_traffic & state.present & ~state.crashed  # crashed IDM vehicles return early in act()

    # MOBIL (IDMVehicle.change_lane_policy): abort conflicting lane changes, else decide on a timer.
    changing = active & (state.lane != state.target_lane)
    aborted = aborted_lane_changes(state, changing)
    decide = active & ~changing & (state.timer > IDM.lane_change_delay)
    state.timer = torch.where(decide, torch.zeros_like(state.timer), state.timer)
    decide &= state.speed.abs() >= 1.0  # only change lane when moving
    new_target = mobil_targets(state, neighbours, decide, lanes_count)
    new_target = torch.where(aborted, state.lane, new_target)
    state.target_lane = torch.where(active, new_target, state.target_lane)

    steering = steering_control(state)
    acc = own_acceleration(state, lane_neighbour(neighbours.front, state.lane))
    acc_target = own_acceleration(state, lane_neighbour(neighbours.front, state.target_lane))
    acc = torch.where(state.lane != state.target_lane, torch.minimum(acc, acc_target), acc)
    acc = acc.clamp(-IDM.acc_max, IDM.acc_max)

    ego_acc = CONTROLLER.kp_a * (state.target_speed[:, 0] - state.speed[:, 0])  # ControlledVehicle.speed_control
    acc[:, 0] = ego_acc
    updates = active.clone()
    updates[:, 0] = state.present[:, 0]  # the ego always computes its commands
    state.steering = torch.where(updates, steering, state.steering)
    state.acceleration = torch.where(updates, acc, state.acceleration)


def clip_acceleration(speed: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Vehicle.clip_actions' speed limits: no faster than MAX_SPEED, no slower than MIN_SPEED [m/s^2]."""
    acc = torch.where(speed > VEHICLE.max_speed, torch.minimum(acc, VEHICLE.max_speed - speed), acc)
    return torch.where(speed < VEHICLE.min_speed, torch.maximum(acc, VEHICLE.min_speed - speed), acc)


def bicycle_step(x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, speed: torch.Tensor,
                 steering: torch.Tensor, acc: torch.Tensor, dt: float) -> tuple[torch.Tensor, ...]:
    """Vehicle.step's kinematic bicycle model over dt [s]: new (x, y, heading, speed), each the
    inputs' shape; it moves with the speed at the step's start."""
    beta = torch.atan(0.5 * torch.tan(steering))  # slip angle [rad]
    direction = heading + beta
    return (
        x + speed * torch.cos(direction) * dt,
        y + speed * torch.sin(direction) * dt,
        heading + speed * torch.sin(beta) / (VEHICLE.length / 2) * dt,
        speed + acc * dt,
    )


def move(state: TrafficState, dt: float, lanes_count: int) -> None:
    """Road.step(dt): Vehicle.step for everyone, then the ego's collision checks, in place."""
    steering = torch.where(state.crashed, torch.zeros_like(state.steering), state.steering)  # clip_actions
    acc = clip_acceleration(state.speed, torch.where(state.crashed, -state.speed, state.acceleration))

    moving = state.present
    x, y, heading, speed = bicycle_step(state.x, state.y, state.heading, state.speed, steering, acc, dt)
    state.x = torch.where(moving, x, state.x)
    state.y = torch.where(moving, y, state.y)
    state.heading = torch.where(moving, heading, state.heading)
    state.speed = torch.where(moving, speed, state.speed)
    timer = state.timer + dt
    timer[:, 0] = 0.0
    state.timer = torch.where(moving, timer, state.timer)
    state.crashed = state.crashed | (state.impact_pending & moving)  # impacts land one sub-step later
    state.impact_pending = torch.zeros_like(state.impact_pending)
    state.lane = closest_lane(state.y, lanes_count)

    intersecting, will_intersect = ego_collisions(state, dt)
    hit = intersecting.any(dim=1)
    state.crashed[:, 0] |= hit
    state.crashed[:, 1:] |= intersecting
    state.impact_pending[:, 0] = will_intersect.any(dim=1)
    state.impact_pending[:, 1:] = will_intersect
