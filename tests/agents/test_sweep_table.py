"""The sweep table: medians and IQRs over seeds, the best config marked, the same rows in every file."""

from __future__ import annotations

import csv
import json

import pytest

from agents.sweep_table import TrialResult, build_rows, read_trial, write_table


def trial(config, seed, score, ret=20.0):
    return TrialResult(config, {"ppo.gamma": 0.8 if config == "c0" else 0.9}, seed,
                       {"return": ret, "collision_rate": 0.1, "mean_speed": 25.0, "driving_score": score})


def test_rows_hold_median_and_iqr_and_mark_the_best():
    results = [trial("c0", s, v) for s, v in enumerate([0.1, 0.2, 0.3, 0.4, 0.9])]
    results += [trial("c1", s, 0.5) for s in range(5)]
    rows = build_rows(results)
    assert [row.config for row in rows] == ["c0", "c1"]
    assert rows[0].median["driving_score"] == pytest.approx(0.3)
    assert rows[0].iqr["driving_score"] == pytest.approx(0.4 - 0.2)
    assert rows[1].iqr["driving_score"] == 0.0
    assert [row.best for row in rows] == [False, True]
    assert rows[0].seeds == [0, 1, 2, 3, 4]


def test_files_agree_with_the_rows(tmp_path):
    rows = build_rows([trial("c0", 0, 0.2), trial("c1", 0, 0.6)])
    paths = write_table(rows, tmp_path)
    with paths["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["ppo.gamma"] for r in table] == ["0.8", "0.9"]
    assert [float(r["driving_score_median"]) for r in table] == [0.2, 0.6]
    assert [r["best"] for r in table] == ["0", "1"]
    assert [row["best"] for row in json.loads(paths["json"].read_text())] == [False, True]
    assert paths["md"].read_text().count("★") == 1


def test_read_trial_takes_the_evaluation_means(tmp_path):
    file = tmp_path / "evaluation-highway.json"
    metrics = {key: {"mean": value} for key, value in
               {"return": 21.5, "collision_rate": 0.25, "mean_speed": 24.0, "driving_score": 0.7}.items()}
    file.write_text(json.dumps({"metrics": metrics}))
    result = read_trial("c0", {}, 3, file)
    assert result.metrics == {"return": 21.5, "collision_rate": 0.25, "mean_speed": 24.0, "driving_score": 0.7}
    assert result.seed == 3
