"""Warm start from the privileged teacher: the camera policy imitates `LookaheadTeacher` before PPO/A2C.

PPO alone plateaus below the driving-quality bar on highway, even with perfect perception
(docs/BENCHMARKS.md). So on the fast backend a run first teaches the policy's actor (the MLP on the
frozen perception student's features, and with `map_channels` its feature map through the actor's
1x1 conv: agents/policy.py) to drive like the teacher, a planner that sees the exact
simulator state; then the usual PPO or A2C continues from there on the environment's reward.

The imitation is DAgger (Ross et al., 2011): in the first iteration the teacher drives and labels;
in later ones the policy drives (its greedy action) and the teacher labels the states the policy
itself reaches, so the policy learns to recover from its own mistakes. After each iteration the
actor is fitted to all samples so far.

The loss is regret-weighted, not plain cross-entropy, because the teacher's choice is often one of
several near-equal actions (IDLE or FASTER a car length earlier matters little) while a few wrong
choices crash. For each sample the teacher gives the value of every action (an (E, A) table), and
the loss is the policy's expected regret, sum_a pi(a|s) * (max_a' Q(s, a') - Q(s, a)), plus a small
cross-entropy to the teacher's best action as a tie-breaker. Measured: cross-entropy alone crashed
in 40-98 % of the evaluation episodes, the regret loss in 6-12 % (docs/BENCHMARKS.md, "Imitation").

With `smoothing` (`train --robust-reg sa`, agents/robust/sa_ppo.py) each minibatch's loss also gets
kappa * R, SA-PPO's smoothness regulariser, on a minibatch of samples of the latest iteration (those
of its first SA_FRAME_ENVS envs: the states the current policy reaches), at the ε of the run's
schedule at the iteration's last step. With `robust_refresh: rollout` (the default) their attacked
frames are crafted once, as the iteration collects them, and R reads the cached features; with
`minibatch` every minibatch attacks its frames afresh.

With `tune_perception` (`training.imitation_tunes_perception`) the fit trains the perception student
too, end to end on the frames: the run keeps every sample's frames instead of its features and extracts
them afresh in each minibatch (the student's weights at PERCEPTION_LEARNING_RATE); afterwards the student
is frozen again, so that PPO still caches its features. For scenarios whose frames the student was not
distilled on (intersection's). Measured (docs/BENCHMARKS.md, "The student trained along in the imitation",
`python -m agents.imitation_probe`): 11-14 % less regret on held-out episodes on intersection and
highway-dense, but the same intersection agent after PPO, in 20 % more time; no recipe uses it.

Adversarial imitation (`training.robust_imitation_weight` λ > 0, with the cached attacked features):
each minibatch's loss also gets λ times the regret loss on a minibatch of those samples' *attacked*
features, labelled with the teacher's action values of the same states. The teacher sees the simulator,
not the frames, so its labels hold whatever the attack does to them: the actor is taught which action
is right under attack (Madry et al.'s adversarial training, with privileged labels), where R only asks
that its choice change little, even towards a crashing action.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.policies import ActorCriticPolicy

from agents.device_rollout import fast_env_of
from agents.teacher import LookaheadTeacher, best_actions
from envs.fast.simulator import META_ACTIONS
from envs.backends import privileged_simulator

if TYPE_CHECKING:  # sa_ppo is imported where it is used: only robust runs need it
    from agents.robust.sa_ppo import Smoothness

TIE_BREAK_WEIGHT = 0.05  # weight of the cross-entropy to the teacher's best action in the loss
EPOCHS = 5  # passes over all samples after each iteration (drove better than 10 with the feature map, at half
# the cost: docs/BENCHMARKS.md, "Session 8")
BATCH_SIZE = 256  # [samples] per gradient step
LEARNING_RATE = 1e-3  # Adam, on the actor
PERCEPTION_LEARNING_RATE = 3e-4  # Adam, on the perception student with `tune_perception`
SA_FRAME_ENVS = 64  # with `smoothing`: the envs whose samples of the latest iteration the regulariser reads
# (frames: 40 steps x 64 envs x 9x96x48 bytes = 106 MB, all 256 envs' would be 425 MB; features: 2 x 25 MB)


@dataclass(frozen=True)
class ImitationProgress:
    iteration: int  # 1-based
    samples: int  # labelled states so far
    regret: float  # mean regret of the policy's greedy action over all samples (teacher's value units)
    agreement: float  # fraction of samples where the policy's greedy action is the teacher's
    seconds: float  # since the start of the imitation
    sa_kl: float | None = None  # with `smoothing`: mean SA regulariser R over this iteration's minibatches
    sa_eps: float | None = None  # with `smoothing`: its budget ε in this iteration [0, 1] pixel units
    attacked_regret: float | None = None  # with adversarial imitation: mean regret loss on the attacked features


def actor_logits(policy: ActorCriticPolicy, features: torch.Tensor) -> torch.Tensor:
    """(N, F) features -> (N, A) action logits of the policy's actor (A = 5 meta-actions, 3 on intersection)."""
    return policy.action_net(policy.mlp_extractor.forward_actor(features))


