"""Export a perception checkpoint to ONNX and check that ONNX Runtime computes the same function.

    path, max_abs_diff = export("runs/perception/student.safetensors")   # -> student.onnx

The graph (perception.models.export_onnx) has one input "frames" (B, C, H, W) float in [0, 1]
with a dynamic batch, and three outputs "embedding" (B, E), "labels" (B, D), "attention" (B, h, w).
perception.onboard.OnnxPerception runs it on uint8 camera frames.

The file is first written next to `out` under a temporary name, checked against PyTorch on a few
random inputs (batch 1 and a larger batch), and only then renamed to `out`: a failed check never
leaves a wrong model where a good one was.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from envs.files import atomic_write
from perception.checkpoint import load_model
from perception.models import ONNX_INPUT, ONNX_OUTPUTS, export_onnx

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3
"""largest |ONNX Runtime - PyTorch| over all outputs that `export` accepts"""


def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An onnxruntime CPU InferenceSession for `path` using `threads` intra-op threads."""
    import onnxruntime as ort

    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def parity(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike,
    batch_sizes: tuple[int, ...] = (1, 5),
    seed: int = 0,
) -> float:
    """Max |ONNX Runtime - PyTorch| over all outputs, for random inputs in [0, 1] of each batch size.

    ValueError when an output of either holds NaN or inf (they would compare as equal to anything)."""
    session = onnx_session(onnx_path)
    generator = torch.Generator().manual_seed(seed)
    parameter = next(model.parameters())
    worst = 0.0
    for batch in batch_sizes:
        x = torch.rand((batch, *model.input_shape), generator=generator)  # (B, C, H, W) in [0, 1]
        with torch.no_grad():
            expected = model(x.to(parameter.device))
        got = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x.numpy()})
        for name, reference, value in zip(ONNX_OUTPUTS, expected, got):
            reference = reference.detach().float().cpu().numpy()
            if value.shape != reference.shape:
                raise ValueError(
                    f"{onnx_path}: output {name!r} has shape {value.shape} in ONNX Runtime, "
                    f"{reference.shape} in PyTorch (batch {batch})"
                )
            if not (np.isfinite(value).all() and np.isfinite(reference).all()):
                # NaN compares false: max(0.0, nan) is 0.0, so a NaN model would "match" with 0.00e+00
                which = "PyTorch" if not np.isfinite(reference).all() else "ONNX Runtime"
                raise ValueError(
                    f"{onnx_path}: output {name!r} holds NaN or infinite values in {which} (batch {batch}); "
                    f"such a model is never exported"
                )
            worst = max(worst, float(np.max(np.abs(value - reference))))
    return worst


def export(model_path: str | os.PathLike, out: str | os.PathLike | None = None, opset: int = 17) -> tuple[Path, float]:
    """Export the checkpoint at `model_path` to ONNX -> (path written, max abs difference vs PyTorch).

    out: the .onnx file (default: `model_path` with the suffix .onnx). Raises ValueError, and
    writes nothing at `out`, when ONNX Runtime and PyTorch differ by more than PARITY_TOLERANCE or
    either computes NaN/inf. A checkpoint with non-finite weights is refused when it is loaded.
    """
    model_path = Path(model_path)
    out = model_path.with_suffix(".onnx") if out is None else Path(out)
    if out.resolve() == model_path.resolve():
        raise ValueError(f"--out {out} would overwrite the checkpoint; give a .onnx path")
    model, _ = load_model(model_path, "cpu")
    max_abs_diff = float("nan")

    def write_checked(tmp: Path) -> None:  # the file reaches `out` only when it passes the parity check
        nonlocal max_abs_diff
        export_onnx(model, tmp, opset=opset)
        max_abs_diff = parity(model, tmp)
        if not max_abs_diff <= PARITY_TOLERANCE:  # also catches NaN
            raise ValueError(
                f"ONNX export of {model_path} does not match PyTorch: max |difference| {max_abs_diff:.3g} > "
                f"{PARITY_TOLERANCE:g}; nothing was written to {out}. Try another --opset (now {opset}) or "
                f"report the onnx/onnxruntime/torch versions"
            )

    atomic_write(out, write_checked)
    logger.info("wrote %s (max |ONNX Runtime - PyTorch| = %.2e)", out, max_abs_diff)
    return out, max_abs_diff
