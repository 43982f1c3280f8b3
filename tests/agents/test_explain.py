"""Explanations: overlays, SHAP, per-vehicle counterfactuals, replays, the live viewer, bad input."""

from __future__ import annotations

import copy
import json
import os
import shutil

import imageio.v2 as imageio
import numpy as np
import pytest
import shap
import torch
from torch import nn

from agents.explain.decision import load_run
from agents.explain.faithfulness import (agreement, auc, perturbation_curve, pixel_order, randomisation_cascade,
                                         rank_correlation)
from agents.explain.overlays import attention_overlay, shap_overlay, shap_pixel_map, upsample_attention
from agents.explain.replay import write_replays
from agents.explain.session import FrameRenderer, make_env, play_episode
from agents.explain.shapley import KeyframeCache, ShapExplainer, keyframe_steps, record_background
from agents.explain.vehicles import box_masks, counterfactual_stacks, visible_ids
from agents.train import TrainOptions, train
from tests.agents import make_tiny, write_scenario


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tiny = make_tiny(tmp_path_factory.mktemp("tiny"))
    result = train(TrainOptions(scenario=str(tiny.scenario), timesteps=64, n_envs=1, logdir=tiny.root / "runs",
                                config=tiny.config, name="run", progress_bar=False, backend="fast"))
    return tiny, result


@pytest.fixture(scope="module")
def loaded(trained):
    tiny, result = trained
    env = make_env(str(tiny.scenario), "fast")
    return env, load_run(result.run_dir, env)


# -- overlays ------------------------------------------------------------------------------------------


def test_attention_overlay_keeps_shape_and_heats_the_attended_cell():
    frame = np.full((96, 48, 3), 90, np.uint8)
    attention = np.full((12, 6), 0.1 / 71, np.float32)
    attention[2, 4] = 0.9
    heat = upsample_attention(attention, 96, 48)
    assert heat.shape == (96, 48) and heat.dtype == np.float32 and heat.min() >= 0 and heat.max() == pytest.approx(1)
    out = attention_overlay(frame, attention)
    assert out.shape == frame.shape and out.dtype == np.uint8
    changed = np.abs(out.astype(int) - frame).sum(axis=2)
    assert changed[2 * 8 + 4, 4 * 8 + 4] > 100 > changed[80, 8]  # the attended cell, not a far one
    assert np.array_equal(attention_overlay(frame, np.zeros((12, 6))), frame)


def test_actions_are_named_and_coloured_as_the_env_names_them():
    from agents.explain.panels import META_ACTIONS, action_colour, action_name

    intersection = ("SLOWER", "IDLE", "FASTER")  # DiscreteMetaAction, longitudinal only
    assert [action_name(i, intersection) for i in range(3)] == list(intersection)
    assert [action_name(i) for i in range(5)] == list(META_ACTIONS)
    assert action_colour(2, intersection) == action_colour(META_ACTIONS.index("FASTER"))  # FASTER is FASTER's colour
    assert action_colour(0, intersection) != action_colour(0)
    assert action_name(7, intersection) == "action 7"


def test_shap_overlay_is_red_for_positive_blue_for_negative():
    frame = np.full((4, 4, 3), 90, np.uint8)
    values = np.zeros((9, 4, 4), np.float32)
    values[:, 0, 0], values[:, 3, 3] = 1.0, -1.0
    pixel_map = shap_pixel_map(values)
    assert pixel_map.shape == (4, 4) and pixel_map[0, 0] == 9
    out = shap_overlay(frame, pixel_map, scale=9.0)
    assert out[0, 0, 0] > out[0, 0, 2] and out[3, 3, 2] > out[3, 3, 0] and np.array_equal(out[1, 1], frame[1, 1])


# -- SHAP ---------------------------------------------------------------------------------------------


def test_gradient_explainer_values_sum_to_the_output_difference_on_a_tiny_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    background = torch.rand(16, 3, 6, 6)
    x = torch.rand(1, 3, 6, 6)
    values = np.asarray(shap.GradientExplainer(model, background).shap_values(x, nsamples=4000, rseed=0))
    with torch.no_grad():
        difference = (model(x)[0] - model(background).mean(0)).numpy()  # (2,)
    sums = values.reshape(-1, 2).sum(axis=0)  # (C*H*W, outputs) -> (2,)
    assert np.allclose(sums, difference, rtol=0.1, atol=0.02), (sums, difference)


