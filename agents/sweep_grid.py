"""A sweep's grid: a YAML file in the shape of a `--config` block, with lists where values vary.

    ppo: {gamma: [0.8, 0.9], learning_rate: [3.0e-4, 5.0e-4]}
    training: {timesteps: 26624}

expands to the 4 combinations. A key whose own value is a list (`policy.net_arch`) varies only
when given a list of lists. Every expanded config is validated exactly like a `--config` file, so
an unknown key or a bad value names the file and the key before any trial starts.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from agents.config import _check_block, _read_yaml, load_agent_config

# keys whose single value is itself a list
LIST_VALUED = {("policy", "net_arch")}


def load_grid(path: str | Path, scenario_name: str | None, backend: str = "highway-env") -> list[dict[str, dict[str, Any]]]:
    """The grid's configs as `--config`-shaped blocks, each validated; one block for an empty grid."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"grid file not found: {path}")
    block = _check_block(_read_yaml(path), path, prefix="")
    configs = expand_grid(block)
    for config in configs:
        load_agent_config(scenario_name, overrides=config, backend=backend, overrides_source=path)
    return configs


def expand_grid(block: dict[str, dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """Every combination of the varying values, in file order (the last key varies fastest)."""
    axes: list[tuple[str, str, list[Any]]] = []
    for section, body in block.items():
        for key, value in body.items():
            axes.append((section, key, _choices(section, key, value)))
    configs = []
    for values in itertools.product(*(choices for _, _, choices in axes)):
        config: dict[str, dict[str, Any]] = {section: {} for section in block}
        for (section, key, _), value in zip(axes, values):
            config[section][key] = value
        configs.append(config)
    return configs


def _choices(section: str, key: str, value: Any) -> list[Any]:
    if (section, key) in LIST_VALUED:
        varies = isinstance(value, list) and bool(value) and all(isinstance(item, list) for item in value)
        return list(value) if varies else [value]
    return list(value) if isinstance(value, list) else [value]
