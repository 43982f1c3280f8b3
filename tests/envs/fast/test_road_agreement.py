"""envs/fast/road_agreement.py: outcome statistics of merge on highway-env and on FastRoad."""

from __future__ import annotations

import numpy as np

from envs.fast.road_agreement import FIRST_SEED, fast_outcomes, highway_env_outcomes, policy_actions
from scenarios import load_scenario


def test_both_simulators_give_one_outcome_row_per_episode_under_the_same_action_sequences():
    np.testing.assert_array_equal(policy_actions(7, 40, 5), policy_actions(7, 40, 5))
    assert not np.array_equal(policy_actions(7, 40, 5), policy_actions(8, 40, 5))
    scenario = load_scenario("merge")
    seeds = [FIRST_SEED, FIRST_SEED + 1, FIRST_SEED + 2]
    for outcomes in (highway_env_outcomes(scenario, seeds), fast_outcomes(scenario, seeds, batch=2)):
        assert set(outcomes) == {"collided", "return", "length", "final_x"}
        assert all(len(values) == 3 for values in outcomes.values())
        assert set(outcomes["collided"]) <= {0.0, 1.0}
        assert np.all((outcomes["length"] >= 1) & (outcomes["length"] <= scenario.episode_steps))
        assert np.all((outcomes["return"] >= 0) & (outcomes["return"] <= outcomes["length"]))  # rewards in [0, 1]
        # an episode ends by a crash, past the merge's end (x > 370 m) or on time
        ended = (outcomes["collided"] == 1) | (outcomes["final_x"] > 370) | (outcomes["length"] == scenario.episode_steps)
        assert ended.all()
