"""Top-down camera centred on the ego and rotated with it, so the ego always points up.

One frame = warp a window of the static road map + fill the vehicles' footprints.
Both are a handful of OpenCV calls on a small image: well under a millisecond.
"""

from __future__ import annotations

import cv2
import numpy as np

from envs import palette
from envs.road_map import SUBPIXEL_BITS, RoadMap
from envs.scene import Scene
from scenarios.schema import BevCameraConfig


class BevCamera:
    """Renders (H, W, 3) uint8 RGB frames; image up = ego heading, image right = ego's right."""

    def __init__(self, config: BevCameraConfig) -> None:
        self.config = config
        self.height, self.width = config.height, config.width
        self.scale = float(config.pixels_per_meter)  # [px/m]
        self.map_pixels_per_meter = self.scale  # the road map is drawn at the camera's own scale
        self.ego_pixel = np.array([config.width / 2.0, config.ego_row * config.height])  # (u, v)
        # Farthest a visible point can be from the ego [m]: the farthest image corner.
        corner_offsets = np.array([[0, 0], [config.width, 0], [0, config.height], [config.width, config.height]])
        self.view_radius_m = float(np.max(np.linalg.norm(corner_offsets - self.ego_pixel, axis=1)) / self.scale)

    def world_to_image(self, ego_position: np.ndarray, ego_heading: float) -> tuple[np.ndarray, np.ndarray]:
        """Affine map world [m] -> image (u, v) [px]: returns (M (2, 2), t (2,)), uv = M @ p + t."""
        cos, sin = np.cos(ego_heading), np.sin(ego_heading)
        # u grows with the lateral offset (to the ego's right), v shrinks with the longitudinal one.
        matrix = self.scale * np.array([[-sin, cos], [-cos, -sin]])
        return matrix, self.ego_pixel - matrix @ ego_position

    def render(self, road_map: RoadMap, scene: Scene) -> np.ndarray:
        """One RGB frame (H, W, 3) uint8 of the scene."""
        matrix, offset = self.world_to_image(scene.ego_position, scene.ego_heading)
        frame = self._road(road_map, scene.ego_position, matrix, offset)
        self._vehicles(frame, scene, matrix, offset)
        return frame

    def _road(self, road_map: RoadMap, ego_position: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
        window, corner = road_map.window(ego_position, self.view_radius_m)
        size = (self.width, self.height)
        if window.size == 0:  # far off any road
            frame = np.empty((self.height, self.width, 3), dtype=np.uint8)
            frame[:] = palette.OFF_ROAD
            return frame
        # window pixel w -> world p = (w + corner) / s_map + origin -> image uv = M p + t
        to_world = 1.0 / road_map.pixels_per_meter
        affine = np.empty((2, 3))
        affine[:, :2] = matrix * to_world
        affine[:, 2] = matrix @ (corner * to_world + road_map.origin) + offset
        return cv2.warpAffine(
            window, affine, size, flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=palette.OFF_ROAD,
        )

    def _vehicles(self, frame: np.ndarray, scene: Scene, matrix: np.ndarray, offset: np.ndarray) -> None:
        centers = scene.positions @ matrix.T + offset  # (N, 2) [px]
        reach = 0.5 * np.hypot(scene.lengths, scene.widths) * self.scale  # (N,) [px]
        visible = (
            (centers[:, 0] > -reach) & (centers[:, 0] < self.width + reach)
            & (centers[:, 1] > -reach) & (centers[:, 1] < self.height + reach)
        )
        visible[0] = False  # the ego is drawn last, on top
        corners = scene.corners() @ matrix.T + offset  # (N, 4, 2) [px]
        fixed = np.round(corners * (1 << SUBPIXEL_BITS)).astype(np.int32)
        if visible.any():
            cv2.fillPoly(frame, list(fixed[visible]), palette.OTHER_VEHICLE, cv2.LINE_AA, SUBPIXEL_BITS)
        cv2.fillPoly(frame, [fixed[0]], palette.EGO_VEHICLE, cv2.LINE_AA, SUBPIXEL_BITS)