def test_shap_keyframes_explain_the_chosen_action_and_are_cached(loaded, tmp_path):
    env, run = loaded
    background = record_background(env, run.decision, frames=8)
    assert background.shape == (8, 9, 96, 48) and background.dtype == np.uint8
    assert np.array_equal(background, record_background(env, run.decision, frames=8))  # reproducible
    explainer = ShapExplainer(run.decision, background, nsamples=8)
    episode = play_episode(env, run.decision, 1_000_000_000, top_down=False)
    observation = episode.records[1].observation
    cache = KeyframeCache(tmp_path, "model", explainer.settings_digest())
    keyframe = cache.explain(explainer, observation)
    assert keyframe.values.shape == (9, 96, 48) and keyframe.output_index == episode.records[1].decision.action
    again = cache.explain(explainer, observation)
    assert again.cached and cache.hits == 1 and cache.misses == 1 and np.array_equal(again.values, keyframe.values)
    assert ShapExplainer(run.decision, background, output="value", nsamples=4).explain(observation).values.shape == (9, 96, 48)
    assert keyframe_steps(7, 3) == [0, 3, 6]
    with pytest.raises(ValueError, match="--every must be a positive integer"):
        keyframe_steps(7, 0)


# -- faithfulness -------------------------------------------------------------------------------------


