"""The feature-shift diagnostic: zero without a budget, growing with it, stronger than random noise."""

from __future__ import annotations

import pytest
import torch

from perception.extractor import DEFAULT_STUDENT
from perception.feature_shift import _relative, feature_shift, main
from perception.models import build_model


def test_shift_is_zero_without_budget_and_grows_with_it():
    torch.manual_seed(0)
    model = build_model("student", 9, 32, 16)
    frames = torch.rand(16, 9, 32, 16)
    none, small, large = (feature_shift(model, frames, eps, steps=5) for eps in (0.0, 1 / 255, 8 / 255))
    assert (none.embedding, none.feature_map, none.labels) == (0.0, 0.0, 0.0)
    assert 0 < small.embedding < large.embedding and 0 < small.feature_map < large.feature_map
    assert small.labels < large.labels


def test_the_attack_moves_features_more_than_noise_of_the_same_budget():
    torch.manual_seed(1)
    model = build_model("student", 9, 32, 16)
    frames = torch.rand(16, 9, 32, 16) * 0.8 + 0.1  # away from the clamp at 0 and 1
    eps = 4 / 255
    attacked = feature_shift(model, frames, eps, steps=10)
    with torch.no_grad():
        clean, clean_map = model.forward_with_map(frames)
        noisy, noisy_map = model.forward_with_map(frames + eps * torch.sign(torch.rand_like(frames) - 0.5))
    assert attacked.feature_map > 1.5 * float(_relative(noisy_map - clean_map, clean_map).mean())
    assert attacked.embedding > float(_relative(noisy.embedding - clean.embedding, clean.embedding).mean())


@pytest.mark.parametrize("argv, fragment", [
    (["--data", "/nonexistent", "--models", f"a={DEFAULT_STUDENT}"], "no perception dataset"),
    (["--data", "/nonexistent", "--models", "a"], "name=checkpoint pairs"),
    (["--data", "/nonexistent", "--models", f"a={DEFAULT_STUDENT}", "--eps", "3"], "invalid epsilon '3'"),
])
def test_mistakes_give_one_line_and_exit_code_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_.value.code == 2 and len(errors) == 1 and fragment in errors[0]
