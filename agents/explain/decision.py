"""The function every explanation explains: camera frames -> the policy's decision.

    uint8 frames (B, C, H, W) --/255--> floats in [0, 1] --student--> features --actor MLP--> logits (B, A)
                                                                     --critic MLP--> value (B, 1)

SB3 divides uint8 observations by 255 inside the policy (`preprocess_obs`); SHAP and gradients must
see that scaling as part of the input, so `DecisionModel` takes the [0, 1] floats and runs the
rest of the policy itself (features extractor, `mlp_extractor`, `action_net` / `value_net`), the
same modules SB3's `predict` runs. A deterministic agent acts on the largest logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

Output = Literal["action", "value"]
OUTPUTS: tuple[str, ...] = ("action", "value")


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"unknown explained output {output!r}; choose one of: {', '.join(OUTPUTS)}")
    return output


class DecisionModel(nn.Module):
    """(B, C, H, W) floats in [0, 1] -> (B, A) action logits (`output="action"`) or (B, 1) value.

    Wraps the modules of an SB3 `ActorCriticPolicy` (shared features extractor); it owns no weights."""

    def __init__(self, policy, output: Output = "action") -> None:
        super().__init__()
        self.output = check_output(output)
        self.extractor = policy.features_extractor  # PerceptionExtractor: frames in [0, 1] -> features
        self.mlp = policy.mlp_extractor
        self.action_net = policy.action_net
        self.value_net = policy.value_net

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        features = self.extractor(frames)  # (B, F)
        if self.output == "action":
            return self.action_net(self.mlp.forward_actor(features))  # (B, A) logits
        return self.value_net(self.mlp.forward_critic(features))  # (B, 1)

    def with_output(self, output: Output) -> "DecisionModel":
        """The same policy, another explained output."""
        clone = DecisionModel.__new__(DecisionModel)
        nn.Module.__init__(clone)
        clone.output = check_output(output)
        clone.extractor, clone.mlp, clone.action_net, clone.value_net = self.extractor, self.mlp, self.action_net, self.value_net
        return clone

    @property
    def student(self) -> nn.Module:
        """The perception student (PerceptionNet) inside the extractor."""
        return self.extractor.model


@dataclass
class Decision:
    """What the agent decided on one observation, plus the student's attention."""

    action: int  # argmax of the logits: the deterministic action
    probabilities: np.ndarray  # (A,) softmax of the logits
    logits: np.ndarray  # (A,)
    value: float  # the critic's estimate of the return
    attention: np.ndarray  # (h, w) float32, sums to 1: the student's attention pool (mean of heads)


def to_input(observations: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (C, H, W) or (B, C, H, W) -> float (B, C, H, W) in [0, 1], as SB3's preprocess_obs."""
    array = np.asarray(observations)
    if array.dtype != np.uint8:
        raise TypeError(f"observations must be uint8 camera frames, got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[None]
    return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=torch.float32) / 255.0


@torch.no_grad()
def decide(model: DecisionModel, observation: np.ndarray) -> Decision:
    """One forward pass: logits, value and attention of a (C, H, W) uint8 observation."""
    frames = to_input(observation, next(model.parameters()).device)
    features = model.extractor(frames)  # (1, F)
    logits = model.action_net(model.mlp.forward_actor(features))[0]  # (A,)
    value = model.value_net(model.mlp.forward_critic(features))[0, 0]
    attention = model.extractor.last_attention[0]  # (h, w)
    probabilities = torch.softmax(logits, dim=0)
    return Decision(int(torch.argmax(logits)), probabilities.cpu().numpy(), logits.cpu().numpy(),
                    float(value), attention.cpu().numpy().astype(np.float32))


@torch.no_grad()
def log_probabilities(model: DecisionModel, frames: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) floats in [0, 1] -> (B, A) log-probabilities of the actions."""
    return torch.log_softmax(model.with_output("action")(frames), dim=1)


@dataclass
class LoadedRun:
    """A run's agent, ready to explain."""

    run_dir: Path
    config: object  # agents.config.RunConfig
    model_path: Path  # the SB3 zip the weights came from
    num_timesteps: int
    agent: object  # SB3 PPO / A2C
    decision: DecisionModel


def load_run(run: str | Path, env, device: str = "cpu", logdir: str | Path = "runs", scenario: str | None = None) -> LoadedRun:
    """The newest valid model of `run`, rebuilt without unpickling (agents.runs.load_newest_agent), on `env`'s spaces.

    A run folder without a model is a FileNotFoundError; a scenario whose camera or actions differ
    from the run's is a ValueError (agents.runs.check_spaces)."""

    from agents.runs import check_spaces, find_run, load_agent_to_play, read_run_config

    run_dir = find_run(run, logdir)
    config = read_run_config(run_dir)
    check_spaces(config, run_dir, env.observation_space, env.action_space, scenario or config.scenario)
    agent, model_path = load_agent_to_play(config, run_dir, env, device)
    agent.policy.set_training_mode(False)
    return LoadedRun(run_dir, config, model_path, int(agent.num_timesteps), agent, DecisionModel(agent.policy))
