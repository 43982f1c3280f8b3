"""ℓ∞ attacks: they raise the label loss, stay in the ε-ball and in [0, 1]; eps parsing."""

from __future__ import annotations

import pytest
import torch

from perception.attacks import fgsm_rs, parse_eps, pgd
from perception.labels import LABEL_DIM
from perception.models import build_model, label_loss

SHAPE = (3, 16, 16)
EPS = 8 / 255
TOL = 1e-6



@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = build_model("student", *SHAPE)
    x = torch.rand(16, *SHAPE)
    x[:4] = (x[:4] > 0.5).float()  # saturated pixels: the [0, 1] clamp matters
    target = torch.rand(16, LABEL_DIM)
    mask = (torch.rand(16, LABEL_DIM) > 0.3).float()
    return model, x, target, mask


def _attack(name: str, model, x, target, mask):
    if name == "pgd":
        return pgd(model, x, target, mask, eps=EPS, alpha=2 / 255, steps=10)
    return fgsm_rs(model, x, target, mask, eps=EPS)


@pytest.mark.parametrize("name", ["pgd", "fgsm_rs"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attack_raises_loss_within_budget(name: str, mode: str, setup) -> None:
    model, x, target, mask = setup
    model.train(mode == "train")
    x_before = x.clone()
    x_adv = _attack(name, model, x, target, mask)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert torch.equal(x, x_before)  # input untouched
    assert (x_adv - x).abs().max().item() <= EPS + TOL
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    with torch.no_grad():
        clean_loss = label_loss(model(x).labels, target, mask).item()
        adv_loss = label_loss(model(x_adv).labels, target, mask).item()
    assert adv_loss > clean_loss * 1.05
    assert model.training == (mode == "train")  # mode left as it was
    assert all(p.grad is None for p in model.parameters())  # parameters' gradients untouched


def test_pgd_is_stronger_than_random_noise(setup) -> None:
    model, x, target, mask = setup
    noise = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    x_adv = pgd(model, x, target, mask, eps=EPS, alpha=2 / 255, steps=10)
    with torch.no_grad():
        noise_loss = label_loss(model(noise).labels, target, mask).item()
        adv_loss = label_loss(model(x_adv).labels, target, mask).item()
    assert adv_loss > noise_loss * 1.05


def test_pgd_without_random_start_or_steps_returns_input(setup) -> None:
    model, x, target, mask = setup
    assert torch.equal(pgd(model, x, target, mask, eps=EPS, alpha=1 / 255, steps=0, random_start=False), x)
    assert torch.equal(pgd(model, x, target, mask, eps=0.0, alpha=1 / 255, steps=5), x)
    assert torch.equal(fgsm_rs(model, x, target, mask, eps=0.0), x)


def test_pgd_ignores_masked_labels(setup) -> None:
    """With every label masked out the loss is constant: PGD without a random start does nothing."""
    model, x, target, _ = setup
    x_adv = pgd(model, x, target, torch.zeros_like(target), eps=EPS, alpha=2 / 255, steps=3, random_start=False)
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": -0.1, "alpha": 0.01, "steps": 1}, "eps must be in"),
        ({"eps": 2.0, "alpha": 0.01, "steps": 1}, "eps must be in"),
        ({"eps": 0.1, "alpha": -0.01, "steps": 1}, "alpha"),
        ({"eps": 0.1, "alpha": 0.01, "steps": -1}, "steps"),
    ],
)
def test_bad_attack_budgets(kwargs, message, setup) -> None:
    model, x, target, mask = setup
    with pytest.raises(ValueError, match=message):
        pgd(model, x, target, mask, **kwargs)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4/255", 4 / 255),
        ("0.0157", 0.0157),
        (" 8 / 255 ", 8 / 255),
        ("0", 0.0),
        ("1", 1.0),
        ("1e-2", 0.01),
        (0.5, 0.5),
    ],
)
def test_parse_eps_accepts(text, expected) -> None:
    assert parse_eps(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc", "invalid epsilon 'abc': expected a number in \\[0, 1\\]"),
        ("", "invalid epsilon ''"),
        ("4//255", "invalid epsilon"),
        ("4/255/2", "invalid epsilon"),
        ("-1/255", "negative"),
        ("-0.1", "negative"),
        ("2", "larger than 1"),
        ("300/255", "larger than 1"),
        ("1/0", "division by zero"),
        ("nan", "not finite"),
        ("inf", "not finite"),
    ],
)
def test_parse_eps_rejects(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_eps(text)


def test_parse_eps_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="invalid epsilon None"):
        parse_eps(None)  # type: ignore[arg-type]
