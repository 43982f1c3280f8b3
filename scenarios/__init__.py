"""Scenarios are data: one YAML file each, loaded into frozen, validated dataclasses."""

from scenarios.loader import (
    ScenarioError,
    ScenarioNotFoundError,
    available_scenarios,
    load_scenario,
    resolve_scenario_path,
)
from scenarios.schema import (
    BevCameraConfig,
    CameraConfig,
    CorruptionConfig,
    FrontCameraConfig,
    Scenario,
)

__all__ = [
    "BevCameraConfig",
    "CameraConfig",
    "CorruptionConfig",
    "FrontCameraConfig",
    "Scenario",
    "ScenarioError",
    "ScenarioNotFoundError",
    "available_scenarios",
    "load_scenario",
    "resolve_scenario_path",
]
