"""`run.py sweep` on a local Ray: two tiny trials, the table read back; bad input is one line."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.agents import make_tiny

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("ray")


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_two_trial_sweep_table_matches_the_trials_evaluations(tmp_path):
    tiny = make_tiny(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("ppo:\n  gamma: [0.8, 0.9]\n")
    done = sweep("--scenario", str(tiny.scenario), "--seeds", "1", "--grid", str(grid), "--config", str(tiny.config),
                 "--timesteps", "64", "--eval-episodes", "2", "--logdir", str(tmp_path / "sweeps"), "--name", "s",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    sweep_dir = tmp_path / "sweeps" / "s"
    assert (sweep_dir / "ray").is_dir()
    with (sweep_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["ppo.gamma"] for row in rows] == ["0.8", "0.9"]
    assert sum(row["best"] == "1" for row in rows) == 1
    for k, row in enumerate(rows):
        trial = sweep_dir / "trials" / f"c{k}-seed0"
        evaluation = json.loads((trial / "evaluation-short.json").read_text())
        assert float(row["driving_score_median"]) == pytest.approx(evaluation["metrics"]["driving_score"]["mean"])
        assert float(row["return_median"]) == pytest.approx(evaluation["metrics"]["return"]["mean"])
        assert list(trial.glob("events.out.tfevents.*")), "each trial keeps its own TensorBoard logs"
    assert "| c1 | 0.9 |" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--seeds", "0"], "at least 1 seed"),
    (["--address", "127.0.0.1:1"], "no Ray cluster reachable"),
    (["--resume", "."], "not a sweep folder"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    done = sweep(*args, "--logdir", str(tmp_path / "sweeps"), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_grid_with_unknown_key_names_file_and_key(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("ppo:\n  gama: [0.8, 0.9]\n")
    done = sweep("--grid", str(grid), "--logdir", str(tmp_path / "sweeps"), cwd=tmp_path)
    assert done.returncode == 2
    assert str(grid) in done.stderr and "gama" in done.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.xfail(reason="on this machine the driver's ray.init(address=127.0.0.1:PORT) reports 'Failed to connect "
                          "to Ray cluster at 192.0.2.2:PORT' (the host's own, unroutable address); not yet solved",
                   strict=False)
def test_sweep_on_a_real_cluster_through_address(tmp_path):
    """`ray start --head` as a separate process, then a two-trial sweep through --address."""
    ray_bin = Path(sys.executable).parent / "ray"
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    start = [str(ray_bin), "start", "--head", "--port", str(port), "--num-cpus", "2",
             "--include-dashboard", "false", "--temp-dir", str(temp)]
    try:
        started = subprocess.run(start, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-2000:]
        tiny = make_tiny(tmp_path)
        done = sweep("--scenario", str(tiny.scenario), "--seeds", "2", "--config", str(tiny.config),
                     "--timesteps", "32", "--eval-episodes", "2", "--logdir", str(tmp_path / "sweeps"), "--name", "c",
                     "--address", f"127.0.0.1:{port}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert sorted(p.name for p in (tmp_path / "sweeps" / "c" / "trials").iterdir() if p.is_dir()) == \
            ["c0-seed0", "c0-seed1"]
        with (tmp_path / "sweeps" / "c" / "results.csv").open() as handle:
            assert [row["seeds"] for row in csv.DictReader(handle)] == ["2"]
    finally:
        subprocess.run([str(ray_bin), "stop"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
