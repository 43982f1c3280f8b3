"""Episode seeds for B env slots, with DrivingEnv's semantics.

`reset(seed=s)` plays episode s and restarts that slot's stream at s; later episodes of the slot
draw their seeds from the stream, below the evaluation seeds (TRAINING_SEED_LIMIT). So a run
seeded once is reproducible, and no training episode ever repeats an evaluation seed.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.fast import rng
from scenarios.schema import TRAINING_SEED_LIMIT

SEED_STREAM = 2  # rng stream of episode seeds


class EpisodeSeeds:
    def __init__(self, slots: int, device: torch.device) -> None:
        entropy = np.random.SeedSequence().generate_state(slots, dtype=np.uint32).astype(np.int64)
        self.streams = torch.as_tensor(entropy, device=device)  # (slots,) unseeded until seed()
        self.drawn = torch.zeros(slots, dtype=torch.long, device=device)

    def restart(self, rows: torch.Tensor, seeds: torch.Tensor) -> None:
        """Restart the streams of `rows` at `seeds` ((E,) int64)."""
        self.streams[rows] = seeds
        self.drawn[rows] = 0

    def upcoming(self, episodes: int) -> torch.Tensor:
        """The seeds of the next `episodes` episodes of every slot, without drawing them:
        (slots * episodes,) int64, slot by slot."""
        ahead = torch.arange(episodes, device=self.drawn.device)
        index = (self.drawn[:, None] + ahead).reshape(-1)
        streams = self.streams[:, None].expand(-1, episodes).reshape(-1)
        return rng.integers(streams, SEED_STREAM, index, TRAINING_SEED_LIMIT)

    def next(self, rows: torch.Tensor) -> torch.Tensor:
        """The next episode seed of each slot in `rows`, (E,) int64."""
        seeds = rng.integers(self.streams[rows], SEED_STREAM, self.drawn[rows], TRAINING_SEED_LIMIT)
        self.drawn[rows] += 1
        return seeds
