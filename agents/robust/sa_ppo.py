"""`train --robust-reg sa`: SA-PPO's smoothness regulariser in PPO's updates and in the imitation phase's.

    loss = ppo_loss + kappa * R(θ),   R(θ) = mean KL(π_θ(· | x) || π_θ(· | x̂)),   x̂ = MAD(x, ε)

(Zhang et al. 2020; the term is agents/robust/regularizer.py). x are rollout frames (uint8), x̂ the
MAD attack's frames (PGD-`robust_steps` on the same KL, random start, best iterate kept), re-quantised
to valid uint8 within floor(255 ε) grey levels: the threat model of `evaluate --attack`.

Schedule (`SASchedule.eps_at`): by default (`training.robust_ramp_steps: 0`) the full budget
`training.robust_eps` from the first step, imitation included. With `robust_ramp_steps: N` ε grows
linearly with the run's env steps from 0 at step 0 to `robust_eps` at step N; with `null`, to
halfway through the PPO phase (session 12's schedule), then stays. The PPO phase begins after the
imitation warm start's env steps, so a run without imitation ramps over the first half of PPO; with
imitation, the DAgger iterations see the first part of the same ramp (iteration i of n fits at the
ε of its last step), and PPO goes on from there (one monotone ramp, no drop at the switch). Since
perturbations are whole grey levels, the effective budget moves in steps of 1/255. The ramp is
computed from the config at each (re)start: a resume that extends --timesteps stretches it.

PPO: `SmoothPPO` is `CachedFeaturesPPO` (SB3's PPO reading cached features of the frozen student)
with one addition. SB3's `PPO.train` computes each minibatch's loss, then calls
`policy.optimizer.zero_grad()`, `loss.backward()`, clips the gradient norm and steps. For the length
of `train`, SmoothPPO's `zero_grad` is followed by `(kappa * R).backward()` on a minibatch of frames:
the gradients accumulate, so the clipped, applied gradient is exactly that of `loss + kappa * R`,
without copying SB3's 100-line update. The frames come from the same rollout, drawn without
replacement (a fresh permutation each pass), `batch_size` per minibatch: R covers every rollout frame
once per epoch, as the PPO loss does (the cached features carry no frames, so the minibatch is a
parallel draw, not the PPO minibatch's own samples). R goes through the whole policy from the frames
(student, map convs, actor MLP); with the student frozen, its gradient reaches the actor (MLP, its
1x1 map conv, action head). The model saves and loads as plain PPO.

Imitation: `agents.imitation.imitate_teacher(..., smoothing=...)` adds kappa * R to each minibatch
of its regret loss, on frames of the latest DAgger iteration (the states the current policy reaches).

TensorBoard: `robust/sa_kl` (mean R over the update's minibatches), `robust/sa_eps` (ε of the update).
Not supported: A2C (no minibatch loss to hook here) and `training.device_rollout` (DevicePPO's own
update loop): both are one-line errors (`check_robust_training`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from agents.cached_features import FEATURE_BATCH, CachedFeaturesPPO
from agents.robust.attacks import AttackSpec, perturb_frames
from agents.robust.regularizer import feature_regularizer, sa_regularizer


@dataclass(frozen=True)
class SASchedule:
    """The regulariser's settings for one run: weight, target budget, PGD steps, and the ramp's end."""

    weight: float  # kappa
    eps: float  # [0, 1] pixel units, reached at ramp_end
    steps: int  # PGD steps of the MAD attack
    ramp_end: int  # [env steps of the run] where ε reaches `eps`
    refresh: str = "rollout"  # when x̂ is crafted: "rollout" (features cached) or "minibatch" (training.robust_refresh)
    attack: str = "mad"  # what crafts x̂ with "rollout": "mad" or "pgd" (training.robust_attack)
    imitation_weight: float = 0.0  # λ of adversarial imitation (training.robust_imitation_weight; agents/imitation.py)

    def eps_at(self, num_timesteps: int) -> float:
        """ε at the run's env step `num_timesteps`: linear from 0 at step 0 to `eps` at `ramp_end`."""
        if self.ramp_end <= 0:
            return self.eps
        return self.eps * min(1.0, max(0.0, num_timesteps / self.ramp_end))

    def loss(self, decision, frames: torch.Tensor, eps: float) -> torch.Tensor:
        """R(θ) on uint8 frames (B, C, H, W) at budget eps (not yet weighted)."""
        return sa_regularizer(decision, frames, eps, steps=self.steps)


