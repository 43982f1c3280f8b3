"""`run.py evaluate`: deterministic numbers, JSON + TensorBoard output, seeds, clear errors."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from rich.console import Console

from agents.evaluate import METRICS, evaluate_run, print_report
from agents.train import TrainOptions, train
from tests.agents import make_tiny, read_scalars, write_scenario

FIRST_SEED = 1_000_000_000  # highway.yaml's evaluation.first_seed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tiny = make_tiny(tmp_path_factory.mktemp("tiny"))
    result = train(TrainOptions(
        scenario=str(tiny.scenario), timesteps=64, n_envs=1, logdir=tiny.root / "runs", config=tiny.config,
        name="run", progress_bar=False,
    ))
    return tiny, result


def test_evaluation_is_deterministic_and_written_to_json_and_tensorboard(trained):
    tiny, result = trained
    report, path = evaluate_run(result.run_dir, episodes=3)
    first = json.loads(path.read_text())
    again, _ = evaluate_run(str(result.run_dir), episodes=3)
    second = json.loads(path.read_text())
    assert path == result.run_dir / "evaluation-short.json"
    assert first["metrics"] == second["metrics"] and first["per_episode"] == second["per_episode"]
    assert report.metrics == again.metrics and report.to_dict() == first

    assert first["episodes"] == 3 and first["seeds"] == {"first": FIRST_SEED, "last": FIRST_SEED + 2}
    assert [episode["seed"] for episode in first["per_episode"]] == [FIRST_SEED, FIRST_SEED + 1, FIRST_SEED + 2]
    assert first["num_timesteps"] == result.num_timesteps and first["model"] == "model.zip"
    assert "Student t" in first["confidence_interval"]
    assert "success_rate" not in first["metrics"]  # a highway has no goal (envs.goals)
    for metric in (metric for metric in METRICS if metric.key != "success_rate"):
        stats = first["metrics"][metric.key]
        assert stats["n"] == 3 and stats["ci_low"] <= stats["mean"] <= stats["ci_high"]

    scalars = read_scalars(result.run_dir)
    for key in ("return", "collision_rate", "mean_speed", "min_ttc", "driving_score"):
        assert scalars[f"eval_final/short/{key}"][-1] == (result.num_timesteps, pytest.approx(first["metrics"][key]["mean"]))


def test_seed_offset_and_more_episodes_than_the_scenario_lists(trained, tmp_path):
    tiny, result = trained
    report, _ = evaluate_run(result.run_dir, episodes=2, seed=5)
    assert [episode["seed"] for episode in report.per_episode] == [FIRST_SEED + 5, FIRST_SEED + 6]
    # a scenario with 2 evaluation seeds: asking for 3 episodes counts on from first_seed
    two = write_scenario(tmp_path / "two-seeds.yaml", **{"episode.duration": 3, "evaluation.episodes": 2})
    report, path = evaluate_run(result.run_dir, episodes=3, scenario=str(two))
    assert [episode["seed"] for episode in report.per_episode] == [FIRST_SEED, FIRST_SEED + 1, FIRST_SEED + 2]
    assert path.name == "evaluation-two-seeds.json" and report.scenario == "two-seeds"


def test_the_table_shows_every_metric_with_its_interval(trained):
    _, result = trained
    report, _ = evaluate_run(result.run_dir, episodes=2)
    out = io.StringIO()
    print_report(report, Console(file=out, width=140))
    text = out.getvalue()
    for label in ("return", "collision rate", "mean speed", "min TTC", "unsafe fraction", "hard brakes",
                  "lane changes", "route completion", "driving score", "95% CI"):
        assert label in text


def test_another_camera_shape_is_refused_naming_both_shapes(trained):
    tiny, result = trained
    wide = write_scenario(tiny.root / "wide.yaml", **{"episode.duration": 3, "camera.bev.width": 64})
    with pytest.raises(ValueError) as error:
        evaluate_run(result.run_dir, episodes=1, scenario=str(wide))
    assert "(9, 96, 48)" in str(error.value) and "(9, 96, 64)" in str(error.value)
    front = write_scenario(tiny.root / "front.yaml", **{"episode.duration": 3, "camera.view": "front"})
    with pytest.raises(ValueError, match=r"\(9, 48, 96\)"):
        evaluate_run(result.run_dir, episodes=1, scenario=str(front))


def test_bad_run_paths_and_missing_models_are_clear_errors(trained, tmp_path):
    tiny, result = trained
    with pytest.raises(FileNotFoundError, match="run folder not found: nowhere"):
        evaluate_run("nowhere", logdir=tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        evaluate_run(tmp_path)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(result.run_dir / "config.yaml", empty / "config.yaml")
    with pytest.raises(FileNotFoundError, match="has no model: no model.zip and no checkpoints"):
        evaluate_run(empty)
    with pytest.raises(ValueError, match="--episodes must be a positive integer"):
        evaluate_run(result.run_dir, episodes=0)
    # a run name is looked up in the log folder
    report, _ = evaluate_run("run", episodes=1, logdir=tiny.root / "runs")
    assert report.episodes == 1 and report.metrics["return"].ci_low is None


def test_batched_fast_episodes_equal_one_at_a_time():
    """run_batched_episodes (rows of one FastVecEnv, in chunks) gives the numbers of run_episodes on a
    FastDrivingEnv, for a policy whose actions depend on the frames; seeds must be consecutive."""
    import numpy as np

    from agents.evaluate import run_batched_episodes, run_episodes
    from envs.registration import make_env

    class PixelPolicy:  # deterministic in the frames: action = pixel sum mod 5
        def predict(self, obs, deterministic=True):
            obs = np.asarray(obs, dtype=np.int64)
            sums = obs.reshape(-1, obs[0].size if obs.ndim == 4 else obs.size).sum(axis=1)
            actions = sums % 5
            return (actions if obs.ndim == 4 else actions[0]), None

    seeds = [1_000_000_000 + i for i in range(3)]
    env = make_env("highway", "fast")
    one_at_a_time = run_episodes(PixelPolicy(), env, seeds)
    batched = run_batched_episodes(PixelPolicy(), env.unwrapped.scenario, seeds, batch=2)  # chunks of 2 and 1
    env.close()
    assert batched == one_at_a_time
    # the two rows of the first chunk end at different steps, so a row that finished must stop counting
    assert batched[0]["length"] != batched[1]["length"]
    with pytest.raises(ValueError, match="consecutive"):
        run_batched_episodes(PixelPolicy(), env.unwrapped.scenario, [5, 7])
