import pytest
import torch

from envs.system import resolve_device, usable_cores


def test_resolve_device_auto_cpu_and_cuda_without_cuda() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="invalid device 'cuda:x'"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' was requested but CUDA is not available"):
            resolve_device("cuda")


def test_usable_cores_is_the_affinity_mask() -> None:
    import os

    assert usable_cores() == len(os.sched_getaffinity(0)) >= 1
