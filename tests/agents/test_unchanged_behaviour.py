"""Behaviour pinned across refactors: the same seeds give the same episodes and the same agent evaluation.

The numbers below were recorded at commit bb0926f, before issue 22's Backend refactor, by running
this file's `measure_*` functions on that code (`python -m tests.agents.test_unchanged_behaviour`
prints them). They go through public entry points only (`envs.make_env`, `agents.train.train`, the
JSON file `run.py evaluate` writes), so any later change to how envs are chosen and built, or to how
reports are typed, must reproduce them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

ACTIONS = (3, 1, 0, 1, 2, 4, 1, 3, 0, 2)  # FASTER, IDLE, LANE_LEFT, ... cycled
STEPS = 12  # policy steps per episode at most


def measure_episodes(backend: str, scenario: str, seeds=(3, 7)) -> list[dict]:
    """A fixed action sequence on fixed seeds: return, length, and sums of observations and signals."""
    from envs import make_env

    env = make_env(scenario, backend)
    rows = []
    try:
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            obs_sum, speed_sum, total, steps, done = int(obs.sum(dtype=np.int64)), 0.0, 0.0, 0, False
            while not done and steps < STEPS:
                obs, reward, terminated, truncated, info = env.step(ACTIONS[steps % len(ACTIONS)])
                obs_sum += int(obs.sum(dtype=np.int64))
                speed_sum += float(info["safety"]["speed"])
                total += float(reward)
                steps += 1
                done = terminated or truncated
            rows.append({"seed": seed, "return": total, "length": steps, "obs_sum": obs_sum, "speed_sum": speed_sum,
                         "crashed": bool(info["safety"]["crashed"]), "clean_sum": int(env.clean_frame.sum(dtype=np.int64))})
    finally:
        env.close()
    return rows


def measure_agent(root) -> dict:
    """A tiny fast-backend run (a 2-iteration imitation warm start, then PPO), evaluated on both simulators."""
    from agents.evaluate import evaluate_run
    from agents.train import TrainOptions, train
    from tests.agents import make_tiny

    tiny = make_tiny(root)
    config = root / "imitate.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=2, imitation_steps=3)
    config.write_text(yaml.safe_dump(settings))
    result = train(TrainOptions(scenario=str(tiny.scenario), timesteps=96, n_envs=4, logdir=root / "runs",
                                config=config, progress_bar=False, backend="fast", name="pinned", device="cpu"))
    numbers = {"num_timesteps": result.num_timesteps}
    for backend, episodes in (("fast", 6), ("highway-env", 2)):
        _, path = evaluate_run(result.run_dir, episodes=episodes, backend=backend, device="cpu")
        report = json.loads(path.read_text())
        numbers[backend] = {
            "returns": [episode["return"] for episode in report["per_episode"]],
            "collisions": [episode["collision_rate"] for episode in report["per_episode"]],
            "speeds": [episode["mean_speed"] for episode in report["per_episode"]],
            "metric_means": {key: stats["mean"] for key, stats in report["metrics"].items()},
        }
        numbers["json_keys"] = list(report)
        numbers["metric_keys"] = list(report["metrics"]["return"])
    return numbers


# -- recorded at bb0926f -------------------------------------------------------------------------

RECORDED_EPISODES: dict[str, list[dict]] = {
    "fast": [
        {"seed": 3, "return": 5.9987063854932785, "length": 7, "obs_sum": 25800268, "speed_sum": 199.98684883117676,
         "crashed": True, "clean_sum": 1077384},
        {"seed": 7, "return": 3.812647383660078, "length": 5, "obs_sum": 19287050, "speed_sum": 138.44164657592773,
         "crashed": True, "clean_sum": 1076681},
    ],
    "highway-env": [
        {"seed": 3, "return": 2.013462830304775, "length": 3, "obs_sum": 12857611, "speed_sum": 74.59512532905816,
         "crashed": True, "clean_sum": 1081038},
        {"seed": 7, "return": 2.2793542947697802, "length": 3, "obs_sum": 12858985, "speed_sum": 89.24343784512646,
         "crashed": True, "clean_sum": 1075494},
    ],
}
RECORDED_AGENT: dict = {
    "num_timesteps": 152,
    # the JSON file's keys, in bb0926f's order (its evaluate_run's report dict)
    "json_keys": ["run", "model", "num_timesteps", "algo", "trained_on", "trained_backend", "backend", "scenario",
                  "scenario_source", "episodes", "seeds", "deterministic", "confidence_interval", "definitions",
                  "min_ttc_cap_s", "metrics", "per_episode", "command"],
    "metric_keys": ["mean", "std", "ci_low", "ci_high", "n"],
    "fast": {
        "returns": [2.7798250913619995, 2.879824995994568, 2.879824995994568, 2.879824995994568, 2.7798250913619995,
                    2.7798250913619995],
        "collisions": [0.0] * 6,
        "speeds": [29.747812271118164] * 6,
        "metric_means": {
            "return": 2.8298250436782837, "collision_rate": 0.0, "mean_speed": 29.747812271118164,
            "min_ttc": 3.4545137882232666, "unsafe_fraction": 0.05555555555555555, "hard_brakes_per_km": 0.0,
            "lane_changes_per_km": 0.0, "route_completion": 0.11600914849175346,
            "driving_score": 0.11600914849175346, "length": 3.0,
        },
    },
    "highway-env": {
        "returns": [2.046796163638108, 2.9798250092033722],
        "collisions": [1.0, 0.0],
        "speeds": [26.14613793231777, 29.747812615042154],
        "metric_means": {
            "return": 2.51331058642074, "collision_rate": 0.5, "mean_speed": 27.94697527367996,
            "min_ttc": 0.7809401120015167, "unsafe_fraction": 0.6666666666666666, "hard_brakes_per_km": 6.016511016684349,
            "lane_changes_per_km": 0.0, "route_completion": 0.1134076626335526,
            "driving_score": 0.09124642450673999, "length": 3.0,
        },
    },
}


@pytest.mark.parametrize("backend", ["fast", "highway-env"])
def test_the_same_seeds_give_the_same_episodes(backend):
    measured = measure_episodes(backend, "highway")
    expected = RECORDED_EPISODES[backend]
    for got, want in zip(measured, expected, strict=True):
        assert {key: got[key] for key in ("seed", "length", "obs_sum", "crashed", "clean_sum")} == \
            {key: want[key] for key in ("seed", "length", "obs_sum", "crashed", "clean_sum")}
        assert got["return"] == pytest.approx(want["return"], rel=1e-6, abs=1e-9)
        assert got["speed_sum"] == pytest.approx(want["speed_sum"], rel=1e-6, abs=1e-9)


def test_the_same_run_trains_and_evaluates_to_the_same_numbers(tmp_path):
    measured = measure_agent(tmp_path)
    assert measured["num_timesteps"] == RECORDED_AGENT["num_timesteps"]
    assert measured["json_keys"] == RECORDED_AGENT["json_keys"]  # `run.py evaluate` writes the same JSON shape
    assert measured["metric_keys"] == RECORDED_AGENT["metric_keys"]
    for backend in ("fast", "highway-env"):
        got, want = measured[backend], RECORDED_AGENT[backend]
        for key in ("returns", "collisions", "speeds"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (backend, key)
        assert got["metric_means"].keys() == want["metric_means"].keys()
        for key, value in want["metric_means"].items():
            assert got["metric_means"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (backend, key)


if __name__ == "__main__":  # prints the numbers to record
    import pprint
    import tempfile
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    pprint.pprint({backend: measure_episodes(backend, "highway") for backend in ("fast", "highway-env")}, width=120)
    with tempfile.TemporaryDirectory() as folder:
        pprint.pprint(measure_agent(Path(folder)), width=120)
