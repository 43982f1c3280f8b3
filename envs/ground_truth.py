"""Privileged ground truth around the ego: what perception is trained to read from frames.

Everything is in the ego frame (x ahead, y to the ego's right) so labels do not depend on
where the episode happens on the map.
"""

from __future__ import annotations

import numpy as np

from envs.scene import Scene

MAX_NEIGHBOURS = 8  # nearest other vehicles reported
NEIGHBOUR_RADIUS_M = 60.0  # [m] farther vehicles count as absent
OCCUPANCY_AHEAD_M = 40.0  # [m] a lane is "occupied ahead" if a vehicle is within this
OCCUPANCY_BEHIND_M = 20.0  # [m] ... "occupied behind"
LANE_OFFSETS = (-1, 0, 1)  # left, own, right lane


def privileged_state(scene: Scene, lane_width_m: float, ego_lane_id: int) -> dict[str, np.ndarray]:
    """Labels for one instant.

    Returns float32 arrays:
      presence     (K,)    1 for a real neighbour, 0 for padding, nearest first
      rel_position (K, 2)  [m]   ahead, right of the ego centre
      rel_velocity (K, 2)  [m/s] neighbour velocity minus ego velocity, in the ego frame
      occupancy    (3, 2)  lanes (left, own, right) x (ahead, behind)
      ego_lane     ()      lane id on the current road segment (0 = leftmost)
      ego_speed    ()      [m/s]
    """
    others = slice(1, None)
    rel_position = scene.in_ego_frame(scene.positions[others])  # (N-1, 2)
    heading = scene.ego_heading
    to_ego = np.array([[np.cos(heading), np.sin(heading)], [-np.sin(heading), np.cos(heading)]])
    rel_velocity = (scene.velocities[others] - scene.velocities[0]) @ to_ego.T  # (N-1, 2)

    distance = np.hypot(rel_position[:, 0], rel_position[:, 1])
    order = np.argsort(distance, kind="stable")
    order = order[distance[order] <= NEIGHBOUR_RADIUS_M][:MAX_NEIGHBOURS]
    presence = np.zeros(MAX_NEIGHBOURS, np.float32)
    positions = np.zeros((MAX_NEIGHBOURS, 2), np.float32)
    velocities = np.zeros((MAX_NEIGHBOURS, 2), np.float32)
    presence[: len(order)] = 1.0
    positions[: len(order)] = rel_position[order]
    velocities[: len(order)] = rel_velocity[order]

    lane_offset = np.rint(rel_position[:, 1] / lane_width_m)  # (N-1,) whole lanes to the right
    ahead = (rel_position[:, 0] > 0) & (rel_position[:, 0] <= OCCUPANCY_AHEAD_M)
    behind = (rel_position[:, 0] <= 0) & (rel_position[:, 0] >= -OCCUPANCY_BEHIND_M)
    occupancy = np.array(
        [[np.any((lane_offset == k) & ahead), np.any((lane_offset == k) & behind)] for k in LANE_OFFSETS],
        dtype=np.float32,
    )
    return {
        "presence": presence,
        "rel_position": positions,
        "rel_velocity": velocities,
        "occupancy": occupancy,
        "ego_lane": np.float32(ego_lane_id),
        "ego_speed": np.float32(scene.speeds[0]),
    }
