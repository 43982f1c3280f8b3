"""envs/fast/road_agreement.py: outcome statistics of the FastRoad scenarios on highway-env and on FastRoad."""

from __future__ import annotations

import numpy as np
import pytest

from envs.fast.road_agreement import (
    FIRST_SEED,
    OUTCOMES,
    fast_outcomes,
    highway_env_outcomes,
    policy_actions,
)
from scenarios import load_scenario

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@pytest.mark.parametrize("name", ["merge", "roundabout", "two-way", "u-turn", "exit", "intersection"])
def test_both_simulators_give_one_outcome_row_per_episode_under_the_same_action_sequences(name):
    np.testing.assert_array_equal(policy_actions(7, 40, 5), policy_actions(7, 40, 5))
    assert not np.array_equal(policy_actions(7, 40, 5), policy_actions(8, 40, 5))
    scenario = load_scenario(name)
    seeds = [FIRST_SEED, FIRST_SEED + 1, FIRST_SEED + 2]
    for outcomes in (highway_env_outcomes(scenario, seeds), fast_outcomes(scenario, seeds, batch=2)):
        assert set(outcomes) == set(OUTCOMES) == {"collided", "return", "length", "final_x", "distance", "goal"}
        assert all(len(values) == 3 for values in outcomes.values())
        assert set(outcomes["collided"]) <= {0.0, 1.0}
        assert np.all((outcomes["length"] >= 1) & (outcomes["length"] <= scenario.episode_steps))
        # rewards in [0, 1] (two-way: [0, 1.2], its weights high_speed 1 and left_lane 0.2 are not normalised;
        # intersection: [-5, 1], not normalised either)
        most = 1.2 if name == "two-way" else 1.0
        least = -5.0 if name == "intersection" else 0.0
        assert np.all((outcomes["return"] >= least * outcomes["length"]) & (outcomes["return"] <= most * outcomes["length"] + 1e-9))
        assert set(outcomes["goal"]) <= ({0.0, 1.0} if name in ("u-turn", "intersection") else {0.0})
        assert np.all(outcomes["distance"] > 0)
        # an episode ends by a crash, past the merge's end (x > 370 m; merge only) or on time
        past_the_end = (outcomes["final_x"] > 370) if name == "merge" else False
        arrived = outcomes["goal"] == 1 if name == "intersection" else False  # has_arrived ends intersection
        ended = (outcomes["collided"] == 1) | past_the_end | arrived | (outcomes["length"] == scenario.episode_steps)
        assert ended.all()
