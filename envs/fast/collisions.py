"""Ego-versus-traffic collisions, as highway-env's RoadObject.handle_collisions tests them.

highway-env uses the separating-axis test on the two footprints twice: once as they are
(`intersecting`: both crash now) and once with the first footprint swept by the relative
displacement over the next dt (`will_intersect`: an impact that crashes both at the next
sub-step). A sphere test first rules out far pairs. In highway-fast-v0 only the ego checks
collisions, so other vehicles never collide with each other.
"""

from __future__ import annotations

import torch

from envs.fast.params import VEHICLE
from envs.fast.state import TrafficState


def _half_extent(axis_x, axis_y, heading, length, width):
    """Half the projection of a rectangle (heading, length, width) on a unit axis."""
    cos, sin = torch.cos(heading), torch.sin(heading)
    along = (cos * axis_x + sin * axis_y).abs() * (length / 2)
    across = (-sin * axis_x + cos * axis_y).abs() * (width / 2)
    return along + across


def ego_collisions(state: TrafficState, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(intersecting, will_intersect), each (B, N-1) bool: the ego against every other vehicle.

    The sphere pre-check runs on all pairs; the separating-axis test only on the few near ones.
    """
    length, width = VEHICLE.length, VEHICLE.width
    diagonal = (length**2 + width**2) ** 0.5
    centre_dx = state.x[:, 1:] - state.x[:, :1]  # (B, M) [m]
    centre_dy = state.y[:, 1:] - state.y[:, :1]
    near = (torch.hypot(centre_dx, centre_dy) <= diagonal + state.speed[:, :1] * dt) & state.present[:, 1:]
    intersecting = torch.zeros_like(near)
    will_intersect = torch.zeros_like(near)
    rows, cols = near.nonzero(as_tuple=True)  # (K,) each
    if rows.numel() == 0:
        return intersecting, will_intersect
    others = cols + 1
    ego_x, ego_y, ego_h, ego_v = (t[rows, 0] for t in (state.x, state.y, state.heading, state.speed))
    x, y, h, v = (t[rows, others] for t in (state.x, state.y, state.heading, state.speed))
    # The ego's displacement relative to the other over dt (velocity = speed x heading direction).
    rel_x = (ego_v * torch.cos(ego_h) - v * torch.cos(h)) * dt
    rel_y = (ego_v * torch.sin(ego_h) - v * torch.sin(h)) * dt
    now = torch.ones_like(rows, dtype=torch.bool)
    soon = now.clone()
    for heading in (ego_h, h):  # each footprint's two edge normals
        for axis_x, axis_y in ((torch.cos(heading), torch.sin(heading)), (-torch.sin(heading), torch.cos(heading))):
            centre_a, centre_b = ego_x * axis_x + ego_y * axis_y, x * axis_x + y * axis_y
            half_a = _half_extent(axis_x, axis_y, ego_h, length, width)
            half_b = _half_extent(axis_x, axis_y, h, length, width)
            min_a, max_a = centre_a - half_a, centre_a + half_a
            min_b, max_b = centre_b - half_b, centre_b + half_b
            now &= interval_distance(min_a, max_a, min_b, max_b) <= 0
            sweep = rel_x * axis_x + rel_y * axis_y
            min_a = torch.where(sweep < 0, min_a + sweep, min_a)
            max_a = torch.where(sweep < 0, max_a, max_a + sweep)
            soon &= interval_distance(min_a, max_a, min_b, max_b) <= 0
    intersecting[rows, cols] = now
    will_intersect[rows, cols] = soon
    return intersecting, will_intersect


def interval_distance(min_a, max_a, min_b, max_b):
    """highway_env.utils.interval_distance: > 0 when the intervals are apart."""
    return torch.where(min_a < min_b, min_b - max_a, min_a - max_b)