def regret_loss(logits: torch.Tensor, values: torch.Tensor, action_names: tuple[str, ...] = META_ACTIONS) -> torch.Tensor:
    """Expected regret of the policy (N, A logits) under the teacher's action values (N, A), plus the
    tie-breaker (`action_names`: the actions by index, for the teacher's order among equals)."""
    regret = values.amax(dim=1, keepdim=True) - values  # (N, A) >= 0
    expected = (F.softmax(logits, dim=1) * regret).sum(dim=1).mean()
    return expected + TIE_BREAK_WEIGHT * F.cross_entropy(logits, best_actions(values, action_names))


def imitate_teacher(
    policy: ActorCriticPolicy,
    env,
    iterations: int,
    steps: int,
    teacher: LookaheadTeacher | None = None,
    on_iteration: Callable[[ImitationProgress], None] | None = None,
    on_step: Callable[[], None] | None = None,
    on_transition: Callable[[list[dict], np.ndarray, bool], None] | None = None,
    smoothing=None,
    tune_perception: bool = False,
) -> ImitationProgress:
    """DAgger on `env` (a FastVecEnv, or a VecEnv wrapper of one) for `iterations` x `steps` steps of
    all its envs; fits the policy's actor on the features of its frozen feature extractor, or with
    `tune_perception` the extractor too, on the frames. Returns the last iteration's progress;
    `on_iteration` gets each one, `on_step` is called after each env step, and `on_transition` with its
    (infos, dones, learner_drove) (the safety signals of the episodes driven).
    `smoothing`: an agents.robust.sa_ppo.SASchedule, whose regulariser joins the loss (module docstring)."""
    if iterations < 1 or steps < 1:
        raise ValueError(f"imitation needs positive iterations and steps, got {iterations} and {steps}")
    if tune_perception and smoothing is not None:
        raise ValueError("tune_perception cannot go with smoothing: the regulariser caches the student's features")
    simulator = privileged_simulator(env)
    teacher = teacher or LookaheadTeacher(simulator)
    optimizer = imitation_optimizer(policy, tune_perception)
    # every sample of the run, kept on the policy's device and filled in order: one buffer, not a list
    # concatenated after each iteration, which held it twice (the default's 122,880 x 2,416 features are 1.2 GB);
    # with `tune_perception` the frames instead (intersection's 19,968 x 9x96x48 bytes: 0.8 GB)
    capacity = iterations * steps * env.num_envs
    if tune_perception:
        inputs = torch.empty((capacity, *env.observation_space.shape), dtype=torch.uint8, device=policy.device)
    else:
        inputs = torch.empty((capacity, policy.features_dim), device=policy.device)  # (N, F)
    encode = Encoder(policy, tune_perception)
    values = torch.empty((capacity, int(env.action_space.n)), device=policy.device)  # (N, A)
    names = teacher.action_names
    filled = 0
    samples = None if smoothing is None else _SmoothingSamples(smoothing, policy, steps, env)
    began = time.perf_counter()
    observations = env.reset()  # (B, C, H, W) uint8: NumPy, or on a FastVecEnv the device tensor below
    fast = fast_env_of(env)  # frames and actions stay on the device (no host round trip per step)
    if fast is not None:
        observations = fast.observe_tensor()
    progress = None
    policy.set_training_mode(False)
    for iteration in range(iterations):
        eps = None if smoothing is None else smoothing.eps_at((iteration + 1) * steps * env.num_envs)  # at its end
        for step in range(steps):
            with torch.no_grad():
                step_features = policy.extract_features(torch.as_tensor(observations, device=policy.device))
                greedy = actor_logits(policy, step_features).argmax(dim=1)
            step_values = teacher.action_values().to(policy.device)  # of the states the frames show
            inputs[filled : filled + len(step_features)] = (
                torch.as_tensor(observations, device=policy.device) if tune_perception else step_features)
            if samples is not None:
                samples.add(step, observations, eps, step_values)
            values[filled : filled + len(step_values)] = step_values
            filled += len(step_features)
            driver = best_actions(step_values, names) if iteration == 0 else greedy
            if fast is not None:
                fast.step_async_on_device(driver)
                observations, _, dones, infos = env.step_wait()  # through the wrappers: host dones, infos
            else:
                observations, _, dones, infos = env.step(driver.cpu().numpy())
            if on_transition is not None:
                on_transition(infos, dones, iteration > 0)
            if on_step is not None:
                on_step()
        all_inputs, all_values = inputs[:filled], values[:filled]
        sa = None if samples is None else samples.smoothness(eps)
        attacked = None if samples is None else samples.attacked_regret(eps, names)
        with encode.trainable():
            fit_imitation(policy, optimizer, all_inputs, all_values, names, encode, sa, attacked)
        progress = imitation_progress(policy, iteration + 1, all_inputs, all_values, names, encode,
                                      time.perf_counter() - began)
        if sa is not None:
            progress = dataclasses.replace(progress, sa_kl=float(np.mean(sa.values)) if sa.values else 0.0,
                                           sa_eps=sa.eps)
        if attacked is not None:
            progress = dataclasses.replace(progress, attacked_regret=float(np.mean(attacked.values)))
        if on_iteration is not None:
            on_iteration(progress)
    return progress


