import cv2
import pytest
import torch

from envs.system import resolve_device, set_threads, usable_cores


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


def test_set_threads_sets_torch_and_opencv_alike():
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        set_threads(1)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
