"""`evaluate --runs`: which folders are runs, and how runs group into the table's configs (no Ray here)."""

from __future__ import annotations

from pathlib import Path

import dataclasses

import pytest

from agents.config import RunConfig, load_agent_config
from agents.evaluate_runs import find_runs, trial_results
from agents.runs import write_run_config


def write_run(folder: Path, seed: int, gamma: float) -> Path:
    folder.mkdir(parents=True)
    agent = load_agent_config("highway", backend="fast")
    write_run_config(folder, RunConfig(
        scenario="highway", algo="ppo", seed=seed, n_envs=256, device="cpu", observation_shape=(9, 96, 48),
        n_actions=5, training=agent.training, policy=agent.policy, ppo=dataclasses.replace(agent.ppo, gamma=gamma),
        backend="fast"))
    return folder


def test_find_runs_takes_a_run_a_folder_of_runs_or_a_glob(tmp_path):
    runs = [write_run(tmp_path / "sweep" / "trials" / f"c0-seed{seed}", seed, 0.9) for seed in range(2)]
    (tmp_path / "sweep" / "trials" / "c0-seed0.config.yaml").write_text("ppo: {}\n")  # not a run
    assert find_runs(str(tmp_path / "sweep")) == [run.resolve() for run in runs]
    assert find_runs(str(runs[1])) == [runs[1].resolve()]
    assert find_runs(str(tmp_path / "sweep" / "trials" / "*seed1")) == [runs[1].resolve()]
    with pytest.raises(FileNotFoundError, match="no run folders"):
        find_runs(str(tmp_path / "empty*"))


def test_runs_equal_but_for_the_seed_are_one_config(tmp_path):
    runs = {write_run(tmp_path / name, seed, gamma): {"return": float(seed)}
            for name, seed, gamma in (("a", 0, 0.9), ("b", 1, 0.9), ("c", 0, 0.8))}
    results = trial_results(runs)
    assert [(result.config, result.seed, result.params) for result in results] == [
        ("c0", 0, {"ppo.gamma": 0.9}), ("c0", 1, {"ppo.gamma": 0.9}), ("c1", 0, {"ppo.gamma": 0.8})]