class _SmoothingSamples:
    """The latest iteration's samples for SA-PPO's regulariser: those of its first SA_FRAME_ENVS envs
    (the states the current policy reaches). With `robust_refresh: rollout` their features and those of
    their MAD-attacked frames, crafted as they come against the policy of this iteration; with
    `minibatch` the frames, attacked afresh in every minibatch of the fit."""

    def __init__(self, schedule, policy: ActorCriticPolicy, steps: int, env) -> None:
        self.schedule, self.policy = schedule, policy
        self.envs = min(env.num_envs, SA_FRAME_ENVS)
        rows = steps * self.envs
        if schedule.refresh == "minibatch":  # (rows, C, H, W) uint8
            self.frames = torch.empty((rows, *env.observation_space.shape), dtype=torch.uint8, device=policy.device)
        else:  # (rows, F) each, and the teacher's (rows, A) action values of the same states
            self.clean = torch.empty((rows, policy.features_dim), device=policy.device)
            self.attacked = torch.empty_like(self.clean)
            self.values = torch.empty((rows, int(env.action_space.n)), device=policy.device)

    def add(self, step: int, observations: np.ndarray | torch.Tensor, eps: float, values: torch.Tensor) -> None:
        """Keep step `step`'s frames (n_envs, C, H, W) uint8 of the first envs, or their features and the
        teacher's (n_envs, A) action values."""
        rows = slice(step * self.envs, (step + 1) * self.envs)
        if self.schedule.refresh == "minibatch":
            self.frames[rows] = torch.as_tensor(observations[: self.envs], device=self.policy.device)
            return
        from agents.robust.sa_ppo import attacked_features

        self.clean[rows], self.attacked[rows] = attacked_features(self.policy, observations[: self.envs], eps,
                                                                  self.schedule.steps, attack=self.schedule.attack)
        self.values[rows] = values[: self.envs]

    def smoothness(self, eps: float):
        """kappa * R's minibatches (BATCH_SIZE) for the fit after this iteration: agents.robust.sa_ppo.Smoothness."""
        from agents.robust.sa_ppo import cached_attacks, fresh_attacks

        if self.schedule.refresh == "minibatch":
            return fresh_attacks(self.schedule, eps, self.frames, BATCH_SIZE, self.policy)
        return cached_attacks(self.schedule, eps, self.clean, self.attacked, BATCH_SIZE)

    def attacked_regret(self, eps: float, action_names: tuple[str, ...]) -> Smoothness | None:
        """λ x the teacher's regret loss on the attacked features (N, F) under its values (N, A) of the clean
        states, minibatches of BATCH_SIZE for the fit after this iteration; None when λ = 0."""
        if self.schedule.imitation_weight <= 0:
            return None
        from agents.robust.sa_ppo import Smoothness

        def regret_on_attacked(policy: ActorCriticPolicy, batch: torch.Tensor) -> torch.Tensor:
            batch = batch.to(self.attacked.device)
            return regret_loss(actor_logits(policy, self.attacked[batch]), self.values[batch], action_names)

        return Smoothness(self.schedule.imitation_weight, eps, len(self.attacked), BATCH_SIZE, regret_on_attacked)


