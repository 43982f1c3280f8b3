"""Perception checkpoints: weights as safetensors, training state for resuming.

Model checkpoint (`save_checkpoint` / `load_model`): one `.safetensors` file with the model's
tensors; its string metadata records

    format       "clearlane-perception"
    version      FORMAT_VERSION
    arch         architecture name ("teacher", "student", ...)
    arch_config  JSON of the ArchConfig, so that the model can be rebuilt
    input_shape  JSON [C, H, W]
    label_dim    D of the label head (perception.labels.LABEL_DIM)
    extra        JSON of whatever the caller adds (metrics, training config, ...)
    tensors_sha256  `tensors_digest` of the weights: SHA-256 over every tensor's name, dtype, shape
                 and bytes, in name order

Every load checks the weights: the digest (a flipped byte, a tensor edited after saving: "corrupted
or modified") and that every value is finite (NaN/inf weights are refused, not trained on or
exported). A file written before the digest existed has no `tensors_sha256`; it is accepted with
the finite-values check only.

Training state (`save_training_state` / `load_training_state`): a `torch.save` file of tensors
and plain containers only, read back with `torch.load(weights_only=True)`; it holds the model
and optimizer state, the epoch and step counters and the RNG states, so a killed run resumes
from the last completed epoch without reading the safetensors file.

Every write goes to a temporary file in the same folder and is renamed over the target
(`os.replace`), so a killed process never leaves a half-written checkpoint.
Loading never runs pickled code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from envs.files import atomic_write
from perception.labels import LABEL_DIM
from perception.models import ArchConfig, PerceptionNet

FORMAT_NAME = "clearlane-perception"
FORMAT_VERSION = 1
TRAINING_STATE_FORMAT = "clearlane-perception-training-state"
DIGEST_KEY = "tensors_sha256"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over every tensor's name, dtype, shape and raw bytes, in name order.

    The same numbers give the same digest whatever the device or memory layout they come from.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_finite(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """ValueError naming the first tensor that holds NaN or infinite values."""
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{path}: tensor {name!r} holds {bad} non-finite (NaN or infinite) value(s) of {tensor.numel()}; "
                f"the weights are corrupted or training diverged: use another checkpoint or retrain"
            )


def save_checkpoint(
    path: str | os.PathLike,
    model: PerceptionNet,
    arch_name: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `model`'s weights and metadata to a safetensors file at `path` (atomically).

    arch_name / input_shape default to the model's own and, when given, must agree with them.
    extra: JSON-serialisable dict stored with the weights (metrics, config, ...).
    """
    if not isinstance(model, PerceptionNet):
        raise TypeError(f"save_checkpoint expects a PerceptionNet, got {type(model).__name__}")
    arch_name = model.arch.name if arch_name is None else arch_name
    if arch_name != model.arch.name:
        raise ValueError(f"arch_name {arch_name!r} does not match the model's architecture {model.arch.name!r}")
    input_shape = model.input_shape if input_shape is None else tuple(int(n) for n in input_shape)
    if tuple(input_shape) != model.input_shape:
        raise ValueError(f"input_shape {tuple(input_shape)} does not match the model's input shape {model.input_shape}")
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint extra must be JSON-serialisable: {error}") from None
    metadata = {
        "format": FORMAT_NAME,
        "version": str(FORMAT_VERSION),
        "arch": arch_name,
        "arch_config": json.dumps(model.arch.to_dict()),
        "input_shape": json.dumps(list(input_shape)),
        "label_dim": str(model.label_dim),
        "extra": extra_json,
    }
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    check_finite(tensors, path)  # never write weights that no load would accept
    metadata[DIGEST_KEY] = tensors_digest(tensors)
    data = safetensors_save(tensors, metadata=metadata)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _not_a_checkpoint(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"{path} is not a clearlane perception checkpoint or is corrupted ({reason}); "
        f"re-run training or point to a .safetensors file written by clearlane"
    )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed metadata of a checkpoint, without loading its weights."""
    metadata, _ = _read(Path(path), load_tensors=False)
    return metadata


def _read(path: Path, load_tensors: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.exists():
        raise FileNotFoundError(f"perception checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"perception checkpoint path is a directory, not a file: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()} if load_tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _not_a_checkpoint(path, f"safetensors could not read it: {error}") from None
    if raw.get("format") != FORMAT_NAME:
        raise _not_a_checkpoint(path, f"metadata format is {raw.get('format')!r}, expected {FORMAT_NAME!r}")
    try:
        version = int(raw["version"])
        metadata = {
            "format": raw["format"],
            "version": version,
            "arch": raw["arch"],
            "arch_config": ArchConfig.from_dict(json.loads(raw["arch_config"])),
            "input_shape": tuple(int(n) for n in json.loads(raw["input_shape"])),
            "label_dim": int(raw["label_dim"]),
            "extra": json.loads(raw.get("extra", "{}")),
            DIGEST_KEY: raw.get(DIGEST_KEY),  # None: saved before digests existed
        }
    except (KeyError, TypeError, ValueError) as error:
        raise _not_a_checkpoint(path, f"bad metadata: {error!r}") from None
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer clearlane (checkpoint format version {version}, this code reads "
            f"up to {FORMAT_VERSION}); upgrade clearlane"
        )
    if len(metadata["input_shape"]) != 3:
        raise _not_a_checkpoint(path, f"input_shape {metadata['input_shape']} is not (C, H, W)")
    if load_tensors:
        _verify(path, tensors, metadata[DIGEST_KEY])
    return metadata, tensors


def _verify(path: Path, tensors: dict[str, torch.Tensor], recorded: str | None) -> None:
    """The weights are the ones that were saved (digest) and hold only finite numbers."""
    if recorded is not None and tensors_digest(tensors) != recorded:
        raise ValueError(
            f"{path} is corrupted or was modified after it was saved: its weights do not match the SHA-256 "
            f"recorded in its metadata; restore it from the original (git checkout, a backup) or retrain"
        )
    check_finite(tensors, path)


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read every tensor of `path` and check it (format, digest, finite values) -> its metadata."""
    metadata, _ = _read(Path(path), load_tensors=True)
    return metadata


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expected_arch: str | None = None,
    expected_input_shape: tuple[int, int, int] | None = None,
) -> tuple[PerceptionNet, dict[str, Any]]:
    """Rebuild the model stored at `path` -> (model in eval mode on `device`, metadata).

    Raises FileNotFoundError for a missing file; ValueError for a file that is not a clearlane
    perception checkpoint (garbage, truncated), whose weights differ from the digest saved with them
    or hold NaN/inf, and ValueError naming expected vs found when the
    architecture, input shape or label dimension differ from `expected_*` / this code's LABEL_DIM.
    """
    path = Path(path)
    metadata, tensors = _read(path, load_tensors=True)
    if expected_arch is not None and metadata["arch"] != expected_arch:
        raise ValueError(f"{path}: expected architecture {expected_arch!r}, found {metadata['arch']!r}")
    if expected_input_shape is not None and tuple(expected_input_shape) != metadata["input_shape"]:
        raise ValueError(
            f"{path}: expected input shape (C, H, W) = {tuple(expected_input_shape)}, "
            f"found {metadata['input_shape']}; the camera settings differ from the ones the model was trained on"
        )
    if metadata["label_dim"] != LABEL_DIM:
        raise ValueError(
            f"{path}: expected label dimension {LABEL_DIM} (perception.labels), found {metadata['label_dim']}; "
            f"the checkpoint was made with a different label layout"
        )
    model = PerceptionNet(metadata["arch_config"], *metadata["input_shape"], label_dim=metadata["label_dim"])
    _load_state(model, tensors, path)
    model.to(device)
    model.eval()
    return model, metadata


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict with errors that say which tensor differs, expected vs found."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the recorded architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)} "
                f"for the recorded architecture"
            )
    model.load_state_dict(tensors)


