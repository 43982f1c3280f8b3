"""The batched "fast" backend: highway-env's rules stepped as PyTorch tensors.

`FastHighway` simulates B straight highways at once, `FastRoad` B copies of a road-network
scenario (merge, roundabout, two-way, u-turn, exit, intersection) (CPU or CUDA; `simulators.make_simulator` picks the one for a scenario); `FastVecEnv`
exposes either to stable-baselines3; `FastDrivingEnv` is one env with DrivingEnv's API
(evaluation, previews, perception data). See docs/ARCHITECTURE.md for how it maps onto highway-env.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from scenarios import Scenario


def supported_scenarios(unsupported_reasons: Callable[[Scenario], list[str]] | None = None) -> list[str]:
    """Shipped scenarios the fast backend reproduces (or those one simulator's `unsupported_reasons`
    accepts)."""
    from scenarios import available_scenarios, load_scenario

    if unsupported_reasons is None:
        from envs.fast.simulators import unsupported_reasons
    return [name for name in available_scenarios() if not unsupported_reasons(load_scenario(name))]
