"""The machine a process runs on: which torch device to use, and how many cores it may use.

Both live here, at the bottom of the layering (`envs` is imported by `perception` and `agents`),
so every layer asks the same question the same way.
"""

from __future__ import annotations

import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu"; "cuda" / "cuda:N" (a clear error when unavailable)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if isinstance(name, str) and (name == "cuda" or name.startswith("cuda:")):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"invalid device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was requested but CUDA is not available (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu or --device auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def set_threads(threads: int) -> None:
    """Let PyTorch and OpenCV (the frames' blur and resizing) each use `threads` threads: the same
    cores for both, so jobs run side by side with `--threads 1` do not oversubscribe the machine."""
    import cv2

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def usable_cores() -> int:
    """The number of cores this process may run on (its CPU affinity on Linux, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
