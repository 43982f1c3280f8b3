"""The batched "fast" backend: highway-env's straight-highway rules stepped as PyTorch tensors.

`FastHighway` simulates B envs at once (CPU or CUDA); `FastVecEnv` exposes it to
stable-baselines3; `FastDrivingEnv` is one env with DrivingEnv's API (evaluation, previews,
perception data). See docs/ARCHITECTURE.md for how it maps onto highway-env.
"""

from __future__ import annotations


def supported_scenarios() -> list[str]:
    """Shipped scenarios the fast backend reproduces."""
    from envs.fast.simulator import unsupported_reasons
    from scenarios import available_scenarios, load_scenario

    return [name for name in available_scenarios() if not unsupported_reasons(load_scenario(name))]
