"""`python run.py bench attack-path`: which part of the student's output carries an attack to the actor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents.robust.attack_path import attack_path, collect_observations, feature_parts, format_rows
from agents.robust.attacks import AttackSpec
from agents.train import TrainOptions, train
from tests.agents import make_tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A tiny fast run whose actor reads the feature map too (map_channels 2), loaded for attacks."""
    from agents.robust.evaluate import load_attackable
    from envs import make_env

    tiny = make_tiny(tmp_path_factory.mktemp("path"))
    settings = yaml.safe_load(tiny.config.read_text())
    settings["policy"]["map_channels"] = 2
    config = tiny.root / "map.yaml"
    config.write_text(yaml.safe_dump(settings))
    result = train(TrainOptions(scenario=str(tiny.scenario), timesteps=64, n_envs=2, logdir=tiny.root / "runs",
                                config=config, name="run", progress_bar=False, backend="fast", device="cpu"))
    env = make_env(str(tiny.scenario), "fast")
    try:
        run = load_attackable(result.run_dir, env, "cpu", tiny.root / "runs", None)
        scenario = env.scenario
    finally:
        env.close()
    return run, collect_observations(run.agent, scenario, envs=3, policy_steps=2, first_seed=0), result.run_dir


def test_the_parts_tile_the_features(loaded):
    run, _, _ = loaded
    extractor = run.agent.policy.features_extractor
    parts = feature_parts(extractor)
    assert list(parts) == ["embedding", "labels", "map"]
    bounds = [(part.start, part.stop) for part in parts.values()]
    assert bounds[0][0] == 0 and bounds[-1][1] == extractor.features_dim
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, no overlap


def test_observations_are_what_the_agent_met(loaded):
    run, observations, _ = loaded
    assert observations.shape == (6, *run.agent.observation_space.shape) and observations.dtype.name == "uint8"


def test_no_budget_changes_nothing_and_a_budget_moves_the_features(loaded):
    run, observations, _ = loaded
    policy, decision = run.agent.policy, run.decision
    quiet = attack_path(policy, decision, observations, AttackSpec("pgd", 0.0, steps=2))
    assert [row.attacked for row in quiet] == ["all parts", "embedding only", "labels only", "map only",
                                               "all but embedding", "all but labels", "all but map"]
    assert all(row.action_changed == 0.0 for row in quiet)
    assert all(row.relative_change in (None, 0.0) for row in quiet)
    moved = attack_path(policy, decision, observations, AttackSpec("pgd", 16 / 255, steps=2))
    assert moved[0].relative_change > 0 and all(0.0 <= row.action_changed <= 1.0 for row in moved)
    assert "| map only |" in format_rows(len(observations), "PGD", moved)


def test_the_command_prints_the_table_and_refuses_a_bad_budget(loaded):
    _, _, run_dir = loaded
    command = [sys.executable, str(ROOT / "run.py"), "--threads", "1", "bench", "attack-path", "--run", str(run_dir),
               "--envs", "2", "--policy-steps", "1", "--steps", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "| all parts |" in result.stdout and "2 observations" in result.stdout
    bad = subprocess.run([*command, "--eps", "2"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "epsilon" in bad.stderr
