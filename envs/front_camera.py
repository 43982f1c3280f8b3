"""Forward-looking pinhole ("dash-cam") camera on the ego's roof.

The road is a plane, so the map -> image mapping is a homography: one frame is a single
`cv2.warpPerspective` of a window of the static road map, sky above the farthest visible
ground row, and the other vehicles as shaded 3D boxes painted far to near.
"""

from __future__ import annotations

import cv2
import numpy as np

from envs import palette
from envs.road_map import SUBPIXEL_BITS, RoadMap
from envs.scene import Scene
from scenarios.schema import FrontCameraConfig

NEAR_PLANE_M = 1.0  # [m] box parts closer to the camera than this are clipped away
VEHICLE_HEIGHT_M = 1.5  # [m] highway-env vehicles are flat footprints; give them a car's height
MAX_WINDOW_PX = 32_000  # OpenCV 4.x warps refuse sources over 32767 px a side
HOOD_FRACTION = 0.08  # of the image height: the ego's hood, so that its colour is in view
_SIDE = tuple(int(c * 0.75) for c in palette.OTHER_VEHICLE)  # long sides: darker
_TOP = tuple(min(255, int(c * 0.75 + 64)) for c in palette.OTHER_VEHICLE)  # roof: lighter
# Box vertices: footprint corners (front-right, front-left, rear-left, rear-right) at 0-3 on
# the ground, 4-7 on the roof. Faces: front, rear, right, left, roof, with their colours.
_FACES = tuple(
    (np.array(vertices), colour)
    for vertices, colour in (
        ((0, 1, 5, 4), palette.OTHER_VEHICLE), ((2, 3, 7, 6), palette.OTHER_VEHICLE),
        ((3, 0, 4, 7), _SIDE), ((1, 2, 6, 5), _SIDE), ((4, 5, 6, 7), _TOP),
    )
)


