"""Is an explanation faithful to the decision it explains? Scripted checks and docs/EXPLAIN.md.

    python -m agents.explain.faithfulness --run RUN [--episodes 20] [--every 3] [--out docs/EXPLAIN.md]

- Deletion / insertion (Petsiuk et al., RISE): pixels ranked by a map (SHAP, attention, random)
  are replaced by the background's mean frame in that order (deletion), or put back into it
  (insertion); the chosen action's probability is read at every step. A faithful ranking drops
  the probability fast on deletion (low AUC) and raises it fast on insertion (high AUC).
  A pixel = a location of the frame, all channels of every stacked frame at once.
- Model randomisation (Adebayo et al., "Sanity checks for saliency maps"): the policy's layers,
  then the student's, are re-initialised from the output backwards, cumulatively; a map that
  explains the model must change (Spearman rank correlation of |map| with the original map falls).
- Grounding: the share of |attribution| on vehicles, lane markings, road edges, empty road and
  off-road, against each class's share of the pixels (classes from the camera's palette).
- Per-vehicle agreement (agents.explain.vehicles): SHAP mass and attention mass in each vehicle's
  box against the counterfactual change of log p(action) without that vehicle: Spearman over the
  vehicles of a keyframe, and top-1 agreement.
"""

from __future__ import annotations

import argparse
import copy
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import nn

from envs import palette

CLASSES: dict[str, tuple[int, int, int]] = {
    "vehicles": palette.OTHER_VEHICLE, "ego": palette.EGO_VEHICLE, "lane markings": palette.LANE_MARKING,
    "road edges": palette.ROAD_EDGE, "empty road": palette.ROAD, "off-road": palette.OFF_ROAD,
}
CURVE_STEPS = 24  # points of a deletion / insertion curve after the start


# -- deletion and insertion ------------------------------------------------------------------------


def pixel_order(pixel_map: np.ndarray) -> np.ndarray:
    """(H, W) scores -> flat pixel indices, highest score first (stable for ties)."""
    return np.argsort(-pixel_map.reshape(-1), kind="stable")


def perturbation_curve(probability: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor,
                       baseline: torch.Tensor, order: np.ndarray, mode: str, steps: int = CURVE_STEPS) -> np.ndarray:
    """(steps + 1,) probability of the explained action as pixels in `order` are deleted (replaced by
    `baseline`) or inserted (into `baseline`). frames, baseline: (C, H, W) floats; probability:
    (B, C, H, W) -> (B,)."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    channels, height, width = frames.shape
    counts = np.round(np.linspace(0, height * width, steps + 1)).astype(int)
    batch = []
    for count in counts:
        chosen = torch.zeros(height * width, dtype=torch.bool)
        chosen[torch.from_numpy(order[:count])] = True
        chosen = chosen.reshape(1, height, width)  # (1, H, W), broadcast over channels
        if mode == "deletion":
            batch.append(torch.where(chosen, baseline, frames))
        else:
            batch.append(torch.where(chosen, frames, baseline))
    with torch.no_grad():
        return probability(torch.stack(batch)).cpu().numpy()


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at evenly spaced fractions of [0, 1] (trapezoid)."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


# -- model randomisation ---------------------------------------------------------------------------


def randomisation_cascade(decision) -> list[tuple[str, Callable[[nn.Module], None]]]:
    """(name, re-initialise in place) from the decision's output back to its input: the policy's
    action head and actor MLP layers, then the student's head, embedding, attention pool and stages."""
    def reinit(module_path: str) -> Callable[[nn.Module], None]:
        def apply(model: nn.Module) -> None:
            module = model.get_submodule(module_path)
            generator = torch.Generator().manual_seed(hash(module_path) % (2**31))
            for parameter in module.parameters():
                with torch.no_grad():
                    if parameter.dim() > 1:
                        fan_in = parameter[0].numel()
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                    else:
                        parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
        return apply

    steps = [("policy: action head", reinit("action_net"))]
    actor = decision.mlp.policy_net
    linear = [name for name, module in actor.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    for name in reversed(linear):
        steps.append((f"policy: actor {name}", reinit(f"mlp.policy_net.{name}")))
    student = "extractor.model"
    steps.append(("student: label head", reinit(f"{student}.head")))
    steps.append(("student: embedding", reinit(f"{student}.embed")))
    steps.append(("student: attention pool", reinit(f"{student}.pool")))
    stages = len(decision.student.stages)
    for index in reversed(range(stages)):
        steps.append((f"student: stage {index + 1}", reinit(f"{student}.stages.{index}")))
    return steps


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' |values| (nan when one is constant)."""
    from scipy.stats import spearmanr

    x, y = np.abs(a).reshape(-1), np.abs(b).reshape(-1)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# -- grounding ---------------------------------------------------------------------------------------


def pixel_classes(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) clean camera frame -> (H, W) index into CLASSES: the nearest palette colour."""
    colours = np.array(list(CLASSES.values()), np.float32)  # (K, 3)
    distance = ((frame[:, :, None, :].astype(np.float32) - colours[None, None]) ** 2).sum(axis=3)
    return np.argmin(distance, axis=2)


def class_shares(weights: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(K,) share of the non-negative (H, W) `weights` on each class."""
    total = float(weights.sum()) or 1.0
    return np.array([float(weights[classes == k].sum()) / total for k in range(len(CLASSES))])


# -- per-vehicle agreement -----------------------------------------------------------------------------


def agreement(scores: np.ndarray, counterfactual: np.ndarray) -> tuple[float, bool | None]:
    """(Spearman of scores vs counterfactual over the vehicles (nan under 3 vehicles or ties only),
    top-1 agreement by magnitude (None under 2 vehicles))."""
    from scipy.stats import spearmanr

    if len(scores) < 2:
        return float("nan"), None
    top = int(np.argmax(np.abs(scores))) == int(np.argmax(np.abs(counterfactual)))
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(counterfactual) == 0:
        return float("nan"), top
    return float(spearmanr(scores, counterfactual).statistic), top