def test_deletion_by_shap_beats_random_on_a_small_trained_model():
    """A model trained to read a bright patch in one corner: deleting SHAP's top pixels hurts it more."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 1), nn.Sigmoid())
    data = torch.rand(256, 3, 8, 8) * 0.2
    labels = (torch.rand(256) < 0.5).float()
    data[labels.bool(), :, :3, :3] += 0.8
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy(model(data)[:, 0], labels).backward()
        optimizer.step()
    x = data[labels.bool()][0]
    values = np.asarray(shap.GradientExplainer(model, data[:32]).shap_values(x[None], nsamples=200, rseed=0))
    shap_map = values.reshape(3, 8, 8, -1)[..., 0].sum(axis=0)
    baseline = data[:32].mean(dim=0)
    probability = lambda batch: model(batch)[:, 0]  # noqa: E731
    by_shap = auc(perturbation_curve(probability, x, baseline, pixel_order(shap_map), "deletion"))
    rng = np.random.default_rng(0)
    by_random = np.mean([auc(perturbation_curve(probability, x, baseline, rng.permutation(64), "deletion"))
                         for _ in range(5)])
    assert by_shap < by_random - 0.1


def test_randomising_the_model_changes_the_shap_map(loaded):
    env, run = loaded
    background = record_background(env, run.decision, frames=8)
    observation = play_episode(env, run.decision, 1_000_000_000, top_down=False).records[1].observation
    original = shap_pixel_map(ShapExplainer(run.decision, background, nsamples=16).explain(observation).values)
    randomised = copy.deepcopy(run.decision)
    for _, apply in randomisation_cascade(randomised):
        apply(randomised)
    changed = shap_pixel_map(ShapExplainer(randomised, background, nsamples=16).explain(observation).values)
    assert rank_correlation(original, original) == pytest.approx(1.0)
    # Pixels equal in the frame and every background frame get 0 in both maps (expected gradients
    # multiply by x - background), which keeps the correlation well above 0: it must still drop.
    assert rank_correlation(original, changed) < 0.9
    assert agreement(np.array([3.0, 1.0, 0.5]), np.array([2.0, 0.1, 0.3]))[1] is True


# -- counterfactual re-rendering --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["fast", "highway-env"])
def test_rerendering_without_a_vehicle_removes_exactly_its_pixels(trained, backend):
    tiny, result = trained
    scenario = write_scenario(tiny.root / "longer.yaml", **{"episode.duration": 4})
    env = make_env(str(scenario), backend)
    run = load_run(result.run_dir, env)
    episode = play_episode(env, run.decision, 1_000_000_000, top_down=False)
    renderer = FrameRenderer(env)
    record = episode.records[-1]
    assert np.array_equal(renderer.render(record.stack[-1].scene), record.frame)  # re-rendering is exact
    newest = record.stack[-1]
    masks = box_masks(env.unwrapped.scenario, newest)
    assert len(masks) >= 2
    for vehicle in list(masks)[:3]:
        changed = np.any(renderer.render(newest.scene) != renderer.render(newest.without(vehicle)), axis=2)
        assert changed.any() and not (changed & ~masks[vehicle]).any()  # only inside its own box
    ids = visible_ids([box_masks(env.unwrapped.scenario, f) for f in record.stack])
    stacks = counterfactual_stacks(renderer, record.stack, ids)
    assert stacks.shape == (1 + len(ids), 9, 96, 48) and np.array_equal(stacks[0], record.observation)
    env.close()


# -- replays and the viewer ---------------------------------------------------------------------------------


def test_replay_writes_browser_videos_an_index_and_reuses_cached_keyframes(trained, tmp_path):
    tiny, result = trained
    out = tmp_path / "replay"
    first = write_replays(result.run_dir, episodes=2, overlay="both", every=2, backend="fast", out=out, gif=True,
                          nsamples=4)
    assert [path.name for path in first.videos] == ["episode-000-seed-1000000000.mp4", "episode-001-seed-1000000001.mp4"]
    summary = json.loads((out / "replays.json").read_text())
    for row, video in zip(summary["episodes"], first.videos):
        frames = imageio.mimread(video, memtest=False)
        assert len(frames) == row["frames"] == row["length"] + 1
        assert frames[0].shape[0] % 2 == 0 and not frames[0].std() == 0
        assert (out / row["gif"]).is_file()
    probe = os.popen(f"{__import__('imageio_ffmpeg').get_ffmpeg_exe()} -i {first.videos[0]} 2>&1").read()
    assert "h264" in probe and "yuv420p" in probe  # plays in browsers
    index = (out / "index.html").read_text()
    assert all(f'src="{video.name}"' in index for video in first.videos) and "driving score" in index
    assert not [path for path in out.iterdir() if ".tmp" in path.name]
    second = write_replays(result.run_dir, episodes=2, overlay="shap", every=2, backend="fast", out=tmp_path / "again",
                           nsamples=4)
    assert second.shap_seconds == [] and second.cache_hits == len(first.shap_seconds) > 0


def test_watch_runs_a_few_frames_with_sdls_dummy_driver(trained, tmp_path, monkeypatch):
    from agents.explain.watch import watch

    tiny, result = trained
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    timings: dict[str, list[float]] = {}
    out = watch(result.run_dir, episodes=1, overlay="both", every=1, backend="fast", out=tmp_path / "shots",
                max_frames=12, nsamples=4, timings=timings)
    assert out == tmp_path / "shots" and (out / "watch-last.png").is_file()
    assert len(timings["step"]) >= 1 and len(timings["draw"]) >= 1  # real time: how many steps fit is the clock's say
    assert all(seconds > 0 for seconds in timings["step"] + timings["draw"])

    timings.clear()  # 100x real time: the whole episode (the reset and 3 steps), every step drawn
    watch(result.run_dir, episodes=1, overlay="attention", backend="fast", out=tmp_path / "shots", speed=100.0,
          timings=timings)
    assert len(timings["step"]) == 4 and len(timings["draw"]) >= 4


def test_watch_without_a_display_writes_the_replay_instead(trained, tmp_path, monkeypatch, capsys):
    from agents.explain.watch import watch

    tiny, result = trained
    for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    out = watch(result.run_dir, episodes=1, overlay="attention", backend="fast", out=tmp_path / "replay")
    assert capsys.readouterr().out.startswith("no display") and (out / "index.html").is_file()


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_input_is_one_clear_error_and_leaves_nothing_behind(trained, tmp_path):
    import run as cli

    tiny, result = trained
    empty = tmp_path / "no-model"
    empty.mkdir()
    shutil.copy(result.run_dir / "config.yaml", empty / "config.yaml")
    front = write_scenario(tiny.root / "front.yaml", **{"episode.duration": 3, "camera.view": "front"})
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (FileNotFoundError, "has no model", dict(run=empty)),
        (ValueError, "unknown overlay 'heat'", dict(overlay="heat")),
        (ValueError, "--every must be a positive integer", dict(every=0)),
        (ValueError, r"\(9, 48, 96\)", dict(scenario=str(front), backend="highway-env")),
        (OSError, "is a file", dict(out=blocker / "replay")),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((PermissionError, "denied", dict(out=locked / "replay")))
    for error, message, changes in cases:
        arguments = dict(run=result.run_dir, episodes=1, backend="fast", out=tmp_path / "out", nsamples=4) | changes
        with pytest.raises(error, match=message):
            write_replays(**arguments)
        assert not (tmp_path / "out").exists()
    assert list(locked.iterdir()) == []
    code = cli.main(["replay", "--run", str(result.run_dir), "--every", "0", "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("speed", [0, -1.0, float("nan"), float("inf")])
def test_watch_refuses_a_speed_that_is_not_a_positive_number(trained, tmp_path, speed):
    from agents.explain.watch import watch

    _, result = trained
    with pytest.raises(ValueError, match="--speed must be a positive number"):
        watch(result.run_dir, episodes=1, backend="fast", out=tmp_path / "out", speed=speed)
    assert not (tmp_path / "out").exists()
