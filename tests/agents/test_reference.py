"""bench reference: highway-env's state-observation agent plays the same episodes as clearlane's, within the same budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
from stable_baselines3 import DQN

from agents.reference import (
    TABLE_COLUMNS, StateView, bench_reference, format_table, reference_env, train_reference,
)
from agents.train import TrainOptions, train
from envs.driving_env import DrivingEnv
from scenarios import load_scenario
from tests.agents import make_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tiny = make_tiny(tmp_path_factory.mktemp("tiny"))
    result = train(TrainOptions(scenario=str(tiny.scenario), timesteps=64, n_envs=1, logdir=tiny.root / "runs",
                                config=tiny.config, name="run", progress_bar=False))
    return tiny, result


@pytest.mark.parametrize(("name", "seed", "shape"), [
    ("highway", 1_000_000_000, (5, 5)), ("highway", 7, (5, 5)),
    ("exit", 7, (15, 7)),  # ExitObservation: Kinematics with x along the exit lane
    ("two-way", 7, (3, 3, 5)),  # TimeToCollision: speeds x lanes x horizon
])
def test_the_training_env_and_the_evaluation_view_play_the_same_episode(name, seed, shape):
    scenario = load_scenario(name)
    plain, view = reference_env(scenario), StateView(DrivingEnv(scenario))
    first, _ = plain.reset(seed=seed)
    second, info = view.reset(seed=seed)
    assert first.shape == second.shape == shape and "safety" in info
    np.testing.assert_array_equal(first, second)
    rng = np.random.default_rng(seed)
    for _ in range(scenario.episode_steps):
        action = int(rng.integers(plain.action_space.n))
        a, b = plain.step(action), view.step(action)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]  # reward, terminated, truncated
        if a[2] or a[3]:
            break
    plain.close()
    view.close()


def test_the_wall_clock_limit_stops_training_and_the_model_is_kept(tmp_path):
    scenario = load_scenario("highway")
    model, training = train_reference(scenario, "ppo", timesteps=10_000, time_limit_s=1e-6, seed=0, out_dir=tmp_path,
                                      n_envs=1, show_progress=False)
    assert training.stopped_by_clock and training.num_timesteps < 10_000
    assert model.gamma == pytest.approx(0.8)  # highway's block in agents/defaults.yaml, as highway-env's script
    assert training.model_path == tmp_path / "model.zip" and training.model_path.is_file()


def test_bench_reference_evaluates_both_agents_on_the_same_seeds(tiny_run, tmp_path):
    tiny, result = tiny_run
    data = bench_reference(str(tiny.scenario), run=str(result.run_dir), algo="dqn", episodes=2, timesteps=40,
                           out=tmp_path / "ref", command="test")
    reference, clearlane = data["reference"], data["clearlane"]
    # without --time-limit the reference gets the clearlane run's own training time (its training.json)
    assert data["budget"] == {"env_steps": 40, "wall_clock_s": pytest.approx(result.elapsed_s, abs=1e-3)}
    assert clearlane["training_s"] == data["budget"]["wall_clock_s"]
    assert reference["env_steps"] == 40 and not reference["stopped_by_clock"]
    assert clearlane["env_steps"] == result.num_timesteps
    seeds = [episode["seed"] for episode in reference["per_episode"]]
    assert seeds == [data["seeds"]["first"], data["seeds"]["last"]] == [1_000_000_000, 1_000_000_001]
    for agent in (reference, clearlane):
        assert agent["metrics"]["return"]["n"] == 2
        assert 0.0 <= agent["metrics"]["collision_rate"]["mean"] <= 1.0
    saved = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert saved["reference"]["metrics"] == reference["metrics"]
    table = (tmp_path / "ref" / "reference.md").read_text()
    assert "clearlane (PPO from pixels)" in table and "highway-env reference (DQN)" in table
    assert "success" not in table  # a highway has no goal
    assert DQN.load(tmp_path / "ref" / "model.zip").num_timesteps == 40


def test_the_reference_table_has_a_success_column_where_the_scenario_has_a_goal():
    def agent(success: float) -> dict:
        estimate = {"mean": success, "std": 0.5, "ci_low": success - 0.1, "ci_high": success + 0.1, "n": 200}
        metrics = {key: dict(estimate) for key, _, _ in TABLE_COLUMNS}
        return {"metrics": metrics, "algo": "dqn", "observation": "o", "training_s": 60.0, "env_steps": 600}

    data = {"scenario": "exit", "episodes": 200, "seeds": {"first": 0, "last": 199}, "clearlane": agent(0.75),
            "reference": {**agent(0.25), "stopped_by_clock": False}}
    header, _, ours, theirs = format_table(data).splitlines()[2:6]
    assert "| success |" in header
    assert "75.0 % [65.0, 85.0]" in ours and "25.0 % [15.0, 35.0]" in theirs


def test_bench_reference_refuses_bad_input(tiny_run, tmp_path):
    tiny, result = tiny_run
    with pytest.raises(ValueError, match="trained on"):
        bench_reference("merge", run=str(result.run_dir), out=tmp_path)
    with pytest.raises(ValueError, match="unknown reference algorithm"):
        bench_reference("highway", run=str(result.run_dir), algo="sac", out=tmp_path)
    with pytest.raises(ValueError, match="--episodes must be positive"):
        bench_reference("highway", run=str(result.run_dir), episodes=0, out=tmp_path)
    with pytest.raises(FileNotFoundError):
        bench_reference("highway", run=str(tmp_path / "missing"), out=tmp_path)


def test_an_env_that_observes_images_by_default_has_no_reference(monkeypatch):
    import agents.reference as reference

    monkeypatch.setattr(reference, "highway_env_defaults", lambda env_id: {"observation": {"type": "GrayscaleObservation"}})
    with pytest.raises(ValueError, match="observes 'GrayscaleObservation' by default, not one of Kinematics"):
        bench_reference("highway", run="unused")


def test_training_sessions_add_up_and_a_damaged_log_is_one_clear_error(tmp_path):
    from agents.runs import TRAINING_LOG, record_training_session, training_seconds

    assert training_seconds(tmp_path) is None  # a run trained before training.json existed
    record_training_session(tmp_path, 0, 1000, 12.5, interrupted=True)
    record_training_session(tmp_path, 1000, 2000, 7.5, interrupted=False)
    assert training_seconds(tmp_path) == pytest.approx(20.0)
    (tmp_path / TRAINING_LOG).write_text("{not json")
    with pytest.raises(ValueError, match="not a training log"):
        training_seconds(tmp_path)
