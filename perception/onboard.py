"""Perception at decision time: uint8 camera frames in, embedding / labels / attention out.

    perceive = OnnxPerception("runs/perception/student.onnx")        # perception.export writes it
    out = perceive(obs)                 # obs: (C, H, W) or (B, C, H, W) uint8, as the env returns it
    out["embedding"], out["labels"], out["attention"]                 # numpy float32

Both classes divide by 255 themselves (the models read floats in [0, 1]); a frame that is not
uint8 is refused rather than silently scaled twice. A single frame (C, H, W) gives outputs without
the batch axis: embedding (E,), labels (D,), attention (h, w); a batch (B, C, H, W) gives (B, ...).

`TorchPerception` is the same interface on the PyTorch checkpoint, for comparisons and for the
GPU; `OnnxPerception` is what agents use on the CPU (ONNX Runtime is 2-4x faster at batch 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from perception.models import ONNX_INPUT, ONNX_OUTPUTS


def _as_batch(frames: np.ndarray | torch.Tensor, input_shape: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    """uint8 (C, H, W) or (B, C, H, W) -> (float32 (B, C, H, W) in [0, 1], whether it was one frame)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(
            f"perception expects uint8 camera frames (0-255, as the env returns them), got dtype {frames.dtype}; "
            f"it divides by 255 itself"
        )
    single = frames.ndim == 3
    batch = frames[None] if single else frames
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"perception expects frames of shape (C, H, W) = {tuple(input_shape)} or "
            f"(B, {', '.join(map(str, input_shape))}), got {tuple(frames.shape)}"
        )
    return batch.astype(np.float32) / np.float32(255.0), single


def _unbatch(outputs: dict[str, np.ndarray], single: bool) -> dict[str, np.ndarray]:
    return {name: value[0] for name, value in outputs.items()} if single else outputs


class OnnxPerception:
    """An exported perception model (perception.export) run by ONNX Runtime on the CPU."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 1) -> None:
        from perception.export import onnx_session

        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ONNX perception model not found: {path}; write one with `python run.py perception export --model "
                f"<checkpoint>.safetensors`"
            )
        self.path = path
        self.session = onnx_session(path, threads)
        inputs = self.session.get_inputs()
        names = [output.name for output in self.session.get_outputs()]
        if [i.name for i in inputs] != [ONNX_INPUT] or names != list(ONNX_OUTPUTS):
            raise ValueError(
                f"{path} is not a clearlane perception model: inputs {[i.name for i in inputs]}, outputs {names}; "
                f"expected [{ONNX_INPUT!r}] and {list(ONNX_OUTPUTS)}"
            )
        shape = inputs[0].shape  # ["batch", C, H, W]
        if len(shape) != 4 or not all(isinstance(n, int) for n in shape[1:]):
            raise ValueError(f"{path}: input {ONNX_INPUT!r} has shape {shape}, expected (batch, C, H, W)")
        self.input_shape: tuple[int, int, int] = (int(shape[1]), int(shape[2]), int(shape[3]))  # (C, H, W)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        x, single = _as_batch(frames, self.input_shape)  # (B, C, H, W) float32 in [0, 1]
        values = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
        return _unbatch(dict(zip(ONNX_OUTPUTS, values)), single)

    def __repr__(self) -> str:
        return f"OnnxPerception({str(self.path)!r}, input_shape={self.input_shape})"


class TorchPerception:
    """The same interface on a PyTorch checkpoint (perception.checkpoint), without gradients."""

    def __init__(self, model_path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        from perception.checkpoint import load_model

        self.path = Path(model_path)
        self.model, self.metadata = load_model(self.path, device)
        self.device = torch.device(device)
        self.input_shape: tuple[int, int, int] = self.model.input_shape

    @torch.no_grad()
    def __call__(self, frames: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        x, single = _as_batch(frames, self.input_shape)
        out = self.model(torch.from_numpy(x).to(self.device))
        values = {name: value.float().cpu().numpy() for name, value in zip(ONNX_OUTPUTS, out)}
        return _unbatch(values, single)

    def __repr__(self) -> str:
        return f"TorchPerception({str(self.path)!r}, input_shape={self.input_shape})"
