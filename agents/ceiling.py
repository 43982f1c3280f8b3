"""`python run.py bench ppo-ceiling`: PPO on perfect perception, to tell perception errors from RL limits.

The camera agent sees the perception student's features. Here the same PPO (hyperparameters from
agents/defaults.yaml: the fast backend's block and the scenario's) learns instead from the exact
label vector the student is trained to predict (perception.labels: neighbours, lane occupancy, ego
lane and speed), computed from the fast backend's state. Its deterministic evaluation, on the
scenario's evaluation seeds, is what this algorithm and budget reach with perfect perception: when
it misses the driving-quality bar, better perception alone cannot close the gap.

Training runs on the batched fast backend (`PrivilegedVecEnv`, 256 envs, no camera frames drawn);
evaluation plays one episode per seed in a `FastDrivingEnv`, through `agents.evaluate.run_episodes`,
so the table has the same metrics as `run.py evaluate`.

`python run.py bench teacher` (`teacher_ceiling`) evaluates the privileged planner of
agents/teacher.py on the same seeds and metrics, all episodes side by side
(`agents.evaluate.run_batched_episodes`, one planner for the batch): what the imitation warm start
of `run.py train` copies from.

`python run.py bench constant --action IDLE` plays a policy that always takes one action, on the same
seeds and metrics: the floor any agent must beat. On `intersection` always driving on (IDLE) returns
5.26, arrives in 57 % and crashes in 43 % of 200 episodes, as much as highway-env's DQN reference.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from envs.backends import FAST
from envs.fast.gym_env import FastDrivingEnv
from envs.fast.vec_env import FastVecEnv
from envs.ground_truth import privileged_state
from perception.labels import LABEL_DIM, encode
from scenarios import Scenario, load_scenario

if TYPE_CHECKING:
    from agents.evaluate import EvaluationReport

LABEL_SPACE = gym.spaces.Box(-np.inf, np.inf, (LABEL_DIM,), np.float32)


def label_vector(ground_truth: dict[str, np.ndarray]) -> np.ndarray:
    """(LABEL_DIM,) float32 label vector; undefined entries (absent neighbours) are 0."""
    target, mask = encode(ground_truth)
    return target * mask


class PrivilegedVecEnv(FastVecEnv):
    """FastVecEnv whose observations are the label vectors (B, LABEL_DIM) of its states, not frames."""

    def __init__(self, scenario: Scenario, num_envs: int, device: torch.device | str = "cpu") -> None:
        super().__init__(scenario, num_envs, device, render=False)  # no camera frames: nothing reads them
        self.observation_space = LABEL_SPACE

    def observe(self) -> np.ndarray:
        return self.observe_rows(torch.arange(self.num_envs))

    def observe_rows(self, rows: torch.Tensor) -> np.ndarray:
        rows = rows.tolist()
        ego_lanes = self.sim.ego_lane_numbers(rows)
        vectors = [
            label_vector(privileged_state(scene, self.sim.ego_lane_width(row), lane))
            for row, scene, lane in zip(rows, self.sim.scenes(rows), ego_lanes)
        ]
        return np.stack(vectors).astype(np.float32)  # (E, LABEL_DIM)


class PrivilegedObservation(gym.Wrapper):
    """One env (DrivingEnv or FastDrivingEnv) observed through its `info["ground_truth"]` label vector."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = LABEL_SPACE

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        return label_vector(info["ground_truth"]), info

    def step(self, action):
        _, reward, terminated, truncated, info = self.env.step(action)
        return label_vector(info["ground_truth"]), reward, terminated, truncated, info


