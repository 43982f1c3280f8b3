"""`--n-envs` is checked against the free memory before any work starts: the parts, the pools, the message."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from agents.config import RunConfig, load_agent_config
from agents.memory import (
    MEASURED_PER_COUNTED,
    ROLLOUT_FLOATS,
    SIMULATOR_BYTES_PER_ENV,
    WORKER_BYTES,
    check_n_envs_fit,
    features_per_sample,
    memory_need,
)
from perception.extractor import DEFAULT_STUDENT

FRAME = (9, 96, 48)
MAP = 32 * 12 * 6  # the shipped student's last feature map (C', h, w)


def run_config(scenario: str = "highway", backend: str = "fast", n_envs: int = 256, **training) -> RunConfig:
    agent = load_agent_config(scenario, backend=backend)
    return RunConfig(
        scenario=scenario, algo="ppo", seed=0, backend=backend, n_envs=n_envs, device="cpu", observation_shape=FRAME,
        n_actions=5, training=dataclasses.replace(agent.training, **training),
        policy=dataclasses.replace(agent.policy, perception=str(DEFAULT_STUDENT)), ppo=agent.ppo,
    )


def test_features_per_sample_of_the_shipped_student():
    config = run_config()
    assert config.policy.map_channels > 0 and config.policy.include_labels
    assert features_per_sample(config) == 64 + 48 + MAP  # embedding, labels, the flattened map
    no_map = dataclasses.replace(config, policy=dataclasses.replace(config.policy, map_channels=0))
    assert features_per_sample(no_map) == 64 + 48


def test_the_highway_recipe_per_env():
    """DAgger's samples, SB3's host buffer (frames + swapped-in features) and SA-PPO's features."""
    config = run_config()
    features, steps = 64 + 48 + MAP, config.ppo.n_steps
    parts = memory_need(config, features).parts
    assert parts == {
        "simulator": (SIMULATOR_BYTES_PER_ENV, "device"),
        "imitation": (6 * 40 * (features + 5) * 4, "device"),  # highway@fast: 6 DAgger iterations of 40 steps
        "rollout": (steps * (math.prod(FRAME) + 4 * features + 4 * ROLLOUT_FLOATS), "host"),
        "robust": (2 * steps * features * 4, "device"),
    }


def test_tuning_the_student_in_the_imitation_keeps_frames_instead_of_features():
    config = run_config(robust_reg="none", imitation_tunes_perception=True)
    assert memory_need(config, 1000).parts["imitation"] == (6 * 40 * (math.prod(FRAME) + 5 * 4), "device")


def test_device_rollouts_keep_features_on_the_device_and_highway_env_pays_a_process_per_env():
    on_device = memory_need(run_config(device_rollout=True), 100).parts
    assert on_device["rollout"] == (64 * (100 + ROLLOUT_FLOATS) * 4, "device")
    reference = memory_need(run_config(backend="highway-env", imitation_iterations=0), 100)
    parts = reference.parts
    assert parts["worker"] == (WORKER_BYTES, "host") and "simulator" not in parts and "imitation" not in parts
    # the worker's RSS is a measured peak: only the counted buffers are scaled
    rollout, _ = parts["rollout"]
    assert reference.peak_per_env(("host",)) == WORKER_BYTES + math.ceil(MEASURED_PER_COUNTED * rollout)


def test_a_run_that_does_not_fit_says_how_many_envs_do():
    config = run_config(n_envs=1000)
    per_env = memory_need(config, features_per_sample(config)).peak_per_env(("device", "host"))
    free = 300 * per_env + 7
    with pytest.raises(ValueError) as error:
        check_n_envs_fit(config, torch.device("cpu"), available=lambda pool: free)
    message = str(error.value)
    assert message.startswith("--n-envs 1,000 needs about ") and "on cpu" in message and "\n" not in message
    assert message.endswith("at most 300 envs fit") and "imitation 2.22" in message
    check_n_envs_fit(dataclasses.replace(config, n_envs=300), torch.device("cpu"), available=lambda pool: free)
    check_n_envs_fit(config, torch.device("cpu"), available=lambda pool: None)  # unknown: not checked


def test_on_a_gpu_device_parts_and_host_parts_are_checked_apart():
    """torch.device("cuda") is only a name here: `available` answers for both pools."""
    config = run_config(n_envs=1000)
    need = memory_need(config, features_per_sample(config))
    device_bytes, host_bytes = (need.peak_per_env(places) for places in (("device",), ("host",)))
    free = {"cuda": 1000 * device_bytes, "cpu": 10 * host_bytes}
    with pytest.raises(ValueError, match=r"on cpu \(5\.3 MiB per env: rollout 3\.12, buffers x 1\.7\).*at most 10 envs fit"):
        check_n_envs_fit(config, torch.device("cuda"), available=lambda pool: free[pool.type])
    free["cpu"] = 1000 * host_bytes
    check_n_envs_fit(config, torch.device("cuda"), available=lambda pool: free[pool.type])
    free["cuda"] = 999 * device_bytes
    with pytest.raises(ValueError, match=r"on cuda .*simulator 0\.33, imitation 2\.22, robust 1\.18.*at most 999 envs"):
        check_n_envs_fit(config, torch.device("cuda"), available=lambda pool: free[pool.type])


def test_a_resumed_run_reads_its_own_copy_of_the_student(tmp_path):
    """The path in a run's config may be gone (a user's file moved); the run folder's copy is what counts."""
    import shutil

    copy = tmp_path / "perception.safetensors"
    shutil.copy(DEFAULT_STUDENT, copy)
    config = run_config()
    moved = dataclasses.replace(config, policy=dataclasses.replace(config.policy, perception=str(tmp_path / "gone")))
    assert features_per_sample(moved, copy) == features_per_sample(config)
    check_n_envs_fit(moved, torch.device("cpu"), copy, available=lambda pool: 2**50)