class FrontCamera:
    """Renders (H, W, 3) uint8 RGB frames looking along the ego's heading."""

    def __init__(self, config: FrontCameraConfig) -> None:
        self.config = config
        self.height, self.width = config.height, config.width
        self.focal = config.width / 2.0 / np.tan(np.radians(config.fov_deg) / 2.0)  # [px], square pixels
        self.center = np.array([(config.width - 1) / 2.0, (config.height - 1) / 2.0])  # principal point (u, v) [px]
        pitch = np.radians(config.pitch_deg)
        self.cos_pitch, self.sin_pitch = float(np.cos(pitch)), float(np.sin(pitch))
        self.mount = float(config.mount_height_m)  # [m]
        self.max_range = float(config.max_range_m)  # [m] along the ego heading
        self.side_slope = (self.width / 2.0 + 1.0) / self.focal  # |right| / depth at the image's side edges
        self.view_radius_m = self.max_range * float(np.hypot(1.0, self.side_slope))  # farthest visible ground
        # Rows from here down see the ground within max_range; rows above are sky. Points behind
        # the camera only ever map above the horizon, so this mask also hides the homography's
        # mirrored ghosts of them.
        drop = self.mount * self.cos_pitch - self.max_range * self.sin_pitch  # camera y of the far ground
        depth = self.max_range * self.cos_pitch + self.mount * self.sin_pitch  # camera z of the far ground
        self.ground_row = int(np.clip(np.ceil(self.center[1] + self.focal * drop / depth), 0, self.height))
        # About one map pixel per image pixel across the road 12 m ahead (4 px/m at 96 px, 90 deg),
        # within bounds that keep a 10 km highway's map small and distant lines from vanishing.
        self.map_pixels_per_meter = float(np.clip(self.focal / 12.0, 2.0, 8.0))
        hood_top = self.height * (1.0 - HOOD_FRACTION)
        hood = np.array(  # a trapezoid, so that the road shows at the bottom corners
            [[-1, self.height], [0.12 * self.width, hood_top], [0.88 * self.width, hood_top], [self.width, self.height]]
        )
        self.hood = np.round(hood * (1 << SUBPIXEL_BITS)).astype(np.int32)  # (4, 2) fixed-point [px]

    def to_camera(self, scene: Scene, points: np.ndarray, height_m: float | np.ndarray) -> np.ndarray:
        """(..., 2) world points [m] at `height_m` (broadcast to (...)) -> (..., 3) camera (right, down, depth) [m]."""
        heading = scene.ego_heading
        offsets = points - scene.ego_position
        ahead = offsets @ np.array([np.cos(heading), np.sin(heading)])
        lateral = offsets @ np.array([-np.sin(heading), np.cos(heading)])
        drop = self.mount - height_m  # [m] below the camera
        down = drop * self.cos_pitch - ahead * self.sin_pitch
        depth = ahead * self.cos_pitch + drop * self.sin_pitch  # along the optical axis
        return np.stack(np.broadcast_arrays(lateral, down, depth), axis=-1)

    def project(self, camera_points: np.ndarray) -> np.ndarray:
        """(..., 3) camera points with depth > 0 -> (..., 2) image (u, v) [px]."""
        return self.center + self.focal * camera_points[..., :2] / camera_points[..., 2:]

    def render(self, road_map: RoadMap, scene: Scene) -> np.ndarray:
        """One RGB frame (H, W, 3) uint8 of the scene."""
        frame = np.empty((self.height, self.width, 3), dtype=np.uint8)
        frame[: self.ground_row] = palette.SKY
        if self.ground_row < self.height:
            frame[self.ground_row :] = self._ground(road_map, scene)
        self._vehicles(frame, scene)
        cv2.fillPoly(frame, [self.hood], palette.EGO_VEHICLE, cv2.LINE_AA, SUBPIXEL_BITS)
        return frame

    def _ground(self, road_map: RoadMap, scene: Scene) -> np.ndarray:
        """The image rows below `ground_row`: (H - ground_row, W, 3) uint8."""
        size = (self.width, self.height - self.ground_row)
        radius = min(self.view_radius_m, MAX_WINDOW_PX / 2.0 / road_map.pixels_per_meter - 4.0)  # [m]
        window, corner = road_map.window(scene.ego_position, radius)
        if window.size == 0:  # far off any road
            return np.full((size[1], size[0], 3), palette.OFF_ROAD, dtype=np.uint8)
        # window px -> world [m]: p = (w + corner) / s + origin
        to_world = np.diag([1.0 / road_map.pixels_per_meter] * 2 + [1.0])
        to_world[:2, 2] = corner / road_map.pixels_per_meter + road_map.origin
        # world ground point -> camera coords is affine (on z = 0): columns d/dx, d/dy, offset
        at = self.to_camera(scene, np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), 0.0)  # (3, 3)
        to_camera = np.stack([at[1] - at[0], at[2] - at[0], at[0]], axis=1)
        # camera -> pixels (intrinsics), shifted up so that ground_row is the output's row 0
        intrinsics = np.array(
            [[self.focal, 0.0, self.center[0]], [0.0, self.focal, self.center[1] - self.ground_row], [0.0, 0.0, 1.0]]
        )
        homography = intrinsics @ to_camera @ to_world
        return cv2.warpPerspective(
            window, homography, size, flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=palette.OFF_ROAD,
        )

    def _vehicles(self, frame: np.ndarray, scene: Scene) -> None:
        corners = scene.corners()[1:]  # (M, 4, 2) [m], the ego excluded
        heights = np.repeat([0.0, VEHICLE_HEIGHT_M], 4)  # (8,) [m]: ground corners, then roof corners
        boxes = self.to_camera(scene, np.concatenate([corners, corners], axis=1), heights)  # (M, 8, 3)
        centres = boxes[:, :4].mean(axis=1)  # (M, 3) footprint centres
        ahead = centres[:, 2] * self.cos_pitch - centres[:, 1] * self.sin_pitch  # [m] along the ego heading
        x, z, slope = boxes[..., 0], boxes[..., 2], self.side_slope
        shown = (
            (z.max(axis=1) > NEAR_PLANE_M) & (ahead <= self.max_range)
            & ~(x > slope * z).all(axis=1) & ~(-x > slope * z).all(axis=1)  # wholly outside a side plane
        )
        whole = z.min(axis=1) > NEAR_PLANE_M  # (M,) nothing to clip: project all 8 corners at once
        pixels = self._fixed(np.where(whole[:, None, None], boxes, 1.0))  # (M, 8, 2); unused where not whole
        # The camera in each vehicle's own frame decides which faces point at it.
        cos, sin = np.cos(scene.headings[1:]), np.sin(scene.headings[1:])
        offsets = scene.ego_position - scene.positions[1:]  # (M, 2) [m]
        along, across = offsets[:, 0] * cos + offsets[:, 1] * sin, offsets[:, 1] * cos - offsets[:, 0] * sin
        half_length, half_width = scene.lengths[1:, None] / 2.0, scene.widths[1:, None] / 2.0
        facing = np.concatenate(  # (M, 5) in _FACES order
            [along[:, None] * [1, -1] > half_length, across[:, None] * [1, -1] > half_width,
             np.full((len(along), 1), self.mount > VEHICLE_HEIGHT_M)], axis=1,
        )
        indices = np.flatnonzero(shown)
        for i in indices[np.argsort(-np.linalg.norm(centres[indices], axis=1), kind="stable")]:  # far to near
            faces = [(vertices, colour) for (vertices, colour), on in zip(_FACES, facing[i]) if on]
            if whole[i]:
                polygons = [(pixels[i, vertices], colour) for vertices, colour in faces]
                outline = cv2.convexHull(pixels[i])
            else:
                polygons = [(self._fixed(_clip(boxes[i, vertices])), colour) for vertices, colour in faces]
                polygons = [(polygon, colour) for polygon, colour in polygons if len(polygon) >= 3]
                if not polygons:
                    continue
                outline = cv2.convexHull(np.concatenate([polygon for polygon, _ in polygons]))
            # Silhouette first, so that anti-aliased face edges blend into the car, not the road.
            cv2.fillPoly(frame, [outline], palette.OTHER_VEHICLE, cv2.LINE_AA, SUBPIXEL_BITS)
            for polygon, colour in polygons:
                if colour != palette.OTHER_VEHICLE:
                    cv2.fillPoly(frame, [polygon], colour, cv2.LINE_AA, SUBPIXEL_BITS)

    def _fixed(self, camera_points: np.ndarray) -> np.ndarray:
        """(..., 3) camera points in front of the near plane -> (..., 2) int32 fixed-point pixels."""
        return np.round(self.project(camera_points) * (1 << SUBPIXEL_BITS)).astype(np.int32)


def _clip(face: np.ndarray) -> np.ndarray:
    """(K, 3) camera-frame polygon -> (K', 3): its part beyond the near plane (Sutherland-Hodgman)."""
    clipped = []
    for a, b in zip(face, np.roll(face, -1, axis=0)):
        if a[2] >= NEAR_PLANE_M:
            clipped.append(a)
        if (a[2] >= NEAR_PLANE_M) != (b[2] >= NEAR_PLANE_M):  # the edge crosses the plane
            clipped.append(a + (NEAR_PLANE_M - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(clipped).reshape(-1, 3)
