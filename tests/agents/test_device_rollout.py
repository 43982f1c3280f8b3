"""DevicePPO / DeviceRolloutBuffer: SB3's numbers, computed on tensors on the device (the CPU here)."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from agents.cached_features import CachedFeaturesPPO, policy_reads_features
from agents.callbacks import SafetyCallback
from agents.config import RunConfig, load_agent_config
from agents.device_rollout import DevicePPO, DeviceRolloutBuffer, act, predict_values
from agents.policy import PerceptionPolicy
from agents.runs import PERCEPTION_FILE, load_agent
from envs.fast.vec_env import FastVecEnv, host_columns
from envs.registration import make_env
from perception.extractor import DEFAULT_STUDENT, PerceptionExtractor
from scenarios import load_scenario
from tests.agents import write_scenario

N_ENVS, N_STEPS, BATCH, EPOCHS = 8, 8, 16, 2


@pytest.fixture(scope="module")
def short_scenario(tmp_path_factory):
    """highway with 3-step episodes: time-outs (bootstrapped) and resets inside every rollout."""
    return load_scenario(str(write_scenario(tmp_path_factory.mktemp("device") / "short.yaml", **{"episode.duration": 3})))


def make_agent(algorithm, env, fine_tune: bool = False, seed: int = 3):
    """The shipped student with its feature map (PerceptionPolicy, map_channels 8), tiny MLPs."""
    return algorithm(
        PerceptionPolicy, env, n_steps=N_STEPS, batch_size=BATCH, n_epochs=EPOCHS, gamma=0.9, seed=seed, device="cpu",
        policy_kwargs={
            "features_extractor_class": PerceptionExtractor,
            "features_extractor_kwargs": {"model_path": str(DEFAULT_STUDENT), "fine_tune": fine_tune, "include_map": True},
            "map_channels": 8, "net_arch": {"pi": [16], "vf": [16]},
        },
    )


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def random_rollout(n_steps: int, n_envs: int, features: int, seed: int) -> dict[str, np.ndarray]:
    """SB3 layout (n_steps, n_envs, ...) with episode starts, dones and some large advantages."""
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.normal(size=(n_steps, n_envs, features)).astype(np.float32),
        "actions": rng.integers(0, 5, (n_steps, n_envs)),
        "rewards": rng.normal(size=(n_steps, n_envs)).astype(np.float32),
        "starts": rng.random((n_steps, n_envs)) < 0.3,
        "values": rng.normal(size=(n_steps, n_envs)).astype(np.float32),
        "log_probs": -rng.random((n_steps, n_envs)).astype(np.float32) * 2,
        "last_values": rng.normal(size=(n_envs, 1)).astype(np.float32),
        "dones": rng.random(n_envs) < 0.5,
    }


def fill(buffer, data: dict[str, np.ndarray]) -> None:
    for t in range(len(data["obs"])):
        buffer.add(data["obs"][t], data["actions"][t].reshape(-1, 1), data["rewards"][t], data["starts"][t],
                   torch.as_tensor(data["values"][t]).reshape(-1, 1), torch.as_tensor(data["log_probs"][t]))
    buffer.compute_returns_and_advantage(last_values=torch.as_tensor(data["last_values"]), dones=data["dones"])


def both_buffers(features: int, gamma: float = 0.9, gae_lambda: float = 0.95, n_steps: int = 7, n_envs: int = 5,
                 seed: int = 0) -> tuple[RolloutBuffer, DeviceRolloutBuffer]:
    space, actions = spaces.Box(-np.inf, np.inf, (features,), np.float32), spaces.Discrete(5)
    data = random_rollout(n_steps, n_envs, features, seed)
    sb3 = RolloutBuffer(n_steps, space, actions, device="cpu", gamma=gamma, gae_lambda=gae_lambda, n_envs=n_envs)
    ours = DeviceRolloutBuffer(n_steps, space, actions, device="cpu", gamma=gamma, gae_lambda=gae_lambda, n_envs=n_envs)
    fill(sb3, data)
    fill(ours, data)
    return sb3, ours


@pytest.mark.parametrize("gamma, gae_lambda", [(0.9, 0.95), (0.99, 1.0), (0.8, 0.0)])
def test_gae_and_returns_equal_sb3s(gamma, gae_lambda):
    sb3, ours = both_buffers(4, gamma, gae_lambda)
    # ours is env-major (n_envs, n_steps); SB3's (n_steps, n_envs)
    np.testing.assert_allclose(ours.advantages.T.numpy(), sb3.advantages, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.returns.T.numpy(), sb3.returns, rtol=0, atol=1e-6)
    assert ours.advantages.abs().max() > 1  # not a trivial rollout


def test_minibatches_equal_sb3s_for_the_same_numpy_seed():
    sb3, ours = both_buffers(3)
    np.random.seed(11)
    expected = list(sb3.get(8))
    np.random.seed(11)
    got = list(ours.get(8))
    assert len(got) == len(expected) == 5  # 35 samples: 4 full minibatches and a short one
    for theirs, mine in zip(expected, got):
        for field in theirs._fields:
            torch.testing.assert_close(getattr(mine, field), getattr(theirs, field), rtol=0, atol=0, msg=field)
    with pytest.raises(ValueError, match="full rollout"):
        next(DeviceRolloutBuffer(2, sb3.observation_space, sb3.action_space, n_envs=5).get(4))


def test_the_ppo_update_equals_sb3s_on_the_same_rollout():
    """PPO.train on SB3's RolloutBuffer of features vs DevicePPO.train on DeviceRolloutBuffer: same
    starting weights and optimizer state, same numpy seed -> the same weights and train/* logs."""
    model = make_agent(DevicePPO, FastVecEnv(load_scenario("highway"), N_ENVS))
    assert isinstance(model.rollout_buffer, DeviceRolloutBuffer)
    sb3, ours = both_buffers(model.policy.features_dim, model.gamma, model.gae_lambda, N_STEPS, N_ENVS, seed=5)
    start_weights, start_optimizer = parameters(model), copy.deepcopy(model.policy.optimizer.state_dict())

    results = {}
    for name, buffer in (("sb3", sb3), ("device", ours)):
        model.policy.load_state_dict(start_weights)
        model.policy.optimizer.load_state_dict(copy.deepcopy(start_optimizer))
        model.set_logger(Logger(folder=None, output_formats=[]))
        model._n_updates = 0
        model.rollout_buffer = buffer
        np.random.seed(2)
        if name == "sb3":  # SB3's own PPO.train, reading features from SB3's own buffer
            with policy_reads_features(model.policy, (model.policy.features_dim,)):
                PPO.train(model)
        else:
            model.train()
        results[name] = (parameters(model), dict(model.logger.name_to_value))

    (sb3_weights, sb3_logs), (our_weights, our_logs) = results["sb3"], results["device"]
    assert any(not torch.equal(start_weights[name], value) for name, value in our_weights.items())
    for name, value in sb3_weights.items():
        torch.testing.assert_close(our_weights[name], value, rtol=0, atol=1e-6, msg=name)
    assert set(our_logs) == set(sb3_logs)
    for key, value in sb3_logs.items():
        assert our_logs[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    assert isinstance(model.policy.features_extractor, PerceptionExtractor)  # restored after train


def test_heads_mirror_the_policy_forward():
    model = make_agent(DevicePPO, FastVecEnv(load_scenario("highway"), 4))
    frames = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (4, 9, 96, 48), dtype=np.uint8))
    with torch.no_grad():
        torch.manual_seed(0)
        expected = model.policy(frames)
        torch.manual_seed(0)
        got = act(model.policy, model.policy.extract_features(frames))
        values = predict_values(model.policy, model.policy.extract_features(frames))
    for mine, theirs in zip(got, expected):
        assert torch.equal(mine, theirs)
    assert torch.equal(values, model.policy.predict_values(frames))


class RecordedSafety(SafetyCallback):
    """The project's SafetyCallback, unchanged; keeps each rollout's episode summaries before logging them."""

    def __init__(self) -> None:
        super().__init__(route_length_m=1000.0)
        self.summaries: list[list[dict[str, float]]] = []

    def log_finished(self) -> None:
        self.summaries.append(copy.deepcopy(self.finished))
        super().log_finished()


class Recorder(BaseCallback):
    """Every step's dones, rewards and safety infos; every rollout's buffer, in SB3's (n_steps, n_envs) layout."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple] = []
        self.rollouts: list[dict[str, np.ndarray]] = []

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        self.steps.append((np.asarray(self.locals["dones"]).copy(), np.asarray(self.locals["rewards"]).copy(),
                           [info["safety"] for info in infos], [info.get("TimeLimit.truncated") for info in infos],
                           [info["episode_seed"] for info in infos]))
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        arrays = {}
        for name in ("actions", "rewards", "values", "log_probs", "advantages", "episode_starts"):
            data = getattr(buffer, name)
            if isinstance(data, torch.Tensor):  # env-major (n_envs, n_steps, ...)
                data = data.reshape(N_ENVS, N_STEPS).T.numpy()
            arrays[name] = np.array(data, dtype=np.float32).reshape(N_STEPS, N_ENVS)  # a copy: buffers are reused
        self.rollouts.append(arrays)


def test_learn_gives_cached_features_ppo_s_rollouts_and_saves_plain_ppo(short_scenario, tmp_path):
    runs, recorders, monitors = {}, {}, {}
    for algorithm in (CachedFeaturesPPO, DevicePPO):  # one after the other: each seeds the global RNGs when built
        model = make_agent(algorithm, VecMonitor(FastVecEnv(short_scenario, N_ENVS)))
        recorder, monitor = recorders[algorithm], monitors[algorithm] = Recorder(), RecordedSafety()
        model.learn(total_timesteps=2 * N_ENVS * N_STEPS, callback=[recorder, monitor])  # two rollouts, two updates
        runs[algorithm] = model
    ours, theirs = recorders[DevicePPO], recorders[CachedFeaturesPPO]
    assert isinstance(runs[DevicePPO].rollout_buffer, DeviceRolloutBuffer)
    assert isinstance(runs[CachedFeaturesPPO].rollout_buffer, RolloutBuffer)

    # What callbacks see: the same dones, raw rewards, safety signals, time-outs and episode seeds
    assert len(ours.steps) == len(theirs.steps) == 2 * N_STEPS
    for (dones, rewards, safety, timeouts, seeds), expected in zip(ours.steps, theirs.steps):
        assert np.array_equal(dones, expected[0]) and dones.dtype == bool
        np.testing.assert_array_equal(rewards, expected[1])
        assert safety == expected[2] and timeouts == expected[3] and seeds == expected[4]
    assert any(True in timeouts for _, _, _, timeouts, _ in ours.steps)  # time-outs were bootstrapped
    # SafetyCallback (agents/callbacks.py) sums up the same episodes
    assert monitors[DevicePPO].episodes == monitors[CachedFeaturesPPO].episodes > 0
    assert monitors[DevicePPO].summaries == monitors[CachedFeaturesPPO].summaries

    # The rollouts: same actions, values, log-probs and rewards (time-outs bootstrapped). Rollout 0 is
    # bit-equal but for bootstrapped rewards (V(terminal frame): one batch here, one frame at a time in
    # SB3; measured <= 5e-7) and so advantages; rollout 1 follows an update whose weights differ in the
    # last bits (CachedFeaturesPPO recomputes features in one batch of 64, we in 8 of 8): <= 6e-7.
    for k, (mine, expected) in enumerate(zip(ours.rollouts, theirs.rollouts)):
        for name, data in expected.items():
            exact = name in ("actions", "episode_starts") or (k == 0 and name in ("values", "log_probs"))
            np.testing.assert_allclose(mine[name], data, rtol=0, atol=0 if exact else 2e-6, err_msg=f"rollout {k}: {name}")
    # VecMonitor's episode statistics (rollout/ep_rew_mean) are the same episodes
    episodes = {algorithm: [(info["r"], info["l"]) for info in model.ep_info_buffer] for algorithm, model in runs.items()}
    assert episodes[DevicePPO] and len(episodes[DevicePPO]) == len(episodes[CachedFeaturesPPO])
    for (r, l), (r0, l0) in zip(episodes[DevicePPO], episodes[CachedFeaturesPPO]):
        assert l == l0 and r == pytest.approx(r0, abs=1e-6)
    after = {algorithm: parameters(model) for algorithm, model in runs.items()}
    for name, value in after[CachedFeaturesPPO].items():
        torch.testing.assert_close(after[DevicePPO][name], value, rtol=1e-4, atol=1e-6, msg=name)

    # The saved zip is plain PPO: PPO.load, and agents.runs.load_agent (from a run folder), read it
    model = runs[DevicePPO]
    path = tmp_path / "model.zip"
    model.save(path)
    loaded = PPO.load(path, device="cpu")
    for name, value in after[DevicePPO].items():
        assert torch.equal(loaded.policy.state_dict()[name], value), name
    assert loaded._last_obs is None and loaded.rollout_buffer_class is RolloutBuffer  # no device tensors pickled

    defaults = load_agent_config("highway", backend="fast")
    config = RunConfig(
        scenario="highway", algo="ppo", seed=3, n_envs=N_ENVS, device="cpu", observation_shape=(9, 96, 48), n_actions=5,
        training=defaults.training, policy=dataclasses.replace(defaults.policy, net_arch=(16,)),
        ppo=dataclasses.replace(defaults.ppo, n_steps=N_STEPS, batch_size=BATCH, n_epochs=EPOCHS, gamma=0.9),
        backend="fast",
    )
    shutil.copyfile(DEFAULT_STUDENT, tmp_path / PERCEPTION_FILE)
    agent = load_agent(config, tmp_path, VecMonitor(FastVecEnv(short_scenario, N_ENVS)), "cpu", path=path)
    for name, value in after[DevicePPO].items():
        assert torch.equal(agent.policy.state_dict()[name], value), name
    assert agent.num_timesteps == 2 * N_ENVS * N_STEPS


def test_learning_continues_on_the_device_and_runs_the_student_once_per_sample(short_scenario):
    model = make_agent(DevicePPO, VecMonitor(FastVecEnv(short_scenario, 4)))
    model.learn(total_timesteps=4 * N_STEPS)
    observations = model._last_obs
    assert isinstance(observations, torch.Tensor) and observations.dtype == torch.uint8

    frames, timeouts = [], []
    model.policy.features_extractor.register_forward_hook(lambda module, inputs, output: frames.append(len(inputs[0])))

    class Timeouts(BaseCallback):
        def _on_step(self) -> bool:
            timeouts.append(sum(bool(info.get("TimeLimit.truncated")) for info in self.locals["infos"]))
            return True

    model.learn(total_timesteps=4 * N_STEPS, reset_num_timesteps=False, callback=Timeouts())
    assert model.num_timesteps == 2 * 4 * N_STEPS and model._n_updates == 2 * EPOCHS
    # each new observation once (the first ones were read at the end of the last rollout), and the
    # terminal observations of time-outs (bootstrapping); never again in train()
    assert sum(frames) == 4 * N_STEPS + sum(timeouts) and sum(timeouts) > 0


@pytest.mark.filterwarnings("ignore:You have specified a mini-batch size")
def test_falls_back_to_the_host_path():
    """Another VecEnv, or a student that trains, is CachedFeaturesPPO's path (frames in SB3's buffer)."""
    single = DummyVecEnv([lambda: make_env("highway", backend="fast")])
    fine_tuned = FastVecEnv(load_scenario("highway"), 2)
    for env, fine_tune in ((single, False), (fine_tuned, True)):
        model = make_agent(DevicePPO, env, fine_tune=fine_tune)
        assert type(model.rollout_buffer) is RolloutBuffer and not model.on_device(env)
        model.learn(total_timesteps=env.num_envs * N_STEPS)
        assert model.rollout_buffer.observations.dtype == np.uint8  # frames, on the host


def test_packed_host_copy_keeps_kinds_and_values():
    columns = {"flag": torch.tensor([True, False]), "count": torch.tensor([3, 999_999_999_999]),
               "gap": torch.tensor([0.1, -2.5e7], dtype=torch.float32)}
    assert host_columns(columns, packed=True) == host_columns(columns, packed=False)
    assert [type(v[0]) for v in host_columns(columns, packed=True).values()] == [bool, int, float]


def test_cached_features_ppo_can_update_twice_on_one_rollout():
    """SB3's train may read a buffer that get() already flattened (the benchmark profiles a second update)."""
    model = make_agent(CachedFeaturesPPO, FastVecEnv(load_scenario("highway"), 2))
    model.learn(total_timesteps=2 * N_STEPS)
    assert model.rollout_buffer.generator_ready
    before = parameters(model)
    model.train()
    assert model.rollout_buffer.observations.shape == (2 * N_STEPS, 9, 96, 48)  # frames, flat as get() left them
    assert any(not torch.equal(before[name], value) for name, value in parameters(model).items())


def test_imitation_on_the_device_drives_and_fits_as_on_the_host(short_scenario, monkeypatch):
    """DAgger with frames and actions kept on the device (a FastVecEnv under VecMonitor) labels the same
    states, records the same transitions and fits the same actor as stepping through NumPy."""
    from agents import imitation

    device_steps = []  # the device path must really be the one taken
    step_async_on_device = FastVecEnv.step_async_on_device

    def counted(self, actions):
        device_steps.append(actions.shape)
        step_async_on_device(self, actions)

    def dagger(on_device: bool):
        monkeypatch.setattr(FastVecEnv, "step_async_on_device", counted)
        if not on_device:
            monkeypatch.setattr(imitation, "fast_env_of", lambda env: None)
        env = VecMonitor(FastVecEnv(short_scenario, 4))
        env.seed(11)
        model = make_agent(PPO, env, seed=5)
        observed = []
        def on_transition(infos, dones, learner_drove):
            observed.append((np.asarray(dones).copy(), [info["episode_seed"] for info in infos], learner_drove))
        progress = imitation.imitate_teacher(model.policy, env, iterations=2, steps=4, on_transition=on_transition)
        monkeypatch.undo()
        env.close()
        return progress, observed, parameters(model)

    device = dagger(True)
    assert device_steps == [(4,)] * 8  # every step of 2 iterations x 4 steps, (B,) actions
    host = dagger(False)
    assert len(device_steps) == 8  # the NumPy path does not take it
    assert device[0].samples == host[0].samples == 2 * 4 * 4
    assert (device[0].regret, device[0].agreement) == (host[0].regret, host[0].agreement)
    assert len(device[1]) == len(host[1]) == 8
    for (dones_d, seeds_d, drove_d), (dones_h, seeds_h, drove_h) in zip(device[1], host[1]):
        assert np.array_equal(dones_d, dones_h) and seeds_d == seeds_h and drove_d == drove_h
    assert any(dones.any() for dones, _, _ in device[1])  # 3-step episodes: resets inside the run
    for name, value in device[2].items():
        assert torch.equal(value, host[2][name]), name