def imitation_optimizer(policy: ActorCriticPolicy, tune_perception: bool) -> torch.optim.Adam:
    """Adam on the actor (MLP, action head, map reducer), and on the student with `tune_perception`."""
    actor = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    groups = [{"params": actor, "lr": LEARNING_RATE}]
    if tune_perception:
        groups.append({"params": list(policy.features_extractor.parameters()), "lr": PERCEPTION_LEARNING_RATE})
    return torch.optim.Adam(groups)


class Encoder:
    """Samples -> (N, F) features: the kept features themselves, or with `tune_perception` the policy's
    features of the kept (N, C, H, W) uint8 frames, through a student that `trainable` unfreezes."""

    def __init__(self, policy: ActorCriticPolicy, tune_perception: bool) -> None:
        self.policy, self.tune_perception = policy, tune_perception

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.policy.extract_features(inputs) if self.tune_perception else inputs

    @contextlib.contextmanager
    def trainable(self) -> Iterator[None]:
        """Within it, the student's parameters take gradients (with `tune_perception`); frozen again after,
        for the rollouts and PPO's cached features. (It has no BatchNorm or dropout: its eval mode changes
        nothing.)"""
        parameters = list(self.policy.features_extractor.parameters()) if self.tune_perception else []
        before = [parameter.requires_grad for parameter in parameters]
        for parameter in parameters:
            parameter.requires_grad_(True)
        try:
            yield
        finally:
            for parameter, flag in zip(parameters, before):
                parameter.requires_grad_(flag)


def fit_imitation(policy: ActorCriticPolicy, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                  values: torch.Tensor, action_names: tuple[str, ...], encode: Encoder,
                  smoothing: Smoothness | None = None, attacked: Smoothness | None = None) -> None:
    """EPOCHS passes of minibatch Adam over all samples (features, or frames that `encode` reads) on the
    actor, and the student with `tune_perception` (+ kappa * R with `smoothing`, + λ x the attacked
    samples' regret with `attacked`: both agents.robust.sa_ppo.Smoothness)."""
    policy.set_training_mode(True)
    for _ in range(EPOCHS):
        order = torch.randperm(len(inputs), device=inputs.device)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            loss = regret_loss(actor_logits(policy, encode(inputs[batch])), values[batch], action_names)
            if smoothing is not None:
                loss = loss + smoothing.term(policy)
            if attacked is not None:
                loss = loss + attacked.term(policy)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    policy.set_training_mode(False)


@torch.no_grad()
def imitation_progress(policy: ActorCriticPolicy, iteration: int, inputs: torch.Tensor, values: torch.Tensor,
                       action_names: tuple[str, ...], encode: Encoder, seconds: float) -> ImitationProgress:
    """The greedy actor's mean regret and agreement with the teacher on the samples (in minibatches: frames
    through the student would not fit at once)."""
    greedy = torch.cat([actor_logits(policy, encode(inputs[start : start + BATCH_SIZE])).argmax(dim=1, keepdim=True)
                        for start in range(0, len(inputs), BATCH_SIZE)])  # (N, 1)
    regret = values.amax(dim=1) - values.gather(1, greedy)[:, 0]
    agreement = (greedy[:, 0] == best_actions(values, action_names)).float().mean()
    return ImitationProgress(iteration, len(inputs), float(regret.mean()), float(agreement), seconds)

