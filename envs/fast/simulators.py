"""Which batched simulator reproduces a scenario: `FastHighway` (straight highways) or `FastRoad`
(highway-env's road networks, issue 21), chosen by the scenario's highway-env id.

Everything above `envs/fast/` that needs "the fast backend's simulator for this scenario" (the
VecEnv, the single env, the teacher's planners, the backend's support checks) asks here, so adding
a scenario to a simulator touches only that simulator and this table.

    cls = simulator_class(scenario)              # FastHighway or FastRoad; UnsupportedScenario otherwise
    sim = make_simulator(scenario, 256, device="cpu", render=True)
    unsupported_reasons(scenario)                # [] when one of them reproduces it
    routes_can_be_guessed(scenario)              # its other vehicles' routes are a choice (the teacher may guess them)
"""

from __future__ import annotations

from typing import Union

import torch

from envs.fast.road_sim import FastRoad, road_unsupported_reasons
from envs.fast.road_tasks import ROAD_TASKS, SUPPORTED_ROAD_ENV_IDS
from envs.fast.simulator import SUPPORTED_ENV_IDS, FastHighway, UnsupportedScenario, unsupported_reasons as highway_reasons
from scenarios import Scenario

BatchedSimulator = Union[FastHighway, FastRoad]
"""Both keep the same interface: reset/load/step, state.select, observation(s), clean_frames,
episode_seeds, steps, scenes, make_camera/render_with, available_actions, ego_lane_width."""

SIMULATORS: tuple[tuple[tuple[str, ...], type], ...] = (
    (SUPPORTED_ENV_IDS, FastHighway),
    (SUPPORTED_ROAD_ENV_IDS, FastRoad),
)
SUPPORTED_IDS: tuple[str, ...] = tuple(env_id for ids, _ in SIMULATORS for env_id in ids)


def unsupported_reasons(scenario: Scenario) -> list[str]:
    """Why no batched simulator reproduces this scenario faithfully; empty when one does."""
    env_id = scenario.highway_env.id
    if env_id in SUPPORTED_ENV_IDS:
        return highway_reasons(scenario)
    if env_id in SUPPORTED_ROAD_ENV_IDS:
        return road_unsupported_reasons(scenario)
    return [f"its highway_env.id is {env_id}, which no batched simulator reproduces yet "
            f"(they reproduce {', '.join(SUPPORTED_IDS)})"]


def check_supported(scenario: Scenario) -> None:
    """Raise UnsupportedScenario, naming the supported scenarios, unless one simulator reproduces it."""
    from envs.fast import supported_scenarios

    reasons = unsupported_reasons(scenario)
    if reasons:
        name = scenario.source or scenario.name or "this scenario"
        raise UnsupportedScenario(
            f"the fast backend does not support {name}: {'; '.join(reasons)}. "
            f"Supported scenarios: {', '.join(supported_scenarios())}"
        )


def simulator_class(scenario: Scenario) -> type:
    """FastHighway or FastRoad for this scenario; UnsupportedScenario (a ValueError) when neither fits."""
    check_supported(scenario)
    return next(cls for ids, cls in SIMULATORS if scenario.highway_env.id in ids)


def make_simulator(scenario: Scenario, batch_size: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, render: bool = True, corruptions: bool = True) -> BatchedSimulator:
    """B envs of `scenario` on the simulator that reproduces it."""
    return simulator_class(scenario)(scenario, batch_size, device=device, dtype=dtype, render=render,
                                     corruptions=corruptions)


def routes_can_be_guessed(scenario: Scenario) -> bool:
    """Whether the scenario's other vehicles choose among routes a camera cannot see, so that its
    simulator can guess them (FastRoad.guess_routes: intersection)."""
    task = ROAD_TASKS.get(scenario.highway_env.id)
    return task is not None and task.guess_routes is not None


def is_batched_simulator(value: object) -> bool:
    return isinstance(value, (FastHighway, FastRoad))
