"""highway-env's vehicle behaviour, batched: neighbours, IDM, MOBIL and the low-level controllers.

Each function mirrors one highway-env method (named in its docstring) on (B, N) tensors. The
straight road makes the lane geometry trivial: a lane's longitudinal coordinate is x, its
lateral one is y - lane * LANE_WIDTH_M, and its heading is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from envs.fast.params import (
    CONTROLLER,
    IDM,
    LANE_WIDTH_M,
    NEIGHBOUR_LANE_MARGIN_M,
    NOT_ZERO_EPS,
    SPEED_LIMIT_MPS,
    VEHICLE,
)
from envs.fast.state import TrafficState

NO_VEHICLE = -1  # index meaning "none" in neighbour tables


def not_zero(x: torch.Tensor, eps: float = NOT_ZERO_EPS) -> torch.Tensor:
    """highway_env.utils.not_zero: keeps |x| >= eps, with x's sign (0 counts as positive)."""
    return torch.where(x.abs() > eps, x, torch.where(x >= 0, torch.full_like(x, eps), torch.full_like(x, -eps)))


def wrap_to_pi(angle: torch.Tensor) -> torch.Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, N) gathered at index (B, ...) in [-1, N); -1 rows give values[:, 0] (mask them)."""
    flat = index.reshape(index.shape[0], -1).clamp(min=0)
    return torch.gather(values, 1, flat).reshape(index.shape)


def in_lane(y: torch.Tensor, lane_y: torch.Tensor | float) -> torch.Tensor:
    """Road.neighbour_vehicles' lane test: within half a lane + 1 m of the lane's centre line."""
    return (y - lane_y).abs() <= LANE_WIDTH_M / 2 + NEIGHBOUR_LANE_MARGIN_M


def closest_lane(y: torch.Tensor, lanes_count: int) -> torch.Tensor:
    """RoadNetwork.get_closest_lane_index on parallel straight lanes (ties go to the left lane)."""
    return torch.ceil(y / LANE_WIDTH_M - 0.5).clamp_(0, lanes_count - 1).long()


@dataclass(frozen=True)
class Neighbours:
    """For each vehicle i and each lane l: the nearest vehicle ahead and behind, as seen by
    Road.neighbour_vehicles(i, lane l). Indices (B, N, L), NO_VEHICLE where there is none."""

    front: torch.Tensor
    rear: torch.Tensor


def find_neighbours(state: TrafficState, lanes_count: int) -> Neighbours:
    """Road.neighbour_vehicles for every vehicle and lane at once.

    A vehicle j is in lane l when |y_j - y_l| <= half a lane + 1 m (highway-env's margin), so a
    vehicle changing lanes counts in both. Front: the nearest x_j >= x_i; rear: the nearest
    x_j < x_i. Sorting by x makes both a lookup in each lane's list of members in rank order,
    found with a running count, instead of (B, N, N) pairwise distances. (A running count, not
    a running min/max: on an H100, CUDA's cummin/cummax over N ~ 21 moved ~50 GB/s, 2 % of the
    memory bandwidth, and took over half the simulation's GPU time.)
    """
    batch, count = state.x.shape
    device = state.x.device
    order = torch.argsort(state.x, dim=1, stable=True)  # (B, N): vehicle at rank k
    ranks = torch.arange(count, device=device).expand(batch, count)
    rank_of = torch.empty_like(order).scatter_(1, order, ranks)  # (B, N): rank of vehicle i
    y_sorted = torch.gather(state.y, 1, order)
    present_sorted = torch.gather(state.present, 1, order)
    fronts, rears = [], []
    for lane in range(lanes_count):
        member = in_lane(y_sorted, lane * LANE_WIDTH_M) & present_sorted  # (B, N) by rank
        upto = member.cumsum(dim=1)  # (B, N): members at ranks <= k
        # member_rank[:, m]: the rank of the lane's m-th member; `count` past the last one.
        # Non-members write to the spare column N, which is then reset to `count`.
        member_rank = torch.full((batch, count + 1), count, dtype=torch.long, device=device)
        member_rank.scatter_(1, torch.where(member, upto - 1, count), ranks)
        member_rank[:, count] = count
        front_rank = torch.gather(member_rank, 1, upto)  # the next member after rank k, or count
        before = upto - member.long()  # (B, N): members at ranks < k
        rear_rank = torch.where(before > 0, torch.gather(member_rank, 1, (before - 1).clamp(min=0)), -1)
        front = torch.where(front_rank < count, torch.gather(order, 1, front_rank.clamp(max=count - 1)), NO_VEHICLE)
        rear = torch.where(rear_rank >= 0, torch.gather(order, 1, rear_rank.clamp(min=0)), NO_VEHICLE)
        fronts.append(torch.gather(front, 1, rank_of))  # back to vehicle order
        rears.append(torch.gather(rear, 1, rank_of))
    return Neighbours(front=torch.stack(fronts, dim=2), rear=torch.stack(rears, dim=2))


def lane_neighbour(table: torch.Tensor, lane: torch.Tensor) -> torch.Tensor:
    """(B, N, L) table, (B, N) lane ids (clamped to the road) -> (B, N) vehicle indices."""
    lanes = table.shape[2]
    return torch.gather(table, 2, lane.clamp(0, lanes - 1)[..., None])[..., 0]


def closing_speed(speed: torch.Tensor, heading: torch.Tensor, other_speed: torch.Tensor,
                  other_heading: torch.Tensor) -> torch.Tensor:
    """(v_self - v_other) . direction_self [m/s], velocities being speed x (cos h, sin h)."""
    return speed - other_speed * torch.cos(other_heading - heading)


def desired_gap(speed: torch.Tensor, closing: torch.Tensor) -> torch.Tensor:
    """IDMVehicle.desired_gap [m]: jam distance + time gap + braking term."""
    return IDM.distance_wanted + speed * IDM.time_wanted + speed * closing / (2 * IDM.sqrt_ab)


def idm(
    speed: torch.Tensor,
    target_speed: torch.Tensor,
    heading: torch.Tensor,
    delta: torch.Tensor,
    has_front: torch.Tensor,
    gap_m: torch.Tensor,
    front_speed: torch.Tensor,
    front_heading: torch.Tensor,
) -> torch.Tensor:
    """IDMVehicle.acceleration [m/s^2] of a follower (speed, target, heading) behind a front vehicle.

    gap_m: centre-to-centre distance along the lane (highway-env's lane_distance_to);
    delta: the exponent of the vehicle doing the reasoning (highway-env uses self.DELTA even when
    it evaluates another vehicle). All arguments broadcast to one shape.
    """
    desired = target_speed.clamp(0.0, SPEED_LIMIT_MPS)
    free_road = IDM.comfort_acc_max * (1 - torch.pow(speed.clamp(min=0) / not_zero(desired).abs(), delta))
    gap_wanted = desired_gap(speed, closing_speed(speed, heading, front_speed, front_heading))
    interaction = IDM.comfort_acc_max * torch.pow(gap_wanted / not_zero(gap_m), 2)
    return free_road - torch.where(has_front, interaction, torch.zeros_like(interaction))


@dataclass(frozen=True)
class Vehicles:
    """Some vehicles' quantities, one per selected (env, vehicle index) pair; all (K,)."""

    exists: torch.Tensor  # bool
    x: torch.Tensor  # [m]
    speed: torch.Tensor  # [m/s]
    heading: torch.Tensor  # [rad]
    target_speed: torch.Tensor  # [m/s]

    @classmethod
    def gather(cls, state: TrafficState, rows: torch.Tensor, index: torch.Tensor) -> "Vehicles":
        """Vehicle `index[k]` (NO_VEHICLE allowed) of env `rows[k]`."""
        safe = index.clamp(min=0)
        return cls(
            exists=index != NO_VEHICLE,
            x=state.x[rows, safe],
            speed=state.speed[rows, safe],
            heading=state.heading[rows, safe],
            target_speed=state.target_speed[rows, safe],
        )


def follower_acceleration(follower: Vehicles, front: Vehicles, delta: torch.Tensor) -> torch.Tensor:
    """IDMVehicle.acceleration(ego_vehicle=follower, front_vehicle=front) with the reasoning
    vehicle's exponent `delta`; 0 where there is no follower, as highway-env returns for None."""
    acc = idm(follower.speed, follower.target_speed, follower.heading, delta, front.exists,
              front.x - follower.x, front.speed, front.heading)
    return torch.where(follower.exists, acc, torch.zeros_like(acc))


def own_acceleration(state: TrafficState, front: torch.Tensor) -> torch.Tensor:
    """(B, N) IDM acceleration of every vehicle behind its `front` ((B, N) indices or NO_VEHICLE)."""
    return idm(state.speed, state.target_speed, state.heading, state.delta, front != NO_VEHICLE,
               take(state.x, front) - state.x, take(state.speed, front), take(state.heading, front))


def mobil_targets(state: TrafficState, neighbours: Neighbours, deciding: torch.Tensor, lanes_count: int) -> torch.Tensor:
    """IDMVehicle.change_lane_policy's MOBIL step for the vehicles in `deciding` ((B, N) bool).

    Side lanes are tried left then right; when both qualify the right one wins, as in highway-env's
    loop. Only the deciding vehicles (about one in six per sub-step) are evaluated. Returns the
    new target lanes (B, N).
    """
    target = state.target_lane.clone()
    rows, cols = deciding.nonzero(as_tuple=True)  # (K,) each
    if rows.numel() == 0:
        return target
    me = Vehicles.gather(state, rows, cols)
    delta, lane = state.delta[rows, cols], state.lane[rows, cols]
    fronts, rears = neighbours.front[rows, cols], neighbours.rear[rows, cols]  # (K, L)

    def neighbour(table: torch.Tensor, lanes: torch.Tensor) -> Vehicles:
        index = torch.gather(table, 1, lanes.clamp(0, lanes_count - 1)[:, None])[:, 0]
        return Vehicles.gather(state, rows, index)

    old_front, old_rear = neighbour(fronts, lane), neighbour(rears, lane)
    self_a = follower_acceleration(me, old_front, delta)
    chosen = target[rows, cols]
    for side in (-1, 1):
        candidate = lane + side
        new_front, new_rear = neighbour(fronts, candidate), neighbour(rears, candidate)
        new_rear_pred_a = follower_acceleration(new_rear, me, delta)
        unsafe = new_rear_pred_a < -IDM.lane_change_max_braking_imposed
        gain = follower_acceleration(me, new_front, delta) - self_a
        if IDM.politeness != 0.0:
            new_rear_a = follower_acceleration(new_rear, new_front, delta)
            old_rear_a = follower_acceleration(old_rear, me, delta)
            old_rear_pred_a = follower_acceleration(old_rear, old_front, delta)
            gain = gain + IDM.politeness * (new_rear_pred_a - new_rear_a + old_rear_pred_a - old_rear_a)
        valid = (candidate >= 0) & (candidate < lanes_count)
        accept = valid & ~unsafe & (gain >= IDM.lane_change_min_acc_gain)
        chosen = torch.where(accept, candidate, chosen)
    target[rows, cols] = chosen
    return target


def aborted_lane_changes(state: TrafficState, changing: torch.Tensor) -> torch.Tensor:
    """IDMVehicle.change_lane_policy's abort rule, (B, N) bool: a vehicle changing lanes gives up
    when another vehicle, not yet in that lane but heading for it, is ahead closer than IDM's
    desired gap. Only the vehicles changing lanes are evaluated, each against its env's N."""
    aborted = torch.zeros_like(changing)
    rows, cols = changing.nonzero(as_tuple=True)  # (K,)
    if rows.numel() == 0:
        return aborted
    x_i, speed_i = state.x[rows, cols][:, None], state.speed[rows, cols][:, None]  # (K, 1)
    heading_i, target_i = state.heading[rows, cols][:, None], state.target_lane[rows, cols][:, None]
    ahead = state.x[rows] - x_i  # (K, N) [m]
    gap_wanted = desired_gap(speed_i, closing_speed(speed_i, heading_i, state.speed[rows], state.heading[rows]))
    heading_there = (state.lane[rows] != target_i) & (state.target_lane[rows] == target_i) & state.present[rows]
    conflict = heading_there & (ahead > 0) & (ahead < gap_wanted)  # ahead > 0 excludes the vehicle itself
    aborted[rows, cols] = conflict.any(dim=1)
    return aborted


def steering_toward(lateral: torch.Tensor, lane_heading: torch.Tensor | float, heading: torch.Tensor,
                    speed: torch.Tensor) -> torch.Tensor:
    """ControlledVehicle.steering_control's law [rad]: a lateral P controller on the offset from
    the target lane's centre (lateral [m], to the right) gives a heading relative to the lane's
    heading (lane_heading [rad], TAU_PURSUIT ahead), a heading P controller a yaw rate, the bicycle
    model a steering angle, clipped to +-MAX_STEERING_ANGLE."""
    lateral_speed_command = -CONTROLLER.kp_lateral * lateral
    heading_command = torch.asin((lateral_speed_command / not_zero(speed)).clamp(-1, 1))
    heading_reference = lane_heading + heading_command.clamp(-math.pi / 4, math.pi / 4)
    heading_rate_command = CONTROLLER.kp_heading * wrap_to_pi(heading_reference - heading)
    slip_angle = torch.asin((VEHICLE.length / 2 / not_zero(speed) * heading_rate_command).clamp(-1, 1))
    # copysign: in float32 asin(+-1) rounds past +-pi/2, where tan changes sign, and saturated
    # steering would flip (float64 rounds inside, as highway-env's numpy: no change there)
    steering = torch.copysign(torch.atan(2 * torch.tan(slip_angle)), slip_angle)
    return steering.clamp(-CONTROLLER.max_steering, CONTROLLER.max_steering)


def steering_control(state: TrafficState) -> torch.Tensor:
    """ControlledVehicle.steering_control towards the centre of each vehicle's target lane [rad]."""
    lateral = state.y - state.target_lane.to(state.y.dtype) * LANE_WIDTH_M  # [m], lane heading is 0
    return steering_toward(lateral, 0.0, state.heading, state.speed)
