"""One Gymnasium id per shipped scenario: `clearlane/<name>-v0`.

Registration happens when the `envs` package is imported. Subprocess workers (SB3's
`SubprocVecEnv` uses forkserver/spawn) import nothing of the parent's, so build them with
`make_env_fn`, a picklable factory whose module import registers the ids again, or use
Gymnasium's `"envs:clearlane/highway-v0"` form. Which simulator builds an env is the business of
`envs.backends`; `make_env` and `make_env_fn` here take a backend's name and hand over to it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import gymnasium as gym

from envs.backends import BACKEND_NAMES, HIGHWAY_ENV, Backend, CameraEnv, get_backend
from scenarios import available_scenarios

NAMESPACE = "clearlane"
ENTRY_POINT = "envs.driving_env:DrivingEnv"
BACKENDS = BACKEND_NAMES  # the backends' names (envs.backends.BACKEND_NAMES)


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


def make_env(scenario: str | Path = "highway", backend: str | Backend = HIGHWAY_ENV.name, **kwargs) -> CameraEnv:
    """Build the env for a scenario name or a path to a user's YAML file, on a backend
    (envs.backends: "highway-env" simulates every scenario; "fast" straight highways only, a clear
    error otherwise)."""
    return get_backend(backend).make_env(scenario, **kwargs)


def make_env_fn(scenario: str | Path = "highway", backend: str | Backend = HIGHWAY_ENV.name,
                **kwargs) -> Callable[[], CameraEnv]:
    """A picklable zero-argument factory, for vectorised and subprocess envs."""
    return partial(make_env, scenario, get_backend(backend).name, **kwargs)
