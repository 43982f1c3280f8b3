"""Robustness (issue 16): decision-time attacks through perception and policy, sensor corruptions,
the robustness block of the evaluation JSON, TensorBoard's robust/*, and the CLI's bad inputs. Tiny budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.robust.attacks import ATTACKS, AttackSpec, kl_divergence, objective, perturb_observations, quantize
from agents.robust.corruptions import CorruptionSpec, corrupted_scenario, parse_corruptions
from agents.robust.evaluate import (
    evaluate_robustness, masking_checks, paired_changes, parse_eps_list, plan_settings, rise_cell, worst_of_lines,
)
from agents.train import TrainOptions, train
from perception.attacks import ascend, format_eps, parse_eps
from tests.agents import make_tiny, read_scalars

ROOT = Path(__file__).resolve().parents[2]
EPS = 3 / 255


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tiny = make_tiny(tmp_path_factory.mktemp("robust"))
    result = train(TrainOptions(
        scenario=str(tiny.scenario), timesteps=64, n_envs=1, logdir=tiny.root / "runs", config=tiny.config,
        name="run", progress_bar=False,
    ))
    return tiny, result


@pytest.fixture(scope="module")
def decision(trained):
    """(DecisionModel, (B, C, H, W) uint8 observations of the tiny scenario)."""
    from agents.explain.decision import load_run
    from envs import make_env

    tiny, result = trained
    env = make_env(str(tiny.scenario), "fast")
    try:
        loaded = load_run(result.run_dir, env)
        observations = [env.reset(seed=seed)[0] for seed in range(4)]
    finally:
        env.close()
    for parameter in loaded.decision.parameters():
        parameter.requires_grad_(False)
    return loaded.decision, np.stack(observations)


def test_eps_is_parsed_and_formatted_both_ways():
    assert parse_eps("3/255") == pytest.approx(3 / 255)
    assert format_eps(3 / 255) == "3/255" and format_eps(0.01) == "0.01"
    assert parse_eps(format_eps(8 / 255)) == pytest.approx(8 / 255)
    assert parse_eps_list("1/255,3/255,1/255") == [pytest.approx(1 / 255), pytest.approx(3 / 255)]
    for bad in ("abc", "-1/255", "0", "2", "nan"):
        with pytest.raises(ValueError, match="epsilon"):
            parse_eps_list(bad)


@pytest.mark.parametrize("kind", [kind for kind in ATTACKS if kind != "none"])
def test_every_attack_stays_in_its_eps_ball_and_returns_uint8_frames(decision, kind):
    model, observations = decision
    torch.manual_seed(0)
    attacked = perturb_observations(model, observations, AttackSpec(kind, EPS, steps=3))
    assert attacked.dtype == np.uint8 and attacked.shape == observations.shape
    difference = np.abs(attacked.astype(int) - observations.astype(int))
    assert difference.max() <= 3  # 3/255: at most 3 grey levels
    assert difference.max() > 0  # and it did perturb
    single = perturb_observations(model, observations[0], AttackSpec(kind, EPS, steps=2))
    assert single.shape == observations[0].shape and single.dtype == np.uint8


def test_quantisation_never_leaves_the_ball_for_budgets_that_are_not_whole_grey_levels():
    clean = torch.randint(0, 256, (2, 9, 8, 4), dtype=torch.uint8)
    eps = 0.01  # 2.55 grey levels: rounding could reach 3
    perturbed = clean.float() / 255 + eps * torch.sign(torch.randn(clean.shape))
    grey = quantize(perturbed.clamp(0, 1), clean, eps)
    assert grey.dtype == torch.uint8
    assert (grey.int() - clean.int()).abs().max() <= 2


@pytest.mark.parametrize("kind", ["pgd", "fgsm", "random", "mad", "critic", "none"])
def test_eps_zero_and_none_change_nothing(decision, kind):
    model, observations = decision
    attacked = perturb_observations(model, observations, AttackSpec(kind, 0.0 if kind != "none" else 0.0))
    assert np.array_equal(attacked, observations)


@pytest.mark.parametrize("kind", ["pgd", "mad", "critic"])
def test_more_steps_or_restarts_never_lower_the_attack_loss_from_the_same_start(decision, kind):
    model, observations = decision
    clean = torch.from_numpy(observations).float() / 255
    loss = objective(model, AttackSpec(kind, EPS), clean)
    alpha = 0.5 / 255  # the same step size for both, so the longer run extends the shorter one

    def attack(steps: int, restarts: int = 1) -> torch.Tensor:
        torch.manual_seed(1)  # the same random start
        with torch.no_grad():
            return loss(ascend(loss, clean, EPS, steps, alpha, restarts=restarts, keep_best=True))

    few, many, restarted = attack(2), attack(8), attack(2, restarts=3)
    assert torch.all(many >= few - 1e-6) and torch.all(restarted >= few - 1e-6)
    assert many.sum() > few.sum()  # and the steps did something


def test_mad_raises_the_kl_far_above_random_noise_of_the_same_eps(decision):
    model, observations = decision
    clean = torch.from_numpy(observations).float() / 255
    torch.manual_seed(0)
    mad = torch.from_numpy(perturb_observations(model, observations, AttackSpec("mad", EPS, steps=5))).float() / 255
    noise = torch.from_numpy(perturb_observations(model, observations, AttackSpec("random", EPS))).float() / 255
    kl_mad, kl_noise = kl_divergence(model, clean, mad), kl_divergence(model, clean, noise)
    assert kl_mad.mean() > 0 and kl_mad.mean() > 2 * kl_noise.mean()


def test_ascend_checks_its_arguments():
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="keep_best"):
        ascend(lambda v: v.sum(dim=1), x, 0.1, 2, 0.01, restarts=2)
    with pytest.raises(ValueError, match="restarts"):
        ascend(lambda v: v.sum(dim=1), x, 0.1, 2, 0.01, restarts=0, keep_best=True)
    with pytest.raises(ValueError, match="per sample"):
        ascend(lambda v: v.sum(), x, 0.1, 2, 0.01, keep_best=True)


def test_settings_are_named_by_attack_steps_and_eps_and_transfer_doubles_the_white_box_ones():
    settings = plan_settings(["none", "random", "pgd", "mad"], [1 / 255, 3 / 255], steps=[10, 50], restarts=2,
                             corruptions=parse_corruptions("noise:1"), transfer=True)
    names = [setting.name for setting in settings]
    assert names[:4] == ["none", "random-eps1", "random-eps3", "pgd10x2-eps1"]
    assert "transfer-pgd50x2-eps3" in names and "transfer-random-eps1" not in names
    assert "mad10x2-eps3" in names and names[-1] == "corruption-noise-1"
    with pytest.raises(ValueError, match="steps"):
        AttackSpec("pgd", EPS, steps=0)
    with pytest.raises(ValueError, match="unknown attack"):
        AttackSpec("deepfool", EPS)


def test_corruptions_are_the_scenarios_own_faults_one_at_a_time():
    from scenarios import load_scenario

    specs = parse_corruptions("all")
    assert len(specs) == 8 and {spec.severity for spec in specs} == {1, 2}
    assert parse_corruptions("blur") == [CorruptionSpec("blur", 1), CorruptionSpec("blur", 2)]
    noisy = load_scenario("highway-noisy").corruptions
    blurred = corrupted_scenario(load_scenario("highway"), CorruptionSpec("blur", 2)).corruptions
    assert blurred.blur_sigma_px == pytest.approx(2 * noisy.blur_sigma_px)
    assert blurred.gaussian_noise_std == 0 and blurred.frame_drop_prob == 0 and blurred.brightness_shift == 0
    for bad, fragment in (("fog:1", "unknown corruption"), ("noise:3", "severity"), ("noise:x", "severity")):
        with pytest.raises(ValueError, match=fragment):
            parse_corruptions(bad)


def test_masking_checks_warn_when_random_or_transfer_beats_the_white_box_attack():
    def entry(name, attack, ret, transfer=False, eps=EPS, steps=10):
        metric = {"mean": ret, "std": 0.1, "n": 100}
        return {"setting": name, "attack": attack, "eps": eps, "eps_text": format_eps(eps), "transfer": transfer,
                "corruption": None, "steps": steps, "restarts": 1,
                "metrics": {"return": metric, "collision_rate": {"mean": 0.1, "std": 0.1, "n": 100}}}

    honest = {"pgd": entry("pgd10-eps3", "pgd", 20.0), "random": entry("random-eps3", "random", 25.0),
              "transfer": entry("transfer-pgd10-eps3", "pgd", 23.0, transfer=True)}
    assert masking_checks(honest)[1] == []
    masked = {**honest, "random": entry("random-eps3", "random", 15.0)}
    warnings = masking_checks(masked)[1]
    assert len(warnings) == 1 and "random-eps3" in warnings[0] and "not trustworthy" in warnings[0]
    # nothing bites: random lower than the white-box attack by less than the noise is a finding, not a warning
    nothing_bites = {**honest, "random": entry("random-eps3", "random", 19.99)}
    findings, warnings = masking_checks(nothing_bites)
    assert warnings == [] and any("random-eps3" in line and "noise, not a sign of masking" in line for line in findings)
    weaker_with_eps = {**honest, "big": entry("pgd10-eps8", "pgd", 24.0, eps=8 / 255)}
    assert any("grow with ε" in warning for warning in masking_checks(weaker_with_eps)[1])
    more_steps_weaker = {**honest, "long": entry("pgd50-eps3", "pgd", 24.0, steps=50)}
    assert any("more steps" in warning for warning in masking_checks(more_steps_weaker)[1])


def test_robustness_block_in_the_json_none_equals_the_plain_evaluation_and_tensorboard(trained):
    tiny, result = trained
    report, block, path = evaluate_robustness(
        result.run_dir, attacks=["none", "random", "pgd"], eps=[EPS], steps=[2], corruptions=parse_corruptions("noise:2"),
        episodes=3, backend="fast", device="cpu", progress=False,
    )
    data = json.loads(path.read_text())
    assert data["robustness"] == json.loads(json.dumps(block))
    settings = data["robustness"]["settings"]
    assert list(settings) == ["none", "random-eps3", "pgd2-eps3", "corruption-noise-2"]
    for key in ("return", "collision_rate", "mean_speed", "driving_score"):  # --attack none is the plain evaluation
        assert settings["none"]["metrics"][key] == report.metrics[key].to_dict() == data["metrics"][key]
    pgd = settings["pgd2-eps3"]
    assert pgd["episodes"] == 3 and 0.0 <= pgd["action_changed_fraction"] <= 1.0 and pgd["attack_ms_per_step"] > 0
    assert set(pgd["metrics"]) >= {"return", "collision_rate", "mean_speed", "driving_score", "ttc_unsafe_fraction"}
    assert settings["none"]["action_changed_fraction"] == 0.0
    # each setting is compared with clean episode by episode: `none` changes nothing, and pgd's paired
    # change is its per-episode outcomes minus the plain evaluation's, on the same seeds
    clean = data["per_episode"]
    assert settings["none"]["per_episode"]["return"] == [round(row["return"], 4) for row in clean]
    assert settings["none"]["vs_clean"]["collision_rate"]["mean"] == 0.0 == settings["none"]["vs_clean"]["return"]["mean"]
    assert pgd["per_episode"]["seed"] == [row["seed"] for row in clean]
    assert np.mean(pgd["per_episode"]["return"]) == pytest.approx(pgd["metrics"]["return"]["mean"], abs=1e-3)  # its own episodes
    assert pgd["vs_clean"]["collision_rate"]["mean"] == pytest.approx(
        np.mean(pgd["per_episode"]["collision"]) - data["metrics"]["collision_rate"]["mean"])
    assert pgd["vs_clean"]["return"]["mean"] == pytest.approx(
        pgd["metrics"]["return"]["mean"] - data["metrics"]["return"]["mean"])

    # a later command adds its settings to the same block (same model, seeds, backend)
    _, again, _ = evaluate_robustness(result.run_dir, attacks=["mad"], eps=[EPS], steps=[2], episodes=3, backend="fast",
                                      device="cpu", progress=False)
    assert list(again["settings"]) == ["none", "random-eps3", "pgd2-eps3", "corruption-noise-2", "mad2-eps3"]

    scalars = read_scalars(result.run_dir)
    scenario = path.stem.removeprefix("evaluation-")
    for setting in ("none", "pgd2-eps3", "corruption-noise-2", "mad2-eps3"):
        entry = again["settings"][setting]
        expected = {key: entry["metrics"][key]["mean"] for key in ("return", "collision_rate", "ttc_unsafe_fraction")}
        expected["action_changed_fraction"] = entry["action_changed_fraction"]
        for metric, value in expected.items():
            assert scalars[f"robust/{scenario}/{setting}/{metric}"][-1][1] == pytest.approx(value)


def _main(capsys, *args: str) -> tuple[int, str]:
    import run

    code = run.main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flags, fragment", [
    (["--attack", "deepfool"], "unknown attack 'deepfool'"),
    (["--attack", "pgd", "--eps", "abc"], "invalid epsilon 'abc'"),
    (["--attack", "pgd", "--eps=-3/255"], "negative"),
    (["--attack", "pgd", "--eps", "0"], "above 0"),
    (["--attack", "pgd", "--eps", "3"], "larger than 1"),
    (["--attack", "pgd", "--steps", "0"], "--steps must be a positive integer"),
    (["--attack", "pgd", "--restarts", "x"], "--restarts takes positive integers"),
    (["--corruption", "fog:1"], "unknown corruption 'fog'"),
    (["--eps", "3/255"], "--attack, which is missing"),
    (["--transfer-from", "elsewhere"], "--transfer-from crafts white-box attacks"),
])
def test_bad_robustness_input_is_one_line_and_exit_code_2(trained, capsys, flags, fragment):
    _, result = trained
    code, err = _main(capsys, "evaluate", "--run", str(result.run_dir), "--backend", "fast", "--episodes", "1", *flags)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err


def test_the_command_line_runs_an_attack_and_prints_the_table(trained):
    _, result = trained
    process = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--threads", "1", "evaluate", "--run", str(result.run_dir), "--backend",
         "fast", "--episodes", "2", "--attack", "none,fgsm", "--eps", "3/255"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert process.returncode == 0, process.stderr
    assert "fgsm-eps3" in process.stdout and "robustness" in process.stdout


def test_attacked_evaluation_runs_on_highway_env_one_episode_at_a_time(trained, tmp_path):
    import shutil

    _, result = trained
    run_dir = shutil.copytree(result.run_dir, tmp_path / "run")
    report, block, path = evaluate_robustness(run_dir, attacks=["none", "pgd"], eps=[EPS], steps=[1], episodes=1,
                                              backend="highway-env", device="cpu", progress=False)
    assert path.name == "evaluation-short.json" and block["backend"] == "highway-env"
    pgd = block["settings"]["pgd1-eps3"]
    assert pgd["episodes"] == 1 and pgd["attack_ms_per_step"] > 0
    assert block["settings"]["none"]["metrics"]["return"] == report.metrics["return"].to_dict()


def test_a_plain_evaluation_keeps_the_robustness_block_of_the_same_model_and_seeds(trained, tmp_path):
    import shutil

    from agents.evaluate import evaluate_run

    _, result = trained
    run_dir = shutil.copytree(result.run_dir, tmp_path / "run")
    _, block, path = evaluate_robustness(run_dir, attacks=["random"], eps=[EPS], episodes=2, backend="fast",
                                         device="cpu", progress=False)
    evaluate_run(run_dir, episodes=2, backend="fast", device="cpu")
    assert json.loads(path.read_text())["robustness"]["settings"].keys() == block["settings"].keys()
    evaluate_run(run_dir, episodes=3, backend="fast", device="cpu")  # other seeds: the block no longer applies
    assert "robustness" not in json.loads(path.read_text())


def test_the_sa_regularizer_is_zero_at_eps_zero_positive_otherwise_and_reaches_the_actor(trained):
    from agents.explain.decision import load_run
    from agents.robust.regularizer import sa_regularizer
    from envs import make_env

    tiny, result = trained
    env = make_env(str(tiny.scenario), "fast")
    try:
        decision = load_run(result.run_dir, env).decision  # its own copy: parameters still trainable
        frames = torch.from_numpy(np.stack([env.reset(seed=seed)[0] for seed in range(3)])).float() / 255
    finally:
        env.close()
    assert sa_regularizer(decision, frames, 0.0).item() == 0.0
    torch.manual_seed(0)
    value = sa_regularizer(decision, frames, 3 / 255, steps=3)
    assert value.item() > 0
    value.backward()
    gradients = [p.grad for p in decision.action_net.parameters()]
    assert all(g is not None for g in gradients) and any(g.abs().sum() > 0 for g in gradients)


def test_paired_changes_are_per_episode_differences_on_the_same_seeds():
    def rows(outcomes):
        return [{"seed": seed, "return": ret, "collision_rate": crash} for seed, ret, crash in outcomes]

    clean = rows([(7, 20.0, 0.0), (8, 25.0, 0.0), (9, 10.0, 1.0), (10, 24.0, 0.0)])
    attacked = rows([(9, 10.0, 1.0), (7, 12.0, 1.0), (10, 24.0, 0.0), (8, 25.0, 0.0)])  # another order
    changes = paired_changes(attacked, clean)
    assert changes["collision_rate"]["mean"] == pytest.approx(0.25)  # one crash more in four episodes
    assert changes["return"]["mean"] == pytest.approx(-2.0)
    assert changes["collision_rate"]["n"] == 4 and changes["collision_rate"]["ci_low"] < 0.25 < changes["collision_rate"]["ci_high"]
    # the same outcomes in every episode: the interval closes on the mean, where unpaired intervals would not
    same = paired_changes(clean, clean)["return"]
    assert same["mean"] == same["ci_low"] == same["ci_high"] == 0.0
    with pytest.raises(ValueError, match="no clean episode of the same seed"):
        paired_changes(rows([(11, 1.0, 0.0)]), clean)
    half = 100 * (changes["collision_rate"]["ci_high"] - 0.25)
    assert rise_cell({"vs_clean": changes}) == f"+25.0 ± {half:.1f}" and rise_cell({}) == "–"


def test_worst_of_names_the_worst_attack_and_the_per_episode_worst_case():
    seeds = [1, 2, 3, 4]

    def entry(name, attack, crashes, eps=EPS, transfer=False):
        rows = [{"seed": seed, "return": 20.0 - 10 * crash, "collision_rate": float(crash)}
                for seed, crash in zip(seeds, crashes)]
        metrics = {"return": {"mean": float(np.mean([r["return"] for r in rows]))},
                   "collision_rate": {"mean": float(np.mean(crashes))}}
        return {"setting": name, "attack": attack, "eps": eps, "transfer": transfer, "corruption": None,
                "metrics": metrics, "rows": rows}

    clean_rows = entry("none", "none", [0, 0, 0, 1])["rows"]
    settings = {"fgsm-eps3": entry("fgsm-eps3", "fgsm", [1, 0, 0, 1]),
                "pgd10-eps3": entry("pgd10-eps3", "pgd", [0, 1, 1, 1]),
                "random-eps3": entry("random-eps3", "random", [1, 1, 1, 1]),  # not white-box: never the worst-of
                "transfer-pgd10-eps3": entry("transfer-pgd10-eps3", "pgd", [1, 1, 1, 1], transfer=True),
                "pgd10-eps8": entry("pgd10-eps8", "pgd", [1, 1, 0, 1], eps=8 / 255)}
    for setting in settings.values():
        rows = setting.pop("rows")
        setting["vs_clean"] = paired_changes(rows, clean_rows)
        setting["per_episode"] = {"seed": seeds, "return": [r["return"] for r in rows],
                                  "collision": [int(r["collision_rate"]) for r in rows]}
    lines = worst_of_lines({"settings": settings})
    assert len(lines) == 2  # one per ε with white-box attacks
    assert lines[0].startswith("worst-of at ε = 3/255: pgd10-eps3, 75.0% collisions (+50.0 ± ")
    # fgsm crashes episode 1, pgd episodes 2 and 3: an attacker who picks per episode crashes all four
    assert "any of the 2 attacks per episode: 100.0% (+75.0 points)" in lines[0]
    assert lines[1].startswith("worst-of at ε = 8/255: pgd10-eps8, 75.0% collisions")
    assert "per episode" not in lines[1]  # one attack at 8/255: its own worst case
    # files written before episodes were stored: the worst-of alone
    for setting in settings.values():
        del setting["per_episode"]
    assert "per episode" not in worst_of_lines({"settings": settings})[0]
