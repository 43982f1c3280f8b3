"""envs.backends: the registry, which scenarios each backend reproduces, the envs each builds."""

from __future__ import annotations

import numpy as np
import pytest

from envs.backends import (
    BACKEND_NAMES,
    BACKENDS,
    FAST,
    FAST_N_ENVS,
    HIGHWAY_ENV,
    REFERENCE,
    CameraEnv,
    backend_of,
    default_backend_for,
    evaluation_env,
    get_backend,
    privileged_simulator,
)
from envs.system import usable_cores
from scenarios import available_scenarios, load_scenario


def test_the_registry_names_each_backend_once():
    assert BACKEND_NAMES == ("highway-env", "fast")
    assert [get_backend(name) for name in BACKEND_NAMES] == list(BACKENDS)
    assert get_backend(FAST) is FAST and str(FAST) == "fast"
    assert REFERENCE is HIGHWAY_ENV  # quality numbers are judged on highway-env


@pytest.mark.parametrize("name", ["Fast", "highway", "", "gpu"])
def test_an_unknown_backend_is_refused_listing_the_choices(name):
    with pytest.raises(ValueError, match=r"unknown backend .*; choose one of: highway-env, fast"):
        get_backend(name)


def test_capabilities_replace_name_checks():
    assert (HIGHWAY_ENV.batched, HIGHWAY_ENV.uses_worker_processes, HIGHWAY_ENV.has_privileged_state) == (False, True, False)
    assert (FAST.batched, FAST.uses_worker_processes, FAST.has_privileged_state) == (True, False, True)


def test_supports_gives_the_reason_when_it_does_not(unsupported_scenario):
    for name in available_scenarios():
        assert HIGHWAY_ENV.supports(load_scenario(name)) and HIGHWAY_ENV.unsupported_reason(load_scenario(name)) is None
    assert FAST.unsupported_reason(load_scenario("highway")) is None
    assert FAST.unsupported_reason(load_scenario("merge")) is None  # FastRoad
    assert FAST.unsupported_reason(load_scenario("roundabout")) is None  # FastRoad
    assert FAST.unsupported_reason(load_scenario("two-way")) is None  # FastRoad
    assert FAST.unsupported_reason(load_scenario("u-turn")) is None  # FastRoad
    assert FAST.unsupported_reason(load_scenario("exit")) is None  # FastRoad
    assert FAST.unsupported_reason(load_scenario("intersection")) is None
    racetrack = FAST.unsupported_reason(load_scenario(unsupported_scenario))
    assert racetrack is not None and "racetrack-v" in racetrack and "highway_env.id" in racetrack
    assert not FAST.supports(load_scenario(unsupported_scenario))
    assert set(FAST.supported_scenarios()) >= {"exit", "highway", "highway-dense", "highway-noisy", "intersection", "merge",
                                               "roundabout", "two-way", "u-turn"}
    with pytest.raises(ValueError, match="Supported scenarios: .*highway"):
        FAST.check_supported(load_scenario(unsupported_scenario))


def test_a_front_camera_is_not_batched(write_scenario):
    front = load_scenario(write_scenario({"camera.view": "front"}))
    assert "camera is 'front'" in FAST.unsupported_reason(front)
    assert default_backend_for(front) is HIGHWAY_ENV


def test_the_default_backend_is_fast_where_it_reproduces_the_scenario(unsupported_scenario):
    assert default_backend_for(load_scenario("highway")) is FAST
    assert default_backend_for(load_scenario("merge")) is FAST
    assert default_backend_for(load_scenario("roundabout")) is FAST
    assert default_backend_for(load_scenario("two-way")) is FAST
    assert default_backend_for(load_scenario("u-turn")) is FAST
    assert default_backend_for(load_scenario("exit")) is FAST
    assert default_backend_for(load_scenario("intersection")) is FAST
    assert default_backend_for(load_scenario(unsupported_scenario)) is HIGHWAY_ENV
    assert default_backend_for(load_scenario("highway-noisy")) is FAST  # corruptions are batched too


def test_default_numbers_of_envs():
    assert HIGHWAY_ENV.default_n_envs() == usable_cores()  # one worker per core
    assert FAST.default_n_envs() == FAST_N_ENVS == 256


@pytest.mark.parametrize("backend, class_name", [(HIGHWAY_ENV, "DrivingEnv"), (FAST, "FastDrivingEnv")])
def test_each_backend_makes_a_camera_env(backend, class_name):
    env = backend.make_env("highway", render_mode="rgb_array")
    try:
        assert type(env).__name__ == class_name and isinstance(env, CameraEnv)
        assert backend_of(env) is backend
        observation, _ = env.reset(seed=1)
        assert observation.shape == env.observation_space.shape and observation.dtype == np.uint8
        assert env.clean_frame.shape == (*env.scenario.camera.size, 3) and env.clean_frame.any()
        top_down = backend.top_down(env)
        assert top_down.ndim == 3 and top_down.shape[2] == 3 and top_down.any()
        assert backend.top_down_caption
    finally:
        env.close()


def test_the_camera_view_can_be_switched_on_either_backend():
    env = HIGHWAY_ENV.make_env("highway", camera="front")
    assert env.scenario.camera.view == "front"
    env.close()
    with pytest.raises(ValueError, match="camera is 'front'"):
        FAST.make_env("highway", camera="front")  # refused, never a silent fallback
    with pytest.raises(ValueError, match="unknown camera"):
        FAST.make_env("highway", camera="side")


def test_vec_env_types():
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    fast = FAST.make_vec_env("highway", 3, device="cpu")
    try:
        assert isinstance(fast, VecMonitor) and type(fast.venv).__name__ == "FastVecEnv" and fast.num_envs == 3
        assert privileged_simulator(fast) is fast.venv.sim  # the teacher plans on the same envs
    finally:
        fast.close()
    single = HIGHWAY_ENV.make_vec_env("highway", 1)
    try:
        assert isinstance(single, VecMonitor) and isinstance(single.venv, DummyVecEnv)  # no worker for one env
        with pytest.raises(ValueError, match="no privileged simulator state"):
            privileged_simulator(single)
    finally:
        single.close()


def test_periodic_evaluation_always_runs_on_the_reference(unsupported_scenario):
    from envs.driving_env import DrivingEnv
    from envs.fast.simulator import UnsupportedScenario

    env = evaluation_env("highway", "fast")
    try:
        assert isinstance(env, DrivingEnv)  # the reference simulator, not the one trained on
    finally:
        env.close()
    with pytest.raises(UnsupportedScenario):
        evaluation_env(unsupported_scenario, FAST)
    evaluation_env(unsupported_scenario, HIGHWAY_ENV).close()


def test_the_registration_api_hands_over_to_the_backends():
    from envs import make_env, make_env_fn

    env = make_env_fn("highway", "fast")()
    assert backend_of(env) is FAST
    env.close()
    with pytest.raises(ValueError, match="unknown backend"):
        make_env("highway", "warp")
