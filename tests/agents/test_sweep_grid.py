"""A sweep grid expands to every combination and is validated like a --config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.config import load_agent_config
from agents.sweep_grid import expand_grid, load_grid

SHIPPED = Path(__file__).resolve().parents[2] / "agents" / "grids" / "ppo-lr.yaml"


def test_grid_expands_to_every_combination_last_key_fastest():
    configs = expand_grid({"ppo": {"gamma": [0.8, 0.9], "learning_rate": [3e-4, 5e-4]}, "training": {"timesteps": 64}})
    assert configs == [
        {"ppo": {"gamma": 0.8, "learning_rate": 3e-4}, "training": {"timesteps": 64}},
        {"ppo": {"gamma": 0.8, "learning_rate": 5e-4}, "training": {"timesteps": 64}},
        {"ppo": {"gamma": 0.9, "learning_rate": 3e-4}, "training": {"timesteps": 64}},
        {"ppo": {"gamma": 0.9, "learning_rate": 5e-4}, "training": {"timesteps": 64}},
    ]


def test_net_arch_varies_only_as_a_list_of_lists():
    assert expand_grid({"policy": {"net_arch": [64, 64]}}) == [{"policy": {"net_arch": [64, 64]}}]
    assert expand_grid({"policy": {"net_arch": [[16], [32, 32]]}}) == [
        {"policy": {"net_arch": [16]}}, {"policy": {"net_arch": [32, 32]}},
    ]


def test_shipped_grid_loads_and_its_configs_resolve():
    configs = load_grid(SHIPPED, "highway")
    rates = [load_agent_config("highway", overrides=config, backend="fast").ppo.learning_rate for config in configs]
    assert rates == [load_agent_config("highway", backend="fast").ppo.learning_rate, 5.0e-4]  # c0: the default recipe


@pytest.mark.parametrize(("text", "key"), [
    ("ppo: {gama: [0.8, 0.9]}\n", "gama"),
    ("optimizer: {lr: [1, 2]}\n", "optimizer"),
    ("ppo: {gamma: [0.8, 7.0]}\n", "gamma"),
])
def test_bad_grid_names_the_file_and_the_key(tmp_path, text, key):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    with pytest.raises(ValueError) as error:
        load_grid(grid, "highway")
    assert str(grid) in str(error.value) and key in str(error.value)


def test_missing_grid_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="grid.yaml"):
        load_grid(tmp_path / "grid.yaml", "highway")
