"""SA-PPO's smoothness regulariser (Zhang et al. 2020, "state-adversarial" PPO), as a loss term.

    loss = ppo_loss + kappa * sa_regularizer(decision, frames, eps)

    R(θ) = mean over the batch of  max_{x̂ : |x̂ - x|∞ <= ε}  KL(π_θ(· | x) || π_θ(· | x̂))

The inner maximum is the MAD attack (agents/robust/attacks.py: PGD on the same KL, random start,
best iterate kept) on frames in [0, 1], not re-quantised (training works in continuous pixel
space). The crafting takes input gradients only; the returned KL carries gradients to the policy's
parameters through both distributions. R is exactly 0 at ε = 0.

Status: the term and its tests only. `train --robust-reg sa` (issue 16, deliverable 3: wiring it
into PPO's and the imitation phase's updates, with an ε schedule and its training cost) is not
built yet.
"""

from __future__ import annotations

import torch

from agents.robust.attacks import AttackSpec, objective
from perception.attacks import ascend


def sa_regularizer(decision, frames: torch.Tensor, eps: float, steps: int = 3, step_size: float | None = None) -> torch.Tensor:
    """Scalar R(θ) for frames (B, C, H, W) in [0, 1]; decision: `agents.explain.decision.DecisionModel`."""
    spec = AttackSpec("mad", eps, steps=steps, step_size=step_size)
    if eps == 0.0:
        return torch.zeros((), device=frames.device)
    frames = frames.detach()
    perturbed = ascend(objective(decision, spec, frames), frames, eps, steps, spec.alpha, random_start=True,
                       keep_best=True)
    actor = decision.with_output("action")
    clean_log_probs = torch.log_softmax(actor(frames), dim=1)  # (B, A)
    log_probs = torch.log_softmax(actor(perturbed), dim=1)
    return (clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(dim=1).mean()
