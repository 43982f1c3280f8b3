"""PPO that runs the frozen perception student once per collected sample, not once per epoch.

SB3's PPO re-reads every rollout sample `n_epochs` times, and each read runs the whole policy
from the frames: `preprocess_obs` (uint8 -> float / 255) and the perception CNN, then the MLPs.
With a frozen student (`policy.fine_tune: false`, the default) the CNN gives the same features
every time, so this computes them once per rollout, in large batches without autograd, and lets
SB3's own `PPO.train` read them instead of the frames:

- the rollout buffer's observations (n_steps, n_envs, C, H, W) uint8 are swapped for the features
  (n_steps, n_envs, F) float32;
- for the length of `train`, the policy's feature extractor is an identity and it does not divide
  its input by 255 (features are not images).

Both are put back afterwards, even on an exception, so the saved model is the ordinary SB3 PPO with
`PerceptionPolicy` + `PerceptionExtractor`: `PPO.load`, evaluation and attention overlays do not change.
The gradients are the same as plain PPO's: with the student frozen, no gradient reached it anyway.
On the 2-core CI machine this removes 10 of every 11 CNN passes over the frames (see
docs/BENCHMARKS.md for the measured speed-up). With `fine_tune: true` it is plain PPO.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

FEATURE_BATCH = 256  # frames per perception pass when caching (measured: 256 runs the CPU conv ~2.5x faster per frame than 1024)


def frozen_extractor(policy: ActorCriticPolicy) -> bool:
    """Whether the policy's shared feature extractor has no trainable parameter."""
    if not policy.share_features_extractor:
        return False
    return not any(parameter.requires_grad for parameter in policy.features_extractor.parameters())


@torch.no_grad()
def rollout_features(policy: ActorCriticPolicy, observations: np.ndarray, batch: int = FEATURE_BATCH) -> np.ndarray:
    """Features of every stored frame: (n_steps, n_envs, C, H, W) uint8 -> (n_steps, n_envs, F) float32."""
    flat = observations.reshape(-1, *observations.shape[2:])  # (S, C, H, W)
    chunks = []
    for start in range(0, len(flat), batch):
        frames = torch.as_tensor(flat[start : start + batch], device=policy.device)
        chunks.append(policy.extract_features(frames).cpu().numpy())  # (b, F)
    features = np.concatenate(chunks).astype(np.float32, copy=False)
    return features.reshape(*observations.shape[:2], -1)


@contextmanager
def policy_reads_features(policy: ActorCriticPolicy, feature_shape: tuple[int, ...]) -> Iterator[None]:
    """Within the block, `policy` reads features of `feature_shape` (its extractor is an identity and
    it does not divide by 255); its extractor, observation space and normalisation are restored after."""
    saved = (policy.features_extractor, policy.observation_space, policy.normalize_images)
    try:
        policy.features_extractor = nn.Identity()
        policy.observation_space = spaces.Box(-np.inf, np.inf, tuple(feature_shape), np.float32)
        policy.normalize_images = False
        yield
    finally:
        policy.features_extractor, policy.observation_space, policy.normalize_images = saved


@contextmanager
def features_in_place_of_frames(policy: ActorCriticPolicy, buffer: RolloutBuffer) -> Iterator[None]:
    """Within the block, `buffer` holds the features and `policy` reads features; both restored after."""
    frames, flat = buffer.observations, buffer.generator_ready  # flat: get() already made them (N, C, H, W)
    features = rollout_features(policy, frames[:, None] if flat else frames)  # (T, n_envs, F) or (N, 1, F)
    try:
        buffer.observations = features[:, 0] if flat else features
        with policy_reads_features(policy, features.shape[2:]):
            yield
    finally:
        # RolloutBuffer.get flattens its arrays to (n_steps * n_envs, ...) once and marks it: keep the frames in step
        buffer.observations = buffer.swap_and_flatten(frames) if buffer.generator_ready and not flat else frames


class CachedFeaturesPPO(PPO):
    """stable-baselines3 PPO; with a frozen feature extractor, each epoch reads cached features."""

    def train(self) -> None:
        if not frozen_extractor(self.policy):
            return super().train()
        with features_in_place_of_frames(self.policy, self.rollout_buffer):
            super().train()
