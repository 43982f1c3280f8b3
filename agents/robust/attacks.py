"""Attacks at decision time: ℓ∞ perturbations of the stacked camera frames the agent sees,
crafted through perception *and* policy (the whole `DecisionModel`: student, 1x1 map convs, MLP).

    spec = AttackSpec("pgd", eps=3 / 255, steps=10)
    adversarial = perturb_observations(decision, obs, spec)     # (B, C, H, W) uint8 -> uint8

Threat model: every pixel of the whole stack (all k frames) may move by at most ε in [0, 1] pixel
units, every step; the result is re-quantised to valid uint8 frames (what a camera could send),
never further than floor(255 ε) grey levels from the clean frame.

Attacks (all PGD runs are `perception.attacks.ascend`, with a random start in the ε-ball and the
best iterate per observation kept, so more steps or restarts never weaken the attack):

    none     the clean frames (the plain evaluation)
    random   uniform noise in [-ε, ε]: the control; a white-box attack must do much better
    fgsm     one signed-gradient step (FGSM with random start, step 1.25 ε) on -log π(a₀ | x),
             a₀ the clean greedy action
    pgd      PGD on -log π(a₀ | x): push the policy off the action it would take
    mad      PGD on KL(π(· | x_clean) || π(· | x)): SA-PPO's "maximal action difference" attack
    critic   PGD on -V(x): make the critic believe the state is bad

The default step size is 2.5 ε / steps (Madry et al.'s rule), and at least a quarter grey level so
that the quantisation does not undo the steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch

from perception.attacks import ascend, format_eps

ATTACKS: tuple[str, ...] = ("none", "random", "fgsm", "pgd", "mad", "critic")
ITERATIVE = frozenset({"pgd", "mad", "critic"})  # take --steps and --restarts
GRADIENT = frozenset({"fgsm", "pgd", "mad", "critic"})  # white-box: need the model's gradient
MAX_STEPS = 10_000


def check_attack(name: str) -> str:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from: {', '.join(ATTACKS)}")
    return name


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One decision-time attack: kind, ℓ∞ budget ε in [0, 1] pixel units, PGD steps and restarts."""

    kind: str
    eps: float = 0.0
    steps: int = 10  # PGD iterations (pgd, mad, critic); fgsm is always 1
    restarts: int = 1  # random starts, the best per observation kept (pgd, mad, critic)
    step_size: float | None = None  # [0, 1] pixel units; None: 2.5 eps / steps (fgsm: 1.25 eps)

    def __post_init__(self) -> None:
        check_attack(self.kind)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps):
            raise ValueError(f"attack {self.kind}: eps must be a number in [0, 1], got {self.eps!r}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"attack {self.kind}: eps must be in [0, 1] (pixel units), got {self.eps:g}")
        for name, value in (("steps", self.steps), ("restarts", self.restarts)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STEPS:
                raise ValueError(f"attack {self.kind}: {name} must be an integer in [1, {MAX_STEPS}], got {value!r}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"attack {self.kind}: step_size must be a positive number, got {self.step_size!r}")

    @property
    def iterative(self) -> bool:
        return self.kind in ITERATIVE

    @property
    def alpha(self) -> float:
        """The step size used: given, else 1.25 ε (fgsm) or max(2.5 ε / steps, ¼ grey level)."""
        if self.step_size is not None:
            return float(self.step_size)
        if self.kind == "fgsm":
            return 1.25 * self.eps
        return max(2.5 * self.eps / self.steps, 0.25 / 255)

    @property
    def name(self) -> str:
        """The setting's name in JSON and TensorBoard tags: none, random-eps3, fgsm-eps3, pgd10-eps3, mad50x2-eps8.

        ε is written in grey levels (eps3 = 3/255); a budget that is not whole levels as its number."""
        if self.kind == "none":
            return "none"
        budget = format_eps(self.eps)
        budget = budget.removesuffix("/255") if budget.endswith("/255") else budget
        iterations = f"{self.steps}" + (f"x{self.restarts}" if self.restarts > 1 else "") if self.iterative else ""
        return f"{self.kind}{iterations}-eps{budget}"

    def describe(self) -> str:
        """For people: 'PGD-10 on the greedy action, ε = 3/255'."""
        what = {
            "none": "no attack", "random": "uniform noise", "fgsm": "FGSM (random start) on the greedy action",
            "pgd": "PGD-{n} on the greedy action", "mad": "MAD (PGD-{n} on the KL)", "critic": "PGD-{n} on the value",
        }[self.kind].format(n=self.steps)
        if self.iterative and self.restarts > 1:
            what += f", {self.restarts} restarts"
        return what if self.kind == "none" else f"{what}, ε = {format_eps(self.eps)}"


# -- objectives: (B, C, H, W) floats in [0, 1] -> (B,) loss to maximise ------------------------------


def objective(decision, spec: AttackSpec, clean: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-observation loss the attack ascends, built from the clean frames (B, C, H, W) in [0, 1].

    decision: `agents.explain.decision.DecisionModel` (its output "action" gives logits, "value" the value)."""
    actor = decision.with_output("action")
    if spec.kind == "critic":
        critic = decision.with_output("value")
        return lambda frames: -critic(frames)[:, 0]
    with torch.no_grad():
        clean_logits = actor(clean)  # (B, A)
    if spec.kind == "mad":
        return lambda frames: action_kl(clean_logits, actor(frames))
    greedy = clean_logits.argmax(dim=1, keepdim=True)  # (B, 1) the clean greedy action

    def pushed_off(frames: torch.Tensor) -> torch.Tensor:  # -log pi(a0 | x), (B,)
        return -torch.log_softmax(actor(frames), dim=1).gather(1, greedy)[:, 0]

    return pushed_off


def action_kl(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(B,) KL(π_clean || π) between two (B, A) batches of action logits: MAD's objective, SA-PPO's R."""
    clean_log_probs = torch.log_softmax(clean_logits, dim=1)
    log_probs = torch.log_softmax(logits, dim=1)
    return (clean_log_probs.exp() * (clean_log_probs - log_probs)).sum(dim=1)


def kl_divergence(decision, clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """(B,) KL(π(· | clean) || π(· | perturbed)) of the policy, for frames in [0, 1]."""
    actor = decision.with_output("action")
    with torch.no_grad():
        return action_kl(actor(clean), actor(perturbed))


# -- perturbing observations ----------------------------------------------------------------------


def quantize(perturbed: torch.Tensor, clean_uint8: torch.Tensor, eps: float) -> torch.Tensor:
    """Frames in [0, 1] -> valid uint8, never more than floor(255 ε) grey levels from the clean uint8 frames."""
    levels = math.floor(255.0 * eps + 1e-6)
    clean = clean_uint8.to(torch.int16)
    grey = torch.round(perturbed * 255.0).to(torch.int16)
    grey = torch.minimum(torch.maximum(grey, clean - levels), clean + levels)
    return grey.clamp(0, 255).to(torch.uint8)


def perturb_frames(decision, frames: torch.Tensor, spec: AttackSpec) -> torch.Tensor:
    """(B, C, H, W) uint8 frames (a tensor on the model's device) -> the attacked uint8 frames.

    Uses torch's global random generator (random starts, the random attack): seed it for repeatable numbers."""
    if spec.kind == "none" or spec.eps == 0.0:
        return frames.clone()
    clean = frames.to(torch.float32) / 255.0  # as SB3's preprocess_obs
    if spec.kind == "random":
        perturbed = clean + torch.empty_like(clean).uniform_(-spec.eps, spec.eps)
    elif spec.kind == "fgsm":
        perturbed = ascend(objective(decision, spec, clean), clean, spec.eps, 1, spec.alpha, random_start=True)
    else:
        perturbed = ascend(objective(decision, spec, clean), clean, spec.eps, spec.steps, spec.alpha,
                           restarts=spec.restarts, random_start=True, keep_best=True)
    return quantize(perturbed, frames, spec.eps)


def perturb_observations(decision, observations: np.ndarray, spec: AttackSpec) -> np.ndarray:
    """uint8 (C, H, W) or (B, C, H, W) numpy observations -> attacked uint8 observations of the same shape."""
    array = np.asarray(observations)
    if array.dtype != np.uint8:
        raise TypeError(f"attacks perturb uint8 camera frames, got dtype {array.dtype}")
    if spec.kind == "none" or spec.eps == 0.0:
        return array
    single = array.ndim == 3
    device = next(decision.parameters()).device
    frames = torch.from_numpy(np.ascontiguousarray(array[None] if single else array)).to(device)
    attacked = perturb_frames(decision, frames, spec).cpu().numpy()
    return attacked[0] if single else attacked
