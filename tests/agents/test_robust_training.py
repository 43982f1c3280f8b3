"""`train --robust-reg sa` (issue 16, deliverable 3): SA-PPO's regulariser in PPO's and the imitation's loss."""

from __future__ import annotations

import dataclasses
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
    settings["training"].update(imitation_iterations=2, imitation_steps=3, robust_steps=2, eval_every=0,
                                robust_imitation_weight=1.0)
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
    attacked = scalars["robust/attacked_regret"]  # adversarial imitation: after each DAgger iteration only
    assert [step for step, _ in attacked] == [imitation_steps // 2, imitation_steps]
    assert all_finite(attacked) and all(value >= 0 for _, value in attacked)


def test_a_tiny_run_attacking_every_minibatch_afresh_trains_too(tmp_path):
    """`robust_refresh: minibatch` (SA-PPO's own way): the imitation's fits and PPO's updates run the attack
    through the whole policy inside SB3's update, where CachedFeaturesPPO has swapped the extractor out."""
    tiny = make_tiny(tmp_path)
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=1, imitation_steps=3, robust_steps=1, eval_every=0,
                                robust_refresh="minibatch", robust_eps=8 / 255)
    config = tmp_path / "sa.yaml"
    config.write_text(yaml.safe_dump(settings))
    result = train(TrainOptions(scenario=str(tiny.scenario), timesteps=150, n_envs=4, logdir=tmp_path / "runs",
                                config=config, progress_bar=False, backend="fast", name="sa", device="cpu",
                                robust_reg="sa"))
    assert read_run_config(result.run_dir).training.robust_refresh == "minibatch"
    kl = read_scalars(result.run_dir)["robust/sa_kl"]
    assert all_finite(kl) and len(kl) >= 2 and kl[-1][1] > 0  # the imitation's and PPO's, attacked at 8/255


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


@pytest.mark.parametrize("refresh", ["rollout", "minibatch"])
def test_the_regulariser_term_reaches_the_actor_not_the_critic(robust_run, refresh):
    """SmoothPPO's zero_grad hook leaves kappa * dR/dθ in the gradients, before PPO's own backward."""
    tiny, result = robust_run
    model = _load_trained(result.run_dir)
    model.smoothing = dataclasses.replace(model.smoothing, refresh=refresh)
    frames = _frames(tiny, model.n_envs)  # (n_envs, C, H, W)
    model.rollout_buffer.observations[:] = frames[None].astype(np.float32)  # every step: these frames
    torch.manual_seed(0)
    smoothness = model._smoothness(8 / 255)
    with model._regularised_updates(smoothness):
        model.policy.optimizer.zero_grad()
    assert len(smoothness.values) == 1 and smoothness.values[0] > 0
    actor = [*model.policy.mlp_extractor.policy_net.parameters(), *model.policy.action_net.parameters()]
    critic = [*model.policy.mlp_extractor.value_net.parameters(), *model.policy.value_net.parameters()]
    assert all(p.grad is not None for p in actor) and any(p.grad.abs().sum() > 0 for p in actor)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in critic)
    assert not any(p.requires_grad for p in model.policy.features_extractor.parameters())  # the student stays frozen
    model.policy.optimizer.zero_grad()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in actor)  # the hook is gone after the update
    assert decision_model(model.policy).extractor is model.policy.features_extractor


