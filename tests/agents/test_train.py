"""Training on tiny budgets: run folder, TensorBoard keys, checkpoints, Ctrl-C, resume, clear errors."""

from __future__ import annotations

import dataclasses

import io
import math
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import yaml

import agents.train as train_module
from agents.runs import checkpoint_paths, read_run_config, saved_counters
from agents.train import TrainOptions, format_summary, train
from scenarios import available_scenarios
from tests.agents import all_finite, make_tiny, read_scalars, write_scenario

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def options(tiny, **changes) -> TrainOptions:
    base = dict(
        scenario=str(tiny.scenario), timesteps=64, n_envs=1, logdir=tiny.root / "runs", config=tiny.config,
        progress_bar=False, command="python run.py train (test)", backend="highway-env",
    )
    return TrainOptions(**{**base, **changes})


@pytest.mark.parametrize("algo, fine_tune", [("ppo", None), ("a2c", True)])
def test_training_fills_the_run_folder_and_tensorboard(tiny, algo, fine_tune):
    result = train(options(tiny, algo=algo, timesteps=96, name=f"smoke-{algo}", fine_tune=fine_tune, progress_bar=True))
    run = result.run_dir
    assert run == tiny.root / "runs" / f"smoke-{algo}"
    assert not result.interrupted and result.num_timesteps >= 96
    assert result.model_path == run / "model.zip" and zipfile.is_zipfile(run / "model.zip")
    assert saved_counters(run / "model.zip")["num_timesteps"] == result.num_timesteps

    config = read_run_config(run)
    assert (config.algo, config.n_envs, config.seed, config.observation_shape) == (algo, 1, 0, (9, 96, 48))
    assert config.scenario == str(tiny.scenario.resolve())
    assert config.training.timesteps == 96 and config.algo_params.gamma == 0.8
    assert (run / "command.txt").read_text() == "python run.py train (test)\n"
    assert (run / "perception.safetensors").read_bytes() == tiny.student.read_bytes()
    checkpoints = checkpoint_paths(run)
    assert 1 <= len(checkpoints) <= 2  # keep_checkpoints: 2
    assert checkpoints[-1].name == f"step-{result.num_timesteps:010d}.zip"

    scalars = read_scalars(run)
    for key in (
        "rollout/ep_rew_mean", "train/value_loss", "train/entropy_loss", f"safety_train/{algo}/collision_rate",
        f"safety_train/{algo}/driving_score", f"safety_train/{algo}/min_ttc_s", f"safety_train/{algo}/mean_speed_mps",
        "eval/return", "eval/collision_rate", "eval/mean_speed_mps", "eval/driving_score", "eval_highway_env/return",
    ):
        assert all_finite(scalars.get(key, [])), (key, sorted(scalars))
    assert [step for step, _ in scalars["eval/return"]][0] == 0  # before training
    assert max(step for step, _ in scalars["eval/return"]) == result.num_timesteps
    assert "steps/s" in format_summary(result) and f"evaluate --run {run}" in format_summary(result)

    # the perception student stays frozen unless --fine-tune
    from safetensors.torch import load_file
    from stable_baselines3.common.save_util import load_from_zip_file

    student = load_file(tiny.student)
    _, params, _ = load_from_zip_file(run / "model.zip", load_data=False, device="cpu")
    prefix = "features_extractor.model."
    trained = {key[len(prefix):]: value for key, value in params["policy"].items() if key.startswith(prefix)}
    assert trained.keys() == student.keys()
    unchanged = all(torch.equal(trained[key], student[key]) for key in student)
    assert unchanged != bool(fine_tune) and config.policy.fine_tune == bool(fine_tune)


