"""Perception datasets on disk: compressed shards of whole episodes plus a JSON manifest.

    data/perception/highway/
        manifest.json        what was asked for, and the finished shards (written last)
        shard-00000.npz      frames (N, C, H, W) uint8, targets (N, D), masks (N, D) float32

A shard is written to a temporary name and renamed, and only then listed in the manifest,
so a killed collection keeps every finished shard and resumes after the last one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from envs.files import atomic_write
from perception.labels import LABEL_DIM

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """What a dataset holds and how it was made (enough to repeat it)."""

    scenarios: list[str]
    camera: str
    frames_requested: int
    seed: int
    policies: list[str]
    observation_shape: list[int]  # (C, H, W)
    label_dim: int = LABEL_DIM
    backend: str = "highway-env"  # the simulator the episodes ran on (envs.registration.BACKENDS)
    shards: list[dict] = field(default_factory=list)  # {"file", "frames", "episodes", "index"}
    version: int = MANIFEST_VERSION

    @property
    def frames(self) -> int:
        return sum(shard["frames"] for shard in self.shards)




def save_manifest(root: Path, manifest: Manifest) -> None:
    atomic_write(root / MANIFEST, lambda tmp: tmp.write_text(json.dumps(asdict(manifest), indent=2)))


def load_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no perception dataset at {root} (missing {MANIFEST}); run `run.py perception collect`")
    try:
        data = json.loads(path.read_text())
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{path} is not a clearlane dataset manifest: {error}") from None
    if manifest.version != MANIFEST_VERSION or manifest.label_dim != LABEL_DIM:
        raise ValueError(
            f"{path}: dataset version {manifest.version} with label_dim {manifest.label_dim}, "
            f"this code reads version {MANIFEST_VERSION} with label_dim {LABEL_DIM}; collect it again"
        )
    return manifest


def save_shard(path: Path, frames: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> None:
    """frames (N, C, H, W) uint8, targets/masks (N, D) float32, compressed (flat colours compress well)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz" to a name
            np.savez_compressed(handle, frames=frames, targets=targets, masks=masks)

    atomic_write(path, write)


class FrameDataset(Dataset):
    """All frames of some shards, in memory. Items: (frames uint8 (C, H, W), target (D,), mask (D,))."""

    def __init__(self, root: str | Path, shard_indices: list[int] | None = None) -> None:
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        shards = [s for s in self.manifest.shards if shard_indices is None or s["index"] in shard_indices]
        if not shards:
            raise ValueError(f"{self.root}: no finished shards to read")
        parts = [np.load(self.root / shard["file"]) for shard in shards]
        self.frames = np.concatenate([part["frames"] for part in parts])  # (N, C, H, W) uint8
        self.targets = np.concatenate([part["targets"] for part in parts])  # (N, D)
        self.masks = np.concatenate([part["masks"] for part in parts])  # (N, D)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(self.frames[index]),
            torch.from_numpy(self.targets[index]),
            torch.from_numpy(self.masks[index]),
        )


def split_shards(root: str | Path, holdout_every: int = 5) -> tuple[list[int], list[int]]:
    """(train, held-out) shard indices. Shards hold whole episodes, so held-out episodes are unseen."""
    indices = [shard["index"] for shard in load_manifest(Path(root)).shards]
    if len(indices) < 2:
        raise ValueError(f"{root}: need at least 2 shards to hold some out, found {len(indices)}")
    held_out = [i for i in indices if i % holdout_every == holdout_every - 1] or indices[-1:]
    return [i for i in indices if i not in held_out], held_out
