"""Batched simulator states as `envs.scene.Scene`s: the per-instant vehicle arrays that ground
truth, counterfactual renders and replays read, for a few envs of a batch."""

from __future__ import annotations

import numpy as np
import torch

from envs.scene import Scene


def scenes_of_columns(rows: list[int], present: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      heading: torch.Tensor, speed: torch.Tensor, length: torch.Tensor,
                      width: torch.Tensor) -> list[Scene]:
    """Envs `rows` of (B, N) columns as Scenes (column 0, the ego, first; absent columns left out).
    Each column is copied to NumPy once for all rows. [m], [rad], [m/s]."""
    index = torch.as_tensor(rows, dtype=torch.long, device=x.device)
    here_all = present[index].cpu().numpy()  # (E, N)
    x, y, heading, speed, length, width = (
        values[index].detach().cpu().double().numpy() for values in (x, y, heading, speed, length, width)
    )  # (E, N) each
    scenes = []
    for k in range(len(rows)):
        here = here_all[k]
        scenes.append(Scene(positions=np.stack([x[k][here], y[k][here]], axis=1), headings=heading[k][here],
                            speeds=speed[k][here], lengths=length[k][here], widths=width[k][here]))
    return scenes