def test_hyperparameters_reach_tensorboards_hparams_tab(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = train(dataclasses.replace(options(tiny, name="hparams", timesteps=32), hparams_first=("seed", "ppo/gamma")))
    accumulator = EventAccumulator(str(result.run_dir))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["algo"].string_value == "ppo"
    assert hparams["ppo/gamma"].number_value == pytest.approx(0.8)
    # the plugin lists hyperparameters marked `differs` first: a sweep's seed and grid keys
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(info.name for info in experiment.hparam_infos if info.differs) == ["ppo/gamma", "seed"]
    assert len(experiment.hparam_infos) == len(hparams) > 2


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_the_count(tiny, monkeypatch):
    original = train_module.SafetyCallback._on_step

    def interrupt_at_48(self):
        if self.num_timesteps >= 48:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(train_module.SafetyCallback, "_on_step", interrupt_at_48)
    stopped = train(options(tiny, name="interrupted", timesteps=128))
    monkeypatch.undo()
    run = stopped.run_dir
    assert stopped.interrupted and stopped.num_timesteps == 48
    assert stopped.model_path == run / "checkpoints" / "step-0000000048.zip"
    assert not (run / "model.zip").exists()
    assert "train --resume" in format_summary(stopped)

    resumed = train(TrainOptions(resume=str(run), logdir=tiny.root / "runs", progress_bar=False, command="resume"))
    # on-policy algorithms stop at the end of a rollout (32 steps here): 48 -> 80 -> 112 -> 144
    assert resumed.start_timesteps == 48 and resumed.num_timesteps == 144
    assert saved_counters(run / "model.zip")["num_timesteps"] == 144
    assert (run / "command.txt").read_text().splitlines() == ["python run.py train (test)", "resume"]
    steps = [step for step, _ in read_scalars(run)["rollout/ep_rew_mean"]]
    assert steps == sorted(steps) and steps[0] <= 48 < steps[-1] == 144  # one curve, no restart at 0

    more = train(TrainOptions(resume="interrupted", timesteps=170, logdir=tiny.root / "runs", progress_bar=False))
    assert more.start_timesteps == 144 and more.num_timesteps == 176
    assert read_run_config(run).training.timesteps == 170
    with pytest.raises(ValueError, match="has already trained 176 timesteps, more than the 170 of its config; pass --timesteps with a total above 176"):
        train(TrainOptions(resume=str(run), logdir=tiny.root / "runs", progress_bar=False))
    with pytest.raises(ValueError, match="leave out --algo, --seed"):
        train(TrainOptions(resume=str(run), algo="a2c", seed=1, logdir=tiny.root / "runs"))


def test_resume_after_a_kill_continues_from_the_newest_checkpoint_without_a_fold(tiny):
    result = train(options(tiny, name="killed", timesteps=96))
    run = result.run_dir
    # as if killed with -9 between the checkpoints at 64 and 96: no final model, no checkpoint 96
    (run / "model.zip").unlink()
    checkpoint_paths(run)[-1].unlink()
    assert checkpoint_paths(run)[-1].name == "step-0000000064.zip"
    resumed = train(TrainOptions(resume=str(run), logdir=tiny.root / "runs", progress_bar=False))
    assert resumed.start_timesteps == 64 and resumed.num_timesteps == 96
    for tag in ("rollout/ep_rew_mean", "eval/return"):
        steps = [step for step, _ in read_scalars(run)[tag]]
        assert steps == sorted(set(steps)) and steps[-1] == 96, (tag, steps)  # TensorBoard dropped the lost steps


def test_resume_starts_from_the_checkpoints_weights(tiny):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.runs import load_agent
    from envs.registration import make_env_fn

    result = train(options(tiny, name="weights", timesteps=32))
    config = read_run_config(result.run_dir)
    env = DummyVecEnv([make_env_fn(tiny.scenario)])
    model = load_agent(config, result.run_dir, env, "cpu")
    env.close()
    from stable_baselines3.common.save_util import load_from_zip_file

    _, params, _ = load_from_zip_file(result.run_dir / "model.zip", load_data=False, device="cpu")
    for name, tensor in params["policy"].items():
        assert torch.equal(model.policy.state_dict()[name], tensor), name
    assert model.num_timesteps == 32


def test_two_envs_run_in_subprocesses(tiny, monkeypatch):
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from envs.backends import HighwayEnvBackend

    made = []
    original = HighwayEnvBackend.make_vec_env

    def spy(self, scenario, n_envs, *args):
        env = original(self, scenario, n_envs, *args)
        made.append(type(env.venv))
        return env

    monkeypatch.setattr(HighwayEnvBackend, "make_vec_env", spy)
    result = train(options(tiny, name="two-envs", n_envs=2, timesteps=64))
    assert made == [SubprocVecEnv]
    assert result.num_timesteps == 64 and read_run_config(result.run_dir).n_envs == 2
    assert all_finite(read_scalars(result.run_dir)["safety_train/ppo/collision_rate"])


def test_an_existing_run_folder_needs_force(tiny):
    first = train(options(tiny, name="taken", timesteps=32))
    marker = first.run_dir / "model.zip"
    with pytest.raises(ValueError, match="already exists; pass --force to replace it, or --resume"):
        train(options(tiny, name="taken", timesteps=32))
    assert marker.exists()
    other = tiny.root / "runs" / "not-a-run"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a run folder"):
        train(options(tiny, name="not-a-run", force=True))
    assert (other / "notes.txt").exists()


@pytest.mark.parametrize(
    "changes, error, fragments",
    [
        ({"timesteps": 0}, ValueError, ["--timesteps must be a positive integer, got 0"]),
        ({"timesteps": -5}, ValueError, ["--timesteps must be a positive integer"]),
        ({"algo": "dqn"}, ValueError, ["unknown algorithm 'dqn'", "ppo, a2c"]),
        ({"n_envs": 0}, ValueError, ["--n-envs must be a positive integer"]),
        ({"scenario": "hihgway"}, FileNotFoundError, ["unknown scenario 'hihgway'"]),
        ({"perception": "missing.safetensors"}, FileNotFoundError, ["perception checkpoint not found"]),
    ],
)
def test_bad_input_is_one_clear_error_before_anything_is_written(tiny, changes, error, fragments):
    before = set((tiny.root / "runs").glob("*")) if (tiny.root / "runs").exists() else set()
    with pytest.raises(error) as raised:
        train(options(tiny, **changes))
    for fragment in fragments:
        assert fragment in str(raised.value)
    after = set((tiny.root / "runs").glob("*")) if (tiny.root / "runs").exists() else set()
    assert after == before


def test_resuming_a_missing_run_or_a_run_without_checkpoints_is_a_clear_error(tiny):
    logdir = tiny.root / "runs"
    with pytest.raises(FileNotFoundError, match="run folder not found: no-such-run"):
        train(TrainOptions(resume="no-such-run", logdir=logdir))
    with pytest.raises(FileNotFoundError, match="is not a run folder: it has no config.yaml"):
        train(TrainOptions(resume=str(tiny.root), logdir=logdir))
    started = train(options(tiny, name="no-checkpoint", timesteps=32))
    for path in [started.run_dir / "model.zip", *checkpoint_paths(started.run_dir)]:
        path.unlink()
    with pytest.raises(FileNotFoundError, match="has no model: no model.zip and no checkpoints"):
        train(TrainOptions(resume=str(started.run_dir), logdir=logdir))


def test_cuda_without_cuda_is_a_clear_error(tiny):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device 'cuda' was requested but CUDA is not available"):
        train(options(tiny, device="cuda"))


def test_a_perception_checkpoint_of_another_camera_shape_is_refused(tiny):
    wide = write_scenario(tiny.root / "wide.yaml", **{"episode.duration": 3, "camera.bev.width": 64})
    with pytest.raises(ValueError, match=r"reads frames of shape \(C, H, W\) = \(9, 96, 48\).*gives \(9, 96, 64\)"):
        train(options(tiny, scenario=str(wide)))


# -- the command line (run.py) -------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--algo", "dqn"], "unknown algorithm 'dqn'"),
        (["train", "--timesteps", "0"], "--timesteps"),
        (["train", "--device", "cuda", "--timesteps", "10"], "CUDA is not available"),
        (["train", "--resume", "runs/no-such-run"], "run folder not found"),
        (["train", "--n-envs", "10000000", "--timesteps", "100000000000"], "envs fit"),  # ~86 TB
        (["evaluate", "--run", "runs/no-such-run"], "run folder not found"),
    ],
)
def test_cli_mistakes_give_one_error_line_and_exit_code_2(args, fragment):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_cli_trains_and_evaluates(tiny, tmp_path):
    config = yaml.safe_load(tiny.config.read_text())
    config["training"]["eval_every"] = 0
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    trained = run_cli(
        "--threads", "1", "train", "--scenario", str(tiny.scenario), "--config", str(path), "--timesteps", "32",
        "--n-envs", "1", "--logdir", str(tmp_path / "runs"), "--name", "cli",
    )
    assert trained.returncode == 0, trained.stderr
    assert "tensorboard --logdir" in trained.stdout and "python run.py evaluate --run" in trained.stdout
    assert (tmp_path / "runs" / "cli" / "command.txt").read_text().startswith("python run.py --threads 1 train ")
    evaluated = run_cli("--threads", "1", "evaluate", "--run", str(tmp_path / "runs" / "cli"), "--episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "driving score" in evaluated.stdout and "evaluation-short.json" in evaluated.stdout


def test_training_on_the_fast_backend_and_evaluating_on_both(tiny, monkeypatch):
    from agents.evaluate import evaluate_run

    from envs.backends import FastBackend

    made = []
    original = FastBackend.make_vec_env

    def spy(*args):
        env = original(*args)
        made.append(type(env.venv).__name__)
        return env

    monkeypatch.setattr(FastBackend, "make_vec_env", spy)
    result = train(options(tiny, backend="fast", n_envs=4, timesteps=128, name="smoke-fast"))
    assert made == ["FastVecEnv"]
    run = result.run_dir
    config = read_run_config(run)
    assert config.backend == "fast" and config.n_envs == 4 and result.num_timesteps >= 128
    assert config.policy.map_channels > 0  # the fast block's policy reads the feature map; evaluate loads it below
    scalars = read_scalars(run)
    for key in ("rollout/ep_rew_mean", "safety_train/ppo/collision_rate", "safety_train/ppo/mean_speed_mps",
                "eval/return"):
        assert all_finite(scalars.get(key, [])), (key, sorted(scalars))
    resumed = train(options(tiny, resume=str(run), scenario=None, config=None, backend=None, timesteps=256))
    assert resumed.start_timesteps == result.num_timesteps and read_run_config(run).backend == "fast"

    fast_report, path = evaluate_run(run, episodes=2, backend="fast")
    again, _ = evaluate_run(run, episodes=2, backend="fast")
    assert fast_report.per_episode == again.per_episode and path.name == "evaluation-short-fast.json"
    assert (fast_report.backend, fast_report.trained_backend) == ("fast", "fast")
    reference, path = evaluate_run(run, episodes=2, backend="highway-env")
    assert reference.backend == "highway-env" and reference.episodes == 2 and path.name == "evaluation-short.json"


def test_training_seeds_start_apart_episodes(tiny, monkeypatch):
    """SB3 seeds env i with seed + i, so runs of seeds 0 and 1 would share all but one env's stream of
    episodes; env i of seed s starts from s * n_envs + i (agents.runs.seed_episodes), seed 0 as before."""
    from envs.backends import FastBackend

    first_episodes: dict[int, list[int]] = {}
    original = FastBackend.make_vec_env

    def spy(*args):
        env = original(*args)
        fast, reset = env.venv, env.venv.reset

        def reset_and_record():
            observations = reset()
            first_episodes.setdefault(seed, [info["episode_seed"] for info in fast.reset_infos])
            return observations

        fast.reset = reset_and_record
        return env

    monkeypatch.setattr(FastBackend, "make_vec_env", spy)
    for seed in (0, 1, 2):
        train(options(tiny, backend="fast", n_envs=4, timesteps=64, seed=seed, name=f"seed-{seed}"))
    assert first_episodes == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7], 2: [8, 9, 10, 11]}


