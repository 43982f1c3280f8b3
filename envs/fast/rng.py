"""Counter-based random numbers: uniform draws as a pure function of (seed, stream, index).

Resetting some of B envs must not depend on which other envs reset at the same time, nor on
the device. A stateless integer hash gives every env's episode its own numbers in one batched
call, identical on CPU and CUDA. All arithmetic stays below 2**63 in int64: values are
masked to 32 bits and the multiplier is below 2**31.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # a well-mixing 32-bit hash multiplier (< 2**31)
_GOLDEN = 0x9E3779B1 & 0x7FFFFFFF  # spreads consecutive counters


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 tensor in [0, 2**32) -> same range)."""
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & _MASK32
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & _MASK32
    return x ^ (x >> 16)


def _hash32_(x: torch.Tensor) -> torch.Tensor:
    """`_hash32` in place, for large tensors (the same numbers, fewer temporaries)."""
    x ^= x >> 16
    x.mul_(_MULTIPLIER).bitwise_and_(_MASK32)
    x ^= x >> 16
    x.mul_(_MULTIPLIER).bitwise_and_(_MASK32)
    x ^= x >> 16
    return x


def _key(seeds: torch.Tensor, stream: int) -> torch.Tensor:
    """(E,) int64 seeds -> (E,) int64 32-bit keys of their `stream`."""
    seeds = seeds.to(torch.int64)
    key = _hash32((seeds & _MASK32) ^ _hash32((seeds >> 32) & _MASK32))
    return _hash32(key ^ ((stream * _GOLDEN) & _MASK32))


def _bits(seeds: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """(E,) int64 seeds -> (E, count) int64 hashes in [0, 2**32), one per counter 0..count-1."""
    counters = torch.arange(count, device=seeds.device, dtype=torch.int64) * _GOLDEN & _MASK32  # (count,)
    return _hash32_(_key(seeds, stream)[:, None] ^ counters[None, :])


def uniform(seeds: torch.Tensor, stream: int, count: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(E,) int64 seeds -> (E, count) uniforms in [0, 1) on the seeds' device.

    `stream` separates independent uses of the same seed (spawn, behaviour, ...).
    """
    return (_bits(seeds, stream, count) >> 8).to(dtype) / float(1 << 24)


def normal(seeds: torch.Tensor, stream: int, count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(E,) int64 seeds -> (E, count) standard normal draws on the seeds' device (Box–Muller).

    Built for bulk draws (a camera frame's pixel noise): one 32-bit hash per pair of normals,
    its halves two 16-bit uniforms, which halves the hashing that dominates the cost. The
    radius uniform lies in (0, 1], so no draw is infinite and |z| <= sqrt(2 ln 2**16) ~ 4.7:
    the tails beyond (a 2.5e-6 chance) are cut, far below what 8-bit pixels resolve.
    Transcendentals differ by float ulps between devices, so draws agree to ~1e-6, not bitwise.
    """
    pairs = (count + 1) // 2
    bits = _bits(seeds, stream, pairs)  # (E, pairs)
    radius = (bits >> 16).to(dtype).add_(1.0).mul_(1.0 / 65536).log_().mul_(-2.0).sqrt_()  # u1 in (0, 1]
    angle = bits.bitwise_and_(0xFFFF).to(dtype).mul_(2.0 * math.pi / 65536)  # 2 pi u2, u2 in [0, 1)
    cosines, sines = radius * torch.cos(angle), radius * torch.sin(angle)  # each (E, pairs)
    return torch.cat([cosines, sines], dim=1)[:, :count]


def integers(seeds: torch.Tensor, stream: int, index: torch.Tensor, high: int) -> torch.Tensor:
    """(E,) int64 seeds and draw indices -> (E,) int64 in [0, high), high < 2**48."""
    seeds, index = seeds.to(torch.int64), index.to(torch.int64)
    key = _hash32((seeds & _MASK32) ^ _hash32((seeds >> 32) & _MASK32))
    key = _hash32(key ^ ((stream * _GOLDEN) & _MASK32))
    upper = _hash32(key ^ ((2 * index * _GOLDEN) & _MASK32)) >> 8  # 24 bits
    lower = _hash32(key ^ (((2 * index + 1) * _GOLDEN) & _MASK32)) >> 8
    return ((upper << 24) | lower) % high


def uniform_at(seeds: torch.Tensor, stream: int, first: torch.Tensor, count: int,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(E,) int64 seeds and (E,) int64 first counters -> (E, count) uniforms in [0, 1): the numbers
    `uniform(seeds, stream, first + count)[:, first:]` would give, without drawing those before
    (e.g. the draws of an episode's step k, first = k * count)."""
    counters = (first.to(torch.int64)[:, None] + torch.arange(count, device=seeds.device)) * _GOLDEN & _MASK32
    return (_hash32_(_key(seeds, stream)[:, None] ^ counters) >> 8).to(dtype) / float(1 << 24)
