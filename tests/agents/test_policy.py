"""PerceptionPolicy: actor and critic that also read the student's feature map through a 1x1 conv."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticCnnPolicy
from stable_baselines3.common.torch_layers import MlpExtractor

from agents.policy import MapReducer, PerceptionPolicy
from perception.extractor import PerceptionExtractor
from perception.labels import LABEL_DIM
from perception.models import STUDENT
from tests.perception.test_extractor import SHAPE, TinyCameraEnv, student_path  # noqa: F401 (a fixture)

LEADING = STUDENT.embed_dim + LABEL_DIM  # embedding + predicted labels


def _ppo(student_path, policy=PerceptionPolicy, include_map=True, **policy_kwargs) -> PPO:
    return PPO(
        policy, TinyCameraEnv(), n_steps=16, batch_size=16, n_epochs=2, seed=0, device="cpu",
        policy_kwargs=dict(
            features_extractor_class=PerceptionExtractor,
            features_extractor_kwargs=dict(model_path=str(student_path), include_map=include_map),
            net_arch=dict(pi=[16], vf=[16]), **policy_kwargs,
        ),
    )


def test_map_reducer_passes_the_leading_features_and_convolves_every_place() -> None:
    torch.manual_seed(0)
    reducer = MapReducer(leading=5, map_shape=(6, 3, 2), channels=4)
    features = torch.randn(7, 5 + 6 * 3 * 2)
    out = reducer(features)
    assert out.shape == (7, reducer.out_features) == (7, 5 + 4 * 3 * 2)
    torch.testing.assert_close(out[:, :5], features[:, :5])
    feature_map = features[:, 5:].reshape(7, 6, 3, 2)
    weight, bias = reducer.conv.weight[:, :, 0, 0], reducer.conv.bias  # (4, 6), (4,)
    for row, col in [(0, 0), (2, 1)]:  # one place = one 6-vector through the same linear map and a ReLU
        expected = torch.relu(feature_map[:, :, row, col] @ weight.T + bias)  # (7, 4)
        torch.testing.assert_close(out[:, 5:].reshape(7, 4, 3, 2)[:, :, row, col], expected)


def test_actor_and_critic_read_the_map_through_their_own_trained_reducers(student_path) -> None:
    agent = _ppo(student_path, map_channels=4)
    policy = agent.policy
    map_shape = policy.features_extractor.map_shape
    assert policy.features_dim == LEADING + int(np.prod(map_shape))
    actor_reducer, critic_reducer = policy.mlp_extractor.policy_net[0], policy.mlp_extractor.value_net[0]
    assert isinstance(actor_reducer, MapReducer) and isinstance(critic_reducer, MapReducer)
    assert actor_reducer is not critic_reducer
    assert policy.mlp_extractor.policy_net[1].in_features == LEADING + 4 * map_shape[1] * map_shape[2]

    features = torch.randn(3, policy.features_dim)
    changed = features.clone()
    changed[:, LEADING:] += 1.0  # only the map
    with torch.no_grad():
        assert not torch.allclose(policy.mlp_extractor.forward_actor(features),
                                  policy.mlp_extractor.forward_actor(changed))

    before = actor_reducer.conv.weight.detach().clone()
    agent.learn(total_timesteps=32)
    assert not torch.equal(before, actor_reducer.conv.weight)  # PPO trains the reducer with the actor


def test_map_channels_zero_is_sb3s_cnn_policy_so_older_runs_still_load(student_path) -> None:
    ours = _ppo(student_path, include_map=False, map_channels=0).policy
    sb3 = _ppo(student_path, policy=ActorCriticCnnPolicy, include_map=False).policy
    assert type(ours.mlp_extractor) is MlpExtractor
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sb3.state_dict().items()}


def test_save_and_load_round_trip_keeps_map_channels_and_actions(student_path, tmp_path) -> None:
    agent = _ppo(student_path, map_channels=2)
    agent.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.map_channels == 2
    frames = np.random.default_rng(0).integers(0, 256, size=(4, *SHAPE), dtype=np.uint8)
    np.testing.assert_array_equal(agent.predict(frames, deterministic=True)[0],
                                  loaded.predict(frames, deterministic=True)[0])


def test_map_channels_without_the_map_in_the_features_is_a_clear_error(student_path) -> None:
    with pytest.raises(ValueError, match="include_map=True"):
        _ppo(student_path, include_map=False, map_channels=4)
    with pytest.raises(ValueError, match="map_channels must be >= 0"):
        _ppo(student_path, map_channels=-1)
