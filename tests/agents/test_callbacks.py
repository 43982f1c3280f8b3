"""Callbacks: safety/* from every step's info, checkpoints written atomically, evaluation helpers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.callbacks import PeriodicCheckpoint, SafetyCallback
from agents.evaluate import MIN_TTC_CAP_S, mean_ci, run_episodes, safety_means
from agents.safety_board import SafetyBoard, training_row
from envs.registration import make_env, make_env_fn
from envs.safety import SafetyMonitor
from tests.agents import read_scalars, write_scenario


class RecordingLogger:
    def __init__(self) -> None:
        self.records: dict[str, float] = {}

    def record(self, key, value, exclude=None) -> None:
        self.records[key] = value


def fake_model(num_envs: int = 1, num_timesteps: int = 0):
    env = SimpleNamespace(num_envs=num_envs)
    return SimpleNamespace(logger=RecordingLogger(), get_env=lambda: env, num_timesteps=num_timesteps)


def signals(**changes) -> dict:
    base = {
        "crashed": False, "off_road": False, "speed": 20.0, "ttc": math.inf, "headway": math.inf, "gap": math.inf,
        "acceleration": 0.0, "jerk": 0.0, "lane_change": False, "hard_brake": False, "distance": 0.0, "lane_id": 0,
    }
    return {"safety": {**base, **changes}}


@pytest.fixture(scope="module")
def short_scenario(tmp_path_factory):
    return write_scenario(tmp_path_factory.mktemp("scenario") / "short.yaml", **{"episode.duration": 3})


def test_safety_callback_counts_the_terminal_step_of_an_sb3_vec_env(short_scenario):
    """On done, SB3 has already reset the env; the info is still the finished episode's last step."""
    actions = [3, 3, 3]  # FASTER
    env = make_env(short_scenario)
    env.reset(seed=5)
    direct = SafetyMonitor(env.scenario.safety.route_length_m)
    for action in actions:
        *_, info = env.step(action)
        direct.update(info)
    env.close()

    vec = DummyVecEnv([make_env_fn(short_scenario)])
    vec.seed(5)
    vec.reset()
    callback = SafetyCallback(env.scenario.safety.route_length_m)
    callback.init_callback(fake_model())
    for action in actions:
        _, _, dones, infos = vec.step(np.array([action]))
        callback.update_locals({"infos": infos, "dones": dones})
        callback.on_step()
    vec.close()
    assert dones[0] and "terminal_observation" in infos[0]
    expected = training_row(direct.summary(), len(actions))
    assert len(callback.finished) == 1
    assert {key: value for key, value in callback.finished[0].items() if key != "return"} == \
        {key: value for key, value in expected.items() if key != "return"}
    assert callback.tracker.monitors[0].totals.steps == 0  # reset for the next episode


