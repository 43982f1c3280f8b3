"""The simulators a scenario can run on, and everything that differs between them, in one place.

    backend = get_backend("fast")               # or HIGHWAY_ENV, FAST; BACKEND_NAMES for argparse
    backend.unsupported_reason(scenario)         # None, or why it cannot reproduce the scenario
    env = backend.make_env("highway")            # one CameraEnv (DrivingEnv / FastDrivingEnv)
    vec_env = backend.make_vec_env("highway", backend.default_n_envs(), device="cpu")  # SB3 VecEnv

- `HIGHWAY_ENV` ("highway-env"): highway-env itself simulates; every scenario; one env per worker
  process in training (`SubprocVecEnv`). It is the *reference*: quality numbers are judged on it.
- `FAST` ("fast"): the batched PyTorch simulator of `envs/fast/` (straight highways, merge, roundabout,
  two-way, u-turn, exit and intersection, a clear error otherwise); B envs per call in one process; its exact state is open to a privileged
  teacher (agents/teacher.py).

Code elsewhere asks a backend about a capability (`reference`, `batched`, `uses_worker_processes`,
`has_privileged_state`), never compares names: adding a backend, or a scenario to one, touches
this module (and the simulator itself).
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from envs.scene import Scene
from envs.system import usable_cores
from scenarios import Scenario, load_scenario

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

    from envs.fast.simulators import BatchedSimulator


@runtime_checkable
class CameraEnv(Protocol):
    """What agents, perception and previews may read from a clearlane env (DrivingEnv or FastDrivingEnv),
    beside Gymnasium's `reset`/`step`/`close`, `observation_space` ((3 * stack, H, W) uint8) and
    `action_space` (highway-env's 5 meta-actions). `info` carries `safety`, `ground_truth` (the
    privileged labels perception learns) and `episode_seed` every step."""

    scenario: Scenario  # the loaded scenario, camera view applied
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Discrete
    episode_seed: int | None  # the episode being played (None before the first reset)
    metadata: dict[str, Any]  # "render_fps": policy steps per second

    @property
    def clean_frame(self) -> np.ndarray:
        """(H, W, 3) uint8: the newest camera frame before sensor corruptions."""

    def top_down(self) -> np.ndarray:
        """(h, w, 3) uint8: a top-down view of the traffic around the ego, for previews and replays."""

    def scene(self) -> Scene:
        """The vehicles of the newest frame (envs.scene.Scene, row 0 the ego)."""

    def vehicle_ids(self) -> np.ndarray:
        """(N,) int64: an id per row of `scene()` that a vehicle keeps through the episode; 0 = the ego."""

    def render_scene(self, scene: Scene) -> np.ndarray:
        """(H, W, 3) uint8: the camera's frame of another scene at this instant (counterfactuals).
        Safe to call from another thread while the env steps (watch renders in a worker)."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]: ...

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]: ...

    def close(self) -> None: ...


@runtime_checkable
class PrivilegedEnv(Protocol):
    """An env (single or vectorised) whose exact simulator state a privileged teacher may read:
    the fast backend's `FastHighway` or `FastRoad` (B envs, row i = env i). Backends with
    `has_privileged_state`."""

    sim: BatchedSimulator


def privileged_simulator(env: Any) -> BatchedSimulator:
    """The batched simulator under `env` (gym and SB3 wrappers are looked through), for the teacher;
    a clear error for an env of a backend without privileged state."""
    from envs.fast.simulators import is_batched_simulator

    inner = getattr(env, "unwrapped", env)
    simulator = getattr(inner, "sim", None)
    if not is_batched_simulator(simulator):
        names = ", ".join(backend.name for backend in BACKENDS if backend.has_privileged_state)
        raise ValueError(f"{type(inner).__name__} has no privileged simulator state for the teacher; "
                         f"envs of these backends have: {names}")
    return simulator