def test_a_resumed_runs_large_seed_stays_below_the_evaluation_seeds(tiny):
    """A resume seeds its envs with the run's seed plus its step count: times num_envs, that can pass
    TRAINING_SEED_LIMIT, where the evaluation episodes are; seed_episodes wraps it below."""
    from agents.runs import seed_episodes
    from envs.backends import get_backend
    from scenarios.schema import TRAINING_SEED_LIMIT

    env = get_backend("fast").make_vec_env(str(tiny.scenario), 4)
    try:
        seed_episodes(env, 5_000_000 * 256)
        env.reset()
        seeds = [info["episode_seed"] for info in env.venv.reset_infos]
    finally:
        env.close()
    assert seeds == list(range(seeds[0], seeds[0] + 4)) and seeds[-1] < TRAINING_SEED_LIMIT


def test_fast_backend_refuses_an_unsupported_scenario_before_making_a_run(tiny, unsupported_scenario):
    from envs.fast.simulator import UnsupportedScenario

    with pytest.raises(UnsupportedScenario, match="Supported scenarios"):
        train(options(tiny, backend="fast", scenario=str(unsupported_scenario), name="never"))
    assert not (tiny.root / "runs" / "never").exists()


def test_a_run_without_backend_trains_on_fast_with_fast_defaults(tiny, monkeypatch):
    import envs.backends

    monkeypatch.setattr(envs.backends, "FAST_N_ENVS", 4)  # the default number of fast envs, small for a test
    result = train(options(tiny, backend=None, n_envs=None, timesteps=64, name="default-backend"))
    config = read_run_config(result.run_dir)
    assert (config.backend, config.n_envs) == ("fast", 4) and result.backend == "fast"
    tiny_ppo = yaml.safe_load(tiny.config.read_text())["ppo"]
    assert config.algo_params.n_steps == tiny_ppo["n_steps"]  # the user's file still wins over the fast block
    assert config.training.eval_every == 32  # ... and over the fast block's training section
    assert "on the fast simulator" in format_summary(result)