def test_safety_callback_logs_means_of_episodes_finished_since_the_last_log(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    callback = SafetyCallback(route_length_m=1000.0, board=SafetyBoard(writer), phase="ppo")
    model = fake_model(num_envs=2)
    callback.init_callback(model)

    def step(infos, dones):
        model.num_timesteps += 2
        callback.update_locals({"infos": infos, "dones": np.array(dones)})
        callback.on_step()

    step([signals(distance=10.0), signals(distance=20.0, ttc=1.0, headway=0.5, jerk=3.0)], [False, False])
    step([signals(distance=20.0), signals(distance=40.0, crashed=True, jerk=4.0)], [False, True])  # env 1 ends
    callback.on_rollout_end()
    callback.on_rollout_end()  # nothing finished since: nothing logged
    step([signals(distance=30.0), signals(distance=5.0)], [True, False])  # env 0 ends after 3 steps, no TTC
    callback.on_rollout_end()
    writer.close()
    logged = {tag: points for tag, points in read_scalars(tmp_path).items()}

    def at(name):
        return logged[f"safety_train/ppo/{name}"]

    assert at("episodes") == [(4, 1.0), (6, 1.0)]  # one episode in each point, at the env step it was logged
    assert at("collision_rate") == [(4, 1.0), (6, 0.0)]
    assert at("min_ttc_s") == [(4, 1.0), (6, MIN_TTC_CAP_S)]  # inf is capped for the mean
    assert at("min_headway_s")[0] == (4, 0.5)
    assert at("share_ttc_below_1.5s") == [(4, 1.0), (6, 0.0)] and at("share_headway_below_1s")[0] == (4, 1.0)
    assert at("rms_jerk_mps3")[0][1] == pytest.approx(math.sqrt((3.0**2 + 4.0**2) / 2))
    assert at("route_completion")[0][1] == pytest.approx(0.04)
    assert at("driving_score")[0][1] == pytest.approx(0.04 * 0.6)
    assert at("unsafe_fraction")[0] == (4, 0.5)
    assert at("mean_speed_mps")[1] == (6, 20.0) and at("length_steps") == [(4, 2.0), (6, 3.0)]
    assert "safety_train/ppo/return" not in logged  # the return of training episodes is rollout/ep_rew_mean's
    assert callback.episodes == 2


class FakeSavingModel:
    def __init__(self) -> None:
        self.num_timesteps = 0
        self.fail = False

    def save(self, path) -> None:
        with open(path, "wb") as handle:
            handle.write(b"partial")
            if self.fail:
                raise KeyboardInterrupt  # killed in the middle of a write
            handle.write(f" model at {self.num_timesteps}".encode())


def test_checkpoints_every_interval_keep_the_newest_and_survive_a_killed_write(tmp_path):
    model = FakeSavingModel()
    callback = PeriodicCheckpoint(tmp_path, every=100, keep=2)
    callback.init_callback(model)
    callback.on_training_start({}, {})
    for _ in range(10):  # 2 envs, 50 steps each call -> 500 steps
        model.num_timesteps += 50
        callback.on_step()
    names = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000000400.zip", "step-0000000500.zip"]

    model.fail = True
    model.num_timesteps += 100
    with pytest.raises(KeyboardInterrupt):
        callback.on_step()
    names = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000000400.zip", "step-0000000500.zip"]  # no half-written file, nothing lost
    assert (tmp_path / "checkpoints" / "step-0000000500.zip").read_bytes() == b"partial model at 500"


def test_checkpoint_interval_continues_after_a_resume(tmp_path):
    model = FakeSavingModel()
    model.num_timesteps = 250  # resumed from a checkpoint at 250
    callback = PeriodicCheckpoint(tmp_path, every=100, keep=5)
    callback.init_callback(model)
    callback.on_training_start({}, {})
    model.num_timesteps = 290
    callback.on_step()
    assert not (tmp_path / "checkpoints").exists()
    model.num_timesteps = 300
    callback.on_step()
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["step-0000000300.zip"]


def test_mean_ci_is_a_student_t_interval_clipped_to_the_range():
    values = [0.2, 0.4, 0.9, 0.5]
    result = mean_ci(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert result.mean == pytest.approx(0.5) and result.n == 4
    assert (result.ci_low, result.ci_high) == pytest.approx((0.5 - half, 0.5 + half))
    clipped = mean_ci([0.0, 0.0, 1.0], low=0.0, high=1.0)
    assert clipped.ci_low == 0.0 and clipped.ci_high <= 1.0
    assert mean_ci([3.0]).ci_low is None and mean_ci([3.0]).std is None  # one episode: no interval


def test_safety_means_use_the_names_of_the_tensorboard_keys():
    summaries = [
        {"collision": 1.0, "min_ttc": 0.5, "unsafe_fraction": 0.2, "hard_brakes_per_km": 1.0, "lane_changes_per_km": 2.0,
         "mean_speed": 20.0, "route_completion": 0.5, "driving_score": 0.3},
        {"collision": 0.0, "min_ttc": math.inf, "unsafe_fraction": 0.0, "hard_brakes_per_km": 0.0,
         "lane_changes_per_km": 0.0, "mean_speed": 30.0, "route_completion": 1.0, "driving_score": 1.0},
    ]
    means = safety_means(summaries)
    assert set(means) == {
        "collision_rate", "min_ttc", "unsafe_fraction", "hard_brakes_per_km", "lane_changes_per_km", "mean_speed",
        "route_completion", "driving_score",
    }
    assert means["collision_rate"] == 0.5 and means["mean_speed"] == 25.0
    assert means["min_ttc"] == pytest.approx((0.5 + MIN_TTC_CAP_S) / 2)


def test_run_episodes_plays_each_seed_to_its_end_and_repeats_exactly(short_scenario):
    class Always:
        def predict(self, obs, deterministic=True):
            assert obs.shape == (9, 96, 48) and obs.dtype == np.uint8
            return np.array(3), None

    env = make_env(short_scenario)
    first = run_episodes(Always(), env, [1_000_000_000, 1_000_000_001])
    again = run_episodes(Always(), env, [1_000_000_000, 1_000_000_001])
    env.close()
    assert first == again
    assert [episode["seed"] for episode in first] == [1_000_000_000, 1_000_000_001]
    assert all(episode["length"] == 3 or episode["collision_rate"] == 1.0 for episode in first)
    assert all(0.0 <= episode["driving_score"] <= 1.0 for episode in first)
