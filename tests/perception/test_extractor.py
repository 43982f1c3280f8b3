"""The SB3 features extractor: frozen by default, fine-tunable, scaled like the models expect."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

import perception.extractor as extractor_module
from perception.checkpoint import load_model, save_checkpoint
from perception.extractor import PerceptionExtractor
from perception.labels import LABEL_DIM
from perception.models import STUDENT, build_model


SHAPE = (9, 32, 16)  # (C, H, W): three stacked RGB frames, like the env's (9, 96, 48) but smaller


class TinyCameraEnv(gym.Env):
    """uint8 frames of SHAPE; reward 1 for action 1 when the frame is bright, for action 0 when dark."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, SHAPE, np.uint8)
        self.action_space = spaces.Discrete(2)
        self._frame = np.zeros(SHAPE, np.uint8)
        self._steps = 0

    def _observe(self) -> np.ndarray:
        self._frame = self.np_random.integers(0, 256, size=SHAPE, dtype=np.uint8)
        return self._frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._steps = 0
        return self._observe(), {}

    def step(self, action):
        reward = float(int(action) == int(self._frame.mean() > 127.5))
        self._steps += 1
        return self._observe(), reward, False, self._steps >= 8, {}


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    save_checkpoint(path, build_model("student", *SHAPE))
    return path


def _ppo(student_path, **extractor_kwargs) -> PPO:
    return PPO(
        "CnnPolicy",
        TinyCameraEnv(),
        n_steps=16,
        batch_size=16,
        n_epochs=2,
        seed=0,
        device="cpu",
        policy_kwargs=dict(
            features_extractor_class=PerceptionExtractor,
            features_extractor_kwargs=dict(model_path=str(student_path), **extractor_kwargs),
            net_arch=dict(pi=[16], vf=[16]),
        ),
    )


def _perception_state(agent: PPO) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in agent.policy.features_extractor.model.named_parameters()}


def test_sb3_treats_the_stacked_frames_as_channels_first_images() -> None:
    """The facts the extractor relies on: SB3 divides these observations by 255 and does not transpose them."""
    for shape in (SHAPE, (9, 96, 48)):
        space = spaces.Box(0, 255, shape, np.uint8)
        assert is_image_space(space, check_channels=False)  # 9 channels: only without the channel check
        assert not is_image_space(space, check_channels=True)
        assert is_image_space_channels_first(space)


def test_frozen_perception_does_not_change_while_the_policy_learns(student_path) -> None:
    agent = _ppo(student_path)
    extractor = agent.policy.features_extractor
    assert isinstance(extractor, PerceptionExtractor)
    assert extractor.features_dim == STUDENT.embed_dim + LABEL_DIM
    assert all(not p.requires_grad for p in extractor.model.parameters())
    before = _perception_state(agent)
    # SB3's orthogonal init of the policy must not have touched the pretrained weights
    checkpoint, _ = load_model(student_path)
    pretrained = checkpoint.state_dict()
    assert all(torch.equal(value, pretrained[name]) for name, value in before.items())
    head_before = {name: p.detach().clone() for name, p in agent.policy.action_net.named_parameters()}
    agent.learn(total_timesteps=48)
    assert not extractor.model.training  # SB3 switched the policy to train mode; the frozen model stayed in eval
    after = _perception_state(agent)
    assert all(torch.equal(before[name], after[name]) for name in before)
    # while the policy head on top of it did learn
    assert any(not torch.equal(head_before[n], p) for n, p in agent.policy.action_net.named_parameters())


def test_fine_tuned_perception_changes(student_path) -> None:
    agent = _ppo(student_path, fine_tune=True)
    extractor = agent.policy.features_extractor
    assert all(p.requires_grad for p in extractor.model.parameters())
    before = _perception_state(agent)
    agent.learn(total_timesteps=48)
    after = _perception_state(agent)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before)