def test_imitation_warm_start_counts_its_steps_and_logs_to_tensorboard(tiny, tmp_path, monkeypatch):
    import agents.imitation

    config = tmp_path / "imitate.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=2, imitation_steps=3, teacher_depth=1, teacher_horizon=2,
                                teacher_min_ttc_s=4.5, teacher_sight="camera", teacher_plan_hz=2,
                                teacher_route_guesses=3)
    config.write_text(yaml.safe_dump(settings))
    original, depths = agents.imitation.imitate_teacher, []

    def recording(*args, teacher, **kwargs):
        plan_hz = teacher.plan_scenario.highway_env_config()["simulation_frequency"]
        depths.append((teacher.depth, teacher.horizon, teacher.min_ttc_s, teacher.sight is not None, plan_hz,
                       teacher.route_guesses))
        return original(*args, teacher=teacher, **kwargs)

    monkeypatch.setattr(agents.imitation, "imitate_teacher", recording)
    result = train(options(tiny, backend="fast", n_envs=4, timesteps=64, name="imitating", config=config))
    # training.teacher_depth, _horizon, _min_ttc_s, _sight and _plan_hz reached it (routes known: no guesses)
    assert depths == [(1, 2, 4.5, True, 2, None)]
    scalars = read_scalars(result.run_dir)
    # two DAgger iterations of 3 steps of 4 envs: 12 and 24 labelled states, logged at those env steps
    assert [step for step, _ in scalars["imitation/samples"]] == [12, 24]
    assert [value for _, value in scalars["imitation/samples"]] == [12, 24]
    assert all(0.0 <= value <= 1.0 for _, value in scalars["imitation/agreement"])
    assert all(value >= 0.0 for _, value in scalars["imitation/regret"])
    assert result.start_timesteps == 0 and result.num_timesteps >= 64  # PPO went on to the total
    assert min(step for step, _ in scalars["rollout/ep_rew_mean"]) > 24  # ... after the imitation's steps


