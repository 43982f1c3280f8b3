"""TTC, headway, events and episode aggregates are exact on constructed situations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from highway_env.road.road import Road, RoadNetwork
from highway_env.vehicle.kinematics import Vehicle

from envs.safety import (
    HARD_BRAKE_MPS2,
    SafetyMonitor,
    StepTracker,
    driving_score,
    headway_time,
    leader_gap,
    time_to_collision,
)


def straight_road(lanes: int = 3) -> Road:
    return Road(network=RoadNetwork.straight_road_network(lanes, length=1000), np_random=np.random.default_rng(0))


def place(road: Road, lane_id: int, s: float, speed: float) -> Vehicle:
    lane = road.network.get_lane(("0", "1", lane_id))
    vehicle = Vehicle(road, lane.position(s, 0.0), heading=lane.heading_at(s), speed=speed)
    road.vehicles.append(vehicle)
    return vehicle


def test_closing_on_a_slower_leader():
    road = straight_road()
    ego = place(road, 1, s=100.0, speed=25.0)
    place(road, 1, s=130.0, speed=20.0)  # centres 30 m apart, two 5 m cars: 25 m gap
    gap = leader_gap(road, ego)
    assert gap.gap_m == pytest.approx(25.0)
    assert gap.closing_speed_mps == pytest.approx(5.0)
    assert gap.ttc_s == pytest.approx(5.0)
    assert gap.headway_s == pytest.approx(1.0)


def test_faster_leader_has_no_ttc_but_a_headway():
    road = straight_road()
    ego = place(road, 0, s=50.0, speed=20.0)
    place(road, 0, s=95.0, speed=30.0)
    gap = leader_gap(road, ego)
    assert gap.gap_m == pytest.approx(40.0)
    assert gap.ttc_s == math.inf
    assert gap.headway_s == pytest.approx(2.0)


def test_only_the_nearest_leader_in_the_own_lane_counts():
    road = straight_road()
    ego = place(road, 1, s=100.0, speed=30.0)
    place(road, 0, s=110.0, speed=0.0)  # adjacent lane: ignored
    place(road, 1, s=90.0, speed=40.0)  # behind: ignored
    place(road, 1, s=200.0, speed=10.0)  # far leader: hidden by the near one
    place(road, 1, s=160.0, speed=20.0)
    gap = leader_gap(road, ego)
    assert gap.gap_m == pytest.approx(55.0)
    assert gap.ttc_s == pytest.approx(5.5)


def test_no_leader():
    road = straight_road()
    ego = place(road, 2, s=10.0, speed=20.0)
    gap = leader_gap(road, ego)
    assert (gap.gap_m, gap.ttc_s, gap.headway_s) == (math.inf, math.inf, math.inf)


@pytest.mark.parametrize(
    "gap, closing, expected", [(10.0, 2.0, 5.0), (10.0, 0.0, math.inf), (10.0, -3.0, math.inf), (-1.0, 4.0, 0.0)]
)
def test_time_to_collision(gap, closing, expected):
    assert time_to_collision(gap, closing) == expected


def test_headway_of_a_stopped_ego_is_infinite():
    assert headway_time(10.0, 0.0) == math.inf
    assert headway_time(10.0, 20.0) == pytest.approx(0.5)


def test_tracker_measures_acceleration_jerk_and_events():
    road = straight_road()
    ego = place(road, 1, s=100.0, speed=30.0)
    tracker = StepTracker(dt_s=0.5)
    tracker.reset(ego)
    ego.speed = 27.0  # -3 m/s in 0.5 s = -6 m/s^2: a hard brake
    ego.position = ego.position + np.array([14.0, 0.0])
    first = tracker.step(road, ego)
    assert first["acceleration"] == pytest.approx(-6.0)
    assert first["jerk"] == pytest.approx(-12.0)
    assert first["hard_brake"] and -6.0 < -HARD_BRAKE_MPS2
    assert first["distance"] == pytest.approx(14.0)
    assert not first["lane_change"]
    # Now drift into lane 2 at constant speed: a lane change, no brake, jerk back up.
    lane_2 = road.network.get_lane(("0", "1", 2))
    ego.position = lane_2.position(120.0, 0.0)
    ego.lane_index, ego.lane = ("0", "1", 2), lane_2
    second = tracker.step(road, ego)
    assert second["lane_change"] and not second["hard_brake"]
    assert second["acceleration"] == pytest.approx(0.0)
    assert second["jerk"] == pytest.approx(12.0)
    assert second["lane_id"] == 2


def step_info(ttc=math.inf, headway=math.inf, speed=20.0, distance=0.0, crashed=False, off_road=False,
              hard_brake=False, lane_change=False, jerk=0.0) -> dict:
    return {"safety": dict(ttc=ttc, headway=headway, speed=speed, distance=distance, crashed=crashed,
                           off_road=off_road, hard_brake=hard_brake, lane_change=lane_change, jerk=jerk)}


def test_monitor_aggregates_an_episode_exactly():
    monitor = SafetyMonitor(route_length_m=1000.0)
    steps = [
        step_info(ttc=8.0, headway=2.0, speed=20.0, distance=100.0, jerk=3.0),
        step_info(ttc=1.5, headway=2.0, speed=22.0, distance=200.0, hard_brake=True, jerk=-4.0),  # unsafe (TTC)
        step_info(ttc=9.0, headway=0.5, speed=24.0, distance=300.0, lane_change=True),  # unsafe (headway)
        step_info(speed=26.0, distance=400.0, off_road=True),
        step_info(speed=28.0, distance=500.0, crashed=True, lane_change=True),
    ]
    for info in steps:
        monitor.update(info)
    summary = monitor.summary()
    assert summary["collision"] == 1.0
    assert summary["min_ttc"] == 1.5 and summary["min_headway"] == 0.5
    assert summary["rms_jerk"] == pytest.approx(math.sqrt((3.0**2 + 4.0**2) / 5))
    assert summary["unsafe_fraction"] == pytest.approx(2 / 5)
    assert summary["off_road_fraction"] == pytest.approx(1 / 5)
    assert summary["hard_brakes_per_km"] == pytest.approx(2.0)  # 1 in 0.5 km
    assert summary["lane_changes_per_km"] == pytest.approx(4.0)  # 2 in 0.5 km
    assert summary["mean_speed"] == pytest.approx(24.0)
    assert summary["route_completion"] == pytest.approx(0.5)
    assert summary["driving_score"] == pytest.approx(0.5 * 0.60 * (1 - 1 / 5))
    monitor.reset()
    with pytest.raises(ValueError, match="at least one update"):
        monitor.summary()


def test_monitor_records_ground_truth_when_asked():
    monitor = SafetyMonitor(route_length_m=100.0, record_ground_truth=True)
    info = step_info(distance=150.0) | {"ground_truth": {"ego_speed": np.float32(20.0)}}
    monitor.update(info)
    assert monitor.ground_truth == [info["ground_truth"]]
    assert monitor.summary()["route_completion"] == 1.0  # capped


@pytest.mark.parametrize(
    "completion, collisions, off_road, expected",
    [(1.0, 0, 0.0, 1.0), (1.0, 1, 0.0, 0.60), (0.5, 2, 0.0, 0.5 * 0.36), (0.8, 0, 0.25, 0.6)],
)
def test_driving_score(completion, collisions, off_road, expected):
    assert driving_score(completion, collisions, off_road) == pytest.approx(expected)
