"""Helpers for the agents tests: a tiny perception student, a 3-step scenario, tiny budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from perception.checkpoint import save_checkpoint
from perception.models import STUDENT, PerceptionNet
from scenarios.loader import SCENARIO_DIR

SHAPE = (9, 96, 48)  # (C, H, W) of the highway camera: 3 stacked RGB frames


@dataclass(frozen=True)
class Tiny:
    """Files for a fast run: an untrained student, highway with 3-step episodes, small hyperparameters."""

    student: Path
    scenario: Path
    config: Path
    root: Path


def write_scenario(path: Path, base: str = "highway", **changes) -> Path:
    """A shipped scenario with dotted keys changed, e.g. {"episode.duration": 3}, written to `path`."""
    data = yaml.safe_load((SCENARIO_DIR / f"{base}.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(data))
    return path


def make_tiny(root: Path) -> Tiny:
    torch.manual_seed(0)
    student = root / "student.safetensors"
    save_checkpoint(student, PerceptionNet(STUDENT, *SHAPE))
    # 3 policy steps per episode, so that episodes (and their safety/* and rollout/* logs) finish
    scenario = write_scenario(root / "short.yaml", **{"episode.duration": 3})
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "training": {"checkpoint_every": 32, "keep_checkpoints": 2, "eval_every": 32, "eval_episodes": 4,
                     "reference_eval_episodes": 2,
                     "imitation_iterations": 0,  # the fast block's warm start is tested on its own
                     "replay_every": 0},  # replays in TensorBoard are tested on their own
        "policy": {"perception": str(student), "net_arch": [16]},
        "ppo": {"n_steps": 32, "batch_size": 32, "n_epochs": 2},
        "a2c": {"n_steps": 8},
    }))
    return Tiny(student, scenario, config, root)


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run folder's TensorBoard events, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def all_finite(points: list[tuple[int, float]]) -> bool:
    return bool(points) and all(math.isfinite(value) for _, value in points)