def test_a_run_stopped_after_its_imitation_resumes_with_ppo_not_another_imitation(tiny, tmp_path, monkeypatch):
    import agents.imitation

    config = tmp_path / "imitate.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=2, imitation_steps=3)
    config.write_text(yaml.safe_dump(settings))
    original = train_module.SafetyCallback._on_step

    def interrupt_in_ppo(self):
        raise KeyboardInterrupt  # Ctrl-C at PPO's first env step, after the 24 imitation steps

    monkeypatch.setattr(train_module.SafetyCallback, "_on_step", interrupt_in_ppo)
    stopped = train(options(tiny, backend="fast", n_envs=4, timesteps=64, name="stopped", config=config))
    monkeypatch.setattr(train_module.SafetyCallback, "_on_step", original)
    assert stopped.interrupted and stopped.num_timesteps == 28  # 24 imitated + one step of 4 envs

    def no_second_imitation(*args, **kwargs):
        raise AssertionError("a resumed run imitated again")

    monkeypatch.setattr(agents.imitation, "imitate_teacher", no_second_imitation)
    resumed = train(TrainOptions(resume=str(stopped.run_dir), logdir=tiny.root / "runs", progress_bar=False))
    assert resumed.start_timesteps == 28 and resumed.num_timesteps >= 64
    scalars = read_scalars(stopped.run_dir)
    assert [step for step, _ in scalars["imitation/samples"]] == [12, 24]


def test_imitation_needs_the_fast_backend(tiny, tmp_path):
    config = tmp_path / "imitate.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"]["imitation_iterations"] = 1
    config.write_text(yaml.safe_dump(settings))
    with pytest.raises(ValueError, match="imitation needs the fast backend"):
        train(options(tiny, backend="highway-env", name="never-imitates", config=config))
    assert not (tiny.root / "runs" / "never-imitates").exists()


def test_an_imitation_longer_than_the_budget_is_refused(tiny, tmp_path):
    config = tmp_path / "imitate.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=4, imitation_steps=4)  # 4 x 4 x 4 envs = 64 steps
    config.write_text(yaml.safe_dump(settings))
    with pytest.raises(ValueError, match="leaves nothing after the imitation"):
        train(options(tiny, backend="fast", n_envs=4, timesteps=64, name="all-imitation", config=config))
    assert not (tiny.root / "runs" / "all-imitation").exists()


@pytest.mark.parametrize("teacher, message", [
    ({"teacher_plan_hz": 1000}, "training.teacher_plan_hz: plan_hz must lie between"),
    ({"teacher_routes": "guessed"}, "training.teacher_routes is 'guessed', but .* set it to 'known'"),  # a highway
])
def test_a_teacher_the_scenario_cannot_have_is_refused_before_the_run_folder(tiny, tmp_path, teacher, message):
    config = tmp_path / "imitate.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=1, imitation_steps=2, **teacher)
    config.write_text(yaml.safe_dump(settings))
    with pytest.raises(ValueError, match=message):
        train(options(tiny, backend="fast", n_envs=4, timesteps=64, name="refused", config=config))
    assert not (tiny.root / "runs" / "refused").exists()


def test_the_progress_bar_counts_the_whole_last_rollout():
    """SB3 trains to the end of the rollout it is in, past the steps asked for; so does the bar."""
    from stable_baselines3 import PPO

    from agents.train import progress_bar

    model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=32, batch_size=32, n_epochs=1, seed=0)
    bar = progress_bar()
    model.learn(total_timesteps=40, callback=bar)
    assert model.num_timesteps == 64
    assert bar.bar.total == 64 and bar.bar.completed == 64  # what envs.progress draws



