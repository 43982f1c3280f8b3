"""Issue 17's reproductions, through `run.main`: each is one `error:` line, exit code 2, no traceback,
and nothing left behind (no run folder of a failed start, no file changed in a run that could not go on).

    wrong architecture    another model's zip in place of a run's model.zip / checkpoints
    corrupted weights     4 KB flipped in the perception student, NaN weights
    failed starts         the run folder is removed; the same --name works again without --force
    bad checkpoints       resume and evaluate fall back to the newest valid model and say so
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

import agents.train as train_module
import run as cli
from agents.runs import build_agent, checkpoint_paths, read_run_config, saved_counters
from agents.train import TrainOptions, train
from tests.agents import make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trained(tiny):
    """A finished 64-step run: checkpoints at 32 and 64, model.zip at 64."""
    result = train(TrainOptions(
        scenario=str(tiny.scenario), timesteps=64, n_envs=1, logdir=tiny.root / "trained", config=tiny.config,
        progress_bar=False, command="test", backend="highway-env", name="base",
    ))
    assert [saved_counters(path)["num_timesteps"] for path in checkpoint_paths(result.run_dir)] == [32, 64]
    return result.run_dir


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "runs" / "copy"))


def cli_error(capsys, *argv: str) -> str:
    """Run `run.py argv` in this process; it must fail with exactly one `error:` line, which is returned."""
    capsys.readouterr()
    assert cli.main(["--threads", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def flip(path: Path, start_from_end: int = 4096 + 200, size: int = 4096) -> None:
    """Invert `size` bytes inside the file (as a bad disk or a careless edit would)."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) - start_from_end)
    data[start:start + size] = bytes(byte ^ 0xFF for byte in data[start:start + size])
    path.write_bytes(bytes(data))


