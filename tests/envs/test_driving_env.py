"""The camera-frame envs: Gymnasium conformance, frames, seeding, subprocess workers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs import env_id, make_env, make_env_fn, palette
from scenarios import available_scenarios, load_scenario

SCENARIOS = available_scenarios()


def rollout(env: gym.Env, seed: int, steps: int, action: int = 1) -> tuple[list[np.ndarray], list[dict]]:
    observation, info = env.reset(seed=seed)
    observations, infos = [observation], [info]
    for _ in range(steps):
        observation, _, terminated, truncated, info = env.step(action)
        observations.append(observation)
        infos.append(info)
        if terminated or truncated:
            break
    return observations, infos


@pytest.mark.parametrize("name", SCENARIOS)
def test_check_env(name):
    env = gym.make(env_id(name))
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("name", SCENARIOS)
def test_full_episode_stays_in_observation_space(name):
    env = make_env(name)
    scenario = load_scenario(name)
    observations, infos = rollout(env, seed=7, steps=scenario.episode_steps + 5)
    assert len(observations) - 1 <= scenario.episode_steps
    last = infos[-1]["safety"]
    ended_early = last["crashed"] or len(observations) - 1 < scenario.episode_steps
    assert ended_early or len(observations) - 1 == scenario.episode_steps
    for observation in observations:
        assert env.observation_space.contains(observation)
    assert observations[-1].shape == (3 * scenario.camera.stack, *scenario.camera.size)


@pytest.mark.parametrize("name", ["highway", "roundabout", "intersection"])
def test_frames_are_not_blank_and_show_road_and_cars(name):
    env = make_env(name)
    env.reset(seed=3)
    frame = env.clean_frame  # (H, W, 3)
    assert frame.std() > 10
    colours = {tuple(pixel) for pixel in frame.reshape(-1, 3)}
    for colour in (palette.ROAD, palette.EGO_VEHICLE, palette.OFF_ROAD):
        assert tuple(colour) in colours, colour


@pytest.mark.parametrize("name", ["highway", "roundabout"])
def test_ego_is_drawn_at_the_camera_anchor(name):
    env = make_env(name)
    env.reset(seed=0)
    config = env.scenario.camera.bev
    frame = env.clean_frame
    ego_mask = np.all(frame == palette.EGO_VEHICLE, axis=-1)
    rows, cols = np.nonzero(ego_mask)
    # Centroid at (ego_row * H, W / 2) within a pixel, and a 5 m x 2 m car's area.
    assert abs(rows.mean() + 0.5 - config.ego_row * config.height) < 1.0
    assert abs(cols.mean() + 0.5 - config.width / 2) < 1.0
    expected_area = 5.0 * 2.0 * config.pixels_per_meter**2
    assert 0.5 * expected_area < ego_mask.sum() < 1.5 * expected_area
    # The ego points up: its footprint is taller than wide.
    assert np.ptp(rows) > np.ptp(cols)


def test_stack_holds_consecutive_frames():
    env = make_env("highway")
    observation, _ = env.reset(seed=1)
    stack = env.scenario.camera.stack
    frames = observation.reshape(stack, 3, *observation.shape[1:])
    assert all(np.array_equal(frames[0], frames[k]) for k in range(stack))  # reset repeats the first frame
    observation_2, *_ = env.step(3)
    frames_2 = observation_2.reshape(stack, 3, *observation.shape[1:])
    assert np.array_equal(frames_2[-2], frames[-1])  # shifted by one
    assert not np.array_equal(frames_2[-1], frames_2[-2])  # the newest is new


@pytest.mark.parametrize("name", ["highway", "highway-noisy", "roundabout"])
def test_same_seed_same_episode(name):
    first, first_infos = rollout(make_env(name), seed=11, steps=6, action=3)
    second, second_infos = rollout(make_env(name), seed=11, steps=6, action=3)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()
    assert [i["safety"]["speed"] for i in first_infos] == [i["safety"]["speed"] for i in second_infos]
    other, _ = rollout(make_env(name), seed=12, steps=6, action=3)
    assert any(a.tobytes() != b.tobytes() for a, b in zip(first, other))


def test_unseeded_resets_follow_the_first_seed():
    env_a, env_b = make_env("highway"), make_env("highway")
    env_a.reset(seed=5)
    env_b.reset(seed=5)
    second_a, info_a = env_a.reset()
    second_b, info_b = env_b.reset()
    assert info_a["episode_seed"] == info_b["episode_seed"] < 1_000_000_000
    assert second_a.tobytes() == second_b.tobytes()


def test_corruptions_change_frames_but_not_the_world():
    clean, clean_infos = rollout(make_env("highway-noisy", corruptions=False), seed=4, steps=3)
    noisy, noisy_infos = rollout(make_env("highway-noisy"), seed=4, steps=3)
    assert all(a.tobytes() != b.tobytes() for a, b in zip(clean, noisy))
    assert [i["safety"]["speed"] for i in clean_infos] == [i["safety"]["speed"] for i in noisy_infos]


def test_info_carries_safety_and_ground_truth():
    env = make_env("highway")
    _, info = env.reset(seed=2)
    _, _, _, _, info = env.step(1)
    safety = info["safety"]
    for key in ("crashed", "off_road", "speed", "acceleration", "jerk", "ttc", "headway", "gap",
                "lane_change", "hard_brake", "distance"):
        assert key in safety, key
    assert safety["distance"] > 0
    truth = info["ground_truth"]
    assert truth["presence"].shape == (8,)
    assert truth["rel_position"].shape == (8, 2)
    assert truth["occupancy"].shape == (3, 2)
    assert float(truth["ego_speed"]) == pytest.approx(safety["speed"], abs=1e-4)


def test_front_camera_env():
    env = make_env("highway", camera="front")
    observation, _ = env.reset(seed=0)
    height, width = env.scenario.camera.front.height, env.scenario.camera.front.width
    assert observation.shape == (3 * env.scenario.camera.stack, height, width)
    assert env.observation_space.contains(observation)


def test_unknown_camera_is_rejected():
    with pytest.raises(ValueError, match="unknown camera 'side'; choose one of: bev, front"):
        make_env("highway", camera="side")


def test_module_prefixed_id_and_user_yaml(write_scenario):
    env = gym.make("envs:clearlane/highway-v0")
    assert env.reset(seed=0)[0].shape == (9, 96, 48)
    custom = make_env(str(write_scenario({"camera.stack": 2, "camera.bev.width": 32})))
    assert custom.reset(seed=0)[0].shape == (6, 96, 32)


def test_subprocess_vec_env_workers_build_the_env():
    from stable_baselines3.common.vec_env import SubprocVecEnv

    vec_env = SubprocVecEnv([make_env_fn("highway") for _ in range(2)])
    try:
        vec_env.seed(0)
        observations = vec_env.reset()
        assert observations.shape == (2, 9, 96, 48)
        observations, rewards, dones, infos = vec_env.step(np.array([1, 3]))
        assert observations.dtype == np.uint8 and rewards.shape == (2,)
        assert "safety" in infos[0]
    finally:
        vec_env.close()


def test_an_intersection_episode_does_not_change_the_next_highway_episode():
    """IntersectionEnv writes its IDM constants into highway-env's IDMVehicle class at reset;
    DrivingEnv.reset starts every episode from highway-env's own values again."""
    from highway_env.vehicle.behavior import IDMVehicle

    from envs.driving_env import DrivingEnv

    def highway_positions() -> np.ndarray:
        env = DrivingEnv("highway")
        env.reset(seed=3)
        for _ in range(8):
            env.step(1)
        return np.array([vehicle.position for vehicle in env.sim.road.vehicles])

    before = highway_positions()
    wanted = IDMVehicle.DISTANCE_WANTED
    DrivingEnv("intersection").reset(seed=0)
    assert IDMVehicle.DISTANCE_WANTED != wanted  # highway-env's side effect, which the next reset undoes
    np.testing.assert_array_equal(highway_positions(), before)
    assert IDMVehicle.DISTANCE_WANTED == wanted
