"""Rule-based policies: valid actions on every action set, and the rules they promise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.driving_env import DrivingEnv
from envs.policies import (
    POLICY_NAMES,
    CautiousPolicy,
    LaneChangingPolicy,
    RandomPolicy,
    action_indexes,
    action_names,
    make_policy,
)

ALL = {"LANE_LEFT": 0, "IDLE": 1, "LANE_RIGHT": 2, "FASTER": 3, "SLOWER": 4}  # highway-env ACTIONS_ALL
LONGI = {"SLOWER": 0, "IDLE": 1, "FASTER": 2}  # ACTIONS_LONGI (intersection)


def make_info(
    ttc: float = math.inf,
    headway: float = math.inf,
    lane_id: int = 1,
    occupancy: list[list[float]] | None = None,
) -> dict:
    """A minimal step info: the keys policies read."""
    occupancy = occupancy if occupancy is not None else [[0, 0], [0, 0], [0, 0]]
    return {
        "safety": {"ttc": ttc, "headway": headway, "speed": 25.0, "lane_id": lane_id, "crashed": False},
        "ground_truth": {"occupancy": np.array(occupancy, np.float32)},  # (3, 2) (left, own, right) x (ahead, behind)
    }


@pytest.fixture(scope="module", params=["highway", "intersection"])
def env(request):
    env = DrivingEnv(request.param, corruptions=False)
    yield env
    env.close()


def test_action_indexes_come_from_the_env(env):
    indexes = action_indexes(env)
    assert len(indexes) == env.action_space.n
    expected = LONGI if env.scenario.name == "intersection" else ALL
    assert indexes == expected
    names = action_names(env)
    assert len(names) == env.action_space.n and all(indexes[name] == i for i, name in enumerate(names))
    assert names == (("SLOWER", "IDLE", "FASTER") if env.scenario.name == "intersection"
                     else ("LANE_LEFT", "IDLE", "LANE_RIGHT", "FASTER", "SLOWER"))


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policies_return_valid_actions(env, name):
    policy = make_policy(name, env, np.random.default_rng(0))
    _, info = env.reset(seed=3)
    policy.reset()
    for _ in range(4):
        action = policy(info)
        assert isinstance(action, int)
        assert env.action_space.contains(action)
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break


def test_make_policy_rejects_unknown_names(env):
    with pytest.raises(ValueError, match="lane-changing"):
        make_policy("aggressive", env)


def test_random_policy_covers_all_actions():
    policy = RandomPolicy(ALL, np.random.default_rng(0))
    seen = {policy(make_info()) for _ in range(200)}
    assert seen == set(ALL.values())


@pytest.mark.parametrize("actions", [ALL, LONGI], ids=["5-actions", "3-actions"])
def test_cautious_brakes_when_ttc_or_headway_is_short(actions):
    policy = CautiousPolicy(actions)
    assert policy(make_info(ttc=2.0, headway=3.0)) == actions["SLOWER"]
    assert policy(make_info(ttc=20.0, headway=1.0)) == actions["SLOWER"]


@pytest.mark.parametrize("actions", [ALL, LONGI], ids=["5-actions", "3-actions"])
def test_cautious_speeds_up_on_a_clear_road_and_holds_in_between(actions):
    policy = CautiousPolicy(actions)
    assert policy(make_info()) == actions["FASTER"]  # no leader: inf TTC and headway
    assert policy(make_info(ttc=6.0, headway=2.0)) == actions["IDLE"]


def test_cautious_rejects_crossed_thresholds():
    with pytest.raises(ValueError, match="slow <= fast"):
        CautiousPolicy(ALL, slow_headway_s=3.0, fast_headway_s=2.0)


def test_lane_changing_takes_the_free_lane():
    blocked_left_free_right = [[1, 0], [1, 0], [0, 0]]
    policy = LaneChangingPolicy(ALL)
    assert policy(make_info(ttc=3.0, headway=1.2, occupancy=blocked_left_free_right)) == ALL["LANE_RIGHT"]

    free_left_blocked_right = [[0, 0], [1, 0], [0, 1]]  # right lane: a car close behind
    policy = LaneChangingPolicy(ALL)
    assert policy(make_info(ttc=3.0, headway=1.2, occupancy=free_left_blocked_right)) == ALL["LANE_LEFT"]


def test_lane_changing_prefers_left_and_respects_road_edges():
    both_free = [[0, 0], [1, 0], [0, 0]]
    assert LaneChangingPolicy(ALL)(make_info(headway=1.2, occupancy=both_free)) == ALL["LANE_LEFT"]
    # Leftmost lane: there is no left neighbour, whatever the occupancy says.
    assert LaneChangingPolicy(ALL)(make_info(headway=1.2, lane_id=0, occupancy=both_free)) == ALL["LANE_RIGHT"]
    # highway-env says no right lane either: brake instead.
    edge = LaneChangingPolicy(ALL, available=lambda: [ALL["IDLE"], ALL["SLOWER"]])
    assert edge(make_info(headway=1.2, lane_id=0, occupancy=both_free)) == ALL["SLOWER"]


def test_lane_changing_stays_when_both_neighbours_are_taken_or_the_road_is_clear():
    boxed_in = [[1, 0], [1, 0], [0, 1]]
    assert LaneChangingPolicy(ALL)(make_info(ttc=3.0, headway=1.2, occupancy=boxed_in)) == ALL["SLOWER"]
    leader_far = [[0, 0], [1, 0], [0, 0]]
    assert LaneChangingPolicy(ALL)(make_info(occupancy=leader_far)) == ALL["FASTER"]


def test_lane_changing_waits_before_changing_again_and_reset_clears_it():
    blocked = make_info(headway=1.2, occupancy=[[0, 0], [1, 0], [0, 0]])
    policy = LaneChangingPolicy(ALL, cooldown_steps=2)
    assert policy(blocked) == ALL["LANE_LEFT"]
    assert policy(blocked) == ALL["SLOWER"]  # the change is still under way
    policy.reset()
    assert policy(blocked) == ALL["LANE_LEFT"]


def test_lane_changing_without_lateral_actions_is_cautious():
    policy = LaneChangingPolicy(LONGI)
    blocked = make_info(ttc=3.0, headway=1.2, occupancy=[[0, 0], [1, 0], [0, 0]])
    assert policy(blocked) == LONGI["SLOWER"]
