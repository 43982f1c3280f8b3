"""The dash-cam: sky over road, vehicles as boxes where a pinhole camera would see them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from highway_env.road.road import RoadNetwork

from envs import palette
from envs.front_camera import FrontCamera
from envs.road_map import build_road_map
from envs.scene import Scene
from scenarios.schema import FrontCameraConfig

# Three 4 m lanes centred on y = 0, 4, 8 [m]; the road spans y in [-2, 10].
NETWORK = RoadNetwork.straight_road_network(3, length=1000)
EGO = (100.0, 4.0, 0.0)  # (x [m], y [m], heading [rad]): middle lane, driving along +x


def make_scene(*others: tuple[float, float, float], ego: tuple[float, float, float] = EGO) -> Scene:
    """Ego plus other 5 m x 2 m vehicles, each given as (x, y, heading)."""
    rows = np.array([ego, *others], dtype=np.float64)
    count = len(rows)
    return Scene(
        positions=rows[:, :2], headings=rows[:, 2], speeds=np.zeros(count),
        lengths=np.full(count, 5.0), widths=np.full(count, 2.0),
    )


def render(scene: Scene, **config) -> np.ndarray:
    camera = FrontCamera(FrontCameraConfig(**config))
    return camera.render(build_road_map(NETWORK, camera.map_pixels_per_meter), scene)


def vehicle_pixels(*others: tuple[float, float, float], ego=EGO, **config) -> np.ndarray:
    """(H, W) bool: pixels that change when the other vehicles are added to an empty road."""
    with_them = render(make_scene(*others, ego=ego), **config)
    without = render(make_scene(ego=ego), **config)
    return (with_them != without).any(axis=2)


def centroid_column(mask: np.ndarray) -> float:
    assert mask.any(), "vehicle not drawn"
    return float(np.nonzero(mask)[1].mean())


def test_frame_is_sky_over_road_with_the_hood_at_the_bottom():
    frame = render(make_scene())
    assert frame.shape == (48, 96, 3) and frame.dtype == np.uint8
    assert (frame[0] == palette.SKY).all()
    assert (frame[-1, 48] == palette.EGO_VEHICLE).all()  # hood
    road_row = frame[-6]  # just above the hood, a few metres ahead
    assert (road_row[48] == palette.ROAD).all()
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 5  # markings, grass, sky, blends


def first_ground_row(frame: np.ndarray) -> int:
    return int(np.argmin((frame == palette.SKY).all(axis=2).all(axis=1)))


@pytest.mark.parametrize("pitch_deg", [0.0, 4.0, 10.0, -5.0])
def test_the_horizon_is_focal_tan_pitch_above_the_image_centre(pitch_deg):
    # 1 km range: the ground reaches within a pixel of the horizon. focal = 48 px at 96 px, 90 deg.
    horizon = (48 - 1) / 2 - 48 * np.tan(np.radians(pitch_deg))
    frame = render(make_scene(), pitch_deg=pitch_deg, max_range_m=1000.0)
    assert horizon <= first_ground_row(frame) <= horizon + 1


def test_ground_ends_at_max_range():
    # Level camera 1.5 m up: ground at distance d is 48 * 1.5 / d px below the centre row.
    for max_range in (10.0, 20.0, 50.0):
        row = first_ground_row(render(make_scene(), pitch_deg=0.0, max_range_m=max_range))
        assert row == int(np.ceil(23.5 + 48 * 1.5 / max_range))


@pytest.mark.parametrize(
    ("ego", "grass_side"),
    [
        ((100.0, 0.0, 0.0), "left"),  # leftmost lane: the road edge is 2 m to the left
        ((100.0, 8.0, 0.0), "right"),  # rightmost lane
        ((500.0, 8.0, np.pi), "left"),  # driving against +x in y = 8: +y is now on the left
    ],
)
def test_the_near_road_edge_is_on_the_correct_side(ego, grass_side):
    row = render(make_scene(ego=ego))[-6]  # (W, 3), a few metres ahead
    grass, road = (row[0], row[-1]) if grass_side == "left" else (row[-1], row[0])
    assert (grass == palette.OFF_ROAD).all()
    assert (road == palette.ROAD).all()


def test_a_vehicle_ahead_is_centred_and_lanes_left_and_right_are_offset():
    centre = (96 - 1) / 2
    assert abs(centroid_column(vehicle_pixels((120.0, 4.0, 0.0))) - centre) < 1.5
    assert centroid_column(vehicle_pixels((120.0, 8.0, 0.0))) > centre + 5
    assert centroid_column(vehicle_pixels((120.0, 0.0, 0.0))) < centre - 5
    # The same holds whatever the ego's heading: here it drives along -x.
    reverse = (500.0, 4.0, np.pi)
    assert abs(centroid_column(vehicle_pixels((480.0, 4.0, np.pi), ego=reverse)) - centre) < 1.5
    assert centroid_column(vehicle_pixels((480.0, 0.0, np.pi), ego=reverse)) > centre + 5


def test_vehicles_use_the_palette_colour():
    frame = render(make_scene((120.0, 4.0, 0.0)))
    assert (frame == palette.OTHER_VEHICLE).all(axis=2).sum() >= 4


def test_a_farther_vehicle_is_smaller():
    near, far = vehicle_pixels((120.0, 4.0, 0.0)), vehicle_pixels((160.0, 4.0, 0.0))
    assert far.sum() < near.sum() / 2


def test_a_farther_vehicle_is_drawn_behind_a_nearer_one():
    # The far car crosses the lane: its (darker) long side is wider than the near car's rear.
    near_car, far_car = (115.0, 4.0, 0.0), (125.0, 4.0, np.pi / 2)
    near = vehicle_pixels(near_car)
    inside_near = cv2.erode(near.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # no AA edge
    assert (vehicle_pixels(far_car) & inside_near).any()  # alone, the far car covers part of it
    alone = render(make_scene(near_car))
    for order in ((near_car, far_car), (far_car, near_car)):  # whatever the scene's order
        both = render(make_scene(*order))
        assert np.array_equal(both[inside_near], alone[inside_near])
        assert (both != alone).any()  # ... and it still shows on either side


@pytest.mark.parametrize("other", [(80.0, 4.0, 0.0), (99.0, 4.0, 0.0), (250.0, 4.0, 0.0), (120.0, 60.0, 0.0)])
def test_vehicles_behind_beyond_range_or_outside_the_view_are_not_drawn(other):
    # behind, overlapping the camera (wholly behind the near plane), past 120 m, far to the side
    assert not vehicle_pixels(other).any()


def test_a_vehicle_alongside_is_clipped_to_the_right_edge():
    mask = vehicle_pixels((101.0, 8.0, 0.0))  # straddles the near plane, one lane to the right
    assert mask.any()
    assert np.nonzero(mask)[1].min() > 96 / 2


def test_a_wider_field_of_view_makes_the_same_vehicle_smaller():
    narrow = vehicle_pixels((130.0, 4.0, 0.0), fov_deg=60.0)
    wide = vehicle_pixels((130.0, 4.0, 0.0), fov_deg=120.0)
    assert 0 < wide.sum() < narrow.sum()


def test_a_long_range_on_a_fine_map_stays_within_opencvs_warp_limits():
    # 1 km either way at 20 px/m would be a 40000 px window; OpenCV 4.x warps refuse over 32767.
    road_map = build_road_map(RoadNetwork.straight_road_network(3, length=2000), 20.0)  # 40160 px long
    frame = FrontCamera(FrontCameraConfig(max_range_m=1000.0)).render(road_map, make_scene(ego=(1000.0, 4.0, 0.0)))
    assert (frame[-6, 48] == palette.ROAD).all()


def test_rendering_is_deterministic():
    scene = make_scene((120.0, 4.0, 0.1), (140.0, 8.0, -0.2), (101.0, 0.0, 0.0))
    assert render(scene).tobytes() == render(scene).tobytes()


@pytest.mark.parametrize(
    "config",
    [
        {"fov_deg": 150.0, "pitch_deg": 45.0, "mount_height_m": 5.0, "max_range_m": 10.0},
        {"fov_deg": 20.0, "pitch_deg": -10.0, "mount_height_m": 0.5, "max_range_m": 1000.0},
        {"width": 16, "height": 16},
    ],
)
def test_extreme_configs_render(config):
    frame = render(make_scene((110.0, 4.0, 0.0), (101.0, 8.0, 0.3)), **config)
    assert frame.shape == (config.get("height", 48), config.get("width", 96), 3)