def schedule_for(training, n_envs: int) -> SASchedule | None:
    """The run's `SASchedule` from its training config block (None when the regulariser is off)."""
    if not training.robust:
        return None
    imitation = training.imitation_iterations * training.imitation_steps * n_envs  # [env steps] before PPO
    ramp_end = training.robust_ramp_steps
    if ramp_end is None:
        ramp_end = imitation + max(0, training.timesteps - imitation) // 2
    return SASchedule(float(training.robust_reg_weight), float(training.robust_eps), int(training.robust_steps),
                      ramp_end, training.robust_refresh, training.robust_attack,
                      float(training.robust_imitation_weight))


def check_robust_training(algo: str, training) -> None:
    """One clear error for the combinations `--robust-reg sa` does not support."""
    if not training.robust:
        return
    if algo != "ppo":
        raise ValueError(f"--robust-reg {training.robust_reg} (training.robust_reg) works with PPO only, not "
                         f"{algo.upper()}; use --algo ppo or --robust-reg none")
    if training.device_rollout:
        raise ValueError(f"--robust-reg {training.robust_reg} (training.robust_reg) does not work with "
                         "training.device_rollout (DevicePPO's own update loop); set device_rollout: false, "
                         "or --robust-reg none")


class FrameBatches:
    """Indices of minibatches of `count` frames, drawn without replacement: a fresh permutation each time
    all were drawn, so the regulariser covers every frame once per pass (PPO's and the imitation's)."""

    def __init__(self, count: int, batch_size: int) -> None:
        self.count, self.batch_size = count, batch_size
        self.order = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        """(b,) sorted indices, b <= batch_size (the last batch of a pass may be smaller)."""
        if len(self.order) == 0:
            self.order = torch.randperm(self.count)
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return batch.sort().values


def decision_model(policy):
    """The policy as frames in [0, 1] -> logits (agents.explain.decision.DecisionModel), sharing its modules."""
    from agents.explain.decision import DecisionModel

    return DecisionModel(policy, "action")


def attacked_features(policy, frames, eps: float, steps: int, batch: int = FEATURE_BATCH,
                      attack: str = "mad") -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen student's features (N, F) of frames (N, C, H, W) (uint8 values; numpy or tensor) and of
    their attacked versions: PGD-`steps` through the whole policy as it is now, within ε, re-quantised to
    uint8, on KL(π(· | x) || π(· | x̂)) (`attack` "mad") or on -log π(a₀ | x̂), a₀ the clean greedy action
    ("pgd"). Under one grey level of budget nothing moves and no PGD runs."""
    decision = decision_model(policy)
    spec = AttackSpec(attack, eps, steps=steps)
    clean, attacked = [], []
    for start in range(0, len(frames), batch):
        chunk = torch.as_tensor(frames[start : start + batch], device=policy.device).to(torch.uint8)  # (b, C, H, W)
        with torch.no_grad():
            clean.append(policy.extract_features(chunk))  # (b, F); extract_features divides by 255
        if math.floor(255.0 * eps + 1e-6) == 0:
            attacked.append(clean[-1])
            continue
        adversarial = perturb_frames(decision, chunk, spec)  # (b, C, H, W) uint8
        with torch.no_grad():
            attacked.append(policy.extract_features(adversarial))
    return torch.cat(clean), torch.cat(attacked)


class Smoothness:
    """weight * R on successive minibatches of one rollout's (or DAgger iteration's) samples, each sample
    once per pass (`FrameBatches`). Built by `fresh_attacks` or `cached_attacks` (weight κ), or by the
    imitation's adversarial term (weight λ, R its regret loss); `values` collects R."""

    def __init__(self, weight: float, eps: float, count: int, batch_size: int,
                 regulariser: Callable[[object, torch.Tensor], torch.Tensor]) -> None:
        self.weight, self.eps = weight, eps
        self.batches = FrameBatches(count, batch_size)
        self.regulariser = regulariser  # (policy, indices (b,)) -> R on those samples
        self.values: list[float] = []  # R of each minibatch

    def term(self, policy) -> torch.Tensor:
        """weight * R on the next minibatch (a scalar that carries gradients to the actor, except at ε = 0)."""
        regulariser = self.regulariser(policy, self.batches.next())
        self.values.append(float(regulariser.detach()))
        return self.weight * regulariser


