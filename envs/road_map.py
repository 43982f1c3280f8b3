"""A raster of the static road, drawn once per road network and cropped by the cameras.

Roads do not move, so their surface, lane markings and edges are drawn once into a
top-down image at a fixed scale. Each frame, a camera only warps a small window of it
(`cv2.warpAffine` for the top-down view, `cv2.warpPerspective` for the dash-cam) and draws
the vehicles on top. This works for any lane geometry highway-env has: straight, circular
and sine lanes, so highways, ramps, roundabouts and intersections alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from highway_env.road.graphics import LaneGraphics
from highway_env.road.lane import AbstractLane, LineType, StraightLane

from envs import palette

CURVE_SAMPLE_SPACING_M = 1.0  # [m] between polyline points on curved lanes
MAP_MARGIN_M = 4.0  # [m] of off-road drawn around the road's bounding box
MAX_MAP_PIXELS = 80_000_000  # a map larger than this is a mistake (absurd scale or road)
SUBPIXEL_BITS = 4  # cv2 drawing precision: coordinates in 1/16 px


@dataclass(frozen=True)
class RoadMap:
    """Top-down RGB raster of a road network. Pixel (col, row) = (world - origin) * scale."""

    image: np.ndarray  # (rows, cols, 3) uint8
    origin: np.ndarray  # (2,) [m] world position of pixel (0, 0)
    pixels_per_meter: float

    def world_to_pixel(self, points: np.ndarray) -> np.ndarray:
        """(M, 2) [m] -> (M, 2) [px] as (col, row)."""
        return (points - self.origin) * self.pixels_per_meter

    def window(self, center: np.ndarray, radius_m: float) -> tuple[np.ndarray, np.ndarray]:
        """A view (no copy) of the map around `center`, and its top-left corner in pixels.

        Cameras warp only this window: OpenCV's warps refuse sources over 32767 px, and a
        10 km highway at a few px/m is larger than that.
        """
        col, row = self.world_to_pixel(center[None, :])[0]
        radius = int(np.ceil(radius_m * self.pixels_per_meter)) + 2
        rows, cols = self.image.shape[:2]
        c0 = int(np.clip(col - radius, 0, cols))
        c1 = int(np.clip(col + radius, 0, cols))
        r0 = int(np.clip(row - radius, 0, rows))
        r1 = int(np.clip(row + radius, 0, rows))
        return self.image[r0:r1, c0:c1], np.array([c0, r0], dtype=np.float64)


def lane_outline(lane: AbstractLane) -> tuple[np.ndarray, np.ndarray]:
    """World polylines of a lane's left and right borders: two (S, 2) arrays [m]."""
    if isinstance(lane, StraightLane):
        stations = np.array([0.0, lane.length])
    else:
        count = max(2, int(np.ceil(lane.length / CURVE_SAMPLE_SPACING_M)) + 1)
        stations = np.linspace(0.0, lane.length, count)
    left = np.array([lane.position(s, -lane.width_at(s) / 2) for s in stations])
    right = np.array([lane.position(s, lane.width_at(s) / 2) for s in stations])
    return left, right


def _dashes(lane: AbstractLane, side: int) -> list[np.ndarray]:
    """World segments of a striped border, with highway-env's stripe length and spacing."""
    lateral_sign = -0.5 if side == 0 else 0.5
    segments = []
    for start in np.arange(0.0, lane.length, LaneGraphics.STRIPE_SPACING):
        end = min(start + LaneGraphics.STRIPE_LENGTH, lane.length)
        stations = [start, end] if isinstance(lane, StraightLane) else np.linspace(start, end, 4)
        segments.append(
            np.array([lane.position(s, lateral_sign * lane.width_at(s)) for s in stations])
        )
    return segments


def _geometry_key(network) -> tuple:
    """A cheap, hashable description of the lanes: highway-env rebuilds identical roads on
    every reset, and they should share one map."""
    return tuple(
        (
            type(lane).__name__,
            tuple(lane.line_types),
            round(float(lane.length), 3),
            round(float(lane.width_at(0.0)), 3),
            tuple(np.round(lane.position(0.0, 0.0), 3)),
            tuple(np.round(lane.position(lane.length / 2, 0.0), 3)),
            tuple(np.round(lane.position(lane.length, 0.0), 3)),
        )
        for lane in network.lanes_list()
    )


_MAP_CACHE: dict[tuple, RoadMap] = {}
_MAP_CACHE_SIZE = 16


def build_road_map(network, pixels_per_meter: float) -> RoadMap:
    """Raster a highway-env `RoadNetwork`; identical geometry at the same scale is drawn once."""
    key = (_geometry_key(network), float(pixels_per_meter))
    if key not in _MAP_CACHE:
        if len(_MAP_CACHE) >= _MAP_CACHE_SIZE:
            _MAP_CACHE.pop(next(iter(_MAP_CACHE)))  # oldest first
        _MAP_CACHE[key] = _draw(network, float(pixels_per_meter))
    return _MAP_CACHE[key]


def _draw(network, pixels_per_meter: float) -> RoadMap:
    lanes = network.lanes_list()
    outlines = [lane_outline(lane) for lane in lanes]
    all_points = np.concatenate([np.concatenate(pair) for pair in outlines])
    origin = all_points.min(axis=0) - MAP_MARGIN_M
    extent = all_points.max(axis=0) + MAP_MARGIN_M - origin  # [m]
    cols, rows = np.ceil(extent * pixels_per_meter).astype(int) + 1
    if rows * cols > MAX_MAP_PIXELS:
        raise ValueError(
            f"road map would be {cols}x{rows} px at {pixels_per_meter} px/m; "
            "lower the camera's pixels_per_meter"
        )
    image = np.empty((rows, cols, 3), dtype=np.uint8)
    image[:] = palette.OFF_ROAD
    scale = pixels_per_meter * (1 << SUBPIXEL_BITS)

    def fixed(points: np.ndarray) -> np.ndarray:
        return np.round((points - origin) * scale).astype(np.int32)

    # Road surface first, then every border on top of it.
    surfaces = [fixed(np.concatenate([left, right[::-1]])) for left, right in outlines]
    cv2.fillPoly(image, surfaces, palette.ROAD, lineType=cv2.LINE_AA, shift=SUBPIXEL_BITS)
    solid, dashed = [], []
    for lane, (left, right) in zip(lanes, outlines):
        for side, border in enumerate((left, right)):
            line_type = lane.line_types[side]
            if line_type in (LineType.CONTINUOUS, LineType.CONTINUOUS_LINE):
                solid.append(fixed(border))
            elif line_type == LineType.STRIPED:
                dashed.extend(fixed(segment) for segment in _dashes(lane, side))
    cv2.polylines(image, dashed, False, palette.LANE_MARKING, 1, cv2.LINE_AA, SUBPIXEL_BITS)
    cv2.polylines(image, solid, False, palette.ROAD_EDGE, 1, cv2.LINE_AA, SUBPIXEL_BITS)
    image.setflags(write=False)  # shared through the cache: nobody may draw on it
    return RoadMap(image=image, origin=origin, pixels_per_meter=pixels_per_meter)
