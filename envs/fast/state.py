"""The batched traffic state: B independent highways of N vehicles each, as (B, N) tensors.

Column 0 is always the ego (an MDPVehicle in highway-env), columns 1.. are IDM/MOBIL traffic.
Lanes are highway-env's straight lanes: lane i is centred at y = i * LANE_WIDTH_M, x runs along
the road and y to its right.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class TrafficState:
    x: torch.Tensor  # (B, N) [m] along the road
    y: torch.Tensor  # (B, N) [m] lateral, to the right
    heading: torch.Tensor  # (B, N) [rad] from +x towards +y
    speed: torch.Tensor  # (B, N) [m/s]
    target_speed: torch.Tensor  # (B, N) [m/s] IDM's desired speed; the ego's tracked speed
    delta: torch.Tensor  # (B, N) IDM exponent, randomised per vehicle
    timer: torch.Tensor  # (B, N) [s] MOBIL's decision timer
    lane: torch.Tensor  # (B, N) int64, the closest lane
    target_lane: torch.Tensor  # (B, N) int64
    steering: torch.Tensor  # (B, N) [rad] last steering command
    acceleration: torch.Tensor  # (B, N) [m/s^2] last acceleration command
    crashed: torch.Tensor  # (B, N) bool
    impact_pending: torch.Tensor  # (B, N) bool: predicted to collide, crashes at the next sub-step
    present: torch.Tensor  # (B, N) bool: vehicles that exist
    ego_speed_index: torch.Tensor  # (B,) int64 index into the ego's target speeds

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def vehicles(self) -> int:
        return self.x.shape[1]

    def assign(self, rows: torch.Tensor, other: "TrafficState") -> None:
        """Overwrite the envs `rows` ((E,) int64) with `other` (a state of E envs), in place."""
        for field in fields(self):
            getattr(self, field.name)[rows] = getattr(other, field.name)

    def padded(self, vehicles: int) -> "TrafficState":
        """The same envs with absent vehicles appended up to `vehicles` columns."""
        missing = vehicles - self.vehicles
        if missing < 0:
            raise ValueError(f"state has {self.vehicles} vehicles, more than the {vehicles} the simulator holds")
        if missing == 0:
            return self
        values = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value.dim() == 2:
                pad = torch.zeros((value.shape[0], missing), dtype=value.dtype, device=value.device)
                value = torch.cat([value, pad], dim=1)  # present pads with False
            values[field.name] = value
        return TrafficState(**values)

    def select(self, rows: torch.Tensor) -> "TrafficState":
        """A copy of the envs `rows`."""
        return TrafficState(**{field.name: getattr(self, field.name)[rows] for field in fields(self)})

    def clone(self) -> "TrafficState":
        return TrafficState(**{field.name: getattr(self, field.name).clone() for field in fields(self)})
