"""The small tensor helpers the road simulator uses for speed equal the torch ops they replace."""

from __future__ import annotations

import math

import torch

from envs.fast.lanes import first_argmin
from envs.fast.road_traffic import _inf_unless, _take


def test_first_argmin_is_argmin_with_ties_to_the_first():
    g = torch.Generator().manual_seed(0)
    for count in (1, 2, 9, 127, 130):  # 130: argmin's own path
        values = torch.randint(0, 4, (count, 50, 3), generator=g).double()  # many ties
        assert torch.equal(first_argmin(values), values.argmin(dim=0))
    assert torch.equal(first_argmin(torch.tensor([3.0, 1.0, 1.0])), torch.tensor(1))


def test_inf_unless_is_where_inf():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        values = torch.randn(7, 40, 5, generator=g).to(dtype)
        mask = torch.rand(7, 40, 5, generator=g) < 0.5
        assert torch.equal(values + _inf_unless(mask, dtype), torch.where(mask, values, math.inf))
        assert torch.equal(values - _inf_unless(mask, dtype), torch.where(mask, values, -math.inf))


def test_take_is_torch_take():
    g = torch.Generator().manual_seed(2)
    values = torch.randn(4, 9, generator=g).T  # not contiguous
    index = torch.randint(0, 36, (3, 5, 2), generator=g)
    assert torch.equal(_take(values, index), torch.take(values, index))