def test_a_resumed_logger_purges_what_the_lost_session_logged_after_the_checkpoint(tmp_path):
    """kill -9 after step 9, checkpoint at 5: the resumed session's steps 5.. replace the lost ones."""
    first = train_module._tensorboard_logger(tmp_path, purge_step=None)
    for step in range(10):
        first.record("rollout/x", float(step))
        first.dump(step)
    first.close()
    # A resumed session starts later than the lost one: its events file (named by the second it was made,
    # then a per-process counter that sorts as text, 10 before 9) must sort after the first one's.
    time.sleep(1.1)
    resumed = train_module._tensorboard_logger(tmp_path, purge_step=5)
    for step in range(5, 8):
        resumed.record("rollout/x", 100.0 + step)
        resumed.dump(step)
    resumed.close()
    assert read_scalars(tmp_path)["rollout/x"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0),
                                                   (5, 105.0), (6, 106.0), (7, 107.0)]


def test_device_rollout_trains_saves_resumes_and_evaluates(tiny, tmp_path, monkeypatch):
    """`training.device_rollout: true` builds DevicePPO (agents/device_rollout.py), which takes its
    device path on the fast backend; its run folder is an ordinary one for --resume and evaluate."""
    from agents.device_rollout import DevicePPO, DeviceRolloutBuffer
    from agents.evaluate import evaluate_run

    config = tmp_path / "device.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"]["device_rollout"] = True
    config.write_text(yaml.safe_dump(settings))
    models = []
    original = DevicePPO.collect_rollouts

    def spy(self, *args, **kwargs):
        models.append((type(self), type(self.rollout_buffer)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DevicePPO, "collect_rollouts", spy)
    result = train(options(tiny, backend="fast", n_envs=4, timesteps=128, name="on-device", config=config))
    assert models and set(models) == {(DevicePPO, DeviceRolloutBuffer)}
    assert read_run_config(result.run_dir).training.device_rollout is True
    resumed = train(options(tiny, resume=str(result.run_dir), scenario=None, config=None, backend=None, timesteps=256))
    assert resumed.start_timesteps == result.num_timesteps and resumed.num_timesteps >= 256
    report, _ = evaluate_run(result.run_dir, episodes=2, backend="fast")
    assert report.episodes == 2 and math.isfinite(report.metrics["return"].mean)


# -- safety in TensorBoard over the whole run (issue 19) ------------------------------------------


def test_a_fast_run_logs_safety_for_every_phase_and_evaluates_with_intervals(tiny, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from agents.safety_board import GLOSSARY, Evaluator, glossary_markdown

    config = tmp_path / "imitate.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=3, imitation_steps=6, eval_every=20)
    config.write_text(yaml.safe_dump(settings))
    evaluated_weights = {}  # step -> the policy's weights that eval/* at that step played
    original = Evaluator.evaluate

    def spy(self, model, step, evaluation=None):
        if evaluation is None or evaluation is self.evaluation:  # eval/*, not eval_highway_env/*
            evaluated_weights[step] = {name: value.clone() for name, value in model.policy.state_dict().items()}
        return original(self, model, step, evaluation)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Evaluator, "evaluate", spy)
        result = train(options(tiny, backend="fast", n_envs=4, timesteps=128, name="safety-phases", config=config))
    run = result.run_dir
    scalars = read_scalars(run)
    # DAgger: 3 iterations of 6 steps of 4 envs (3-step episodes): the teacher's iteration, then the learner's
    assert scalars["safety_train/dagger_teacher/episodes"] == [(24, 8.0)]
    assert scalars["safety_train/dagger/episodes"] == [(48, 8.0), (72, 8.0)]
    assert [step for step, _ in scalars["safety_train/ppo/collision_rate"]] == [200]  # one rollout of 32 x 4 envs
    # eval/*: step 0, each DAgger iteration or rollout past a multiple of 20, the last step (4 episodes each)
    evaluated = [0, 24, 48, 72, 200]
    assert [step for step, _ in scalars["eval/collision_rate"]] == evaluated
    assert {value for _, value in scalars["eval/episodes"]} == {4.0}
    assert "eval/success_rate" not in scalars  # a highway has no goal
    for entry in (entry for entry in GLOSSARY if not entry.goal_only):
        means, lows, highs = (scalars[tag] for tag in (
            f"eval/{entry.name}", f"eval_ci95/{entry.name}/low", f"eval_ci95/{entry.name}/high"))
        assert len(means) == len(lows) == len(highs) == len(evaluated), entry.name
        assert all(low <= mean <= high for (_, mean), (_, low), (_, high) in zip(means, lows, highs)), entry.name
    assert [step for step, _ in scalars["eval_highway_env/return"]] == [200]  # the reference, at the end
    assert scalars["eval_highway_env/episodes"] == [(200, 2.0)]
    # the last eval/* is the saved model's (not the one before the last update): the same weights, and
    # the same numbers as `run.py evaluate` of model.zip on those episodes
    saved_weights = torch.load(io.BytesIO(zipfile.ZipFile(run / "model.zip").read("policy.pth")), weights_only=True)
    assert all(torch.equal(evaluated_weights[200][name], saved_weights[name]) for name in saved_weights)
    from agents.evaluate import evaluate_run

    saved, _ = evaluate_run(run, episodes=4, backend="fast")
    for tag, name in (("return", "return"), ("collision_rate", "collision_rate"), ("mean_speed_mps", "mean_speed")):
        assert scalars[f"eval/{tag}"][-1][1] == pytest.approx(saved.metrics[name].mean, rel=1e-6), tag

    events = EventAccumulator(str(run), size_guidance={"histograms": 0, "tensors": 0})
    events.Reload()
    assert [event.step for event in events.Histograms("eval_hist/min_ttc_s")] == evaluated
    assert all(event.histogram_value.num == 4 for event in events.Histograms("eval_hist/rms_jerk_mps3"))
    glossary = events.Tensors("safety/glossary")[0].tensor_proto.string_val[0].decode()
    assert glossary_markdown() in glossary and "`eval/*`: 4 deterministic episodes on the fast simulator" in glossary
    summary = events.Tensors("safety/summary")[0]
    assert summary.step == 200 and "Final evaluation at step 200" in summary.tensor_proto.string_val[0].decode()
    assert (run / "safety_summary.md").read_text().startswith("### Final evaluation at step 200")

    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    metrics = {info.name.tag for info in plugin_data_pb2.HParamsPluginData.FromString(content).experiment.metric_infos}
    for entry in GLOSSARY:
        tags = {f"eval/{entry.name}", f"eval_highway_env/{entry.name}"}
        assert tags <= metrics if not entry.goal_only else not tags & metrics, entry.name
    assert {"safety_train/ppo/collision_rate", "safety_train/dagger/min_ttc_s",
            "safety_train/dagger_teacher/unsafe_fraction"} <= metrics
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["policy/fine_tune"].string_value == "false"  # not 0.0000
    assert 0 < result.eval_seconds < result.elapsed_s and "evaluation:" in format_summary(result)


def test_a_baseline_run_is_compared_on_the_same_episodes(tiny):
    baseline = train(options(tiny, backend="fast", n_envs=1, timesteps=32, name="the-baseline"))
    result = train(options(tiny, backend="fast", n_envs=1, timesteps=32, seed=1, name="compared",
                           baseline="the-baseline"))
    summary = (result.run_dir / "safety_summary.md").read_text()
    assert f"baseline `{baseline.run_dir.name}` (step 32)" in summary
    assert "difference (this − baseline, paired)" in summary


@pytest.mark.parametrize("baseline, fragment", [
    ("no-such-run", "--baseline no-such-run: run folder not found"),
    ("not-a-run", "is not a run folder"),
    ("other-scenario", "a baseline must be a run of the same scenario"),
])
def test_a_bad_baseline_is_one_clear_error_before_anything_is_written(tiny, baseline, fragment):
    runs = tiny.root / "runs"
    (runs / "not-a-run").mkdir(parents=True, exist_ok=True)
    if baseline == "other-scenario" and not (runs / "other-scenario").exists():
        other = write_scenario(tiny.root / "other.yaml", **{"episode.duration": 3})
        train(options(tiny, scenario=str(other), timesteps=32, name="other-scenario", backend="fast"))
    before = set(runs.iterdir())
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        train(options(tiny, name="never-trained", baseline=baseline))
    assert fragment in str(raised.value)
    assert set(runs.iterdir()) == before


def test_cli_refuses_a_baseline_that_is_not_a_run(tiny):
    result = run_cli("train", "--scenario", str(tiny.scenario), "--baseline", str(tiny.root), "--timesteps", "32")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--baseline" in errors[0] and "is not a run folder" in errors[0], result.stderr


def test_replays_reach_tensorboards_images_tab_and_do_not_change_training(tiny, tmp_path):
    """training.replay_every: one episode with overlays as an animated GIF under replay/<scenario>, read
    back with TensorBoard's own reader; the same seed trains the same weights with replays on or off."""
    import imageio.v2 as imageio
    from stable_baselines3.common.save_util import load_from_zip_file
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    config = yaml.safe_load(tiny.config.read_text())
    config["training"]["replay_every"] = 32
    with_replays = tmp_path / "replays.yaml"
    with_replays.write_text(yaml.safe_dump(config))
    result = train(options(tiny, name="replays", timesteps=96, config=with_replays))
    assert result.replay_seconds > 0 and "replays:" in format_summary(result)

    accumulator = EventAccumulator(str(result.run_dir), size_guidance={IMAGES: 0})
    accumulator.Reload()
    assert accumulator.Tags()["images"] == ["replay/short"]
    events = accumulator.Images("replay/short")
    assert [event.step for event in events] == [0, 32, 64, 96]  # step 0, every 32, the end
    for event in events:
        frames = imageio.mimread(event.encoded_image_string, format="GIF")
        assert len(frames) == 4  # the 3-step episode: its reset and 3 policy steps
        assert frames[0].shape[:2] == (event.height, event.width) and event.width > event.height > 96

    plain = train(options(tiny, name="no-replays", timesteps=96))
    assert plain.replay_seconds == 0
    weights = [load_from_zip_file(run / "model.zip", load_data=False)[1]["policy"] for run in (result.run_dir, plain.run_dir)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


@pytest.mark.parametrize("name", available_scenarios())
def test_every_shipped_scenario_trains_a_tiny_run_and_evaluates_it(tiny, name):
    from envs.goals import has_goal
    from scenarios import load_scenario

    from scenarios.loader import highway_env_defaults

    # 3-step episodes where highway-env has a duration (merge ends past the ramp, two-way on clearlane's clock)
    short = {"episode.duration": 3} if "duration" in highway_env_defaults(load_scenario(name).highway_env.id) else {}
    scenario = write_scenario(tiny.root / f"{name}-short.yaml", base=name, **short)
    result = train(options(tiny, scenario=str(scenario), backend=None, timesteps=32, name=f"every-{name}"))
    assert not result.interrupted and result.num_timesteps >= 32 and result.model_path.is_file()
    scalars = read_scalars(result.run_dir)
    assert all_finite(scalars["eval/return"]) and all_finite(scalars["eval/collision_rate"])
    goal = has_goal(load_scenario(name).highway_env.id)
    assert ("eval/success_rate" in scalars) == goal  # exit, intersection and u-turn end with a manoeuvre
    if goal:
        assert all(0.0 <= value <= 1.0 for _, value in scalars["eval/success_rate"])


def test_highways_recipe_has_the_sa_regulariser_which_a2c_trains_without(tiny, caplog):
    import logging

    from agents.config import load_agent_config

    for backend in ("fast", "highway-env"):
        recipe = load_agent_config("highway", backend=backend).training
        assert (recipe.robust_reg, recipe.robust_reg_weight) == ("sa", 3.0)  # issue 16's κ (docs/ROBUSTNESS.md)
    assert load_agent_config("merge").training.robust_reg == "none"

    with caplog.at_level(logging.INFO, logger="agents.train"):
        result = train(options(tiny, scenario="highway", algo="a2c", timesteps=16, name="a2c-recipe"))
    assert read_run_config(result.run_dir).training.robust_reg == "none"
    assert "A2C trains without the recipe's SA-PPO regulariser" in caplog.text
    with pytest.raises(ValueError, match="works with PPO only, not A2C; use --algo ppo or --robust-reg none"):
        train(options(tiny, scenario="highway", algo="a2c", robust_reg="sa", timesteps=16, name="a2c-sa"))


def test_a_run_that_tunes_the_student_in_the_imitation_keeps_and_reloads_its_tuned_weights(tiny, tmp_path):
    """training.imitation_tunes_perception: the model holds the tuned student (not the shipped one, which the
    run folder keeps), and loading the run gives those weights back."""
    from agents.runs import PERCEPTION_FILE, latest_model, load_agent
    from envs.backends import get_backend
    from safetensors.torch import load_file

    config = tmp_path / "tune.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=1, imitation_steps=3, teacher_depth=1, teacher_horizon=1,
                                imitation_tunes_perception=True)
    config.write_text(yaml.safe_dump(settings))
    result = train(options(tiny, backend="fast", n_envs=4, timesteps=64, name="tuning", config=config))
    run_config = read_run_config(result.run_dir)
    assert run_config.training.imitation_tunes_perception is True
    env = get_backend("fast").make_vec_env(run_config.scenario, 2)
    model = load_agent(run_config, result.run_dir, env, "cpu", path=latest_model(result.run_dir))
    env.close()
    shipped = load_file(str(result.run_dir / PERCEPTION_FILE))
    tuned = {name.removeprefix("model."): value for name, value in model.policy.features_extractor.state_dict().items()}
    common = sorted(set(shipped) & set(tuned))
    assert common and any(not torch.equal(shipped[name], tuned[name]) for name in common)
    assert not any(parameter.requires_grad for parameter in model.policy.features_extractor.parameters())
