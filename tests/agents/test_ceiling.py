"""The perfect-perception ceiling: exact label observations, batched and single, and a tiny PPO run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.ceiling import PrivilegedObservation, PrivilegedVecEnv, ppo_ceiling
from envs.fast.gym_env import FastDrivingEnv
from envs.fast.vec_env import FastVecEnv
from perception.labels import GROUP, LABEL_DIM
from scenarios import load_scenario


def test_batched_labels_match_the_single_env_ground_truth():
    scenario = load_scenario("highway")
    batched = PrivilegedVecEnv(scenario, 2)
    batched.seed(11)  # env i plays episode seed 11 + i
    observations = batched.reset()
    single = PrivilegedObservation(FastDrivingEnv(scenario))
    expected, _ = single.reset(seed=12)
    assert observations.shape == (2, LABEL_DIM) and observations.dtype == np.float32
    np.testing.assert_allclose(observations[1], expected, atol=1e-5)
    for action in (3, 0, 1):  # FASTER, LANE_LEFT, IDLE
        observations, _, done, infos = batched.step(np.array([1, action]))
        expected, *_ = single.step(action)
        if done[1]:
            break
        np.testing.assert_allclose(observations[1], expected, atol=1e-5)
    speed = observations[1, GROUP["ego_speed"].start] * 30.0
    assert 15.0 < speed < 35.0  # [m/s]


def test_terminal_observations_are_label_vectors():
    env = PrivilegedVecEnv(load_scenario("highway"), 4)
    env.reset()
    terminal = env.observe_rows(torch.tensor([0, 3]))
    assert terminal.shape == (2, LABEL_DIM) and np.isfinite(terminal).all()


def test_a_tiny_ceiling_run_reports_every_metric():
    report = ppo_ceiling("highway", timesteps=256, episodes=2, n_envs=8)
    assert report.num_timesteps >= 256 and report.episodes == 2 and report.train_seconds > 0
    assert all(math.isfinite(estimate.mean) for estimate in report.metrics.values())
    assert 0.0 <= report.metrics["collision_rate"].mean <= 1.0


def test_a_constant_policy_plays_its_one_action_in_every_episode():
    """Braking all the time at the intersection never reaches the 7-9 m/s the reward pays for, never
    arrives and never crashes: every metric says it stood still."""
    from agents.ceiling import constant_baseline

    report = constant_baseline("intersection", action="SLOWER", episodes=2)
    metrics = report.metrics
    assert report.episodes == 2 and report.algo == "always SLOWER"
    assert metrics["return"].mean == 0.0 and metrics["collision_rate"].mean == 0.0
    assert metrics["success_rate"].mean == 0.0 and metrics["mean_speed"].mean < 1.0  # [m/s]


@pytest.mark.parametrize("scenario, action, index", [("intersection", "FASTER", 2), ("highway", "LANE_RIGHT", 2),
                                                     ("highway", "SLOWER", 4)])
def test_a_constant_policy_plays_the_named_action_of_the_scenario(scenario, action, index):
    from agents.ceiling import ConstantDriver

    env = FastVecEnv(load_scenario(scenario), 3)
    driver = ConstantDriver(action)
    driver.bind(env)
    actions, _ = driver.predict(env.reset())
    assert actions.tolist() == [index] * 3


def test_a_constant_policy_needs_an_action_of_the_scenario():
    from agents.ceiling import constant_baseline

    with pytest.raises(ValueError, match="SLOWER, IDLE, FASTER"):
        constant_baseline("intersection", action="LANE_LEFT", episodes=1)
