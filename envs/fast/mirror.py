"""Copy a highway-env highway into the fast backend's state: the basis of the fidelity tests.

Given a HighwayEnvFast after reset (or mid-episode), `state_from_highway_env` reads every
vehicle's dynamic state and behaviour parameters (IDM exponent, MOBIL timer, targets, last
commands) so both simulators can be stepped side by side from the same instant.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.fast.state import TrafficState


def state_from_highway_env(env, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> TrafficState:
    """A one-env TrafficState of a highway-env env (`env.unwrapped` is a HighwayEnv)."""
    sim = env.unwrapped
    ego = sim.vehicle
    vehicles = [ego] + [vehicle for vehicle in sim.road.vehicles if vehicle is not ego]

    def column(values, kind=dtype) -> torch.Tensor:
        return torch.tensor(np.array(values)[None, :], dtype=kind, device=device)

    def pending_impact(vehicle) -> bool:
        return getattr(vehicle, "impact", None) is not None

    return TrafficState(
        x=column([v.position[0] for v in vehicles]),
        y=column([v.position[1] for v in vehicles]),
        heading=column([v.heading for v in vehicles]),
        speed=column([v.speed for v in vehicles]),
        target_speed=column([getattr(v, "target_speed", 0.0) for v in vehicles]),
        delta=column([getattr(v, "DELTA", 4.0) for v in vehicles]),
        timer=column([getattr(v, "timer", 0.0) if v is not ego else 0.0 for v in vehicles]),
        lane=column([v.lane_index[2] for v in vehicles], torch.long),
        target_lane=column([getattr(v, "target_lane_index", v.lane_index)[2] for v in vehicles], torch.long),
        steering=column([float(v.action["steering"]) for v in vehicles]),
        acceleration=column([float(v.action["acceleration"]) for v in vehicles]),
        crashed=column([bool(v.crashed) for v in vehicles], torch.bool),
        impact_pending=column([pending_impact(v) for v in vehicles], torch.bool),
        present=torch.ones((1, len(vehicles)), dtype=torch.bool, device=device),
        ego_speed_index=torch.tensor([int(ego.speed_index)], dtype=torch.long, device=device),
    )
