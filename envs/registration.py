"""One Gymnasium id per shipped scenario: `clearlane/<name>-v0`.

Registration happens when the `envs` package is imported. Subprocess workers (SB3's
`SubprocVecEnv` uses forkserver/spawn) import nothing of the parent's, so build them with
`make_env_fn`, a picklable factory whose module import registers the ids again, or use
Gymnasium's `"envs:clearlane/highway-v0"` form.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import gymnasium as gym

from scenarios import available_scenarios

NAMESPACE = "clearlane"
ENTRY_POINT = "envs.driving_env:DrivingEnv"


def env_id(scenario: str) -> str:
    """The Gymnasium id of a shipped scenario."""
    return f"{NAMESPACE}/{scenario}-v0"


def register_scenarios() -> list[str]:
    """Register every shipped scenario (idempotent); returns their ids."""
    ids = []
    for name in available_scenarios():
        ident = env_id(name)
        if ident not in gym.registry:
            gym.register(id=ident, entry_point=ENTRY_POINT, kwargs={"scenario": name})
        ids.append(ident)
    return ids


BACKENDS = ("highway-env", "fast")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return backend


def make_env(scenario: str | Path = "highway", backend: str = "highway-env", **kwargs) -> gym.Env:
    """Build the env for a scenario name or a path to a user's YAML file.

    backend "highway-env" simulates with highway-env itself (every scenario); "fast" with the
    batched PyTorch simulator (envs.fast; straight highways only, a clear error otherwise).
    """
    if check_backend(backend) == "fast":
        from envs.driving_env import with_camera_view
        from envs.fast.gym_env import FastDrivingEnv
        from scenarios import load_scenario

        camera = kwargs.pop("camera", None)
        loaded = with_camera_view(load_scenario(scenario), camera)
        return FastDrivingEnv(loaded, **kwargs)
    from envs.driving_env import DrivingEnv

    return DrivingEnv(scenario=scenario, **kwargs)


def make_env_fn(scenario: str | Path = "highway", backend: str = "highway-env", **kwargs) -> Callable[[], gym.Env]:
    """A picklable zero-argument factory, for vectorised and subprocess envs."""
    return partial(make_env, scenario, backend, **kwargs)