# --------------------------------------------------------------------------- training state


def training_state_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where the resumable training state of a checkpoint lives: model.safetensors -> model.state.pt."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.stem + ".state.pt")


def save_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    extra: dict | None = None,
) -> Path:
    """Write everything a resumed run needs (atomically).

    epoch: number of completed epochs; step: optimizer steps so far; extra: tensors, numbers,
    strings and containers of those only (e.g. a DataLoader generator's state, best metrics).
    The RNG states (torch CPU and CUDA) are saved too.
    """
    state = {
        "format": TRAINING_STATE_FORMAT,
        "version": FORMAT_VERSION,
        "epoch": int(epoch),
        "step": int(step),
        "model": {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "extra": extra or {},
    }
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore model, optimizer (and RNG states) from `path` -> {"epoch", "step", "extra"}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(
            f"{path} is not a clearlane training state or is corrupted ({type(error).__name__}: {error}); "
            f"delete it to start training from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise ValueError(f"{path} is not a clearlane training state (unexpected content)")
    _load_state(model, state["model"], path)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path}: the optimizer state does not fit this model/optimizer: {error}") from None
    if restore_rng:
        torch.set_rng_state(state["rng"]["torch"])
        cuda_states = state["rng"]["cuda"]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return {"epoch": int(state["epoch"]), "step": int(state["step"]), "extra": state["extra"]}
