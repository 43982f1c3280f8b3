"""The imitation loss and fit: regret-weighted, so the actor learns to avoid the actions that cost most."""

from __future__ import annotations

import math

import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy

from agents.imitation import (
    LEARNING_RATE,
    TIE_BREAK_WEIGHT,
    Encoder,
    actor_logits,
    fit_imitation,
    imitate_teacher,
    regret_loss,
)
from agents.policy import PerceptionPolicy
from envs.fast.simulator import META_ACTIONS
from envs.fast.vec_env import FastVecEnv
from perception.extractor import DEFAULT_STUDENT, PerceptionExtractor
from scenarios import load_scenario

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
        fit_imitation(policy, optimizer, features, values, META_ACTIONS, Encoder(policy, tune_perception=False))
    with torch.no_grad():
        greedy = actor_logits(policy, features).argmax(dim=1)
    assert (greedy[crash] != FASTER).float().mean() > 0.97
    clearly_safe = features[:, 0] < -0.5  # near the boundary the costly mistake makes it cautious, as it should
    assert (greedy[clearly_safe] == FASTER).float().mean() > 0.9


def _student_agent(env) -> PPO:
    """The shipped student (frozen) with its feature map under a tiny actor."""
    return PPO(PerceptionPolicy, env, n_steps=8, batch_size=16, seed=3, device="cpu", policy_kwargs={
        "features_extractor_class": PerceptionExtractor,
        "features_extractor_kwargs": {"model_path": str(DEFAULT_STUDENT), "include_map": True},
        "map_channels": 8, "net_arch": {"pi": [16], "vf": [16]},
    })


def _student_weights(model: PPO) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.features_extractor.state_dict().items()}


@pytest.mark.parametrize("tune", [False, True])
def test_imitation_tunes_the_student_only_when_asked_and_leaves_it_frozen(tune):
    env = FastVecEnv(load_scenario("highway"), 2)
    env.seed(4)
    model = _student_agent(env)
    before = _student_weights(model)
    progress = imitate_teacher(model.policy, env, iterations=2, steps=2, tune_perception=tune)
    after = _student_weights(model)
    env.close()
    assert progress.samples == 2 * 2 * 2 and 0.0 <= progress.agreement <= 1.0
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    if tune:  # the fit reached the student's convolutions (and the rest)
        assert len(changed) > len(before) // 2
    else:
        assert changed == []
    # frozen again either way, for the rollouts and PPO's cached features
    assert not any(parameter.requires_grad for parameter in model.policy.features_extractor.parameters())


def test_tuning_the_student_refuses_the_regulariser_that_caches_its_features():
    env = FastVecEnv(load_scenario("highway"), 2)
    with pytest.raises(ValueError, match="tune_perception cannot go with smoothing"):
        imitate_teacher(_student_agent(env).policy, env, iterations=1, steps=1, tune_perception=True, smoothing=object())
    env.close()
