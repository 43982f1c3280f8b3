"""ℓ∞ adversarial attacks on perception, in [0, 1] pixel space, against the label loss.

    x_adv = pgd(model, x, target, mask, eps=4/255, alpha=1/255, steps=10)    # Madry et al. 2018
    x_adv = fgsm_rs(model, x, target, mask, eps=4/255)                        # Wong et al. 2020

Both maximise `perception.models.label_loss` (masked MSE), keep every pixel of `x_adv`
within `eps` of `x` and inside [0, 1], and return a detached tensor. Both run `ascend`, the one
ℓ∞ PGD loop of the project (any objective, restarts, best iterate per sample), which the
decision-time attacks on the driving policy (agents/robust/attacks.py) use as well.
`parse_eps("3/255")` and `format_eps(3 / 255)` turn budgets into numbers and back.

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


def format_eps(eps: float) -> str:
    """A budget as the command line writes it: "4/255" for 4 grey levels, else the number ("0.01")."""
    levels = float(eps) * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-9 else f"{float(eps):g}"


def _check_budget(eps: float, alpha: float, steps: int) -> None:
    if not (0.0 <= eps <= 1.0):
        raise ValueError(f"eps must be in [0, 1] (pixel units in [0, 1] images), got {eps}")
    if not (alpha >= 0.0 and math.isfinite(alpha)):
        raise ValueError(f"alpha (step size) must be a finite number >= 0, got {alpha}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Back into the ℓ∞ ball of radius eps around x, and into [0, 1]."""
    x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    return x_adv.clamp(0.0, 1.0)


def ascend(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    restarts: int = 1,
    random_start: bool = True,
    keep_best: bool = False,
) -> torch.Tensor:
    """ℓ∞ projected gradient ascent on `loss_fn(x_adv)` in [0, 1] pixel space: the one PGD loop.

    x (B, ...) float in [0, 1]. loss_fn(x_adv) -> a scalar, or with keep_best a (B,) loss per
    sample (the gradient is taken of its sum: samples are independent). eps, step_size in [0, 1]
    pixel units; random_start: begin from a uniform point of the ε-ball (else from x).
    keep_best: return, per sample, the iterate with the highest loss seen (over all steps and
    restarts), so more steps or restarts from the same start never give a lower loss; without it,
    the last iterate (restarts must then be 1).
    Returns x_adv, detached, with |x_adv - x| <= eps and 0 <= x_adv <= 1. Gradients are taken with
    respect to the input only (`torch.autograd.grad`): parameters' `.grad` fields stay untouched.
    """
    _check_budget(eps, step_size, steps)
    if int(restarts) != restarts or restarts < 1:
        raise ValueError(f"restarts must be a positive integer, got {restarts}")
    if restarts > 1 and not keep_best:
        raise ValueError("restarts > 1 needs keep_best=True (a per-sample loss) to choose among them")
    x = x.detach()
    if eps == 0.0:
        return x.clone()
    best, best_loss = x.clone(), None
    for _ in range(int(restarts)):
        x_adv = x.clone()
        if random_start:
            x_adv = _project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
        for step in range(int(steps) + 1):
            if step == int(steps) and not keep_best:
                break  # the last iterate needs no loss
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(x_adv)
                gradient = None if step == int(steps) else torch.autograd.grad(loss.sum(), x_adv)[0]
            if keep_best:
                best, best_loss = _keep_best(best, best_loss, x_adv.detach(), loss.detach())
            if gradient is not None:
                x_adv = _project(x_adv.detach() + step_size * gradient.sign(), x, eps)
        if not keep_best:
            best = x_adv
    return best.detach()


def _keep_best(best: torch.Tensor, best_loss: torch.Tensor | None, candidate: torch.Tensor,
               loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the candidate where its (B,) loss is higher than the best so far."""
    if loss.dim() != 1 or loss.shape[0] != candidate.shape[0]:
        raise ValueError(f"keep_best needs a (B,) loss per sample, got shape {tuple(loss.shape)}")
    if best_loss is None:
        return candidate.clone(), loss.clone()
    better = loss > best_loss  # (B,)
    where = better.view(-1, *([1] * (candidate.dim() - 1)))
    return torch.where(where, candidate, best), torch.where(better, loss, best_loss)


def _label_objective(model: nn.Module, target: torch.Tensor, mask: torch.Tensor,
                     loss_fn: LossFn) -> Callable[[torch.Tensor], torch.Tensor]:
    target, mask = target.detach(), mask.detach()
    return lambda x_adv: loss_fn(model(x_adv).labels, target, mask)


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
    return ascend(_label_objective(model, target, mask, loss_fn), x, eps, steps, alpha, random_start=random_start)


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
    return ascend(_label_objective(model, target, mask, loss_fn), x, eps, 1, alpha, random_start=True)
