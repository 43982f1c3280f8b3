"""ℓ∞ adversarial attacks on perception, in [0, 1] pixel space, against the label loss.

    x_adv = pgd(model, x, target, mask, eps=4/255, alpha=1/255, steps=10)    # Madry et al. 2018
    x_adv = fgsm_rs(model, x, target, mask, eps=4/255)                        # Wong et al. 2020

Both maximise `perception.models.label_loss` (masked MSE), keep every pixel of `x_adv`
within `eps` of `x` and inside [0, 1], and return a detached tensor.

Model mode: attacks never call `model.train()` / `model.eval()`; they run the model as the
caller left it. clearlane's perception models have no BatchNorm and no dropout, so both modes
compute the same function. Gradients are taken with `torch.autograd.grad` with respect to the
input only: the parameters' `.grad` fields are left untouched.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from perception.models import label_loss

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def parse_eps(text: str | float | int) -> float:
    """An ℓ∞ budget in [0, 1] pixel units from "4/255", "0.0157", "0" or a number.

    Raises ValueError for other text, for negative or non-finite values and for values above 1;
    TypeError for something that is neither text nor a number.
    """
    hint = "expected a number in [0, 1] such as 4/255 or 0.0157"
    if isinstance(text, bool):
        raise TypeError(f"invalid epsilon {text!r}: {hint}")
    if isinstance(text, (int, float)):
        value = float(text)
    elif isinstance(text, str):
        parts = text.strip().split("/")
        numbers = [_to_float(part) for part in parts]
        if len(parts) > 2 or any(number is None for number in numbers):
            raise ValueError(f"invalid epsilon {text!r}: {hint}")
        if len(numbers) == 2 and numbers[1] == 0:
            raise ValueError(f"invalid epsilon {text!r}: division by zero; {hint}")
        value = numbers[0] if len(numbers) == 1 else numbers[0] / numbers[1]
    else:
        raise TypeError(f"invalid epsilon {text!r} of type {type(text).__name__}: {hint}")
    if not math.isfinite(value):
        raise ValueError(f"invalid epsilon {text!r}: not finite; {hint}")
    if value < 0:
        raise ValueError(f"invalid epsilon {text!r}: negative ({value:g}); {hint}")
    if value > 1:
        raise ValueError(
            f"invalid epsilon {text!r}: {value:g} is larger than 1, the whole pixel range; "
            f"budgets are in [0, 1] pixel units, so 4 pixel levels is 4/255"
        )
    return value


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _check_budget(eps: float, alpha: float, steps: int) -> None:
    if not (0.0 <= eps <= 1.0):
        raise ValueError(f"eps must be in [0, 1] (pixel units in [0, 1] images), got {eps}")
    if not (alpha >= 0.0 and math.isfinite(alpha)):
        raise ValueError(f"alpha (step size) must be a finite number >= 0, got {alpha}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")


def _input_gradient(
    model: nn.Module, x_adv: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """d loss / d x_adv, (B, C, H, W); parameters' .grad untouched."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(x_adv).labels, target, mask)
        (gradient,) = torch.autograd.grad(loss, x_adv)
    return gradient


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Back into the ℓ∞ ball of radius eps around x, and into [0, 1]."""
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    return x_adv.clamp(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    loss_fn: LossFn = label_loss,
) -> torch.Tensor:
    """Projected gradient ascent (Madry et al.) on `loss_fn(model(x).labels, target, mask)`.

    x (B, C, H, W) float in [0, 1]; target, mask (B, D). eps, alpha in [0, 1] pixel units.
    random_start: begin from a uniform point of the ε-ball (else from x).
    Returns x_adv (B, C, H, W), detached, with |x_adv - x| <= eps and 0 <= x_adv <= 1.
    """
    _check_budget(eps, alpha, steps)
    x = x.detach()
    target, mask = target.detach(), mask.detach()
    if eps == 0.0:
        return x.clone()
    x_adv = x.clone()
    if random_start:
        x_adv = _project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    for _ in range(int(steps)):
        gradient = _input_gradient(model, x_adv, target, mask, loss_fn)
        x_adv = _project(x_adv + alpha * gradient.sign(), x, eps)
    return x_adv.detach()


def fgsm_rs(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    eps: float,
    alpha: float | None = None,
    loss_fn: LossFn = label_loss,
) -> torch.Tensor:
    """FGSM with a random start ("Fast is better than free", Wong et al. 2020).

    A uniform start in the ε-ball, one signed-gradient step of alpha (default 1.25 * eps),
    projection back into the ball, and clamping into [0, 1]. One gradient per batch, so about
    as cheap as clean training plus one backward pass; known to fail by "catastrophic
    overfitting" at large eps (robustness to PGD collapses suddenly): watch the PGD probe.
    """
    alpha = 1.25 * eps if alpha is None else alpha
    _check_budget(eps, alpha, 1)
    x = x.detach()
    target, mask = target.detach(), mask.detach()
    if eps == 0.0:
        return x.clone()
    x_start = _project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    gradient = _input_gradient(model, x_start, target, mask, loss_fn)
    return _project(x_start + alpha * gradient.sign(), x, eps).detach()
