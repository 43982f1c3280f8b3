"""Find, read and validate scenario YAML files.

A scenario is named by its file stem (`highway` -> `scenarios/highway.yaml`), or given as a
path to any YAML file. Every mistake becomes a `ScenarioError` (a `ValueError`) whose message
names the file, the key and what is allowed, so the CLI can print it as one line.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from scenarios.schema import HIGHWAY_ENV_RANGES, MAX_SPEED_MPS, SPEED_RANGE_KEYS, Scenario
from scenarios.validation import describe_validation_error

SCENARIO_DIR = Path(__file__).resolve().parent

# highway-env keys a scenario may not set: the camera owns the observation, and the agents
# rely on DiscreteMetaAction with the env's own speeds.
_RESERVED_HIGHWAY_ENV_KEYS = {"observation", "action", "controlled_vehicles", "manual_control"}
# Episode keys filled from the env's defaults when a file leaves them out.
_EPISODE_KEYS = ("duration", "policy_frequency", "simulation_frequency")


class ScenarioError(ValueError):
    """A scenario name, file or value that cannot be used; the message says how to fix it."""


class ScenarioNotFoundError(ScenarioError, FileNotFoundError):
    """No scenario of that name, or no file at that path."""


def available_scenarios() -> list[str]:
    """Names of the scenarios shipped in `scenarios/`, sorted."""
    return sorted(path.stem for path in SCENARIO_DIR.glob("*.yaml"))


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """Map a scenario name or a path to an existing YAML file."""
    text = str(name_or_path)
    looks_like_path = text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    if looks_like_path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ScenarioNotFoundError(f"scenario file not found: {path}")
        return path.resolve()
    path = SCENARIO_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ScenarioNotFoundError(
            f"unknown scenario {text!r}; valid names: {', '.join(available_scenarios())} "
            "(or pass a path to your own .yaml file)"
        )
    return path


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load and validate one scenario (cached per resolved path and file modification time)."""
    path = resolve_scenario_path(name_or_path)
    return _load_cached(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _load_cached(path_text: str, _mtime_ns: int) -> Scenario:
    path = Path(path_text)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ScenarioError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping of keys at the top level")
    if "name" in raw:
        raise ScenarioError(f"{path}: 'name' is not a key; the name is the file name ({path.stem!r})")
    raw = {**raw, "name": path.stem, "source": str(path)}
    try:
        scenario = TypeAdapter(Scenario).validate_python(raw)
    except ValidationError as error:
        raise ScenarioError(describe_validation_error(Scenario, error, path, hidden=("source",))) from None
    return _check_highway_env_keys(path, scenario)


def _check_highway_env_keys(path: Path, scenario: Scenario) -> Scenario:
    """Check traffic/episode/reward keys against the env's own defaults, and fill episode keys."""
    import gymnasium as gym

    import highway_env  # noqa: F401  (registers highway-env's ids)

    env_id = scenario.highway_env.id
    if env_id not in gym.registry:
        known = sorted(
            env_id
            for env_id, spec in gym.registry.items()
            if str(spec.entry_point).startswith("highway_env.")
        )
        raise ScenarioError(
            f"{path}: highway_env.id: unknown highway-env id {env_id!r}; known: {', '.join(known)}"
        )
    defaults = highway_env_defaults(env_id)
    for section in ("traffic", "episode", "reward"):
        for key, value in getattr(scenario, section).items():
            where = f"{path}: {section}.{key}"
            if key in _RESERVED_HIGHWAY_ENV_KEYS:
                raise ScenarioError(f"{where}: set by clearlane itself and cannot be changed here")
            if key not in defaults:
                raise ScenarioError(
                    f"{where}: not a config key of {env_id}; its keys are: "
                    f"{', '.join(sorted(k for k in defaults if k not in _RESERVED_HIGHWAY_ENV_KEYS))}"
                )
            expected = _type_name(defaults[key])
            if not _same_kind(defaults[key], value):
                raise ScenarioError(f"{where}: expected {expected}, got {value!r}")
            problem = _range_problem(key, value)
            if problem:
                raise ScenarioError(f"{where}: {problem}")
    episode = {key: defaults[key] for key in _EPISODE_KEYS if key in defaults} | scenario.episode
    if episode["simulation_frequency"] < episode["policy_frequency"]:
        raise ScenarioError(
            f"{path}: episode.simulation_frequency: must be at least policy_frequency ({episode['policy_frequency']} Hz), "
            f"got {episode['simulation_frequency']} Hz (each decision needs one physics step or more)"
        )
    if episode.get("duration") is None and scenario.max_episode_steps is None:
        raise ScenarioError(
            f"{path}: max_episode_steps: required key is missing ({env_id} has no `duration`, "
            "so the scenario must say how many policy steps an episode may last)"
        )
    return dataclasses.replace(scenario, episode=episode)




def _range_problem(key: str, value: Any) -> str | None:
    """Why a highway-env key's value is out of its declared range (scenarios.schema), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if key in SPEED_RANGE_KEYS:
        numbers = list(value)
        if len(numbers) != 2 or not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
            return f"must be two speeds [low, high] in m/s, got {value!r}"
        low, high = numbers
        if not 0 <= low < high <= MAX_SPEED_MPS:
            return f"must be [low, high] with 0 <= low < high <= {MAX_SPEED_MPS:g} m/s, got {value!r}"
        return None
    if not isinstance(value, (int, float)):
        return None
    if key in HIGHWAY_ENV_RANGES:
        return HIGHWAY_ENV_RANGES[key].problem(value)
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    return None


@lru_cache(maxsize=None)
def highway_env_class(env_id: str) -> type:
    """The class behind a registered highway-env id (no env built; cached)."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    return load_env_creator(gym.registry[env_id].entry_point)


@lru_cache(maxsize=None)
def highway_env_defaults(env_id: str) -> dict[str, Any]:
    """highway-env's default config of a registered env id (from its class, no env built; cached)."""
    return highway_env_class(env_id).default_config()


def _same_kind(default: Any, value: Any) -> bool:
    """Does `value` have the type of highway-env's default for the key? None accepts anything."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _type_name(default: Any) -> str:
    if default is None:
        return "any value"
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, (list, tuple)):
        return "a list"
    return type(default).__name__
