"""`run.py` subcommands in a subprocess, on tiny budgets; user mistakes give one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error:") or ": error:" in line]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, error_lines[0])


def test_scenarios_lists_every_scenario_with_a_description():
    result = run_cli("scenarios")
    assert result.returncode == 0, result.stderr
    for name in ("highway", "highway-dense", "merge", "roundabout", "intersection", "exit"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        assert len(line.split()) > 3  # name, highway-env id, description


def test_preview_writes_a_gif_with_the_camera_and_top_down_view(tmp_path):
    out = tmp_path / "clip.gif"
    result = run_cli("preview", "--scenario", "roundabout", "--steps", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "XDG_RUNTIME_DIR" not in result.stderr  # SDL's complaint on headless machines (envs/display.py)
    frames = iio.imread(out, index=None)
    assert frames.shape[0] >= 2 and frames.std() > 10
    width = frames.shape[2]
    assert frames[:, :, width // 2 :].std() > 10  # highway-env's own view is drawn, not black


def test_bench_env_runs_on_a_tiny_budget():
    result = run_cli("bench", "env", "--scenarios", "merge", "--steps", "3")
    assert result.returncode == 0, result.stderr
    assert "merge" in result.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["preview", "--scenario", "hihgway"], ["unknown scenario 'hihgway'", "valid names:", "roundabout"]),
        (["preview", "--scenario", "missing/file.yaml"], ["scenario file not found", "missing/file.yaml"]),
        (["preview", "--seed", "-3"], ["--seed", "non-negative"]),
        (["preview", "--out", "clip.avi", "--steps", "1"], [".avi"]),
        (["train", "--scenario", "highway", "--algo", "dqn"], ["dqn"]),
        (["train", "--scenario", "highway", "--timesteps", "0"], ["--timesteps", "positive"]),
        (["perception", "eval", "--models", "no-equals-sign"], ["NAME=PATH"]),
        (["bench", "teacher", "--scenario", "intersection", "--route-guesses", "3"], ["--route-guesses", "--routes guessed"]),
        (["bench", "teacher", "--routes", "guessed", "--episodes", "1"], ["routes='guessed'", "highway's do not"]),
    ],
)
def test_user_mistakes_get_one_clear_line(args, fragments):
    assert_one_line_error(run_cli(*args), *fragments)


def test_misspelled_key_and_too_small_camera_in_a_user_file(write_scenario):
    misspelled = write_scenario({"camera.bev.hieght": 64}, name="typo")
    assert_one_line_error(run_cli("preview", "--scenario", str(misspelled), "--steps", "1"),
                          "camera.bev.hieght", "unknown key", "height")
    tiny = write_scenario({"camera.bev.height": 4}, name="tiny")
    assert_one_line_error(run_cli("preview", "--scenario", str(tiny), "--steps", "1"),
                          "camera.bev.height", "greater than or equal to 16")


@pytest.mark.parametrize("flags, passed", [
    ([], {}),  # the teacher's own defaults, not copies of them in argparse
    (["--horizon", "4", "--min-ttc-s", "0"], {"horizon": 4, "min_ttc_s": 0.0}),
    (["--sight", "camera"], {"sight": "camera"}),
    (["--routes", "guessed", "--route-guesses", "2"], {"routes": "guessed", "route_guesses": 2}),
])
def test_bench_teacher_passes_only_the_flags_given(monkeypatch, capsys, flags, passed):
    import agents.ceiling
    import run

    received = {}

    def fake_teacher_ceiling(scenario, episodes, **settings):
        received.update(settings)
        return SimpleNamespace(seconds=0.0)

    monkeypatch.setattr(agents.ceiling, "teacher_ceiling", fake_teacher_ceiling)
    monkeypatch.setattr("agents.evaluate.print_report", lambda report: None)
    args = run.build_parser().parse_args(["bench", "teacher", "--episodes", "2", *flags])
    args.func(args)
    assert received == passed


def _command_paths(parser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser: (), ("train",), ("perception", "train"), ..."""
    import argparse

    paths = [prefix]
    for action in parser._actions:  # argparse keeps its subcommands here; there is no public listing
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*prefix, name))
    return paths


def test_help_works_for_the_cli_and_every_subcommand(capsys):
    """`python run.py --help` is the first command a newcomer types; a '%' in a help text crashed it."""
    import run

    paths = _command_paths(run.build_parser())
    assert ("train",) in paths and ("perception", "distill") in paths and ("bench", "env") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            run.main([*path, "--help"])
        assert exit_info.value.code == 0, path
        text = capsys.readouterr().out
        assert text.startswith("usage: run.py " + " ".join(path)), (path, text[:80])


def test_help_in_a_subprocess_has_no_traceback():
    result = run_cli("--help")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "train" in result.stdout and "evaluate" in result.stdout


def test_an_output_path_under_a_file_gives_one_line_and_writes_nothing(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    result = run_cli("preview", "--steps", "2", "--out", str(blocker / "x.gif"))
    assert_one_line_error(result, str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "" and sorted(tmp_path.iterdir()) == [blocker]


def test_an_unwritable_path_gives_one_line(monkeypatch, capsys):
    """Every path error (permission, read-only disk, ...) is turned into one line in one place."""
    import errno

    import run

    def refuse(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/ro/x.gif")

    monkeypatch.setattr(run, "cmd_scenarios", refuse)
    assert run.main(["scenarios"]) == 2
    assert capsys.readouterr().err == "error: /ro/x.gif: permission denied\n"

    def break_down(args):
        raise OSError(errno.EIO, "Input/output error", "/dev/sda")  # not the user's doing: a traceback

    monkeypatch.setattr(run, "cmd_scenarios", break_down)
    with pytest.raises(OSError):
        run.main(["scenarios"])


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a read-only place (sysfs)")
def test_a_read_only_place_gives_one_line_without_the_writers_tracebacks():
    """imageio printed 'Exception ignored' tracebacks about the temporary name; atomic_write now
    tries the place first and names the user's path."""
    result = run_cli("preview", "--steps", "2", "--out", "/sys/kernel/x.gif")
    assert_one_line_error(result, "/sys/kernel/x.gif")
    assert "Exception ignored" not in result.stderr and ".tmp" not in result.stderr
