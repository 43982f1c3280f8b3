"""The agents' SB3 policy: SB3's `ActorCriticCnnPolicy`, whose actor and critic can also read the
perception student's last feature map, each through its own trainable 1x1 conv.

Why: the student's attention pool summarises the frame in K = 2 places (64 numbers), and the
policy imitating the teacher on that summary alone kept crashing: a classifier on those features
could not tell the states of its fatal mistakes apart (docs/BENCHMARKS.md). The last feature map
(C', h, w) = (32, 12, 6) keeps every 8 x 8 px cell of the frame. A 1x1 conv brings it down to
`map_channels` numbers per cell, so the first layer stays small: with 8 channels the actor reads
112 + 8 * 72 = 688 features instead of 112 + 2304.

Features (B, F0 + C'*h*w), from `PerceptionExtractor(include_map=True)`:
    [:, :F0]  embedding (+ predicted labels), passed through
    [:, F0:]  the feature map, flattened channel-major -> (B, C', h, w) -> conv 1x1 -> ReLU
              -> (B, map_channels, h, w) -> flattened, appended to the first part
then SB3's usual MLP of `net_arch`. The perception student stays frozen, so PPO can still cache
its features once per rollout (agents/cached_features.py): the convs are part of the MLP
extractor, not of the features extractor. `map_channels=0` is SB3's plain `ActorCriticCnnPolicy`.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.policies import ActorCriticCnnPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from stable_baselines3.common.utils import get_device
from torch import nn


class MapReducer(nn.Module):
    """(B, F0 + C*h*w) features -> (B, F0 + c*h*w): the map part through a 1x1 conv (C -> c) and a ReLU."""

    def __init__(self, leading: int, map_shape: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"MapReducer: channels must be >= 1, got {channels}")
        self.leading = int(leading)  # F0: embedding (+ labels)
        self.map_shape = tuple(int(n) for n in map_shape)  # (C, h, w)
        self.conv = nn.Conv2d(self.map_shape[0], channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=False)
        self.out_features = self.leading + channels * self.map_shape[1] * self.map_shape[2]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        head, flat_map = features[:, : self.leading], features[:, self.leading :]  # (B, F0), (B, C*h*w)
        feature_map = flat_map.reshape(-1, *self.map_shape)  # (B, C, h, w)
        reduced = self.relu(self.conv(feature_map))  # (B, c, h, w)
        return torch.cat([head, torch.flatten(reduced, start_dim=1)], dim=1)  # (B, F0 + c*h*w)


class MapMlpExtractor(MlpExtractor):
    """SB3's MlpExtractor, with a `MapReducer` of its own at the input of the actor and of the critic.

    The reducers are inside `policy_net` and `value_net`, so whatever trains the actor (PPO, A2C,
    imitation's `policy_net.parameters()`) trains its reducer too."""

    def __init__(self, feature_dim: int, net_arch: Any, activation_fn: type[nn.Module], device: Any,
                 map_shape: tuple[int, int, int], map_channels: int) -> None:
        leading = feature_dim - int(map_shape[0] * map_shape[1] * map_shape[2])
        if leading < 0:
            raise ValueError(f"MapMlpExtractor: {feature_dim} features cannot hold a map of shape {map_shape}")
        actor_reducer = MapReducer(leading, map_shape, map_channels)
        critic_reducer = MapReducer(leading, map_shape, map_channels)  # its own weights: the critic's loss is not the actor's
        super().__init__(actor_reducer.out_features, net_arch=net_arch, activation_fn=activation_fn, device=device)
        self.policy_net = nn.Sequential(actor_reducer, *self.policy_net)
        self.value_net = nn.Sequential(critic_reducer, *self.value_net)
        self.to(get_device(device))


class PerceptionPolicy(ActorCriticCnnPolicy):
    """ActorCriticCnnPolicy; with `map_channels > 0` its actor and critic also read the student's feature map.

    The features extractor must then be a `PerceptionExtractor(include_map=True)` (its `map_shape`)."""

    def __init__(self, *args: Any, map_channels: int = 0, **kwargs: Any) -> None:
        if map_channels < 0:
            raise ValueError(f"PerceptionPolicy: map_channels must be >= 0, got {map_channels}")
        self.map_channels = int(map_channels)
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        if self.map_channels == 0:
            return super()._build_mlp_extractor()
        map_shape = getattr(self.features_extractor, "map_shape", None)
        if map_shape is None:
            raise ValueError(
                "PerceptionPolicy: map_channels > 0 needs a features extractor that appends the feature map "
                "(PerceptionExtractor(include_map=True))"
            )
        self.mlp_extractor = MapMlpExtractor(
            self.features_dim, self.net_arch, self.activation_fn, self.device, map_shape, self.map_channels
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "map_channels": self.map_channels}
