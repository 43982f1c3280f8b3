"""CPU inference speed of perception models, preprocessing included: eager PyTorch vs ONNX Runtime.

    measure_latency(model, threads=1, backend="onnx")          # {"p50_ms": ..., "p95_ms": ..., ...}
    measure_throughput(model, batch=256, backend="onnx", threads=2)   # frames/s

What one timed call does (what an agent pays per decision):

    frames (B, C, H, W) uint8 numpy  ->  float32 / 255  ->  model  ->  all outputs

- backend "torch": eager PyTorch on the CPU under `torch.inference_mode()`, with
  `torch.set_num_threads(threads)` for the measurement (the previous setting is restored).
- backend "onnx": the model exported with `perception.models.export_onnx` (to a temporary folder
  unless `onnx_path` is given) and run by ONNX Runtime with `intra_op_num_threads=threads`,
  `inter_op_num_threads=1`, sequential execution and all graph optimisations.

Each call is timed alone with `time.perf_counter`, after `warmup` untimed calls; the same random
frames (seeded) are fed every time. Percentiles are over the `repeats` timed calls.
On a machine shared with other jobs, p95 shows the interference; p50 is the number to compare.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from perception.labels import LABEL_DIM
from perception.models import ONNX_INPUT, PerceptionNet, export_onnx

BACKENDS = ("torch", "onnx")


def _check(backend: str, threads: int, batch: int, repeats: int, warmup: int) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; choose one of {list(BACKENDS)}")
    for name, value, low in (("threads", threads, 1), ("batch", batch, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _input_shape(model: PerceptionNet, input_shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in (input_shape if input_shape is not None else model.input_shape))
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {shape}")
    return shape  # type: ignore[return-value]


def _frames(batch: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Random camera frames (B, C, H, W) uint8 (content does not change the cost of a dense CNN)."""
    return np.random.default_rng(seed).integers(0, 256, size=(batch, *shape), dtype=np.uint8)


def ort_session(onnx_path: str | Path, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads, 1 inter-op thread, sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def _cpu_model(model: PerceptionNet) -> PerceptionNet:
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    return model


def _time_calls(call: Callable[[], object], repeats: int, warmup: int) -> np.ndarray:
    """Seconds of each of `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = np.empty(repeats, dtype=np.float64)
    for i in range(repeats):
        start = time.perf_counter()
        call()
        seconds[i] = time.perf_counter() - start
    return seconds


def _measure(
    model: PerceptionNet,
    shape: tuple[int, int, int],
    threads: int,
    backend: str,
    batch: int,
    repeats: int,
    warmup: int,
    onnx_path: str | Path | None,
    seed: int,
) -> np.ndarray:
    frames = _frames(batch, shape, seed)  # (B, C, H, W) uint8
    if backend == "torch":
        model = _cpu_model(model)
        was_training = model.training
        model.eval()
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            with torch.inference_mode():

                def call() -> object:
                    x = torch.from_numpy(frames).to(torch.float32).div_(255.0)  # (B, C, H, W) in [0, 1]
                    return model(x)

                return _time_calls(call, repeats, warmup)
        finally:
            torch.set_num_threads(previous_threads)
            model.train(was_training)

    with tempfile.TemporaryDirectory(prefix="clearlane-latency-") as folder:
        if onnx_path is None:
            onnx_path = Path(folder) / "model.onnx"
            export_onnx(_cpu_model(model), str(onnx_path))
        session = ort_session(onnx_path, threads)
        scale = np.float32(1.0 / 255.0)

        def call() -> object:
            x = frames.astype(np.float32) * scale  # (B, C, H, W) in [0, 1]
            return session.run(None, {ONNX_INPUT: x})

        return _time_calls(call, repeats, warmup)


def measure_latency(
    model: PerceptionNet,
    input_shape: tuple[int, int, int] | None = None,
    threads: int = 1,
    backend: str = "torch",
    batch: int = 1,
    repeats: int = 300,
    warmup: int = 30,
    onnx_path: str | Path | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Latency of one call (uint8 frames -> float -> model), on the CPU.

    input_shape: (C, H, W), default the model's. onnx_path: an existing export of `model` to reuse
    (backend "onnx"); by default the model is exported to a temporary folder.
    Returns {"p50_ms", "p95_ms", "mean_ms", "min_ms", "backend", "threads", "batch", "repeats"}.
    """
    _check(backend, threads, batch, repeats, warmup)
    shape = _input_shape(model, input_shape)
    seconds = _measure(model, shape, threads, backend, batch, repeats, warmup, onnx_path, seed)
    milliseconds = seconds * 1e3
    return {
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p95_ms": float(np.percentile(milliseconds, 95)),
        "mean_ms": float(milliseconds.mean()),
        "min_ms": float(milliseconds.min()),
        "backend": backend,
        "threads": int(threads),
        "batch": int(batch),
        "repeats": int(repeats),
    }


def measure_throughput(
    model: PerceptionNet,
    input_shape: tuple[int, int, int] | None = None,
    batch: int = 256,
    backend: str = "onnx",
    threads: int = 2,
    repeats: int = 5,
    warmup: int = 1,
    onnx_path: str | Path | None = None,
    seed: int = 0,
) -> float:
    """Frames per second at batch `batch` (preprocessing included): batch / median seconds per call."""
    _check(backend, threads, batch, repeats, warmup)
    shape = _input_shape(model, input_shape)
    seconds = _measure(model, shape, threads, backend, batch, repeats, warmup, onnx_path, seed)
    return float(batch / np.median(seconds))


def training_step_seconds(
    arch: str,
    input_shape: tuple[int, int, int],
    modes: tuple[str, ...] = ("clean", "fgsm_rs", "pgd"),
    batch: int = 64,
    steps: int = 8,
    warmup: int = 2,
    threads: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Median wall time [s] of one optimizer step (forward, attack, backward, update) per mode.

    Epoch times of separate runs depend on what else the machine was doing; this measures the
    modes back to back on the same batch, so their ratio is the honest cost of adversarial training.
    """
    from perception.models import build_model
    from perception.training import TrainConfig, training_loss

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, *input_shape, generator=generator)  # (B, C, H, W) in [0, 1]
        target = torch.rand(batch, LABEL_DIM, generator=generator)  # (B, D)
        mask = torch.ones_like(target)
        result = {}
        for mode in modes:
            torch.manual_seed(seed)
            model = build_model(arch, *input_shape)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            config = TrainConfig(arch=arch, mode=mode, logdir=None, progress=False)

            def step() -> None:
                loss = training_loss(model, x, target, mask, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            result[mode] = float(np.median(_time_calls(step, repeats=steps, warmup=warmup)))
        return result
    finally:
        torch.set_num_threads(previous)
