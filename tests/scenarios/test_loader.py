"""Scenario files load into frozen, validated dataclasses; every mistake names file and key."""

from __future__ import annotations

import dataclasses

import pytest
from gymnasium.envs.registration import load_env_creator
import gymnasium as gym

from scenarios import ScenarioError, available_scenarios, load_scenario
from scenarios.loader import ScenarioNotFoundError
from tests.conftest import DELETE

REQUIRED = {"highway", "highway-dense", "merge", "roundabout", "intersection", "exit"}


def test_ships_the_required_scenarios():
    assert REQUIRED <= set(available_scenarios())


@pytest.mark.parametrize("name", available_scenarios())
def test_every_shipped_scenario_loads(name):
    scenario = load_scenario(name)
    assert scenario.name == name
    assert scenario.description
    assert scenario.episode_steps >= 1
    assert len(scenario.evaluation.seeds) == scenario.evaluation.episodes


def test_highway_matches_highway_fast_v0():
    """Numbers on `highway` must compare with highway-env's published highway-fast-v0 recipes."""
    import highway_env  # noqa: F401

    scenario = load_scenario("highway")
    assert scenario.highway_env.id == "highway-fast-v0"
    defaults = load_env_creator(gym.registry["highway-fast-v0"].entry_point).default_config()
    for key, value in scenario.highway_env_config().items():
        assert defaults[key] == value, key


def test_scenario_is_frozen():
    scenario = load_scenario("highway")
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.description = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.camera.stack = 9  # type: ignore[misc]


def test_user_yaml_path_loads(write_scenario):
    path = write_scenario({"camera.stack": 2, "traffic.vehicles_count": 7}, name="mine")
    scenario = load_scenario(str(path))
    assert scenario.name == "mine"
    assert scenario.camera.stack == 2
    assert scenario.highway_env_config()["vehicles_count"] == 7


def test_episode_keys_filled_from_env_defaults(write_scenario):
    path = write_scenario({"episode": DELETE})
    config = load_scenario(path).highway_env_config()
    assert (config["duration"], config["policy_frequency"], config["simulation_frequency"]) == (30, 1, 5)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ScenarioNotFoundError) as error:
        load_scenario("hihgway")
    message = str(error.value)
    assert "hihgway" in message
    for name in REQUIRED:
        assert name in message


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="not found: .*nowhere.yaml"):
        load_scenario("/tmp/nowhere/nowhere.yaml")


# (changes to the highway file, substrings the one-line error must contain)
BAD_FILES = {
    "unknown top-level key": ({"camra": {"stack": 2}}, ["camra", "unknown key", "allowed keys here", "camera"]),
    "misspelled nested key": (
        {"camera.bev.pixel_per_meter": 2.0},
        ["camera.bev.pixel_per_meter", "unknown key", "pixels_per_meter"],
    ),
    "wrong type": ({"camera.stack": "3"}, ["camera.stack", "valid integer", "'3'"]),
    "camera too small": ({"camera.bev.width": 8}, ["camera.bev.width", "greater than or equal to 16"]),
    "out of range": ({"corruptions.frame_drop_prob": 1.5}, ["corruptions.frame_drop_prob", "less than or equal to 1"]),
    "bad camera view": ({"camera.view": "side"}, ["camera.view", "'bev' or 'front'"]),
    "unknown highway-env key": (
        {"traffic.vehicle_count": 5},
        ["traffic.vehicle_count", "not a config key of highway-fast-v0", "vehicles_count"],
    ),
    "highway-env key wrong type": ({"traffic.lanes_count": "three"}, ["traffic.lanes_count", "expected a number"]),
    "highway-env bool wrong type": ({"reward.normalize_reward": 1}, ["reward.normalize_reward", "true or false"]),
    "reserved key": ({"traffic.observation": {"type": "Kinematics"}}, ["traffic.observation", "set by clearlane"]),
    "missing required section": ({"safety": DELETE}, ["safety", "required key is missing"]),
    "unknown env id": ({"highway_env.id": "higway-v0"}, ["highway_env.id", "higway-v0", "highway-fast-v0"]),
    "evaluation seed in the training range": (
        {"evaluation.first_seed": 5},
        ["evaluation.first_seed", "greater than or equal to 1000000000"],
    ),
    "negative seed": ({"evaluation.first_seed": -1}, ["evaluation.first_seed", "greater than or equal"]),
    "name is not a key": ({"name": "other"}, ["'name' is not a key"]),
}


