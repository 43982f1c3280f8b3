"""CachedFeaturesPPO: the same updates as SB3's PPO, with the frozen student run once per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from agents.cached_features import CachedFeaturesPPO, frozen_extractor, rollout_features
from envs.fast.vec_env import FastVecEnv
from perception.extractor import PerceptionExtractor
from scenarios import load_scenario
from tests.agents import make_tiny

N_ENVS, N_STEPS = 4, 8


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("cached")).student


def make_agent(algorithm, student, fine_tune: bool = False):
    env = FastVecEnv(load_scenario("highway"), N_ENVS)
    return algorithm(
        "CnnPolicy", env, n_steps=N_STEPS, batch_size=16, n_epochs=3, seed=7, device="cpu",
        policy_kwargs={
            "features_extractor_class": PerceptionExtractor,
            "features_extractor_kwargs": {"model_path": str(student), "fine_tune": fine_tune},
            "net_arch": {"pi": [16], "vf": [16]},
        },
    )


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def test_updates_match_plain_ppo_and_the_policy_is_restored(student):
    initial, trained, models = {}, {}, {}
    for algorithm in (PPO, CachedFeaturesPPO):  # one after the other: each seeds the global RNGs when built
        models[algorithm] = model = make_agent(algorithm, student)
        initial[algorithm] = parameters(model)
        model.learn(total_timesteps=2 * N_ENVS * N_STEPS)  # two rollouts, two updates
        trained[algorithm] = parameters(model)
    before, after = initial[CachedFeaturesPPO], trained[CachedFeaturesPPO]
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all(not name.startswith("features_extractor.") for name in changed)
    for name, value in trained[PPO].items():
        torch.testing.assert_close(after[name], value, rtol=1e-4, atol=1e-5, msg=name)

    cached = models[CachedFeaturesPPO]
    policy = cached.policy
    assert isinstance(policy.features_extractor, PerceptionExtractor)
    assert policy.normalize_images and policy.observation_space.shape == (9, 96, 48)
    assert cached.rollout_buffer.observations.dtype == np.uint8  # frames again, not features


def test_features_are_the_policy_s_own(student):
    model = make_agent(CachedFeaturesPPO, student)
    frames = np.random.default_rng(0).integers(0, 256, (3, 2, 9, 96, 48), dtype=np.uint8)  # (n_steps, n_envs, C, H, W)
    features = rollout_features(model.policy, frames, batch=4)  # chunks that split the rollout unevenly
    assert features.shape == (3, 2, model.policy.features_extractor.features_dim) and features.dtype == np.float32
    with torch.no_grad():
        direct = model.policy.extract_features(torch.as_tensor(frames[2, 1][None]))
    np.testing.assert_allclose(features[2, 1], direct[0].numpy(), rtol=1e-5, atol=1e-6)


def test_fine_tuning_is_plain_ppo(student):
    assert frozen_extractor(make_agent(CachedFeaturesPPO, student).policy)
    assert not frozen_extractor(make_agent(CachedFeaturesPPO, student, fine_tune=True).policy)
