"""Flatten the env's privileged ground truth into one normalised label vector per frame.

Perception regresses this vector. Each group is scaled to roughly unit range so that no
group dominates the loss; neighbour positions and velocities are masked where no neighbour
is present. `describe_errors` turns a prediction error back into physical units.

Layout (D = 48), in order:
    presence      8   0/1, nearest neighbour first
    rel_position 16   (ahead, right) per neighbour, [m] / POSITION_SCALE_M
    rel_velocity 16   (ahead, right) per neighbour, [m/s] / VELOCITY_SCALE_MPS
    occupancy     6   lanes (left, own, right) x (ahead, behind), 0/1
    ego_lane      1   lane id / LANE_SCALE
    ego_speed     1   [m/s] / SPEED_SCALE_MPS
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.ground_truth import LANE_OFFSETS, MAX_NEIGHBOURS

POSITION_SCALE_M = np.array([50.0, 10.0], dtype=np.float32)  # ahead, right
VELOCITY_SCALE_MPS = 10.0
LANE_SCALE = 4.0
SPEED_SCALE_MPS = 30.0


@dataclass(frozen=True)
class LabelGroup:
    name: str
    start: int
    size: int


def _layout() -> tuple[LabelGroup, ...]:
    sizes = [
        ("presence", MAX_NEIGHBOURS),
        ("rel_position", 2 * MAX_NEIGHBOURS),
        ("rel_velocity", 2 * MAX_NEIGHBOURS),
        ("occupancy", 2 * len(LANE_OFFSETS)),
        ("ego_lane", 1),
        ("ego_speed", 1),
    ]
    groups, start = [], 0
    for name, size in sizes:
        groups.append(LabelGroup(name, start, size))
        start += size
    return tuple(groups)


LABEL_GROUPS = _layout()
LABEL_DIM = sum(group.size for group in LABEL_GROUPS)  # 48
GROUP = {group.name: group for group in LABEL_GROUPS}


def encode(ground_truth: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """info["ground_truth"] -> (target (D,), mask (D,)) float32; mask is 0 where undefined."""
    presence = ground_truth["presence"].astype(np.float32)  # (K,)
    target = np.concatenate(
        [
            presence,
            (ground_truth["rel_position"] / POSITION_SCALE_M).ravel(),
            (ground_truth["rel_velocity"] / VELOCITY_SCALE_MPS).ravel(),
            ground_truth["occupancy"].ravel(),
            [float(ground_truth["ego_lane"]) / LANE_SCALE],
            [float(ground_truth["ego_speed"]) / SPEED_SCALE_MPS],
        ]
    ).astype(np.float32)
    mask = np.ones(LABEL_DIM, dtype=np.float32)
    per_neighbour = np.repeat(presence, 2)  # (2K,)
    mask[_slice("rel_position")] = per_neighbour
    mask[_slice("rel_velocity")] = per_neighbour
    return target, mask


def _slice(name: str) -> slice:
    group = GROUP[name]
    return slice(group.start, group.start + group.size)


def describe_errors(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean absolute errors per group, in physical units, over (N, D) arrays.

    presence/occupancy: error rate at a 0.5 threshold; positions [m]; velocities [m/s];
    ego_lane: error rate of the rounded lane; ego_speed [m/s]; and `label_error`, the masked
    mean absolute error of the normalised vector (the single number perception is judged by).
    """
    error = np.abs(prediction - target) * mask
    result: dict[str, float] = {"label_error": float(error.sum() / max(mask.sum(), 1.0))}

    def masked_mean(values: np.ndarray, weights: np.ndarray) -> float:
        return float((values * weights).sum() / max(weights.sum(), 1.0))

    for name in ("presence", "occupancy"):
        part = _slice(name)
        wrong = (prediction[:, part] > 0.5) != (target[:, part] > 0.5)
        result[f"{name}_error_rate"] = float(wrong.mean())
    position = np.abs(prediction[:, _slice("rel_position")] - target[:, _slice("rel_position")])
    position = position.reshape(len(position), -1, 2) * POSITION_SCALE_M
    weights = mask[:, _slice("rel_position")].reshape(len(mask), -1, 2)
    result["position_mae_m"] = masked_mean(position, weights)
    velocity = np.abs(prediction[:, _slice("rel_velocity")] - target[:, _slice("rel_velocity")]) * VELOCITY_SCALE_MPS
    result["velocity_mae_mps"] = masked_mean(velocity, mask[:, _slice("rel_velocity")])
    lane = _slice("ego_lane")
    result["ego_lane_error_rate"] = float(
        (np.rint(prediction[:, lane] * LANE_SCALE) != np.rint(target[:, lane] * LANE_SCALE)).mean()
    )
    speed = _slice("ego_speed")
    result["ego_speed_mae_mps"] = float(np.abs(prediction[:, speed] - target[:, speed]).mean() * SPEED_SCALE_MPS)
    return result