# highway-env's own keys out of their declared ranges (scenarios.schema.HIGHWAY_ENV_RANGES): highway-env
# itself divided by zero, hung, or silently ignored each of these.
OUT_OF_RANGE_HIGHWAY_ENV = {
    "policy_frequency 0": ({"episode.policy_frequency": 0}, ["episode.policy_frequency", "integer in [1, 100]", "got 0"]),
    "simulation_frequency 0": ({"episode.simulation_frequency": 0}, ["episode.simulation_frequency", "got 0"]),
    "duration 0": ({"episode.duration": 0}, ["episode.duration", "number in (0, 3600] (s)", "got 0"]),
    "vehicles_count -1": ({"traffic.vehicles_count": -1}, ["traffic.vehicles_count", "[0, 200] (vehicles)", "got -1"]),
    "vehicles_count 100000": ({"traffic.vehicles_count": 100000}, ["traffic.vehicles_count", "got 100000"]),
    "vehicles_count 2.5": ({"traffic.vehicles_count": 2.5}, ["traffic.vehicles_count", "an integer", "got 2.5"]),
    "lanes_count 0": ({"traffic.lanes_count": 0}, ["traffic.lanes_count", "[1, 10] (lanes)", "got 0"]),
    # whole floats too: highway-env failed with a TypeError deep inside on both (found by tests/scenarios/test_fuzz.py)
    "vehicles_count 0.0": ({"traffic.vehicles_count": 0.0}, ["traffic.vehicles_count", "an integer", "got 0.0"]),
    "lanes_count 1.0": ({"traffic.lanes_count": 1.0}, ["traffic.lanes_count", "an integer", "got 1.0"]),
    "vehicles_density denormal": (
        {"traffic.vehicles_density": 2.225073858507203e-309},
        ["traffic.vehicles_density", "number in [0.01, 10] (relative density)", "got 2.225073858507203e-309"],
    ),
    "speed range reversed": ({"reward.reward_speed_range": [30, 20]}, ["reward.reward_speed_range", "low < high", "[30, 20]"]),
    "speed range of three": ({"reward.reward_speed_range": [1, 2, 3]}, ["reward.reward_speed_range", "two speeds"]),
    "infinite weight": ({"reward.collision_reward": float("inf")}, ["reward.collision_reward", "[-100, 100]"]),
    "physics slower than decisions": (
        {"episode.policy_frequency": 5, "episode.simulation_frequency": 2},
        ["episode.simulation_frequency", "at least policy_frequency (5 Hz)", "got 2 Hz"],
    ),
}


@pytest.mark.parametrize("case", sorted({**BAD_FILES, **OUT_OF_RANGE_HIGHWAY_ENV}))
def test_bad_file_gets_a_precise_message(case, write_scenario):
    changes, expected = {**BAD_FILES, **OUT_OF_RANGE_HIGHWAY_ENV}[case]
    path = write_scenario(changes)
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_env_without_duration_needs_max_episode_steps(write_scenario):
    path = write_scenario({"max_episode_steps": DELETE}, base="merge")
    with pytest.raises(ScenarioError, match="max_episode_steps: required key is missing .*merge-v1 has no `duration`"):
        load_scenario(path)


@pytest.mark.parametrize(
    "text, fragment",
    [("just a string", "expected a mapping"), ("camera: [unclosed", "not valid YAML")],
)
def test_not_a_mapping_or_not_yaml(tmp_path, text, fragment):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=fragment):
        load_scenario(path)


def test_values_at_the_ends_of_a_range_are_accepted(write_scenario):
    path = write_scenario({"traffic.vehicles_count": 0, "traffic.lanes_count": 10, "episode.policy_frequency": 5})
    scenario = load_scenario(path)
    assert scenario.traffic["vehicles_count"] == 0 and scenario.episode["policy_frequency"] == 5


def test_a_number_key_is_named_once_without_pydantics_union_tags(write_scenario):
    """scenarios.validation (shared with agent and perception configs) drops the '.int'/'.float' tags."""
    path = write_scenario({"camera.bev.pixels_per_meter": "x"})
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    assert str(error.value) == f"{path}: camera.bev.pixels_per_meter: Input should be a valid number (got 'x')"
