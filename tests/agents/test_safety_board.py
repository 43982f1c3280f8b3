"""Safety in TensorBoard (agents/safety_board.py), read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.evaluate import MIN_TTC_CAP_S, mean_ci
from agents.safety_board import (
    GLOSSARY, GLOSSARY_TAG, EpisodeTracker, Evaluated, EvaluationSet, SafetyBoard, docs_glossary, glossary,
    glossary_markdown, hparam_metrics, summarize, summary_markdown, untouched_rng,
)

ROOT = Path(__file__).resolve().parents[2]


def accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"histograms": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def episode(seed: int, collision: float, min_ttc: float, min_headway: float, speed: float) -> dict:
    return {"seed": seed, "return": 10.0 + seed, "length": 30, "collision_rate": collision, "mean_speed": speed,
            "min_ttc": min_ttc, "min_headway": min_headway, "unsafe_fraction": 0.1, "off_road_fraction": 0.0,
            "hard_brakes_per_km": 0.5, "lane_changes_per_km": 2.0, "distance": 700.0, "route_completion": 0.9,
            "driving_score": 0.9 * (0.6 if collision else 1.0), "rms_jerk": 1.5 + seed % 3}


ROWS = [episode(i, float(i % 5 == 0), [0.8, 1.2, 3.0, MIN_TTC_CAP_S][i % 4], [0.5, 1.5, 2.5][i % 3], 20.0 + i % 7)
        for i in range(40)]


def test_the_docs_glossary_is_the_one_in_code():
    assert docs_glossary(ROOT / "docs" / "SAFETY.md") == glossary_markdown(), \
        "docs/SAFETY.md is stale: run python -m agents.safety_board docs"
    for entry in GLOSSARY:
        assert f"| `{entry.name}` | {entry.unit} |" in glossary_markdown()


def test_an_evaluation_logs_means_intervals_histograms_and_descriptions(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    board = SafetyBoard(writer)
    board.write_glossary(0, "**a run**")
    board.write_layout(["dagger", "ppo"], [("eval", "eval: mean and band")])
    estimates = board.log_evaluation("eval", ROWS, 0, "40 episodes on fast")
    board.log_evaluation("eval", ROWS[:20], 500, "20 episodes on fast")
    writer.close()
    events = accumulator(tmp_path)

    collisions = [row["collision_rate"] for row in ROWS]
    expected = mean_ci(collisions, low=0.0, high=1.0)
    assert estimates["collision_rate"] == expected
    [(first, mean), _] = [(event.step, event.value) for event in events.Scalars("eval/collision_rate")]
    low = events.Scalars("eval_ci95/collision_rate/low")[0].value
    high = events.Scalars("eval_ci95/collision_rate/high")[0].value
    assert first == 0 and mean == pytest.approx(0.2)
    assert (low, high) == pytest.approx((expected.ci_low, expected.ci_high)) and low < mean < high
    assert [event.value for event in events.Scalars("eval/episodes")] == [40.0, 20.0]
    share = events.Scalars("eval/share_ttc_below_1.5s")[0].value
    assert share == pytest.approx(0.5)  # min TTC 0.8 and 1.2 of the four kinds
    assert events.Scalars("eval/share_headway_below_1s")[0].value == pytest.approx(14 / 40)
    for entry in glossary(has_goal=False):  # every metric has its band, and says its unit
        assert len(events.Scalars(f"eval/{entry.name}")) == 2, entry.name
        assert len(events.Scalars(f"eval_ci95/{entry.name}/high")) == 2, entry.name
        assert events.SummaryMetadata(f"eval/{entry.name}").summary_description.startswith(f"[{entry.unit}]")

    assert "eval/success_rate" not in events.Tags()["scalars"]  # highways have no goal
    assert "success_rate" not in estimates
    assert sorted(events.Tags()["histograms"]) == [
        "eval_hist/mean_speed_mps", "eval_hist/min_headway_s", "eval_hist/min_ttc_s", "eval_hist/rms_jerk_mps3"]
    ttc = events.Histograms("eval_hist/min_ttc_s")
    assert [event.step for event in ttc] == [0, 500]
    assert ttc[0].histogram_value.num == 40 and ttc[0].histogram_value.max == MIN_TTC_CAP_S
    assert ttc[0].histogram_value.min == pytest.approx(0.8)

    text = events.Tensors(GLOSSARY_TAG)[0].tensor_proto.string_val[0].decode()
    assert text.startswith("**a run**") and glossary_markdown() in text

    from tensorboard.plugins.custom_scalar import layout_pb2

    [config] = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {category.title: {chart.title: chart for chart in category.chart} for category in layout.category}
    margin = charts["eval: mean and band"]["collision_rate [share of episodes]"].margin.series[0]
    assert (margin.value, margin.lower, margin.upper) == (
        "eval/collision_rate", "eval_ci95/collision_rate/low", "eval_ci95/collision_rate/high")
    [training] = [category for title, category in charts.items() if title.startswith("training episodes")]
    assert training["collision_rate [share of episodes]"].multiline.tag == [
        "^safety_train/(dagger|ppo)/collision_rate$"]


def test_training_episodes_count_only_in_the_phase_that_drove_all_their_steps():
    def info(crashed=False):
        return {"safety": {"crashed": crashed, "off_road": False, "speed": 25.0, "ttc": math.inf, "headway": 2.0,
                           "jerk": 0.0, "lane_change": False, "hard_brake": False, "distance": 50.0}}

    tracker = EpisodeTracker(route_length_m=1000.0, n_envs=2)
    tracker.step([info(), info()], [False, True], "dagger_teacher")  # env 1: a 1-step teacher episode
    tracker.step([info(), info()], [False, False], "dagger")
    tracker.step([info(True), info(True)], [True, True], "dagger")  # env 0 began under the teacher: dropped
    finished = tracker.pop()
    assert {phase: len(rows) for phase, rows in finished.items()} == {"dagger_teacher": 1, "dagger": 1}
    assert finished["dagger"][0]["collision_rate"] == 1.0 and finished["dagger"][0]["length"] == 2
    assert tracker.dropped == 1 and tracker.pop() == {}


def test_evaluation_leaves_the_training_random_generators_as_they_were():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    with untouched_rng():
        torch.rand(100), np.random.rand(100), random.random()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_the_summary_table_compares_with_a_baseline_episode_by_episode():
    evaluation = EvaluationSet("eval", [row["seed"] for row in ROWS], "fast", True, None)
    better = [dict(row, collision_rate=0.0) for row in ROWS]
    ours = Evaluated(1000, better, summarize(better), evaluation)
    theirs = Evaluated(800, ROWS, summarize(ROWS), evaluation)
    text = summary_markdown(ours, baseline=theirs, baseline_name="old-run", eval_seconds=3.0, train_seconds=60.0)
    row = next(line for line in text.splitlines() if line.startswith("| `collision_rate`"))
    difference = mean_ci(-np.array([r["collision_rate"] for r in ROWS]))
    assert row.startswith("| `collision_rate` | share of episodes | 0.000 [0.000, 0.000] | 0.200 [")
    assert row.endswith(f"| {difference.mean:.3f} [{difference.ci_low:.3f}, {difference.ci_high:.3f}] |")
    assert "baseline `old-run` (step 800)" in text and "(5.0%)" in text
    alone = summary_markdown(ours)
    assert "| metric | unit | mean [95 % interval] |" in alone and "baseline" not in alone


def test_scenarios_with_a_goal_log_a_success_rate_and_chart_it(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from torch.utils.tensorboard import SummaryWriter

    rows = [{**row, "success_rate": float(row["seed"] % 4 != 0 and not row["collision_rate"])} for row in ROWS]
    writer = SummaryWriter(str(tmp_path))
    board = SafetyBoard(writer)
    board.write_layout(["ppo"], [("eval", "eval: mean and band")], has_goal=True)
    estimates = board.log_evaluation("eval", rows, 0, "40 episodes of exit")
    board.log_training("ppo", rows, 0)
    writer.close()
    events = accumulator(tmp_path)

    expected = np.mean([row["success_rate"] for row in rows])
    assert estimates["success_rate"].mean == pytest.approx(expected) == pytest.approx(24 / 40)
    assert events.Scalars("eval/success_rate")[0].value == pytest.approx(expected)
    assert events.Scalars("safety_train/ppo/success_rate")[0].value == pytest.approx(expected)
    low, high = (events.Scalars(f"eval_ci95/success_rate/{end}")[0].value for end in ("low", "high"))
    assert low < expected < high
    [config] = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    titles = {chart.title for category in layout.category for chart in category.chart}
    assert "success_rate [share of episodes]" in titles
    assert "eval/success_rate" in hparam_metrics(["ppo"], ["eval"], has_goal=True)
    assert "eval/success_rate" not in hparam_metrics(["ppo"], ["eval"])
    evaluation = EvaluationSet("eval", [row["seed"] for row in rows], "highway-env", False, None)
    assert "| `success_rate` | share of episodes |" in summary_markdown(Evaluated(0, rows, estimates, evaluation))
    assert "success_rate" not in summary_markdown(Evaluated(0, ROWS, summarize(ROWS), evaluation))