def test_cached_attacks_stay_in_budget_and_give_the_frames_regulariser(robust_run):
    """`robust_refresh: rollout`: the cached features are those of the clean frames and of MAD frames
    within ε; R from them equals `sa_regularizer` on the same attacked frames, and is 0 below a grey level."""
    from agents.robust.attacks import AttackSpec, action_kl, perturb_frames
    from agents.robust.regularizer import feature_regularizer
    from agents.robust.sa_ppo import attacked_features

    tiny, result = robust_run
    policy = _load_trained(result.run_dir).policy
    frames = torch.from_numpy(_frames(tiny))  # (4, C, H, W) uint8
    with torch.no_grad():
        features = policy.extract_features(frames)
    clean, attacked = attacked_features(policy, frames, 0.5 / 255, steps=2)  # under one grey level: nothing moves
    assert torch.equal(clean, features) and torch.equal(attacked, features)
    assert feature_regularizer(policy, clean, attacked).item() == 0.0
    torch.manual_seed(0)
    clean, attacked = attacked_features(policy, frames, 8 / 255, steps=2, batch=3)  # two chunks: 3 + 1
    torch.manual_seed(0)
    by_hand = perturb_frames(decision_model(policy), frames[:3], AttackSpec("mad", 8 / 255, steps=2))  # the first chunk
    assert (by_hand.to(torch.int16) - frames[:3].to(torch.int16)).abs().max() <= 8  # within ε = 8 grey levels
    with torch.no_grad():
        # chunks of 3 + 1 frames: the same features up to the CPU conv's batch-size-dependent rounding
        assert torch.allclose(clean, features, atol=1e-5)
        assert torch.allclose(attacked[:3], policy.extract_features(by_hand), atol=1e-5)
        value = feature_regularizer(policy, clean, attacked)
        direct = action_kl(decision_model(policy)(frames[:3].float() / 255), decision_model(policy)(by_hand.float() / 255))
    assert value.item() > 0
    assert float(direct.mean()) > 0  # the attack moved the policy on the frames themselves


@pytest.mark.parametrize("refresh", ["rollout", "minibatch"])
def test_the_imitation_term_reaches_the_actor(robust_run, refresh):
    from agents.imitation import _SmoothingSamples
    from envs.backends import get_backend

    tiny, result = robust_run
    policy = _load_trained(result.run_dir).policy
    frames = _frames(tiny)  # (4, C, H, W)
    schedule = SASchedule(weight=0.5, eps=8 / 255, steps=2, ramp_end=0, refresh=refresh)
    env = get_backend("fast").make_vec_env(str(tiny.scenario), 4, "cpu")
    try:
        samples = _SmoothingSamples(schedule, policy, steps=2, env=env)
    finally:
        env.close()
    torch.manual_seed(0)
    for step in range(2):
        samples.add(step, frames, 8 / 255, torch.zeros(4, 5))
    smoothing = samples.smoothness(8 / 255)
    policy.optimizer.zero_grad()
    term = smoothing.term(policy)
    term.backward()
    assert smoothing.values[0] > 0 and term.item() == pytest.approx(0.5 * smoothing.values[0])
    actor = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor)


def test_adversarial_imitation_fits_the_teachers_labels_on_the_attacked_features(robust_run):
    """λ x the regret loss on the attacked features of the cached samples, under the teacher's values of
    the same states; off (None) at λ = 0."""
    from agents.imitation import _SmoothingSamples, actor_logits, regret_loss
    from envs.backends import get_backend
    from envs.fast.simulator import META_ACTIONS

    tiny, result = robust_run
    policy = _load_trained(result.run_dir).policy
    frames = _frames(tiny)  # (4, C, H, W)
    values = torch.tensor([[0.0, 1.0, 0.5, 0.2, 0.1]]).repeat(4, 1)  # (4, A), in META_ACTIONS order: IDLE is best
    env = get_backend("fast").make_vec_env(str(tiny.scenario), 4, "cpu")
    try:
        samples = {weight: _SmoothingSamples(SASchedule(weight=0.5, eps=8 / 255, steps=2, ramp_end=0,
                                                        imitation_weight=weight), policy, steps=1, env=env)
                   for weight in (0.0, 2.0)}
    finally:
        env.close()
    for kept in samples.values():
        torch.manual_seed(0)
        kept.add(0, frames, 8 / 255, values)
    assert samples[0.0].attacked_regret(8 / 255, META_ACTIONS) is None
    kept = samples[2.0]
    assert torch.equal(kept.values, values)
    assert not torch.equal(kept.attacked, kept.clean)  # 8 grey levels moved the features
    term = kept.attacked_regret(8 / 255, META_ACTIONS)
    policy.optimizer.zero_grad()
    loss = term.term(policy)
    loss.backward()
    with torch.no_grad():
        expected = regret_loss(actor_logits(policy, kept.attacked), values, META_ACTIONS)
        on_clean = regret_loss(actor_logits(policy, kept.clean), values, META_ACTIONS)
    assert term.values == [pytest.approx(float(expected))]  # one minibatch holds all 4 samples
    assert loss.item() == pytest.approx(2.0 * float(expected))
    assert float(expected) != pytest.approx(float(on_clean))  # it reads the attacked features, not the clean
    actor = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor)


