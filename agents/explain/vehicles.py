"""Per-vehicle reasons, checked against the simulator.

For every vehicle in view we know its box exactly: the `Scene` gives its footprint in the world,
the camera's projection puts it in the frame. Two numbers per vehicle k:

- attribution mass: the share of an attribution map (SHAP, or the student's attention) that lies
  inside k's box. SHAP is summed over each stacked frame's own box (k moves between the frames of
  the stack); attention, one map for the whole stack, inside k's box in the newest frame.
- counterfactual importance: re-render the same frame stack from the recorded scenes WITHOUT k
  (its pixels become whatever is under it: road, markings) and measure
  delta_k = log p(a | stack) - log p(a | stack without k), a = the action the agent chose.
  delta_k > 0: k made the agent more sure of its choice. Both stacks are re-rendered clean (no
  sensor corruption), so they differ only in k's pixels.

If the attribution says what the simulator's counterfactual says, the two rankings of the
vehicles agree (Spearman, top-1); agents.explain.faithfulness reports how often.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from agents.explain.decision import DecisionModel, log_probabilities
from agents.explain.session import FrameRenderer, VehicleFrame

MASK_DILATION_PX = 1  # anti-aliased edges paint up to ~1 px outside the footprint (envs.fast.camera: 0.65 px)


def _bev_camera(scenario):
    from envs.bev_camera import BevCamera

    return BevCamera(scenario.camera.bev)


def box_masks(scenario, frame: VehicleFrame, renderer: FrameRenderer | None = None) -> dict[int, np.ndarray]:
    """{vehicle id: (H, W) bool mask of its box in this frame} for every other vehicle in view.

    Top-down camera: the footprint's corners through the camera's world->image map, filled and
    grown by MASK_DILATION_PX. Dash-cam (boxes in 3D, occlusion): the pixels that change when the
    frame is re-rendered without the vehicle (needs `renderer`)."""
    height, width = scenario.camera.size
    scene = frame.scene
    masks: dict[int, np.ndarray] = {}
    if scenario.camera.view == "bev":
        camera = _bev_camera(scenario)
        matrix, offset = camera.world_to_image(scene.ego_position, scene.ego_heading)
        corners = scene.corners() @ matrix.T + offset  # (N, 4, 2) [px]
        kernel = np.ones((2 * MASK_DILATION_PX + 1,) * 2, np.uint8)
        for row in range(1, len(scene.speeds)):
            box = corners[row]
            if box[:, 0].max() < -2 or box[:, 0].min() > width + 2 or box[:, 1].max() < -2 or box[:, 1].min() > height + 2:
                continue
            mask = np.zeros((height, width), np.uint8)
            cv2.fillPoly(mask, [np.round(box * 16).astype(np.int32)], 1, cv2.LINE_8, 4)  # 4 fraction bits
            mask = cv2.dilate(mask, kernel)
            if mask.any():
                masks[int(frame.ids[row])] = mask.astype(bool)
        return masks
    if renderer is None:
        raise ValueError("box_masks: the dash-cam's boxes come from re-rendering; pass a FrameRenderer")
    full = renderer.render(scene)
    for row in range(1, len(scene.speeds)):
        vehicle_id = int(frame.ids[row])
        changed = np.any(renderer.render(frame.without(vehicle_id)) != full, axis=2)
        if changed.any():
            masks[vehicle_id] = changed
    return masks


def stack_masks(scenario, stack: list[VehicleFrame], renderer: FrameRenderer | None = None) -> list[dict[int, np.ndarray]]:
    """box_masks of every stacked frame (oldest first)."""
    return [box_masks(scenario, frame, renderer) for frame in stack]


def visible_ids(masks: list[dict[int, np.ndarray]]) -> list[int]:
    """Vehicles in view in any stacked frame, in id order."""
    return sorted(set().union(*[set(m) for m in masks]))


@dataclass
class VehicleReasons:
    """Per-vehicle numbers of one keyframe, aligned with `ids`."""

    ids: np.ndarray  # (K,) vehicle ids in view
    centers: np.ndarray  # (K, 2) [px] (u, v) of each box in the newest frame (nan when only in older frames)
    counterfactual: np.ndarray  # (K,) log p(a) - log p(a | without k)
    attention: np.ndarray  # (K,) share of the attention inside the box, newest frame
    shap: np.ndarray | None = None  # (K,) signed SHAP sum inside the boxes, all stacked frames
    shap_share: np.ndarray | None = None  # (K,) share of |SHAP| inside the boxes


def attention_mass(attention: np.ndarray, masks: dict[int, np.ndarray], ids: list[int], height: int, width: int) -> np.ndarray:
    """(K,) share of the (h, w) attention inside each vehicle's (H, W) mask (bilinear upsampling, renormalised)."""
    heat = cv2.resize(np.asarray(attention, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = heat / max(float(heat.sum()), 1e-12)
    return np.array([float(heat[masks[k]].sum()) if k in masks else 0.0 for k in ids])


def shap_mass(values: np.ndarray, masks: list[dict[int, np.ndarray]], ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) SHAP values of a stack of S frames (3 channels each) -> per vehicle: (signed sum, share of |SHAP|)."""
    values = np.asarray(values, np.float64)
    per_frame = values.reshape(len(masks), -1, *values.shape[1:]).sum(axis=1)  # (S, H, W)
    total = float(np.abs(per_frame).sum()) or 1.0
    signed, absolute = np.zeros(len(ids)), np.zeros(len(ids))
    for slot, frame_masks in enumerate(masks):
        for index, vehicle in enumerate(ids):
            if vehicle in frame_masks:
                inside = per_frame[slot][frame_masks[vehicle]]
                signed[index] += inside.sum()
                absolute[index] += np.abs(inside).sum()
    return signed, absolute / total


def counterfactual_stacks(renderer: FrameRenderer, stack: list[VehicleFrame], ids: list[int]) -> np.ndarray:
    """(1 + K, C, H, W) uint8: the stack re-rendered with every vehicle, then once without each of `ids`."""
    full = renderer.render_stack([frame.scene for frame in stack])
    without = [renderer.render_stack([frame.without(k) for frame in stack]) for k in ids]
    return np.stack([full, *without])


def counterfactual_importance(model: DecisionModel, renderer: FrameRenderer, stack: list[VehicleFrame],
                              ids: list[int], action: int) -> np.ndarray:
    """(K,) log p(action | stack) - log p(action | stack without vehicle k), one batched forward pass."""
    if not ids:
        return np.zeros(0)
    stacks = torch.from_numpy(counterfactual_stacks(renderer, stack, ids)).float() / 255.0  # (1 + K, C, H, W)
    logp = log_probabilities(model, stacks.to(next(model.parameters()).device))[:, action].cpu().numpy()  # (1 + K,)
    return logp[0] - logp[1:]


def box_centers(masks: dict[int, np.ndarray], ids: list[int]) -> np.ndarray:
    """(K, 2) [px] (u, v) centre of each vehicle's mask in one frame; nan where it is not in view."""
    centers = np.full((len(ids), 2), np.nan)
    for index, vehicle in enumerate(ids):
        if vehicle in masks:
            rows, cols = np.nonzero(masks[vehicle])
            centers[index] = (cols.mean(), rows.mean())
    return centers


def vehicle_reasons(scenario, model: DecisionModel, renderer: FrameRenderer, stack: list[VehicleFrame],
                    action: int, attention: np.ndarray, shap_values: np.ndarray | None = None) -> VehicleReasons:
    """All per-vehicle numbers of one keyframe (SHAP ones only when `shap_values` (C, H, W) is given)."""
    height, width = scenario.camera.size
    masks = stack_masks(scenario, stack, renderer)
    ids = visible_ids(masks)
    reasons = VehicleReasons(
        ids=np.array(ids, dtype=np.int64),
        centers=box_centers(masks[-1], ids),
        counterfactual=counterfactual_importance(model, renderer, stack, ids, action),
        attention=attention_mass(attention, masks[-1], ids, height, width),
    )
    if shap_values is not None:
        reasons.shap, reasons.shap_share = shap_mass(shap_values, masks, ids)
    return reasons
