"""Counter-based random numbers: uniform draws as a pure function of (seed, stream, index).

Resetting some of B envs must not depend on which other envs reset at the same time, nor on
the device. A stateless integer hash gives every env's episode its own numbers in one batched
call, identical on CPU and CUDA. All arithmetic stays below 2**63 in int64: values are
masked to 32 bits and the multiplier is below 2**31.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # a well-mixing 32-bit hash multiplier (< 2**31)
_GOLDEN = 0x9E3779B1 & 0x7FFFFFFF  # spreads consecutive counters


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 tensor in [0, 2**32) -> same range)."""
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & _MASK32
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & _MASK32
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, stream: int, count: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(E,) int64 seeds -> (E, count) uniforms in [0, 1) on the seeds' device.

    `stream` separates independent uses of the same seed (spawn, behaviour, ...).
    """
    seeds = seeds.to(torch.int64)
    key = _hash32((seeds & _MASK32) ^ _hash32((seeds >> 32) & _MASK32))  # (E,)
    key = _hash32(key ^ ((stream * _GOLDEN) & _MASK32))
    counters = torch.arange(count, device=seeds.device, dtype=torch.int64) * _GOLDEN & _MASK32  # (count,)
    bits = _hash32(key[:, None] ^ counters[None, :])  # (E, count)
    return (bits >> 8).to(dtype) / float(1 << 24)


def integers(seeds: torch.Tensor, stream: int, index: torch.Tensor, high: int) -> torch.Tensor:
    """(E,) int64 seeds and draw indices -> (E,) int64 in [0, high), high < 2**48."""
    seeds, index = seeds.to(torch.int64), index.to(torch.int64)
    key = _hash32((seeds & _MASK32) ^ _hash32((seeds >> 32) & _MASK32))
    key = _hash32(key ^ ((stream * _GOLDEN) & _MASK32))
    upper = _hash32(key ^ ((2 * index * _GOLDEN) & _MASK32)) >> 8  # 24 bits
    lower = _hash32(key ^ (((2 * index + 1) * _GOLDEN) & _MASK32)) >> 8
    return ((upper << 24) | lower) % high
