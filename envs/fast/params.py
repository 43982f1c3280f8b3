"""highway-env's behaviour constants, read from its own classes so the two backends cannot drift.

Everything the batched simulator needs about vehicles, controllers, IDM/MOBIL and lanes is
collected here as plain floats (SI units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from highway_env.road.lane import AbstractLane
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.controller import ControlledVehicle, MDPVehicle
from highway_env.vehicle.kinematics import Vehicle

LANE_WIDTH_M = float(AbstractLane.DEFAULT_WIDTH)  # [m] straight_road_network's lanes
ROAD_LENGTH_M = 10_000.0  # [m] straight_road_network's default length
SPEED_LIMIT_MPS = 30.0  # [m/s] HighwayEnv._create_road passes speed_limit=30
NEIGHBOUR_LANE_MARGIN_M = 1.0  # [m] Road.neighbour_vehicles counts a vehicle this far outside a lane as in it
LANE_VEHICLE_LENGTH_M = float(AbstractLane.VEHICLE_LENGTH)  # [m] slack at the lanes' ends in on_lane()


@dataclass(frozen=True)
class VehicleParams:
    length: float = float(Vehicle.LENGTH)  # [m]
    width: float = float(Vehicle.WIDTH)  # [m]
    max_speed: float = float(Vehicle.MAX_SPEED)  # [m/s]
    min_speed: float = float(Vehicle.MIN_SPEED)  # [m/s]


@dataclass(frozen=True)
class ControllerParams:
    """ControlledVehicle's cascaded lateral controller and proportional speed controller."""

    kp_a: float = float(ControlledVehicle.KP_A)  # [1/s]
    kp_heading: float = float(ControlledVehicle.KP_HEADING)  # [1/s]
    kp_lateral: float = float(ControlledVehicle.KP_LATERAL)  # [1/s]
    tau_pursuit: float = float(ControlledVehicle.TAU_PURSUIT)  # [s]
    max_steering: float = float(ControlledVehicle.MAX_STEERING_ANGLE)  # [rad]
    target_speeds: tuple[float, ...] = tuple(float(v) for v in MDPVehicle.DEFAULT_TARGET_SPEEDS)  # [m/s]


@dataclass(frozen=True)
class IdmParams:
    """IDMVehicle's longitudinal (IDM) and lateral (MOBIL) parameters."""

    acc_max: float = float(IDMVehicle.ACC_MAX)  # [m/s^2]
    comfort_acc_max: float = float(IDMVehicle.COMFORT_ACC_MAX)  # [m/s^2]
    comfort_acc_min: float = float(IDMVehicle.COMFORT_ACC_MIN)  # [m/s^2]
    distance_wanted: float = float(IDMVehicle.DISTANCE_WANTED)  # [m]
    time_wanted: float = float(IDMVehicle.TIME_WANTED)  # [s]
    delta_range: tuple[float, float] = (float(IDMVehicle.DELTA_RANGE[0]), float(IDMVehicle.DELTA_RANGE[1]))
    politeness: float = float(IDMVehicle.POLITENESS)
    lane_change_min_acc_gain: float = float(IDMVehicle.LANE_CHANGE_MIN_ACC_GAIN)  # [m/s^2]
    lane_change_max_braking_imposed: float = float(IDMVehicle.LANE_CHANGE_MAX_BRAKING_IMPOSED)  # [m/s^2]
    lane_change_delay: float = float(IDMVehicle.LANE_CHANGE_DELAY)  # [s]

    @property
    def sqrt_ab(self) -> float:
        """sqrt(a * b) of IDM's braking term, from the comfort accelerations [m/s^2]."""
        return float(np.sqrt(-self.comfort_acc_max * self.comfort_acc_min))


VEHICLE = VehicleParams()
CONTROLLER = ControllerParams()
IDM = IdmParams()
NOT_ZERO_EPS = 1e-2  # highway_env.utils.not_zero's default