def ppo_ceiling(scenario: str = "highway", timesteps: int | None = None, episodes: int = 50, seed: int = 0,
                n_envs: int | None = None, config_file: str | None = None) -> EvaluationReport:
    """Train PPO on privileged labels on the fast backend, then evaluate it; returns a report for print_report."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor
    from torch import nn

    from agents.config import load_agent_config
    from agents.evaluate import EvaluationReport, evaluation_seeds, run_episodes, summarize
    from agents.train import progress_bar

    loaded = load_scenario(scenario)
    agent = load_agent_config(loaded.name, config_file, backend=FAST.name)
    timesteps = timesteps or agent.training.timesteps
    if timesteps <= 0 or episodes <= 0:
        raise ValueError(f"--timesteps and --episodes must be positive, got {timesteps} and {episodes}")
    env = VecMonitor(PrivilegedVecEnv(loaded, n_envs or FAST.default_n_envs()))  # refuses unsupported scenarios
    hidden = list(agent.policy.net_arch)
    model = PPO(
        "MlpPolicy", env, seed=seed, device="cpu", verbose=0, **dataclasses.asdict(agent.ppo),
        policy_kwargs={"net_arch": {"pi": hidden, "vf": list(hidden)},
                       "activation_fn": {"tanh": nn.Tanh, "relu": nn.ReLU}[agent.policy.activation]},
    )
    began = time.perf_counter()
    model.learn(total_timesteps=timesteps, callback=progress_bar())
    elapsed = time.perf_counter() - began
    evaluation_env = PrivilegedObservation(FastDrivingEnv(loaded))
    seeds = evaluation_seeds(loaded, episodes)
    per_episode = run_episodes(model, evaluation_env, seeds)
    return EvaluationReport(
        scenario=loaded.name, episodes=episodes, first_seed=seeds[0], last_seed=seeds[-1], algo="ppo",
        num_timesteps=int(model.num_timesteps), model="privileged labels, fast backend",
        metrics=summarize(per_episode), per_episode=per_episode, train_seconds=elapsed,
    )


class TeacherDriver:
    """SB3's `predict` for the LookaheadTeacher driving every env of a batched evaluation: `bind` gives
    it the FastVecEnv (run_batched_episodes calls it), and it reads that env's states, not `obs`."""

    def __init__(self, **teacher_settings: Any) -> None:
        self.teacher_settings = teacher_settings
        self.teacher = None

    def bind(self, env: Any) -> None:
        from agents.teacher import LookaheadTeacher
        from envs.backends import privileged_simulator

        self.teacher = LookaheadTeacher(privileged_simulator(env), **self.teacher_settings)

    def predict(self, observation: Any, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return self.teacher.act().cpu().numpy(), None


def teacher_ceiling(scenario: str = "highway", episodes: int = 50, **teacher_settings: Any) -> EvaluationReport:
    """The privileged teacher (agents.teacher, with `teacher_settings` for LookaheadTeacher) on the
    scenario's evaluation seeds, all episodes side by side (one teacher plans for the whole batch);
    a report for print_report."""
    return _batched_report(scenario, episodes, TeacherDriver(**teacher_settings), algo="lookahead teacher",
                           model="privileged planner, fast backend")


def _batched_report(scenario: str, episodes: int, driver: Any, algo: str, model: str) -> EvaluationReport:
    """`driver` (a predict/bind policy) on the scenario's first `episodes` evaluation seeds, all side
    by side on the fast backend (refusing a scenario it does not simulate); a report for print_report."""
    from agents.evaluate import EvaluationReport, evaluation_seeds, run_batched_episodes, summarize
    from envs.fast.simulators import check_supported

    loaded = load_scenario(scenario)
    if episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {episodes}")
    check_supported(loaded)  # refuses unsupported scenarios, naming the supported ones
    seeds = evaluation_seeds(loaded, episodes)
    began = time.perf_counter()
    per_episode = run_batched_episodes(driver, loaded, seeds)
    return EvaluationReport(
        scenario=loaded.name, episodes=episodes, first_seed=seeds[0], last_seed=seeds[-1], algo=algo,
        num_timesteps=0, model=model, metrics=summarize(per_episode), per_episode=per_episode,
        seconds=time.perf_counter() - began,
    )


class ConstantDriver:
    """SB3's `predict` for a policy that takes the action named `action` in every env and step;
    `bind` (run_batched_episodes calls it) finds its index among the scenario's actions."""

    def __init__(self, action: str) -> None:
        self.action = action
        self.index: int | None = None

    def bind(self, env: Any) -> None:
        from envs.backends import privileged_simulator

        names = privileged_simulator(env).action_names
        if self.action not in names:
            raise ValueError(f"--action {self.action}: {env.scenario.name} has the actions {', '.join(names)}")
        self.index = names.index(self.action)

    def predict(self, observation: Any, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return np.full(len(observation), self.index), None


def constant_baseline(scenario: str = "highway", action: str = "IDLE", episodes: int = 50) -> EvaluationReport:
    """A policy that always takes `action` on the scenario's evaluation seeds, all episodes side by
    side on the fast backend; a report for print_report."""
    return _batched_report(scenario, episodes, ConstantDriver(action), algo=f"always {action}",
                           model="constant action, fast backend")
