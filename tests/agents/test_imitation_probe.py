"""The imitation probe: teacher-labelled states split by env, constant policies and both fits measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from agents.imitation import EPOCHS
from agents.imitation_probe import (NEAREST, ProbeSamples, _split, format_rows, kinematic_features, main, privileged_rows,
                                    probe)
from envs.scene import Scene
from agents.train import TrainOptions, train
from tests.agents import make_tiny


def test_the_held_out_samples_are_the_last_envs_of_every_step():
    steps, envs = 3, 5
    samples = torch.arange(steps * envs).reshape(steps, envs, 1)  # value = step * envs + env
    fitted, held_out = _split(samples, held_out=2)
    assert fitted.shape == (steps * 3, 1) and held_out.shape == (steps * 2, 1)
    assert sorted(int(v) % envs for v in held_out[:, 0]) == [3, 3, 3, 4, 4, 4]
    assert all(int(v) % envs < 3 for v in fitted[:, 0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tiny = make_tiny(tmp_path_factory.mktemp("probe"))
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_steps=2, teacher_depth=1, teacher_horizon=1)
    tiny.config.write_text(yaml.safe_dump(settings))
    return train(TrainOptions(scenario=str(tiny.scenario), timesteps=64, n_envs=4, logdir=tiny.root / "runs",
                              config=tiny.config, progress_bar=False, command="test", backend="fast",
                              name="probed")).run_dir


def test_kinematic_features_put_the_others_in_the_ego_frame_nearest_first():
    # the ego at (10, 0) heading +y (pi/2) at 8 m/s; one car 5 m ahead of it at its speed, one 20 m to its
    # left (world +x) crossing towards its right (world -x) at 10 m/s
    scene = Scene(positions=np.array([[10.0, 0.0], [30.0, 0.0], [10.0, 5.0]]),
                  headings=np.array([math.pi / 2, math.pi, math.pi / 2]), speeds=np.array([8.0, 10.0, 8.0]),
                  lengths=np.full(3, 5.0), widths=np.full(3, 2.0))
    features = kinematic_features([scene, scene], nearest=3)
    assert features.shape == (2, 5 + 7 * 3) and features.dtype == torch.float32
    ego, others = features[0, :5], features[0, 5:].reshape(3, 7)
    assert torch.allclose(ego, torch.tensor([10 / 50, 0.0, 0.0, 1.0, 8 / 10]), atol=1e-6)
    # nearest first: the car ahead (same velocity: no closing speed, same heading)
    assert torch.allclose(others[0], torch.tensor([1.0, 5 / 50, 0.0, 0.0, 0.0, 1.0, 0.0]), atol=1e-6)
    # world +x is the ego's left (y to its right is world -x): 20 m to the left; its velocity (-10, 0) minus
    # the ego's (0, 8) is -8 m/s ahead and +10 m/s to the ego's right; heading +pi/2 relative
    assert torch.allclose(others[1], torch.tensor([1.0, 0.0, -20 / 50, -0.8, 1.0, 0.0, 1.0]), atol=1e-6)
    assert torch.equal(others[2], torch.zeros(7))  # fewer than `nearest`: zeros, presence 0
    assert kinematic_features([scene]).shape == (1, 5 + 7 * NEAREST)
    far = Scene(positions=scene.positions + [5000.0, 0.0], headings=scene.headings, speeds=scene.speeds,
                lengths=scene.lengths, widths=scene.widths)  # kilometres down a highway
    assert float(kinematic_features([far], nearest=3)[0, 0]) == 2.0  # clipped at +-100 m, as highway-env's


def test_the_probe_measures_constant_policies_and_both_fits_on_held_out_envs(tiny_run):
    rows = probe(tiny_run, iterations=2, held_out=1, rounds=2, seed=3, n_envs=4, privileged=True)
    constant = [row for row in rows if row.model.startswith("always ")]
    assert [row.model for row in constant] == ["always LANE_LEFT", "always IDLE", "always LANE_RIGHT", "always FASTER",
                                               "always SLOWER"]
    # each state has one best action: the constant policies' agreements add up to 1 on either part
    assert math.isclose(sum(row.fitted_agreement for row in constant), 1.0, abs_tol=1e-6)
    assert math.isclose(sum(row.held_out_agreement for row in constant), 1.0, abs_tol=1e-6)
    assert min(row.fitted_regret for row in constant) >= 0.0
    fits = [(row.model, row.epochs) for row in rows if not row.model.startswith("always ")]
    assert fits == [("frozen student", EPOCHS), ("frozen student", 2 * EPOCHS),
                    ("student tuned", EPOCHS), ("student tuned", 2 * EPOCHS),
                    ("privileged state", EPOCHS), ("privileged state", 2 * EPOCHS)]
    for row in rows:
        assert row.fitted_regret >= 0.0 and row.held_out_regret >= 0.0
        assert 0.0 <= row.fitted_agreement <= 1.0 and 0.0 <= row.held_out_agreement <= 1.0
    table = format_rows(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| always LANE_LEFT | 0 |")


@pytest.mark.parametrize("arguments, message", [
    (["--envs", "4", "--held-out", "4"], "--held-out must be between 1 and 3 envs, got 4"),
    (["--rounds", "0"], "--iterations and --rounds must be >= 1"),
])
def test_the_probe_refuses_bad_arguments_in_one_line(tiny_run, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--run", str(tiny_run), *arguments])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_the_probe_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--run", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"--run {tmp_path} is not a run folder (it has no config.yaml)" in capsys.readouterr().err


def test_kept_samples_are_read_back_and_the_frozen_only_probe_skips_the_tuned_fit(tiny_run, tmp_path):
    kept = tmp_path / "samples.pt"
    first = probe(tiny_run, iterations=1, held_out=1, rounds=1, seed=3, n_envs=4, tuned=False, samples_file=kept)
    assert kept.is_file() and [row.model for row in first][-1] == "frozen student"
    assert not any(row.model == "student tuned" for row in first)
    again = probe(tiny_run, iterations=1, held_out=1, rounds=1, seed=99, n_envs=4, tuned=False, samples_file=kept)
    # the same states (seed 99 would have driven others): the constant policies score the same
    constant = [row for row in first if row.model.startswith("always ")]
    assert [row for row in again if row.model.startswith("always ")] == constant
    with pytest.raises(ValueError, match="holds 4 envs' states, not --envs 8"):
        probe(tiny_run, iterations=1, held_out=1, rounds=1, seed=3, n_envs=8, samples_file=kept)
    older = tmp_path / "older.pt"  # kept before the probe recorded the simulator's state
    torch.save({key: value for key, value in torch.load(kept).items() if key != "kinematics"}, older)
    with pytest.raises(ValueError, match="hold no simulator state .* collect them anew"):
        probe(tiny_run, iterations=1, held_out=1, rounds=1, seed=3, n_envs=4, tuned=False, samples_file=older,
              privileged=True)


def test_the_privileged_fit_learns_from_the_kinematics_not_the_frames(tiny_run):
    """The teacher's best action is the sign of one kinematic feature; the frames and features are noise:
    only an actor that reads the kinematics can agree with it on held-out envs."""
    generator = torch.Generator().manual_seed(0)
    steps, envs = 60, 8
    kinematics = torch.randn(steps, envs, 4, generator=generator)
    values = torch.zeros(steps, envs, 5)
    values[..., 1] = (kinematics[..., 0] > 0).float()  # IDLE is best where feature 0 is positive,
    values[..., 4] = (kinematics[..., 0] <= 0).float()  # SLOWER elsewhere
    samples = ProbeSamples(frames=torch.zeros(steps, envs, 1, dtype=torch.uint8), features=torch.randn(steps, envs, 3),
                           values=values, action_names=("LANE_LEFT", "IDLE", "LANE_RIGHT", "FASTER", "SLOWER"),
                           kinematics=kinematics)
    rows = privileged_rows(tiny_run, samples, held_out=2, rounds=6)
    assert [row.model for row in rows] == ["privileged state"] * 6
    assert rows[-1].held_out_agreement >= 0.9 and rows[-1].held_out_regret <= 0.1