@pytest.mark.parametrize("include_labels", [True, False])
def test_features_are_the_models_outputs_on_frames_divided_by_255(student_path, include_labels) -> None:
    agent = _ppo(student_path, include_labels=include_labels)
    model = agent.policy.features_extractor.model
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(3, *SHAPE), dtype=np.uint8))
    with torch.no_grad():
        features = agent.policy.extract_features(frames)  # SB3's path: preprocess_obs, then the extractor
        out = model(frames.float() / 255.0)
    expected = torch.cat([out.embedding, out.labels], dim=1) if include_labels else out.embedding
    assert features.shape == (3, STUDENT.embed_dim + (LABEL_DIM if include_labels else 0))
    torch.testing.assert_close(features, expected)
    assert agent.policy.features_extractor.last_attention.shape == (3, *model.feature_shape[1:])


def test_include_map_appends_the_last_feature_map_flattened_channel_major(student_path) -> None:
    extractor = PerceptionExtractor(spaces.Box(0, 255, SHAPE, np.uint8), model_path=student_path, include_map=True)
    model = extractor.model
    frames = torch.rand(3, *SHAPE)
    with torch.no_grad():
        features = extractor(frames)
        out = model(frames)
        feature_map = model.stages(frames)  # (3, C', h, w)
    leading = STUDENT.embed_dim + LABEL_DIM
    assert extractor.map_shape == model.feature_shape == tuple(feature_map.shape[1:])
    assert extractor.features_dim == features.shape[1] == leading + feature_map[0].numel()
    torch.testing.assert_close(features[:, :leading], torch.cat([out.embedding, out.labels], dim=1))
    torch.testing.assert_close(features[:, leading:].reshape(feature_map.shape), feature_map)


def test_input_gradients_flow_through_the_frozen_extractor(student_path) -> None:
    """Adversarial evaluation and SHAP differentiate the policy with respect to its input."""
    extractor = PerceptionExtractor(spaces.Box(0, 255, SHAPE, np.uint8), model_path=student_path)
    x = torch.rand(2, *SHAPE, requires_grad=True)
    extractor(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())


def test_unnormalised_observations_are_refused(student_path) -> None:
    agent = PPO(
        "CnnPolicy", TinyCameraEnv(), n_steps=16, batch_size=16, device="cpu",
        policy_kwargs=dict(
            features_extractor_class=PerceptionExtractor,
            features_extractor_kwargs=dict(model_path=str(student_path)),
            normalize_images=False,
        ),
    )
    with pytest.raises(ValueError, match="expected floats in \\[0, 1\\]; keep the policy's normalize_images=True"):
        agent.predict(np.full(SHAPE, 200, np.uint8))


def test_shape_mismatch_names_both_shapes(student_path) -> None:
    space = spaces.Box(0, 255, (9, 96, 48), np.uint8)
    message = r"\(C, H, W\) = \(9, 32, 16\), but the observation space has shape \(9, 96, 48\)"
    with pytest.raises(ValueError, match=message):
        PerceptionExtractor(space, model_path=student_path)


@pytest.mark.parametrize(
    "space, message",
    [
        (spaces.Box(0, 1, (16,), np.float32), "needs an image observation space"),
        (spaces.Box(0, 100, SHAPE, np.uint8), "must have bounds \\[0, 255\\]"),
        (spaces.Box(0, 255, SHAPE, np.float32), "float observation space must lie in \\[0, 1\\]"),
    ],
)
def test_bad_observation_spaces(student_path, space, message) -> None:
    with pytest.raises(ValueError, match=message):
        PerceptionExtractor(space, model_path=student_path)


def test_missing_default_weights_say_how_to_make_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(extractor_module, "DEFAULT_STUDENT", tmp_path / "weights" / "student.safetensors")
    with pytest.raises(FileNotFoundError, match="student.safetensors is missing.*python run.py perception distill"):
        PerceptionExtractor(spaces.Box(0, 255, SHAPE, np.uint8))
    with pytest.raises(FileNotFoundError, match="perception checkpoint not found"):
        PerceptionExtractor(spaces.Box(0, 255, SHAPE, np.uint8), model_path=tmp_path / "other.safetensors")


def test_default_weights_are_used_when_present(student_path, monkeypatch) -> None:
    monkeypatch.setattr(extractor_module, "DEFAULT_STUDENT", student_path)
    extractor = PerceptionExtractor(spaces.Box(0, 255, SHAPE, np.uint8))
    assert extractor.model_path == str(student_path)
