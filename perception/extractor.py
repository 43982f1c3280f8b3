"""The perception student as a stable-baselines3 features extractor.

    model = PPO("CnnPolicy", env, policy_kwargs=dict(
        features_extractor_class=PerceptionExtractor,
        features_extractor_kwargs=dict(model_path="runs/perception/student.safetensors"),
    ))

features = concat(embedding (B, E), predicted labels (B, D)) with include_labels (default), else
the embedding alone; features_dim = E + D or E. With include_map the student's last feature map
(B, C', h, w) follows, flattened channel-major (B, C'*h*w): `agents.policy.PerceptionPolicy` reads
it back as a map.

Input scaling: SB3's policy calls `preprocess_obs(obs, observation_space, normalize_images=True)`
before the extractor, which divides by 255 whenever `is_image_space(observation_space)` holds:
a Box of dtype uint8 with bounds [0, 255] and 3 dimensions. That check runs with
`check_channels=False`, so clearlane's stacked 9-channel frames count as images. SB3 only
transposes observations (VecTransposeImage) when `is_image_space_channels_first` is False; it calls a
space channels-first when its smallest dimension is the first, which holds for clearlane's (C, H, W)
= (9, 96, 48). So this extractor receives floats in [0, 1] in (B, C, H, W), what the models read.
Keep the policy's `normalize_images=True` (the default): `forward` refuses inputs above 1.

Frozen (default): every parameter of the perception model has requires_grad False, so the policy's
optimizer never changes it, and the model stays in eval mode even when SB3 calls `policy.train()`
(clearlane's perception has no BatchNorm or dropout, so both modes compute the same function
anyway). Gradients still flow to the *input*, which adversarial evaluation and SHAP need.
`fine_tune=True` trains the perception model with the policy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from perception.checkpoint import load_model

DEFAULT_STUDENT = Path(__file__).parent / "weights" / "student.safetensors"
"""the shipped student; `model_path=None` loads it"""


def _check_space(observation_space: spaces.Space) -> tuple[int, int, int]:
    """The (C, H, W) of an image observation space that SB3 scales into [0, 1], or a clear error."""
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
        raise ValueError(
            f"PerceptionExtractor needs an image observation space Box(0, 255, (C, H, W), uint8), "
            f"got {observation_space}"
        )
    if observation_space.dtype == np.uint8:
        if np.any(observation_space.low != 0) or np.any(observation_space.high != 255):
            raise ValueError(
                f"PerceptionExtractor: a uint8 observation space must have bounds [0, 255] (else SB3 does not divide "
                f"it by 255), got {observation_space}"
            )
    elif np.any(observation_space.low < 0) or np.any(observation_space.high > 1):
        raise ValueError(
            f"PerceptionExtractor: a float observation space must lie in [0, 1] (SB3 passes floats through "
            f"unscaled), got {observation_space}"
        )
    return tuple(int(n) for n in observation_space.shape)  # type: ignore[return-value]


class PerceptionExtractor(BaseFeaturesExtractor):
    """Camera frames (B, C, H, W) in [0, 1] -> perception features (B, E [+ D]).

    observation_space: the (C, H, W) image space the policy sees; it must equal the checkpoint's input shape.
    model_path:        a perception checkpoint (.safetensors); None = DEFAULT_STUDENT, the shipped student.
    fine_tune:         train the perception weights with the policy (default: frozen).
    include_labels:    append the predicted label vector (perception.labels) to the embedding.
    include_map:       append the last feature map (C', h, w), flattened; `map_shape` is then its shape.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        model_path: str | os.PathLike | None = None,
        fine_tune: bool = False,
        include_labels: bool = True,
        include_map: bool = False,
    ) -> None:
        obs_shape = _check_space(observation_space)
        if model_path is None:
            model_path = DEFAULT_STUDENT
            if not Path(model_path).is_file():
                raise FileNotFoundError(
                    f"the shipped perception student {model_path} is missing; make one with "
                    f"`python run.py perception distill` and copy it there, or pass "
                    f"features_extractor_kwargs=dict(model_path=...)"
                )
        model, metadata = load_model(model_path, "cpu")
        if model.input_shape != obs_shape:
            raise ValueError(
                f"perception checkpoint {model_path} reads frames of shape (C, H, W) = {model.input_shape}, "
                f"but the observation space has shape {obs_shape}; use a checkpoint trained on this camera "
                f"(same camera, frame stack and resolution) or change the scenario's camera settings"
            )
        self.map_shape = model.feature_shape if include_map else None  # (C', h, w) or None
        map_size = int(np.prod(model.feature_shape)) if include_map else 0
        features_dim = model.embed_dim + (model.label_dim if include_labels else 0) + map_size
        super().__init__(observation_space, features_dim)
        self.model = model
        self.model_path = str(model_path)
        self.metadata = metadata
        self.fine_tune = bool(fine_tune)
        self.include_labels = bool(include_labels)
        if not self.fine_tune:
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
            self.model.eval()

    def apply(self, fn) -> "PerceptionExtractor":
        """Apply `fn` to this module only, never to the loaded perception model.

        SB3's ActorCriticPolicy runs its orthogonal initialisation (`ortho_init=True`) through
        `features_extractor.apply`; recursing into the model would overwrite the pretrained
        weights with random ones. (Device moves use `_apply` and still reach the model.)
        """
        fn(self)
        return self

    def train(self, mode: bool = True) -> "PerceptionExtractor":
        """As nn.Module.train, but a frozen perception model stays in eval mode."""
        super().train(mode)
        if not self.fine_tune:
            self.model.eval()
        return self

    @property
    def last_attention(self) -> torch.Tensor | None:
        """The attention map (B, h, w) of the last forward pass (detached), for overlays."""
        return self.model.pool.last_attention

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        # observations (B, C, H, W) float in [0, 1]: SB3's preprocess_obs divided uint8 frames by 255
        largest = float(observations.detach().max()) if observations.numel() else 0.0
        if largest > 1.0 + 1e-6:
            raise ValueError(
                f"PerceptionExtractor got observations up to {largest:.4g}, expected floats in "
                f"[0, 1]; keep the policy's normalize_images=True so that SB3 divides uint8 frames by 255"
            )
        out, feature_map = self.model.forward_with_map(observations)
        parts = [out.embedding, out.labels] if self.include_labels else [out.embedding]  # (B, E), (B, D)
        if self.map_shape is not None:
            parts.append(torch.flatten(feature_map, start_dim=1))  # (B, C'*h*w)
        return torch.cat(parts, dim=1)  # (B, features_dim)
