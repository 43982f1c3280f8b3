"""`python run.py bench robustness` (issue 16, deliverable 4): agents x seeds, median/IQR cells, worst-of, the plot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.robust.report import Cell, markdown, parse_agents, pooled_markdown, pooled_rises, rows, worst_of
from agents.train import TrainOptions, train
from tests.agents import make_tiny

ROOT = Path(__file__).resolve().parents[2]


def _entry(attack: str, eps: float, ret: float, collisions: float, transfer: bool = False, corruption=None) -> dict:
    return {"attack": attack, "eps": eps, "transfer": transfer, "corruption": corruption, "description": attack,
            "metrics": {"return": {"mean": ret}, "collision_rate": {"mean": collisions}}}


def _block(shift: float) -> dict:
    e = 3 / 255
    return {"settings": {
        "none": _entry("none", 0.0, 25 + shift, 0.05),
        "random-eps3": _entry("random", e, 10 + shift, 0.9),  # random is not white-box: never the worst-of
        "fgsm-eps3": _entry("fgsm", e, 23 + shift, 0.30),
        "pgd10-eps3": _entry("pgd", e, 22 + shift, 0.20),  # the lowest return, not the most collisions
        "transfer-pgd10-eps3": _entry("pgd", e, 1 + shift, 1.0, transfer=True),
        "corruption-blur-2": _entry("none", 0.0, 2 + shift, 1.0, corruption={"kind": "blur", "severity": 2}),
    }}


def test_worst_of_takes_each_metric_at_its_worst_over_white_box_attacks_only():
    settings = _block(0.0)["settings"]
    assert worst_of(settings, 3 / 255, "return") == 22
    assert worst_of(settings, 3 / 255, "collision_rate") == pytest.approx(0.30)
    assert worst_of(settings, 8 / 255, "return") is None


def test_cells_are_median_and_iqr_over_runs_and_the_worst_row_follows():
    blocks = {"b": [_block(0.0), _block(1.0), _block(4.0)], "c": [_block(2.0), _block(2.0), _block(2.0)]}
    table = rows(blocks, [3 / 255])
    names = [name for name, _, _ in table]
    assert names == ["none", "random-eps3", "fgsm-eps3", "pgd10-eps3", "transfer-pgd10-eps3", "corruption-blur-2",
                     "worst-eps3"]
    cells = dict((name, cells) for name, _, cells in table)
    assert cells["none"]["b"]["return"].values == (25.0, 26.0, 29.0)
    assert cells["none"]["b"]["return"].median == 26.0
    assert cells["none"]["b"]["return"].iqr == (25.5, 27.5)
    assert cells["worst-eps3"]["b"]["return"].values == (22.0, 23.0, 26.0)
    assert cells["worst-eps3"]["c"]["collision_rate"].median == pytest.approx(0.30)
    text = markdown(table, {"b": [], "c": []})
    assert "| worst-eps3 | worst-of the white-box attacks, ε = 3/255 | 23.00 [22.50, 24.50] | 30.0% [30.0, 30.0] |" in text


def test_rows_follow_the_table_order_whatever_order_the_runs_measured_them_in():
    block = _block(0.0)
    block["settings"]["fgsm-eps1"] = _entry("fgsm", 1 / 255, 24.0, 0.1)  # measured last, e.g. a resumed report
    block["settings"] = dict(reversed(list(block["settings"].items())))
    names = [name for name, _, _ in rows({"b": [block]}, [3 / 255])]
    assert names == ["none", "random-eps3", "fgsm-eps1", "fgsm-eps3", "pgd10-eps3", "transfer-pgd10-eps3",
                     "corruption-blur-2", "worst-eps3"]


def test_a_setting_missing_for_one_run_is_left_out():
    partial = _block(0.0)
    del partial["settings"]["fgsm-eps3"]
    names = [name for name, _, _ in rows({"b": [_block(0.0), partial]}, [3 / 255])]
    assert "fgsm-eps3" not in names and "pgd10-eps3" in names


def _with_episodes(entry: dict, name: str, collisions: list[int]) -> dict:
    return {**entry, "setting": name, "per_episode": {"seed": list(range(100, 100 + len(collisions))),
                                                      "collision": collisions}}


def _run(clean: list[int], fgsm: list[int], pgd: list[int]) -> dict:
    e = 3 / 255
    return {"settings": {
        "none": _with_episodes(_entry("none", 0.0, 25, np.mean(clean)), "none", clean),
        "fgsm-eps3": _with_episodes(_entry("fgsm", e, 24, np.mean(fgsm)), "fgsm-eps3", fgsm),
        "pgd10-eps3": _with_episodes(_entry("pgd", e, 24, np.mean(pgd)), "pgd10-eps3", pgd),
    }}


def test_pooled_rises_pair_each_episode_with_its_own_runs_clean_episode_and_worst_of_takes_each_runs_worst():
    one = _run(clean=[0, 0, 1, 0], fgsm=[1, 0, 1, 0], pgd=[1, 1, 0, 0])  # fgsm +1 (25 %), pgd +1 (25 %): a tie
    two = _run(clean=[1, 0, 0, 0], fgsm=[1, 0, 0, 0], pgd=[1, 1, 1, 0])  # fgsm +0, pgd +2 (50 %): pgd is the worst
    pooled = pooled_rises([one, two], [3 / 255])
    assert list(pooled) == ["fgsm-eps3", "pgd10-eps3", "worst-eps3"]
    assert pooled["fgsm-eps3"].n == 8 and pooled["fgsm-eps3"].mean == pytest.approx(1 / 8)
    pgd_changes = [1, 1, -1, 0, 0, 1, 1, 0]
    assert pooled["pgd10-eps3"].mean == pytest.approx(np.mean(pgd_changes))
    assert pooled["pgd10-eps3"].std == pytest.approx(np.std(pgd_changes, ddof=1))
    # worst-of: run one's fgsm (first of the tie, as max keeps it), run two's pgd
    assert pooled["worst-eps3"].mean == pytest.approx(np.mean([1, 0, 0, 0, 0, 1, 1, 0]))
    assert pooled_rises([one, two], [8 / 255]) == {}  # nothing measured at that ε
    del two["settings"]["none"]["per_episode"]
    assert pooled_rises([one, two], [3 / 255]) == {}  # a run without clean episodes: nothing to pair with


def test_pooled_markdown_has_a_row_per_attack_and_a_column_per_agent():
    runs = [_run([0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0])] * 2
    text = pooled_markdown({"m": runs, "e": runs}, [3 / 255])
    assert "| setting | m | e |" in text
    assert "| pgd10-eps3 | +50.0 ± " in text and "| worst-eps3 | +50.0 ± " in text
    assert pooled_markdown({"m": [_block(0.0)]}, [3 / 255]) == ""  # blocks without episodes: no table


def test_cell_statistics_match_numpy():
    cell = Cell((1.0, 5.0, 2.0, 8.0))
    assert cell.median == np.median([1, 5, 2, 8]) and cell.iqr == (1.75, 5.75)


def test_agent_globs_are_checked(tmp_path):
    for seed in (1, 0):
        (tmp_path / f"b-seed{seed}").mkdir()
        (tmp_path / f"b-seed{seed}" / "config.yaml").write_text("x: 1\n")
        (tmp_path / f"b-seed{seed}" / "model.zip").write_bytes(b"")
    (tmp_path / "b-empty").mkdir()  # no config.yaml: not a run
    assert parse_agents([f"b={tmp_path}/b-*"]) == {"b": [tmp_path / "b-seed0", tmp_path / "b-seed1"]}
    (tmp_path / "b-seed2" / "checkpoints").mkdir(parents=True)  # killed while training: checkpoints, no model.zip
    (tmp_path / "b-seed2" / "config.yaml").write_text("x: 1\n")
    with pytest.raises(ValueError, match=r"b-seed2 has no model.zip \(its training did not finish\)"):
        parse_agents([f"b={tmp_path}/b-*"])
    (tmp_path / "b-seed2" / "config.yaml").unlink()
    for items, fragment in ([["b"], "NAME=GLOB"], [["=x"], "NAME=GLOB"], [[f"b={tmp_path}/nothing*"], "no run folder"],
                            [[f"b={tmp_path}/b-*", f"b={tmp_path}/b-*"], "given twice"]):
        with pytest.raises(ValueError, match=fragment):
            parse_agents(items)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """One tiny run, copied as the two 'seeds' of one agent (the report only reads run folders)."""
    tiny = make_tiny(tmp_path_factory.mktemp("report"))
    result = train(TrainOptions(scenario=str(tiny.scenario), timesteps=64, n_envs=1, logdir=tiny.root / "runs",
                                config=tiny.config, name="t-seed0", progress_bar=False))
    shutil.copytree(result.run_dir, tiny.root / "runs" / "t-seed1")
    return tiny.root / "runs"


def _report(runs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--threads", "1", "bench", "robustness", "--agent", f"t={runs}/t-seed*",
         "--attack", "random,fgsm", "--eps", "8/255", "--corruption", "none", "--episodes", "2", "--out", str(out),
         *extra], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_the_report_measures_every_seed_writes_table_json_and_plot_and_resumes(two_seeds, tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "report"
    first = _report(two_seeds, out)
    assert first.returncode == 0, first.stderr
    table = (out / "report.md").read_text()
    main, pooled = table.split("\n\n", 1)  # the median/IQR table, then the pooled rises
    assert [line.split(" | ")[0] for line in main.splitlines()[2:]] == ["| none", "| random-eps8", "| fgsm-eps8",
                                                                        "| worst-eps8"]
    assert [line.split(" | ")[0] for line in pooled.splitlines()[4:]] == ["| fgsm-eps8", "| worst-eps8"]
    data = json.loads((out / "report.json").read_text())
    assert list(data["agents"]) == ["t"] and len(data["blocks"]["t"]) == 2
    played = [block["settings"]["fgsm-eps8"]["seconds"] for block in data["blocks"]["t"]]
    image = iio.imread(out / "robustness-eps.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400 and image[..., :3].std() > 10
    second = _report(two_seeds, out)  # everything measured already: read back, not played again
    assert second.returncode == 0, second.stderr
    again = json.loads((out / "report.json").read_text())
    assert [block["settings"]["fgsm-eps8"]["seconds"] for block in again["blocks"]["t"]] == played
    assert (out / "report.md").read_text() == table


@pytest.mark.parametrize("flags, fragment", [
    (["--agent", "t"], "NAME=GLOB"),
    (["--agent", "t=/nonexistent/run*"], "no run folder"),
    (["--agent", "t=/x*", "--eps", "2"], "epsilon"),
    (["--agent", "t=/x*", "--attack", "laser"], "unknown attack"),
])
def test_bad_report_input_is_one_error_line_and_exit_2(flags, fragment, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "bench", "robustness", *flags, "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
