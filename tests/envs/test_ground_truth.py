"""Privileged labels are expressed in the ego frame, nearest first, with lane occupancy."""

from __future__ import annotations

import numpy as np
import pytest

from envs.ground_truth import MAX_NEIGHBOURS, privileged_state
from envs.scene import Scene


def scene(positions, headings, speeds) -> Scene:
    count = len(positions)
    return Scene(
        positions=np.array(positions, dtype=float),
        headings=np.array(headings, dtype=float),
        speeds=np.array(speeds, dtype=float),
        lengths=np.full(count, 5.0),
        widths=np.full(count, 2.0),
    )


def test_straight_road_labels():
    # Ego at the origin heading +x at 20 m/s; +y is the ego's right.
    state = privileged_state(
        scene(
            positions=[[0, 0], [30, 0], [-10, 4], [10, -4], [500, 0]],
            headings=[0, 0, 0, 0, 0],
            speeds=[20, 15, 25, 20, 20],
        ),
        lane_width_m=4.0,
        ego_lane_id=1,
    )
    assert state["presence"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # the car 500 m away is out of range
    np.testing.assert_allclose(state["rel_position"][:3], [[-10, 4], [10, -4], [30, 0]])
    np.testing.assert_allclose(state["rel_velocity"][:3], [[5, 0], [0, 0], [-5, 0]])
    # lanes (left, own, right) x (ahead, behind)
    np.testing.assert_array_equal(state["occupancy"], [[1, 0], [1, 0], [0, 1]])
    assert state["ego_lane"] == 1 and state["ego_speed"] == pytest.approx(20)
    assert state["rel_position"].dtype == np.float32


def test_labels_rotate_with_the_ego():
    # Ego heading +y (pi/2): a car at +y is ahead, a car at -x is on the ego's right.
    state = privileged_state(
        scene(positions=[[0, 0], [0, 20], [-4, 0]], headings=[np.pi / 2] * 3, speeds=[10, 10, 10]),
        lane_width_m=4.0,
        ego_lane_id=0,
    )
    np.testing.assert_allclose(state["rel_position"][:2], [[0, 4], [20, 0]], atol=1e-9)
    np.testing.assert_allclose(state["rel_velocity"][:2], 0, atol=1e-9)


def test_padding_when_crowded():
    positions = [[0, 0]] + [[5.0 * k, 0] for k in range(1, 12)]
    state = privileged_state(scene(positions, [0] * 12, [20] * 12), 4.0, 0)
    assert state["presence"].sum() == MAX_NEIGHBOURS
    assert np.all(np.diff(np.hypot(*state["rel_position"].T)) >= 0)  # nearest first
