"""`run.py sweep` on a local Ray: two tiny trials, the table read back; bad input is one line."""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agents.ray_backend import check_reachable
from tests.agents import make_tiny
from tests.agents.test_ray_backend import free_port

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("ray")


def sweep(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_two_trial_sweep_table_matches_the_trials_evaluations(tmp_path):
    tiny = make_tiny(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("ppo:\n  gamma: [0.8, 0.9]\n")
    done = sweep("--scenario", str(tiny.scenario), "--seeds", "1", "--grid", str(grid), "--config", str(tiny.config), "--n-envs", "2",
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
        evaluation = json.loads((trial / "evaluation-short-fast.json").read_text())  # on the simulator it trained on
        assert float(row["driving_score_median"]) == pytest.approx(evaluation["metrics"]["driving_score"]["mean"])
        assert float(row["return_median"]) == pytest.approx(evaluation["metrics"]["return"]["mean"])
        assert list(trial.glob("events.out.tfevents.*")), "each trial keeps its own TensorBoard logs"
    assert "| c1 | 0.9 |" in done.stdout
    # each trial's periodic evaluations reached Ray Tune as they came (step 0 and the end), then the final one
    for trial in ("c0-seed0", "c1-seed0"):
        assert f"{trial}: evaluation at 0 env steps" in done.stdout
        assert f"{trial}: final evaluation at 64 env steps" in done.stdout and f"{trial}: done" in done.stdout

    # evaluate --runs on the trials, in parallel on Ray, gives the sweep's table again (same seeds, same episodes)
    evaluated = subprocess.run([sys.executable, str(ROOT / "run.py"), "evaluate", "--runs", str(sweep_dir / "trials"),
                                "--episodes", "2", "--backend", "fast"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (sweep_dir / "results.md").read_text() in evaluated.stdout
    assert evaluated.stdout.count("runs, ") == 2  # a progress line per run


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


def test_sweep_on_a_real_cluster_through_address(tmp_path):
    """`ray start --head` as a separate process, with token authentication (on by default for a local
    head in Ray 2.60), then a two-trial sweep through --address whose driver has the token but no
    RAY_AUTH_MODE (agents/ray_backend.py turns token mode on)."""
    ray_bin = Path(sys.executable).parent / "ray"
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay under 107 bytes
    token = secrets.token_hex(16)
    driver_env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    driver_env["RAY_AUTH_TOKEN"] = token
    head_env = {**driver_env, "RAY_AUTH_MODE": "token"}
    # --block: the head lives as long as this process, so terminating it stops this head only (`ray stop`
    # would stop every Ray on the machine, e.g. a sweep test in another pytest worker)
    start = [str(ray_bin), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
             "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", str(temp)]
    head = subprocess.Popen(start, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=head_env)
    try:
        wait_until_listening(port, head)
        tiny = make_tiny(tmp_path)
        done = sweep("--scenario", str(tiny.scenario), "--seeds", "2", "--config", str(tiny.config), "--n-envs", "2",
                     "--timesteps", "32", "--eval-episodes", "2", "--logdir", str(tmp_path / "sweeps"), "--name", "c",
                     "--address", f"127.0.0.1:{port}", cwd=tmp_path, env=driver_env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert sorted(p.name for p in (tmp_path / "sweeps" / "c" / "trials").iterdir() if p.is_dir()) == \
            ["c0-seed0", "c0-seed1"]
        with (tmp_path / "sweeps" / "c" / "results.csv").open() as handle:
            assert [row["seeds"] for row in csv.DictReader(handle)] == ["2"]
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def wait_until_listening(port: int, head: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, f"ray start --head exited: {head.stderr.read()[-2000:]}"
        try:
            check_reachable(f"127.0.0.1:{port}", timeout_s=1.0)
            return
        except ValueError:
            time.sleep(0.5)
    raise AssertionError(f"the Ray head did not listen on port {port} within {timeout_s:.0f} s")


def test_a_killed_sweep_resumes_without_redoing_finished_trials(tmp_path):
    """kill -9 of the whole sweep (driver and Ray) after its first trial, then --resume: the table has both."""
    tiny = make_tiny(tmp_path)
    sweep_dir = tmp_path / "sweeps" / "k"
    args = ["--scenario", str(tiny.scenario), "--seeds", "2", "--config", str(tiny.config), "--n-envs", "2", "--timesteps", "64",
            "--eval-episodes", "2", "--cpus-per-trial", "2", "--logdir", str(tmp_path / "sweeps"), "--name", "k"]
    driver = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "sweep", *args], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = sweep_dir / "trials" / "c0-seed0"
    try:
        deadline = time.monotonic() + 240
        while not list(first.glob("evaluation-*.json")) and time.monotonic() < deadline:
            assert driver.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.2)
        assert list(first.glob("evaluation-*.json")), "the first trial did not finish within 240 s"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    assert not (sweep_dir / "results.csv").exists()
    trained = (first / "model.zip").stat().st_mtime_ns

    done = sweep("--resume", str(sweep_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    with (sweep_dir / "results.csv").open() as handle:
        assert [row["seeds"] for row in csv.DictReader(handle)] == ["2"]
    assert (first / "model.zip").stat().st_mtime_ns == trained, "a finished trial is not trained again"
    assert list((sweep_dir / "trials" / "c0-seed1").glob("evaluation-*.json"))