@dataclass(frozen=True)
class Backend(ABC):
    """One simulator behind clearlane's camera envs."""

    name: str  # what --backend and config.yaml call it
    description: str
    reference: bool  # quality numbers are judged on it (periodic eval/* always runs on the reference)
    batched: bool  # one process steps many envs per call (evaluation plays its episodes side by side)
    uses_worker_processes: bool  # training runs one env per worker process (PyTorch leaves them cores)
    has_privileged_state: bool  # a teacher can plan on its exact state (imitation warm start, bench teacher)
    top_down_caption: str  # what `top_down()` shows, for preview captions

    # -- scenarios ---------------------------------------------------------------------------
    def unsupported_reason(self, scenario: Scenario) -> str | None:
        """None when this backend reproduces the scenario faithfully, else why not (one line)."""
        return None

    def supports(self, scenario: Scenario) -> bool:
        return self.unsupported_reason(scenario) is None

    def check_supported(self, scenario: Scenario) -> None:
        """Raise a ValueError naming what it supports, unless it supports `scenario`."""

    # -- envs --------------------------------------------------------------------------------
    @abstractmethod
    def env_class(self) -> type:
        """The class of its single envs (a CameraEnv)."""

    @abstractmethod
    def make_env(self, scenario: str | Path | Scenario = "highway", camera: str | None = None,
                 **kwargs: Any) -> CameraEnv:
        """One env for a scenario name, a path to a user's YAML file, or a loaded Scenario; `camera`
        switches its view ("bev"/"front"); `kwargs` go to the env class (render_mode, corruptions, ...)."""

    def make_env_fn(self, scenario: str | Path = "highway", **kwargs: Any) -> Callable[[], CameraEnv]:
        """A picklable zero-argument factory, for vectorised and subprocess envs."""
        return partial(self.make_env, scenario, **kwargs)

    @abstractmethod
    def make_vec_env(self, scenario: str | Path, n_envs: int, device: str = "cpu") -> VecEnv:
        """n_envs training envs under SB3's VecMonitor (rollout/ep_rew_mean, ep_len_mean); seeds are
        set by the model (`seed`)."""

    @abstractmethod
    def default_n_envs(self) -> int:
        """The number of training envs when --n-envs is not given."""

    def top_down(self, env: CameraEnv) -> np.ndarray:
        """(h, w, 3) uint8: the env's top-down view (`top_down_caption` says what it shows)."""
        return env.top_down()

    def __str__(self) -> str:
        return self.name


def _load(scenario: str | Path | Scenario, camera: str | None) -> Scenario:
    from envs.driving_env import with_camera_view

    loaded = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    return with_camera_view(loaded, camera)


def _worker_env(scenario: str | Path) -> CameraEnv:
    """Builds the env inside a SubprocVecEnv worker, which ignores Ctrl-C: the parent handles it
    (saves a checkpoint) and then closes the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return HIGHWAY_ENV.make_env(scenario)


@dataclass(frozen=True)
class HighwayEnvBackend(Backend):
    """highway-env simulates every scenario; clearlane's camera renders its state (envs.driving_env)."""

    def env_class(self) -> type:
        from envs.driving_env import DrivingEnv

        return DrivingEnv

    def make_env(self, scenario: str | Path | Scenario = "highway", camera: str | None = None,
                 **kwargs: Any) -> CameraEnv:
        from envs.driving_env import DrivingEnv

        return DrivingEnv(scenario=scenario, camera=camera, **kwargs)

    def make_vec_env(self, scenario: str | Path, n_envs: int, device: str = "cpu") -> VecEnv:
        """SubprocVecEnv workers (forkserver) when n_envs > 1, else one in-process env; `device` is unused."""
        from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

        if n_envs > 1:
            env = SubprocVecEnv([partial(_worker_env, scenario) for _ in range(n_envs)])
        else:
            env = DummyVecEnv([self.make_env_fn(scenario)])
        return VecMonitor(env)

    def default_n_envs(self) -> int:
        """The number of cores this process may use: one worker each."""
        return usable_cores()


FAST_N_ENVS = 256
"""Default envs of the fast backend: one batched call steps them all, so more envs cost little more
than one (profiled in PPO training: ~24 ms per step of 16 envs, ~44 ms of 256) and feed PPO larger,
less correlated batches."""


