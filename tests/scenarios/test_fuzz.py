"""Fuzzing scenario files from the schema: a malformed value anywhere gives one clear line, never a
traceback or a hang. Each generated file either loads, and then builds an env that resets and steps
within a few seconds, or raises `ScenarioError` (a ValueError) with one line naming the file."""

from __future__ import annotations

import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scenarios import load_scenario
from scenarios.loader import SCENARIO_DIR, ScenarioError

BASE = yaml.safe_load((SCENARIO_DIR / "highway.yaml").read_text())


def leaf_paths(node: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of the shipped highway file, down to its leaves."""
    paths = []
    for key, value in node.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += leaf_paths(value, (*prefix, key))
    return paths


def _value_at(node: dict, path: tuple[str, ...]):
    for part in path:
        node = node[part]
    return node


PATHS = leaf_paths(BASE)
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.integers(-100, 100), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([0, -1, 1, 2, 1e9, 0.5, -0.5, [30, 20], [0, 0], "3", ""]),  # near the edges
)
PLAUSIBLE = st.one_of(st.integers(-3, 60), st.floats(-2, 60, allow_nan=False))  # near the ranges: more files load
NUMERIC_PATHS = [path for path in PATHS if isinstance(_value_at(BASE, path), (int, float)) and not isinstance(_value_at(BASE, path), bool)]
CHANGES = st.lists(
    st.one_of(st.tuples(st.sampled_from(PATHS), VALUES), st.tuples(st.sampled_from(NUMERIC_PATHS), PLAUSIBLE)),
    min_size=1, max_size=2,
)


def apply(changes: list[tuple[tuple[str, ...], object]]) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))  # a deep copy
    for path, value in changes:
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


@contextmanager
def time_limit(seconds: int):
    """Fail instead of hanging (SIGALRM; pytest and its xdist workers run tests in the main thread)."""

    def expire(signum, frame):
        raise TimeoutError(f"took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=CHANGES)
def test_a_malformed_scenario_gives_one_line_or_a_working_env(changes):
    from envs.registration import make_env

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.yaml"
        path.write_text(yaml.safe_dump(apply(changes)))
        with time_limit(20):
            try:
                scenario = load_scenario(path)
            except ScenarioError as error:
                message = str(error)
                assert message.startswith(f"{path}: ") and "\n" not in message, message
                return
            env = make_env(scenario.source)
            try:
                env.reset(seed=0)
                env.step(env.action_space.sample())
            finally:
                env.close()