def fresh_attacks(schedule: SASchedule, eps: float, frames, batch_size: int, policy) -> Smoothness:
    """`robust_refresh: minibatch`: each minibatch's frames (N, C, H, W; uint8 values) are attacked afresh,
    through `policy` as it is now (its decision model is built here: CachedFeaturesPPO's update swaps
    the policy's extractor out while it runs)."""
    decision = decision_model(policy)

    def regulariser(policy, batch: torch.Tensor) -> torch.Tensor:
        device = frames.device if isinstance(frames, torch.Tensor) else "cpu"
        chunk = torch.as_tensor(frames[batch.to(device)], device=policy.device).to(torch.uint8)
        return schedule.loss(decision, chunk, eps)

    return Smoothness(schedule.weight, eps, len(frames), batch_size, regulariser)


def cached_attacks(schedule: SASchedule, eps: float, clean: torch.Tensor, attacked: torch.Tensor,
                   batch_size: int) -> Smoothness:
    """`robust_refresh: rollout`: features (N, F) of the frames and of their attacked versions, crafted once."""
    def regulariser(policy, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(clean.device)
        return feature_regularizer(policy, clean[batch], attacked[batch])

    return Smoothness(schedule.weight, eps, len(clean), batch_size, regulariser)


class SmoothPPO(CachedFeaturesPPO):
    """CachedFeaturesPPO whose updates minimise ppo_loss + kappa * R (the module docstring).

    `smoothing`: the run's `SASchedule` (agents.runs.build_agent passes it from the config)."""

    def __init__(self, *args, smoothing: SASchedule, **kwargs) -> None:
        self.smoothing = smoothing
        super().__init__(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "smoothing"]  # the model zip stays plain PPO's

    def train(self) -> None:
        eps = self.smoothing.eps_at(self.num_timesteps)
        began = time.perf_counter()
        smoothness = self._smoothness(eps)
        values = smoothness.values
        with self._regularised_updates(smoothness):
            super().train()
        self.logger.record("robust/sa_eps", eps)
        self.logger.record("robust/sa_kl", float(np.mean(values)) if values else 0.0)
        self.logger.record("robust/sa_update_s", time.perf_counter() - began)

    def _smoothness(self, eps: float) -> Smoothness:
        """R's minibatches over this rollout's frames: attacked now, once (`rollout`), or per minibatch."""
        frames = self.rollout_buffer.observations  # (n_steps, n_envs, C, H, W) float32 0..255, or (N, C, H, W) once flattened
        frames = frames.reshape(-1, *frames.shape[-3:])  # (N, C, H, W), a view
        if self.smoothing.refresh == "minibatch":
            return fresh_attacks(self.smoothing, eps, frames, self.batch_size, self.policy)
        clean, attacked = attacked_features(self.policy, frames, eps, self.smoothing.steps,
                                            attack=self.smoothing.attack)
        return cached_attacks(self.smoothing, eps, clean, attacked, self.batch_size)

    @contextmanager
    def _regularised_updates(self, smoothness: Smoothness) -> Iterator[None]:
        """Within the block, each `optimizer.zero_grad()` is followed by `smoothness.term(policy).backward()`."""
        optimizer = self.policy.optimizer
        zero_grad = optimizer.zero_grad

        def zero_grad_then_regulariser(*args, **kwargs) -> None:
            zero_grad(*args, **kwargs)
            term = smoothness.term(self.policy)
            if term.requires_grad:  # not at ε = 0
                term.backward()

        optimizer.zero_grad = zero_grad_then_regulariser
        try:
            yield
        finally:
            del optimizer.zero_grad  # the bound method again
