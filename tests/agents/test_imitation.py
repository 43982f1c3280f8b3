"""The imitation loss and fit: regret-weighted, so the actor learns to avoid the actions that cost most."""

from __future__ import annotations

import math

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from envs.fast.simulator import META_ACTIONS
from agents.imitation import LEARNING_RATE, TIE_BREAK_WEIGHT, _fit, actor_logits, regret_loss

FASTER = 3


def test_regret_loss_of_a_uniform_policy():
    values = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0, 0.0]])
    loss = regret_loss(torch.zeros(2, 5), values)
    expected_regret = (4 * 1.0 / 5 + 4 * 2.0 / 5) / 2  # pi = 1/5 on each of the 4 worse actions
    assert math.isclose(float(loss), expected_regret + TIE_BREAK_WEIGHT * math.log(5), rel_tol=1e-6)


def test_fitting_learns_to_avoid_the_action_that_crashes():
    torch.manual_seed(0)
    policy = ActorCriticPolicy(spaces.Box(-5, 5, (4,)), spaces.Discrete(5), lambda _: LEARNING_RATE, net_arch=[32])
    features = torch.randn(1024, 4)
    values = torch.zeros(1024, 5)
    values[:, FASTER] = 1.0  # FASTER is a little better ...
    crash = features[:, 0] > 0
    values[crash, FASTER] = -10.0  # ... unless it crashes, which depends on one feature
    actor = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    optimizer = torch.optim.Adam(actor, lr=LEARNING_RATE)
    for _ in range(3):
        _fit(policy, optimizer, features, values, META_ACTIONS)
    with torch.no_grad():
        greedy = actor_logits(policy, features).argmax(dim=1)
    assert (greedy[crash] != FASTER).float().mean() > 0.97
    clearly_safe = features[:, 0] < -0.5  # near the boundary the costly mistake makes it cautious, as it should
    assert (greedy[clearly_safe] == FASTER).float().mean() > 0.9
