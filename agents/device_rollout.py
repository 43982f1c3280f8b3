"""PPO whose rollouts stay on the policy's device, from the fast simulator to the optimizer step.

SB3's `collect_rollouts` moves every observation to the host (a NumPy rollout buffer of frames)
and `RolloutBuffer.get` moves every minibatch back; with a frozen student `CachedFeaturesPPO`
then runs the student over the whole buffer once more before the update. On a GPU that loop is
launch-bound and waits on copies (docs/BENCHMARKS.md: 2,205 env steps/s with 256 envs on an
H200). `DevicePPO` keeps it on the device when its env is a `FastVecEnv` (bare or under
`VecMonitor`) and the student is frozen:

    FastVecEnv.observe_tensor()       (B, C, H, W) uint8, on the device
      -> policy.extract_features      (B, F) float32, no grad: the student runs once per sample
      -> the policy's MLP heads       actions (B,), values (B, 1), log-probs (B,): ActorCriticPolicy.forward
      -> FastVecEnv.step_async_on_device(actions); VecMonitor / FastVecEnv.step_wait
      -> DeviceRolloutBuffer.add      features, not frames; timeouts bootstrapped on the device
      -> compute_returns_and_advantage (GAE, SB3's recursion in torch)
      -> SB3's own PPO.train          minibatches indexed on the device, extractor an identity

What still goes to the host each step, so that VecMonitor, `ep_info_buffer` and callbacks are
unchanged: one packed copy of the step's rewards, dones, seeds and safety signals (B * ~15
numbers), the Python dicts built from them (O(B) Python work: the cost that remains, measured by
agents/bench_device.py), and the (E,) rows of finished envs. Observations, features, actions,
values and minibatches never do. Terminal observations in `infos` are device tensors.

Same updates as SB3: the minibatch permutation is SB3's `np.random.permutation` (drawn on the host,
cheap) indexing SB3's env-major flat order, GAE is SB3's recursion, and `train` is SB3's
`PPO.train`; tests/agents/test_device_rollout.py checks equality with SB3's buffer and with
`CachedFeaturesPPO`. The saved zip is plain PPO (`agents.runs.load_agent`, `PPO.load`).

Otherwise (another VecEnv, a wrapper that changes observations, a trainable student, a buffer
class of the user's) it is `CachedFeaturesPPO`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from agents.cached_features import CachedFeaturesPPO, frozen_extractor, policy_reads_features
from envs.fast.vec_env import FastVecEnv


class DeviceRolloutBuffer(BaseBuffer):
    """SB3's `RolloutBuffer` (same constructor, `reset`, `add`, `compute_returns_and_advantage`,
    `get`), with every array a torch tensor on `device`.

    `observation_space` is the space of what is stored: the frozen student's features, (F,).
    Arrays are env-major, (n_envs, buffer_size, ...): SB3's `get` flattens its (buffer_size,
    n_envs, ...) arrays into this order, so here flattening is a view, not a copy, and
    `values.flatten()` is in SB3's order. They are allocated once and overwritten by each rollout.
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space,
                 device: torch.device | str = "auto", gae_lambda: float = 1, gamma: float = 0.99,
                 n_envs: int = 1) -> None:
        super().__init__(buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.gae_lambda = gae_lambda
        self.gamma = gamma
        shape = (self.n_envs, self.buffer_size)
        options = {"dtype": torch.float32, "device": self.device}
        self.observations = torch.zeros((*shape, *self.obs_shape), **options)  # (n_envs, T, F) features
        self.actions = torch.zeros((*shape, self.action_dim), **options)  # (n_envs, T, 1): float, as SB3's get
        self.rewards = torch.zeros(shape, **options)  # (n_envs, T), timeouts bootstrapped
        self.returns = torch.zeros(shape, **options)
        self.episode_starts = torch.zeros(shape, **options)  # 1.0 where the sample starts an episode
        self.values = torch.zeros(shape, **options)
        self.log_probs = torch.zeros(shape, **options)
        self.advantages = torch.zeros(shape, **options)
        self.reset()

    def reset(self) -> None:
        """Start a new rollout (the arrays are overwritten, not zeroed: `get` needs a full buffer)."""
        super().reset()

    def _tensor(self, data: torch.Tensor | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(data, device=self.device)

    def add(self, obs: torch.Tensor | np.ndarray, action: torch.Tensor | np.ndarray, reward: torch.Tensor | np.ndarray,
            episode_start: torch.Tensor | np.ndarray, value: torch.Tensor, log_prob: torch.Tensor) -> None:
        """One step of every env: features (n_envs, F), actions (n_envs,), rewards, episode starts and
        log-probs (n_envs,), values (n_envs, 1); tensors (any device) or arrays."""
        if self.full:
            raise ValueError(f"DeviceRolloutBuffer is full ({self.buffer_size} steps): reset it first")
        step = self.pos
        self.observations[:, step] = self._tensor(obs).reshape(self.n_envs, *self.obs_shape)
        self.actions[:, step] = self._tensor(action).reshape(self.n_envs, self.action_dim)
        self.rewards[:, step] = self._tensor(reward).reshape(self.n_envs)
        self.episode_starts[:, step] = self._tensor(episode_start).reshape(self.n_envs)
        self.values[:, step] = self._tensor(value).reshape(self.n_envs)
        self.log_probs[:, step] = self._tensor(log_prob).reshape(self.n_envs)
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: torch.Tensor | np.ndarray) -> None:
        """GAE(lambda) advantages and TD(lambda) returns: RolloutBuffer's recursion, term for term.

        last_values: (n_envs, 1) or (n_envs,) values of the observations after the last step;
        dones: (n_envs,) whether that last step ended the episode."""
        last_values = self._tensor(last_values).reshape(self.n_envs).to(torch.float32)
        dones = self._tensor(dones).reshape(self.n_envs).to(torch.float32)
        last_gae_lam = torch.zeros(self.n_envs, dtype=torch.float32, device=self.device)
        for step in reversed(range(self.buffer_size)):
            if step == self.buffer_size - 1:
                next_non_terminal = 1.0 - dones
                next_values = last_values
            else:
                next_non_terminal = 1.0 - self.episode_starts[:, step + 1]
                next_values = self.values[:, step + 1]
            delta = self.rewards[:, step] + self.gamma * next_values * next_non_terminal - self.values[:, step]
            last_gae_lam = delta + self.gamma * self.gae_lambda * next_non_terminal * last_gae_lam
            self.advantages[:, step] = last_gae_lam
        torch.add(self.advantages, self.values, out=self.returns)

    def get(self, batch_size: int | None = None) -> Iterator[RolloutBufferSamples]:
        """Minibatches in SB3's order: the same `np.random.permutation` of the same flat indices,
        moved to the device once per call (one epoch)."""
        if not self.full:
            raise ValueError(f"DeviceRolloutBuffer.get needs a full rollout: {self.pos} of {self.buffer_size} steps")
        total = self.buffer_size * self.n_envs
        order = torch.as_tensor(np.random.permutation(total), device=self.device)  # (N,) int64
        if batch_size is None:
            batch_size = total
        for start in range(0, total, batch_size):
            yield self._get_samples(order[start : start + batch_size])

    def _get_samples(self, batch_inds: torch.Tensor, env: Any = None) -> RolloutBufferSamples:
        """(b,) int64 flat env-major indices -> SB3's RolloutBufferSamples, on the device."""
        total = self.buffer_size * self.n_envs
        return RolloutBufferSamples(
            self.observations.reshape(total, *self.obs_shape)[batch_inds],  # (b, F)
            self.actions.reshape(total, self.action_dim)[batch_inds],  # (b, 1) float32
            self.values.reshape(total)[batch_inds],  # (b,)
            self.log_probs.reshape(total)[batch_inds],
            self.advantages.reshape(total)[batch_inds],
            self.returns.reshape(total)[batch_inds],
        )


def fast_env_of(env: VecEnv | None) -> FastVecEnv | None:
    """The FastVecEnv under `env` when nothing between changes observations (only VecMonitor may wrap
    it) and its tensor observations are what it shows SB3; else None."""
    while type(env) is VecMonitor:  # not a subclass: it could change what step_wait returns
        env = env.venv
    if isinstance(env, FastVecEnv) and env.on_device_observations:
        return env
    return None


def act(policy: ActorCriticPolicy, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`ActorCriticPolicy.forward` after `extract_features` (shared extractor): (B, F) features ->
    sampled actions (B, *action shape), values (B, 1), log-probs (B,)."""
    latent_pi, latent_vf = policy.mlp_extractor(features)
    values = policy.value_net(latent_vf)
    distribution = policy._get_action_dist_from_latent(latent_pi)
    actions = distribution.get_actions(deterministic=False)
    log_prob = distribution.log_prob(actions)
    return actions.reshape((-1, *policy.action_space.shape)), values, log_prob


def predict_values(policy: ActorCriticPolicy, features: torch.Tensor) -> torch.Tensor:
    """`ActorCriticPolicy.predict_values` after `extract_features`: (B, F) -> (B, 1)."""
    return policy.value_net(policy.mlp_extractor.forward_critic(features))


@contextmanager
def explained_variance_on_host() -> Iterator[None]:
    """SB3's PPO.train ends with `explained_variance(buffer.values.flatten(), buffer.returns.flatten())`,
    which calls np.var: within the block, tensors are copied to the host first (once per update)."""
    import stable_baselines3.ppo.ppo as ppo_module

    original = ppo_module.explained_variance

    def on_host(y_pred: Any, y_true: Any) -> float:
        as_numpy = lambda data: data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data  # noqa: E731
        return original(as_numpy(y_pred), as_numpy(y_true))

    ppo_module.explained_variance = on_host
    try:
        yield
    finally:
        ppo_module.explained_variance = original


class _Unallocated:
    """Stands in for the rollout buffer while SB3 builds the policy (the real one needs the policy's
    feature size, and SB3's would allocate a host buffer of frames that this path never uses)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class DevicePPO(CachedFeaturesPPO):
    """stable-baselines3 PPO; on a FastVecEnv with a frozen student, rollouts and updates stay on
    the policy's device (`DeviceRolloutBuffer`); otherwise `CachedFeaturesPPO`."""

    _feature_cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (observations, their features)

    # -- building ------------------------------------------------------------------------------
    def _setup_model(self) -> None:
        if self.rollout_buffer_class not in (None, RolloutBuffer) or self.rollout_buffer_kwargs:
            return super()._setup_model()  # the user's own buffer: SB3's path
        self.rollout_buffer_class = _Unallocated
        try:
            super()._setup_model()
        finally:
            self.rollout_buffer_class = RolloutBuffer  # what a saved zip names: plain PPO's
        self.rollout_buffer = self._buffer_for(self.env)

    def on_device(self, env: VecEnv | None) -> bool:
        """Whether rollouts on `env` stay on the device: a FastVecEnv and a frozen, shared student."""
        return (
            fast_env_of(env) is not None
            and frozen_extractor(self.policy)
            and isinstance(self.action_space, spaces.Discrete)
        )

    def _buffer_for(self, env: VecEnv | None) -> RolloutBuffer | DeviceRolloutBuffer:
        if self.on_device(env):
            features = spaces.Box(-np.inf, np.inf, (self.policy.features_dim,), np.float32)
            return DeviceRolloutBuffer(self.n_steps, features, self.action_space, device=self.device,
                                       gamma=self.gamma, gae_lambda=self.gae_lambda, n_envs=self.n_envs)
        return RolloutBuffer(self.n_steps, self.observation_space, self.action_space, device=self.device,
                             gamma=self.gamma, gae_lambda=self.gae_lambda, n_envs=self.n_envs)

    def _excluded_save_params(self) -> list[str]:
        """Device tensors are not pickled into the zip: it stays plain PPO, loadable on any machine
        (without `_last_obs` a later `learn` resets the env, as after `set_env`)."""
        excluded = [*super()._excluded_save_params(), "_feature_cache"]
        for name in ("_last_obs", "_last_episode_starts"):
            if isinstance(getattr(self, name, None), torch.Tensor):
                excluded.append(name)
        return excluded

    # -- collecting ----------------------------------------------------------------------------
    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        wanted = DeviceRolloutBuffer if self.on_device(env) else RolloutBuffer
        if type(rollout_buffer) is not wanted:  # set_env changed the kind of env
            rollout_buffer = self.rollout_buffer = self._buffer_for(env)
        if wanted is RolloutBuffer:
            if isinstance(self._last_obs, torch.Tensor):
                self._last_obs = self._last_obs.cpu().numpy()
                self._last_episode_starts = self._last_episode_starts.cpu().numpy()
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        return self._collect_on_device(env, fast_env_of(env), callback, rollout_buffer, n_rollout_steps)

    def _features(self, observations: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 -> (B, F) student features; the last observations of a rollout are the
        first of the next, so their features are kept (the student is frozen: they do not change)."""
        cached = self._feature_cache
        if cached is not None and cached[0] is observations:
            return cached[1]
        features = self.policy.extract_features(observations)
        self._feature_cache = (observations, features)
        return features

    def _collect_on_device(self, env: VecEnv, fast: FastVecEnv, callback: BaseCallback,
                           rollout_buffer: DeviceRolloutBuffer, n_rollout_steps: int) -> bool:
        """OnPolicyAlgorithm.collect_rollouts, step for step, with tensors on the device."""
        if self._last_obs is None:
            raise ValueError("DevicePPO: no previous observation; call learn(), which resets the env")
        policy = self.policy
        policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        # (B, C, H, W) uint8 and (B,) bool; after a reset (learn, set_env) these come from the host once
        self._last_obs = torch.as_tensor(self._last_obs, device=self.device)
        self._last_episode_starts = torch.as_tensor(self._last_episode_starts, device=self.device)
        while n_steps < n_rollout_steps:
            with torch.no_grad():
                features = self._features(self._last_obs)  # (B, F)
                actions, values, log_probs = act(policy, features)  # (B,), (B, 1), (B,)
            fast.step_async_on_device(actions)
            # Through the wrappers (VecMonitor): host rewards (B,), dones (B,) and infos, as SB3's
            new_obs, rewards, dones, infos = env.step_wait()
            step = fast.last_step
            self.num_timesteps += env.num_envs

            callback.update_locals(locals())  # infos, dones, rewards: host values, as on SB3's path
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1

            rollout_buffer.add(features, actions, self._bootstrapped(step, dones, infos), self._last_episode_starts,
                               values, log_probs)
            self._last_obs = new_obs.to(self.device)
            self._last_episode_starts = step.dones.to(self.device)

        with torch.no_grad():
            values = predict_values(policy, self._features(self._last_obs))  # (B, 1)
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=self._last_episode_starts)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _bootstrapped(self, step: Any, dones: np.ndarray, infos: list[dict[str, Any]]) -> torch.Tensor:
        """(B,) rewards on the device, plus gamma * V(terminal observation) for time-outs (SB3 issue
        #633, as collect_rollouts does); the terminal values are one batch, not one call per env."""
        rewards = step.rewards.to(self.device, torch.float32, copy=True)  # (B,)
        ended = np.flatnonzero(dones)  # ascending: the order of step.finished and step.terminal
        keep = [k for k, i in enumerate(ended)
                if infos[i].get("terminal_observation") is not None and infos[i].get("TimeLimit.truncated", False)]
        if keep:
            terminal = step.terminal[torch.as_tensor(keep, device=step.terminal.device)].to(self.device)  # (E', C, H, W)
            rows = torch.as_tensor(ended[keep], device=self.device)  # (E',)
            with torch.no_grad():
                terminal_values = predict_values(self.policy, self.policy.extract_features(terminal)).flatten()
            rewards[rows] += self.gamma * terminal_values
        return rewards

    # -- training ------------------------------------------------------------------------------
    def train(self) -> None:
        """SB3's PPO.train on the device buffer's features (the extractor an identity meanwhile);
        on the host path, CachedFeaturesPPO's."""
        buffer = self.rollout_buffer
        if not isinstance(buffer, DeviceRolloutBuffer):
            return super().train()
        with policy_reads_features(self.policy, buffer.obs_shape), explained_variance_on_host():
            super(CachedFeaturesPPO, self).train()  # PPO.train: the buffer already holds features