@dataclass(frozen=True)
class FastBackend(Backend):
    """The batched PyTorch simulator (envs/fast/): highway-fast-v0's, merge-v1's, roundabout-v1's, two-way-v0's and u-turn-v1's rules
    for B envs per call."""

    def unsupported_reason(self, scenario: Scenario) -> str | None:
        from envs.fast.simulators import unsupported_reasons

        reasons = unsupported_reasons(scenario)
        return "; ".join(reasons) if reasons else None

    def check_supported(self, scenario: Scenario) -> None:
        """Raise envs.fast.simulator.UnsupportedScenario (a ValueError) naming the supported scenarios."""
        from envs.fast.simulators import check_supported

        check_supported(scenario)

    def supported_scenarios(self) -> list[str]:
        """The shipped scenarios it reproduces."""
        from envs.fast import supported_scenarios

        return supported_scenarios()

    def env_class(self) -> type:
        from envs.fast.gym_env import FastDrivingEnv

        return FastDrivingEnv

    def make_env(self, scenario: str | Path | Scenario = "highway", camera: str | None = None,
                 **kwargs: Any) -> CameraEnv:
        """A FastDrivingEnv (batch 1); refuses a scenario it cannot reproduce."""
        from envs.fast.gym_env import FastDrivingEnv

        return FastDrivingEnv(_load(scenario, camera), **kwargs)

    def make_vec_env(self, scenario: str | Path, n_envs: int, device: str = "cpu") -> VecEnv:
        """One batched FastVecEnv of n_envs rows on `device`."""
        from stable_baselines3.common.vec_env import VecMonitor

        from envs.fast.vec_env import FastVecEnv

        return VecMonitor(FastVecEnv(load_scenario(scenario), n_envs, device=device))

    def default_n_envs(self) -> int:
        return FAST_N_ENVS


HIGHWAY_ENV = HighwayEnvBackend(
    name="highway-env", description="highway-env itself (every scenario; the reference)", reference=True,
    batched=False, uses_worker_processes=True, has_privileged_state=False, top_down_caption="highway-env top-down",
)
FAST = FastBackend(
    name="fast", description="the batched PyTorch simulator (straight highways, merge, roundabout, two-way, u-turn, exit, intersection; envs/fast)",
    reference=False,
    batched=True, uses_worker_processes=False, has_privileged_state=True,
    top_down_caption="fast backend top-down (our camera, zoomed out)",
)
BACKENDS: tuple[Backend, ...] = (HIGHWAY_ENV, FAST)
BACKEND_NAMES: tuple[str, ...] = tuple(backend.name for backend in BACKENDS)
REFERENCE: Backend = next(backend for backend in BACKENDS if backend.reference)
TRAINING_PREFERENCE: tuple[Backend, ...] = (FAST, HIGHWAY_ENV)
"""A run trains on the first of these that supports its scenario, unless --backend says otherwise: the
fast backend (same rules and camera, ~20x the PPO steps per second on 2 cores) where it reproduces
the scenario, highway-env for every other one."""


def get_backend(backend: str | Backend) -> Backend:
    """The backend of this name (a Backend is returned as it is); a clear error listing the choices."""
    if isinstance(backend, Backend):
        return backend
    for candidate in BACKENDS:
        if candidate.name == backend:
            return candidate
    raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKEND_NAMES)}")


def default_backend_for(scenario: Scenario) -> Backend:
    """The simulator a run on `scenario` trains on unless --backend says otherwise (TRAINING_PREFERENCE).
    `--backend fast` on a scenario it does not support is an error, never a fallback."""
    return next(backend for backend in TRAINING_PREFERENCE if backend.supports(scenario))


def backend_of(env: Any) -> Backend:
    """The backend whose env `env` is (wrappers are looked through)."""
    inner = getattr(env, "unwrapped", env)
    for backend in BACKENDS:
        if isinstance(inner, backend.env_class()):
            return backend
    raise TypeError(f"{type(inner).__name__} is not an env of any backend ({', '.join(BACKEND_NAMES)})")


def evaluation_env(scenario: str | Path, backend: str | Backend) -> CameraEnv:
    """The env of a run's periodic eval/*: the reference simulator, whatever the run trains on, so that
    eval/* of a fast-backend run shows how the agent drives in highway-env (transfer included).
    A scenario the training backend does not support is refused here, before a run folder exists."""
    backend = get_backend(backend)
    env = REFERENCE.make_env(scenario)
    try:
        backend.check_supported(env.scenario)
    except BaseException:
        env.close()
        raise
    return env
