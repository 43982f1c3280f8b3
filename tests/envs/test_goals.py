"""Scenario goals (envs/goals.py) and the success rate they give (envs.safety.SafetyMonitor, agents.evaluate)."""

from __future__ import annotations

import pytest

from agents.evaluate import episode_metrics, summarize
from envs.driving_env import DrivingEnv
from envs.goals import UTURN_RETURN_ROAD, goal_check, has_goal
from envs.safety import SafetyMonitor
from scenarios import available_scenarios, load_scenario

WITH_GOAL = {"exit", "intersection", "u-turn"}
IDLE = 1  # DiscreteMetaAction's IDLE, in every scenario's action set


def test_exactly_the_manoeuvre_scenarios_have_a_goal():
    goals = {name for name in available_scenarios() if has_goal(load_scenario(name).highway_env.id)}
    assert goals == WITH_GOAL


def step_info(goal: bool | None, crashed: bool = False) -> dict:
    safety = {"crashed": crashed, "ttc": 10.0, "headway": 3.0, "off_road": False, "hard_brake": False,
              "lane_change": False, "speed": 20.0, "jerk": 0.0, "distance": 100.0}
    return {"safety": safety} if goal is None else {"safety": safety, "goal_reached": goal}


@pytest.mark.parametrize(("goals", "crash_at", "success"), [
    ([False, True, False], None, 1.0),  # reached once is enough (exit: the lane may end later)
    ([False, False, False], None, 0.0),
    ([False, True, True], 2, 0.0),  # reached, then crashed: not a success
    ([None, None, None], None, None),  # no goal in this scenario
])
def test_an_episode_succeeds_when_it_reaches_its_goal_without_a_collision(goals, crash_at, success):
    monitor = SafetyMonitor(route_length_m=1000.0)
    for step, goal in enumerate(goals):
        monitor.update(step_info(goal, crashed=step == crash_at))
    assert monitor.summary()["success"] == success
    assert episode_metrics(0, 1.0, len(goals), monitor.summary())["success_rate"] == success


def test_the_success_rate_is_an_evaluation_metric_only_where_every_episode_defines_it():
    def rows(successes):
        monitors = []
        for success in successes:
            monitor = SafetyMonitor(route_length_m=1000.0)
            monitor.update(step_info(success))
            monitors.append(monitor)
        return [episode_metrics(seed, 1.0, 1, monitor.summary()) for seed, monitor in enumerate(monitors)]

    estimates = summarize(rows([True, False, True, True]))
    assert estimates["success_rate"].mean == pytest.approx(0.75)
    assert 0.0 <= estimates["success_rate"].ci_low < 0.75 < estimates["success_rate"].ci_high <= 1.0
    assert "success_rate" not in summarize(rows([None, None]))
    assert "collision_rate" in summarize(rows([None, None]))


def test_intersection_episodes_report_arrival_and_highways_report_nothing():
    env = DrivingEnv("intersection")
    arrived = []
    for seed in (0, 2):  # seeds on which driving straight on at constant speed arrives
        env.reset(seed=seed)
        monitor, done = SafetyMonitor(env.scenario.safety.route_length_m), False
        while not done:
            _, _, terminated, truncated, info = env.step(IDLE)
            monitor.update(info)
            done = terminated or truncated
        arrived.append(info["goal_reached"])
        assert info["goal_reached"] == env.sim.has_arrived(env.sim.vehicle)
        assert monitor.summary()["success"] == float(info["goal_reached"] and not monitor.summary()["collision"])
    assert arrived == [True, True]  # arrival ends the episode

    highway = DrivingEnv("highway")
    highway.reset(seed=0)
    assert "goal_reached" not in highway.step(IDLE)[-1]
    assert goal_check(highway.sim) is None


def test_the_u_turn_is_done_on_the_straight_after_the_turn():
    env = DrivingEnv("u-turn")
    _, info = env.reset(seed=0)
    assert info["goal_reached"] is False
    check = goal_check(env.sim)
    ego = env.sim.vehicle
    ego.lane_index = (*UTURN_RETURN_ROAD, 1)
    assert check(env.sim) is True
    ego.lane_index = ("b", "c", 1)  # in the turn
    assert check(env.sim) is False


def test_exit_reports_highway_envs_own_success():
    env = DrivingEnv("exit")
    env.reset(seed=0)
    _, _, _, _, info = env.step(IDLE)
    assert info["goal_reached"] is info["is_success"] is False  # still on the highway, lane 0
    env.sim.vehicle.target_lane_index = ("2", "exit", 0)  # heading into the exit
    assert goal_check(env.sim)(env.sim) is True and env.sim._is_success()
