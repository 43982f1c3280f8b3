"""A numpy snapshot of the simulator's vehicles, the one thing cameras and signals read.

Reading highway-env's Python objects once per step into arrays keeps every consumer
(rasterizers, safety signals, ground truth) vectorised and independent of highway-env.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scene:
    """Vehicles and obstacles at one instant; row 0 is the ego. N = 1 + others."""

    positions: np.ndarray  # (N, 2) [m] world frame: x along the road, y to its right
    headings: np.ndarray  # (N,) [rad] from +x towards +y
    speeds: np.ndarray  # (N,) [m/s] along the heading
    lengths: np.ndarray  # (N,) [m]
    widths: np.ndarray  # (N,) [m]

    @property
    def ego_position(self) -> np.ndarray:
        return self.positions[0]

    @property
    def ego_heading(self) -> float:
        return float(self.headings[0])

    @property
    def velocities(self) -> np.ndarray:
        """(N, 2) [m/s] world-frame velocity vectors."""
        return self.speeds[:, None] * np.stack([np.cos(self.headings), np.sin(self.headings)], axis=1)

    def in_ego_frame(self, points: np.ndarray) -> np.ndarray:
        """(M, 2) world points -> (M, 2) [longitudinal ahead, lateral right] [m] around the ego."""
        heading = self.ego_heading
        forward = np.array([np.cos(heading), np.sin(heading)])
        right = np.array([-np.sin(heading), np.cos(heading)])
        offsets = points - self.ego_position
        return np.stack([offsets @ forward, offsets @ right], axis=1)

    def corners(self) -> np.ndarray:
        """(N, 4, 2) [m] world corners of each footprint: front-right, front-left, rear-left, rear-right."""
        cos, sin = np.cos(self.headings), np.sin(self.headings)
        forward = np.stack([cos, sin], axis=1)[:, None, :]  # (N, 1, 2)
        right = np.stack([-sin, cos], axis=1)[:, None, :]
        along = np.array([0.5, 0.5, -0.5, -0.5])[None, :, None] * self.lengths[:, None, None]
        across = np.array([0.5, -0.5, -0.5, 0.5])[None, :, None] * self.widths[:, None, None]
        return self.positions[:, None, :] + along * forward + across * right


def snapshot(road, ego) -> Scene:
    """Read the ego, the other vehicles and static obstacles of a highway-env `Road`."""
    movers = [ego] + [vehicle for vehicle in road.vehicles if vehicle is not ego] + list(road.objects)
    return Scene(
        positions=np.array([obj.position for obj in movers], dtype=np.float64).reshape(-1, 2),
        headings=np.array([obj.heading for obj in movers], dtype=np.float64),
        speeds=np.array([obj.speed for obj in movers], dtype=np.float64),
        lengths=np.array([obj.LENGTH for obj in movers], dtype=np.float64),
        widths=np.array([obj.WIDTH for obj in movers], dtype=np.float64),
    )
