"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from scenarios.loader import SCENARIO_DIR

# Tests use tiny tensors, where one thread is fastest; pytest-xdist already runs one worker per
# core, and two threads per worker on a 2-core machine are 10-100x slower (oversubscription).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def restore_idm_class_defaults():
    """highway-env's IntersectionEnv rewrites IDMVehicle's class constants at every reset: put
    highway-env's own values back after each test, whichever envs it built."""
    from envs.driving_env import restore_idm_class_defaults

    yield
    restore_idm_class_defaults()


@pytest.fixture
def write_scenario(tmp_path: Path):
    """Write a variant of a shipped scenario to a temporary YAML file and return its path.

    `changes` maps dotted keys to new values; a value of `DELETE` removes the key.
    """

    def write(changes: dict, base: str = "highway", name: str = "custom") -> Path:
        data = yaml.safe_load((SCENARIO_DIR / f"{base}.yaml").read_text())
        for dotted, value in changes.items():
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            if value is DELETE:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


DELETE = object()

# A highway-env id the fast backend does not simulate (the tests' example of an unsupported scenario:
# every shipped scenario but exit has a fast version, and exit is being added).
UNSUPPORTED_FAST_ENV_ID = "racetrack-v1"


@pytest.fixture
def unsupported_scenario(write_scenario) -> Path:
    """A scenario file the fast backend refuses: intersection's settings on highway-env's racetrack."""
    return write_scenario({"highway_env.id": UNSUPPORTED_FAST_ENV_ID, "traffic": DELETE, "description": "racetrack",
                           "reward": {"collision_reward": -1}}, base="intersection", name="racetrack")