def other_architecture_zip(run_dir: Path, out: Path) -> Path:
    """An SB3 model of the same algorithm and policy class but another net_arch: what `set_parameters`
    once answered with a "size mismatch" RuntimeError traceback."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from envs.registration import make_env_fn

    config = read_run_config(run_dir)
    other = dataclasses.replace(config, policy=dataclasses.replace(config.policy, net_arch=(8,)))
    env = DummyVecEnv([make_env_fn(config.scenario)])
    try:
        build_agent(other, run_dir, env, "cpu").save(out)
    finally:
        env.close()
    return out


# -- item 2: a checkpoint of the wrong architecture -------------------------------------------------


def test_a_model_of_another_architecture_is_one_clear_error_in_evaluate_and_resume(run_copy, capsys, tmp_path):
    foreign = other_architecture_zip(run_copy, tmp_path / "foreign.zip")
    for path in [run_copy / "model.zip", *checkpoint_paths(run_copy)]:
        shutil.copyfile(foreign, path)
    before = snapshot(run_copy)

    line = cli_error(capsys, "evaluate", "--run", str(run_copy), "--episodes", "1")
    assert f"{run_copy} has no usable model:" in line
    assert "model.zip is not a model of this run's architecture" in line
    assert "size mismatch for mlp_extractor.policy_net.0.weight: [8, 112] in the file, [16, 112] in the policy (and" in line
    assert "checkpoints/step-0000000064.zip: the same; checkpoints/step-0000000032.zip: the same" in line

    line = cli_error(capsys, "train", "--resume", str(run_copy), "--timesteps", "128")
    assert "has no usable model" in line and "is not a model of this run's architecture" in line
    assert snapshot(run_copy) == before  # no evaluation file, config.yaml and command.txt untouched


# -- item 5: bad newest checkpoints fall back to the newest valid one --------------------------------


def test_evaluate_and_resume_skip_damaged_newer_models_and_say_which_they_used(run_copy, capsys, caplog, tmp_path):
    final = run_copy / "model.zip"
    flip(final, start_from_end=final.stat().st_size // 2)  # inside the compressed tensors: a CRC error
    newest = checkpoint_paths(run_copy)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    damaged = {path: path.read_bytes() for path in (run_copy / "model.zip", newest)}

    with caplog.at_level(logging.WARNING, logger="agents.runs"):
        assert cli.main(["--threads", "1", "evaluate", "--run", str(run_copy), "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "checkpoints/step-0000000032.zip" in out  # the report names the model it evaluated
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert "skipped 2 newer model file(s)" in warning and "using checkpoints/step-0000000032.zip (32 steps)" in warning
    assert "model.zip is corrupted: its member" in warning and "fails the zip's CRC check" in warning
    assert "step-0000000064.zip is not a stable-baselines3 model file" in warning

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agents.runs"):
        resumed = train(TrainOptions(resume=str(run_copy), timesteps=96, logdir=tmp_path, progress_bar=False))
    assert resumed.start_timesteps == 32 and resumed.num_timesteps == 96
    assert "using checkpoints/step-0000000032.zip" in caplog.text
    assert saved_counters(run_copy / "model.zip")["num_timesteps"] == 96  # a good model where the damaged one was
    assert all(path.read_bytes() != data for path, data in damaged.items() if path.exists())


def test_a_run_whose_every_model_is_damaged_names_each_file(run_copy, capsys):
    for path in [run_copy / "model.zip", *checkpoint_paths(run_copy)]:
        path.write_bytes(b"not a zip")
    before = snapshot(run_copy)
    line = cli_error(capsys, "train", "--resume", str(run_copy), "--timesteps", "128")
    assert "model.zip is not a stable-baselines3 model file or is corrupted (File is not a zip file)" in line
    assert line.endswith("checkpoints/step-0000000032.zip: the same. Restore a good model.zip or checkpoint, or train "
                         "the run again (--force to reuse its name)")
    assert snapshot(run_copy) == before


# -- item 3: corrupted perception weights ----------------------------------------------------------


def _config_with_perception(tiny, perception: Path, path: Path) -> Path:
    config = yaml.safe_load(tiny.config.read_text())
    config["policy"]["perception"] = str(perception)
    path.write_text(yaml.safe_dump(config))
    return path


def _train_argv(tiny, config: Path, logdir: Path, *more: str) -> list[str]:
    return ["train", "--scenario", str(tiny.scenario), "--config", str(config), "--timesteps", "32", "--n-envs", "1",
            "--backend", "highway-env", "--logdir", str(logdir), *more]


def test_flipped_perception_weights_stop_training_before_a_run_folder_is_made(tiny, capsys, tmp_path):
    student = Path(shutil.copyfile(tiny.student, tmp_path / "student.safetensors"))
    flip(student)
    config = _config_with_perception(tiny, student, tmp_path / "flipped.yaml")
    line = cli_error(capsys, *_train_argv(tiny, config, tmp_path / "runs", "--name", "flipped"))
    assert f"{student} is corrupted or was modified after it was saved" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_nan_perception_weights_stop_training_before_a_run_folder_is_made(tiny, capsys, tmp_path):
    with safe_open(str(tiny.student), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    del metadata["tensors_sha256"]  # as a file saved before digests: the finite-values check alone catches it
    tensors = {name: torch.full_like(tensor, float("nan")) if tensor.is_floating_point() else tensor
               for name, tensor in tensors.items()}
    student = tmp_path / "nan.safetensors"
    save_file(tensors, str(student), metadata=metadata)
    config = _config_with_perception(tiny, student, tmp_path / "nan.yaml")
    line = cli_error(capsys, *_train_argv(tiny, config, tmp_path / "runs", "--name", "nan"))
    assert f"{student}: tensor" in line and "non-finite (NaN or infinite)" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    line = cli_error(capsys, "perception", "export", "--model", str(student), "--out", str(tmp_path / "nan.onnx"))
    assert "non-finite" in line and not (tmp_path / "nan.onnx").exists()


def test_force_keeps_the_old_run_when_the_new_start_fails_its_checks(tiny, trained, capsys, tmp_path):
    """--force replaces the old folder only once the new run passed its checks (perception included)."""
    runs = tmp_path / "runs"
    old = Path(shutil.copytree(trained, runs / "taken"))
    before = snapshot(old)
    student = Path(shutil.copyfile(tiny.student, tmp_path / "student.safetensors"))
    flip(student)
    config = _config_with_perception(tiny, student, tmp_path / "flipped.yaml")
    line = cli_error(capsys, *_train_argv(tiny, config, runs, "--name", "taken", "--force"))
    assert "is corrupted or was modified" in line
    assert snapshot(old) == before


# -- item 5: a start that fails after the folder was made -------------------------------------------


def test_a_failed_start_removes_its_run_folder_so_the_name_works_again(tiny, capsys, monkeypatch, tmp_path):
    def broken_build(*args, **kwargs):
        raise ValueError("the agent could not be built (test)")

    monkeypatch.setattr(train_module, "build_agent", broken_build)
    argv = _train_argv(tiny, tiny.config, tmp_path / "runs", "--name", "again")
    assert cli_error(capsys, *argv) == "error: the agent could not be built (test)"
    assert not (tmp_path / "runs" / "again").exists()
    monkeypatch.undo()
    assert cli.main(["--threads", "1", *argv]) == 0  # no --force needed
    assert (tmp_path / "runs" / "again" / "model.zip").is_file()


def test_a_run_that_fails_after_its_first_checkpoint_is_kept_for_resume(tiny, monkeypatch, tmp_path):
    original = train_module.SafetyCallback._on_step

    def crash_after_the_first_checkpoint(self):
        if self.num_timesteps >= 40:
            raise RuntimeError("worker died (test)")
        return original(self)

    monkeypatch.setattr(train_module.SafetyCallback, "_on_step", crash_after_the_first_checkpoint)
    with pytest.raises(RuntimeError, match="worker died"):
        train(TrainOptions(scenario=str(tiny.scenario), timesteps=64, n_envs=1, logdir=tmp_path, config=tiny.config,
                           progress_bar=False, backend="highway-env", name="crashed"))
    assert [path.name for path in checkpoint_paths(tmp_path / "crashed")] == ["step-0000000032.zip"]


# -- item 6: messages -------------------------------------------------------------------------------


def test_resume_messages_name_real_flags_and_read_plainly(trained, tmp_path):
    with pytest.raises(ValueError, match=r"leave out perception \(policy.perception\)"):
        train(TrainOptions(resume=str(trained), perception="x.safetensors", logdir=tmp_path))
    with pytest.raises(ValueError, match="has already trained 64 timesteps, all the 64 of its config; pass --timesteps "
                                         "with a total above 64"):
        train(TrainOptions(resume=str(trained), logdir=tmp_path, progress_bar=False))
    with pytest.raises(ValueError, match="has already trained 64 timesteps, more than the 50 asked for"):
        train(TrainOptions(resume=str(trained), timesteps=50, logdir=tmp_path, progress_bar=False))
