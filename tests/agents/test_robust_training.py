"""`train --robust-reg sa` (issue 16, deliverable 3): SA-PPO's regulariser in PPO's and the imitation's loss."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from agents.config import RunConfig, load_agent_config, parse_run_config
from agents.robust.sa_ppo import SASchedule, SmoothPPO, decision_model, schedule_for
from agents.runs import load_agent, read_run_config
from agents.train import TrainOptions, train
from tests.agents import all_finite, make_tiny, read_scalars

ROOT = Path(__file__).resolve().parents[2]
TIMESTEPS = 160  # 2 DAgger iterations x 3 steps x 4 envs = 24, then two PPO rollouts of 32 x 4


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory):
    """A tiny fast-backend run with the imitation warm start and `robust_reg: sa` (2 PGD steps)."""
    root = tmp_path_factory.mktemp("robust-training")
    tiny = make_tiny(root)
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=2, imitation_steps=3, robust_steps=2, eval_every=0)
    config = root / "sa.yaml"
    config.write_text(yaml.safe_dump(settings))
    result = train(TrainOptions(scenario=str(tiny.scenario), timesteps=TIMESTEPS, n_envs=4, logdir=root / "runs",
                                config=config, progress_bar=False, backend="fast", name="sa", device="cpu",
                                robust_reg="sa", robust_eps=3 / 255))
    return tiny, result


def _frames(tiny, count: int = 4) -> np.ndarray:
    from envs import make_env

    env = make_env(str(tiny.scenario), "fast")
    try:
        return np.stack([env.reset(seed=seed)[0] for seed in range(count)])  # (B, C, H, W) uint8
    finally:
        env.close()


def test_a_tiny_robust_run_finishes_and_logs_the_regulariser_and_its_budget(robust_run):
    _, result = robust_run
    assert not result.interrupted and result.num_timesteps >= TIMESTEPS
    scalars = read_scalars(result.run_dir)
    kl, eps = scalars["robust/sa_kl"], scalars["robust/sa_eps"]
    assert all_finite(kl) and all_finite(eps)
    assert all(value >= 0 for _, value in kl)
    imitation_steps = 2 * 3 * 4
    assert [step for step, _ in eps][:2] == [imitation_steps // 2, imitation_steps]  # after each DAgger iteration
    budgets = [value for _, value in eps]
    assert budgets == sorted(budgets) and budgets[0] > 0  # the ramp only goes up
    assert budgets[-1] == pytest.approx(3 / 255)  # PPO's updates after the ramp's end: the full budget
    assert any(step > imitation_steps for step, _ in kl)  # PPO's updates log it too


def test_the_setting_is_in_config_yaml_and_a_resumed_run_rebuilds_smooth_ppo(robust_run):
    from envs.backends import get_backend

    _, result = robust_run
    config = read_run_config(result.run_dir)
    assert (config.training.robust_reg, config.training.robust_eps) == ("sa", pytest.approx(3 / 255))
    vec_env = get_backend(config.backend).make_vec_env(config.scenario, config.n_envs, "cpu")
    try:
        model = load_agent(config, result.run_dir, vec_env, "cpu")
    finally:
        vec_env.close()
    assert isinstance(model, SmoothPPO)
    assert model.smoothing == schedule_for(config.training, config.n_envs)


def test_the_model_zip_is_plain_ppo(robust_run):
    import zipfile

    _, result = robust_run
    with zipfile.ZipFile(result.model_path) as archive:
        data = archive.read("data").decode()
    assert "smoothing" not in data and "SmoothPPO" not in data


def test_the_regulariser_is_zero_at_eps_zero_and_positive_on_uint8_frames(robust_run):
    from agents.explain.decision import load_run
    from agents.robust.regularizer import sa_regularizer
    from envs import make_env

    tiny, result = robust_run
    env = make_env(str(tiny.scenario), "fast")
    try:
        decision = load_run(result.run_dir, env).decision
    finally:
        env.close()
    frames = torch.from_numpy(_frames(tiny))
    assert sa_regularizer(decision, frames, 0.0).item() == 0.0
    assert sa_regularizer(decision, frames, 0.5 / 255).item() == 0.0  # under one grey level: re-quantised away
    torch.manual_seed(0)
    assert sa_regularizer(decision, frames, 8 / 255, steps=2).item() > 0


def test_the_regulariser_term_reaches_the_actor_not_the_critic(robust_run):
    """SmoothPPO's zero_grad hook leaves kappa * dR/dθ in the gradients, before PPO's own backward."""
    tiny, result = robust_run
    model = _load_trained(result.run_dir)
    frames = _frames(tiny, model.n_envs)  # (n_envs, C, H, W)
    model.rollout_buffer.observations[:] = frames[None].astype(np.float32)  # every step: these frames
    values: list[float] = []
    torch.manual_seed(0)
    with model._regularised_updates(8 / 255, values):
        model.policy.optimizer.zero_grad()
    assert len(values) == 1 and values[0] > 0
    actor = [*model.policy.mlp_extractor.policy_net.parameters(), *model.policy.action_net.parameters()]
    critic = [*model.policy.mlp_extractor.value_net.parameters(), *model.policy.value_net.parameters()]
    assert all(p.grad is not None for p in actor) and any(p.grad.abs().sum() > 0 for p in actor)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in critic)
    assert not any(p.requires_grad for p in model.policy.features_extractor.parameters())  # the student stays frozen
    model.policy.optimizer.zero_grad()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in actor)  # the hook is gone after the update
    assert decision_model(model.policy).extractor is model.policy.features_extractor


def test_the_schedule_ramps_linearly_to_half_of_the_ppo_phase():
    schedule = SASchedule(weight=0.3, eps=4 / 255, steps=3, ramp_end=100)
    assert schedule.eps_at(0) == 0.0
    assert schedule.eps_at(50) == pytest.approx(2 / 255)
    assert schedule.eps_at(100) == schedule.eps_at(10_000) == pytest.approx(4 / 255)
    training = load_agent_config("highway", overrides={"training": {"robust_reg": "sa", "timesteps": 200_000}},
                                 backend="fast").training
    imitation = training.imitation_iterations * training.imitation_steps * 256
    assert schedule_for(training, 256).ramp_end == imitation + (200_000 - imitation) // 2
    assert schedule_for(load_agent_config("highway").training, 2) is None  # off by default


def test_the_robust_keys_round_trip_through_config_yaml():
    agent = load_agent_config("highway", overrides={"training": {"robust_reg": "sa", "robust_eps": 2 / 255,
                                                                 "robust_reg_weight": 0.5, "robust_steps": 4}})
    config = RunConfig(scenario="highway", algo="ppo", seed=0, n_envs=1, device="cpu", observation_shape=(9, 96, 48),
                       n_actions=5, training=agent.training, policy=agent.policy, ppo=agent.ppo)
    again = parse_run_config(yaml.safe_load(yaml.safe_dump(config.to_dict())), Path("config.yaml"))
    assert again == config and again.training.robust


@pytest.mark.parametrize("key, value", [("robust_reg", "pgd"), ("robust_eps", 0), ("robust_eps", 1.5),
                                        ("robust_reg_weight", -0.1), ("robust_steps", 0), ("robust_reg", True)])
def test_bad_robust_keys_name_the_key(tmp_path, key, value):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"training": {key: value}}))
    with pytest.raises(ValueError, match=f"training.{key}"):
        load_agent_config("highway", path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


@pytest.mark.parametrize("args, fragment", [
    (["--algo", "a2c", "--robust-reg", "sa"], "works with PPO only"),
    (["--robust-reg", "sa", "--config", "{device}"], "device_rollout"),
    (["--robust-eps", "3/255"], "add --robust-reg sa"),
    (["--robust-reg", "sa", "--robust-eps", "2"], "--robust-eps"),
    (["--robust-reg", "sa", "--robust-eps", "x"], "--robust-eps: invalid epsilon"),
    (["--robust-reg", "sa", "--robust-eps", "0"], "--robust-eps must be in (0, 1]"),
    (["--robust-reg", "pgd"], "invalid choice"),
    (["--resume", "runs/anything", "--robust-reg", "sa"], "leave out --robust-reg"),
])
def test_unsupported_combinations_are_one_error_line_and_exit_2(tmp_path, args, fragment):
    device = tmp_path / "device.yaml"
    device.write_text(yaml.safe_dump({"training": {"device_rollout": True}}))
    args = [str(device) if arg == "{device}" else arg for arg in args]
    result = _cli("train", "--logdir", str(tmp_path / "runs"), "--timesteps", "1000000", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing written


def test_the_imitation_term_reaches_the_actor(robust_run):
    from agents.imitation import _Smoothing

    tiny, result = robust_run
    policy = _load_trained(result.run_dir).policy
    frames = torch.from_numpy(_frames(tiny))
    smoothing = _Smoothing(SASchedule(weight=0.5, eps=8 / 255, steps=2, ramp_end=0), 8 / 255, frames)
    policy.optimizer.zero_grad()
    torch.manual_seed(0)
    term = smoothing.term(policy)
    term.backward()
    assert smoothing.values[0] > 0 and term.item() == pytest.approx(0.5 * smoothing.values[0])
    actor = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor)


def _load_trained(run_dir):
    """The run's model, loaded as `evaluate` loads it (SmoothPPO when the run used the regulariser)."""
    from envs.backends import get_backend

    config = read_run_config(run_dir)
    vec_env = get_backend(config.backend).make_vec_env(config.scenario, config.n_envs, "cpu")
    try:
        return load_agent(config, run_dir, vec_env, "cpu")
    finally:
        vec_env.close()


def test_frame_batches_cover_every_frame_once_per_pass():
    from agents.robust.sa_ppo import FrameBatches

    batches = FrameBatches(10, 4)
    for _ in range(2):  # two passes
        drawn = [batches.next() for _ in range(3)]  # 4 + 4 + 2
        assert [len(batch) for batch in drawn] == [4, 4, 2]
        assert all(bool((batch[1:] > batch[:-1]).all()) for batch in drawn)  # sorted, no repeats
        assert sorted(torch.cat(drawn).tolist()) == list(range(10))