def test_the_pgd_crafting_attack_pushes_the_policy_off_its_greedy_action(robust_run):
    from agents.robust.attacks import AttackSpec, perturb_frames
    from agents.robust.sa_ppo import attacked_features

    tiny, result = robust_run
    policy = _load_trained(result.run_dir).policy
    frames = torch.from_numpy(_frames(tiny))  # (4, C, H, W) uint8
    torch.manual_seed(0)
    _, attacked = attacked_features(policy, frames, 8 / 255, steps=3, attack="pgd")
    torch.manual_seed(0)
    by_hand = perturb_frames(decision_model(policy), frames, AttackSpec("pgd", 8 / 255, steps=3))
    assert (by_hand.to(torch.int16) - frames.to(torch.int16)).abs().max() <= 8
    with torch.no_grad():
        assert torch.allclose(attacked, policy.extract_features(by_hand), atol=1e-5)
        logits_clean, logits_attacked = decision_model(policy)(frames.float() / 255), decision_model(policy)(by_hand.float() / 255)
    greedy = logits_clean.argmax(dim=1, keepdim=True)
    def greedy_probability(logits: torch.Tensor) -> torch.Tensor:  # (B,)
        return torch.softmax(logits, dim=1).gather(1, greedy)[:, 0]

    assert bool((greedy_probability(logits_attacked) < greedy_probability(logits_clean)).all())  # it lost ground


@pytest.mark.parametrize("overrides, message", [
    ({"robust_reg": "sa", "robust_refresh": "minibatch", "robust_imitation_weight": 1.0}, "robust_refresh: rollout"),
    ({"robust_reg": "sa", "robust_refresh": "minibatch", "robust_attack": "pgd"}, "robust_refresh: rollout"),
    ({"robust_reg": "none", "robust_imitation_weight": 1.0}, "needs robust_reg: sa"),
    ({"robust_reg": "sa", "robust_attack": "critic"}, "robust_attack"),
])
def test_adversarial_imitation_settings_it_cannot_honour_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_agent_config("highway", None, {"training": overrides}, backend="fast")


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


HIGHWAY_IMITATION = 6 * 40 * 256  # highway@fast: 6 DAgger iterations of 40 steps in 256 envs


@pytest.mark.parametrize("ramp_steps, expected_end", [(None, HIGHWAY_IMITATION + (200_000 - HIGHWAY_IMITATION) // 2),
                                                      (0, 0), (20_480, 20_480)])
def test_the_ramp_ends_halfway_through_ppo_unless_robust_ramp_steps_says_where(ramp_steps, expected_end):
    overrides = {"training": {"robust_reg": "sa", "robust_ramp_steps": ramp_steps}}
    training = load_agent_config("highway", None, overrides, backend="fast").training
    assert training.imitation_iterations * training.imitation_steps * 256 == HIGHWAY_IMITATION
    schedule = schedule_for(training, n_envs=256)
    assert schedule.ramp_end == expected_end
    assert schedule.eps_at(0) == (pytest.approx(3 / 255) if ramp_steps == 0 else 0.0)
    assert schedule.eps_at(10**9) == pytest.approx(3 / 255)
