"""SA-PPO's smoothness regulariser (Zhang et al. 2020, "state-adversarial" PPO), as a loss term.

    loss = ppo_loss + kappa * sa_regularizer(decision, frames, eps)

    R(θ) = mean over the batch of  max_{x̂ : |x̂ - x|∞ <= ε}  KL(π_θ(· | x) || π_θ(· | x̂))

The inner maximum is the MAD attack (agents/robust/attacks.py: PGD on the same KL, random start,
best iterate kept). Given uint8 frames (what `train --robust-reg sa` passes: the rollout's and the
imitation's camera frames), the crafted frames are re-quantised to valid uint8 within floor(255 ε)
grey levels, the threat model of `evaluate --attack` (attacks.perturb_frames); so an ε below one grey
level perturbs nothing. Given float frames in [0, 1], they stay continuous. The crafting takes input
gradients only; the returned KL carries gradients to the policy's parameters through both
distributions. R is exactly 0 at ε = 0.

Wired into training by agents/robust/sa_ppo.py (`train --robust-reg sa`: PPO, and the imitation phase).
"""

from __future__ import annotations

import torch

from agents.imitation import actor_logits
from agents.robust.attacks import AttackSpec, action_kl, objective, perturb_frames
from perception.attacks import ascend


def sa_regularizer(decision, frames: torch.Tensor, eps: float, steps: int = 3, step_size: float | None = None) -> torch.Tensor:
    """Scalar R(θ) for frames (B, C, H, W): uint8 (re-quantised attack) or floats in [0, 1] (continuous).

    decision: `agents.explain.decision.DecisionModel`."""
    spec = AttackSpec("mad", eps, steps=steps, step_size=step_size)
    if eps == 0.0:
        return torch.zeros((), device=frames.device)
    if frames.dtype == torch.uint8:
        perturbed = perturb_frames(decision, frames, spec).to(torch.float32) / 255.0
        frames = frames.to(torch.float32) / 255.0  # as SB3's preprocess_obs
    else:
        frames = frames.detach()
        perturbed = ascend(objective(decision, spec, frames), frames, eps, steps, spec.alpha, random_start=True,
                           keep_best=True)
    actor = decision.with_output("action")
    return action_kl(actor(frames), actor(perturbed)).mean()


def feature_regularizer(policy, clean_features: torch.Tensor, attacked_features: torch.Tensor) -> torch.Tensor:
    """Scalar R(θ) from the frozen student's cached features (B, F) of the clean and the attacked frames.

    The same KL as `sa_regularizer`, for frames crafted earlier (`train --robust-reg sa`'s default
    `robust_refresh: rollout`): only the actor runs (its 1x1 map conv, MLP and action head), and the
    gradient reaches it through both distributions. policy: SB3 `ActorCriticPolicy`."""
    return action_kl(actor_logits(policy, clean_features), actor_logits(policy, attacked_features)).mean()
