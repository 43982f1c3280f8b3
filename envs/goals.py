"""Scenario goals: whether the ego has reached the end of its manoeuvre, for the success rate.

Highways, merge, roundabout and two-way have no goal: driving on safely is the task, and their
episodes end on time or on a crash. Three of highway-env's scenarios end with a manoeuvre instead,
and "did it get there?" matters as much as the return (issue 21):

- exit: highway-env's own `ExitEnv._is_success()`: the ego is on (or heading to) the exit lane;
- intersection: highway-env's `IntersectionEnv.has_arrived()`: 25 m into its exit road (which ends
  the episode);
- u-turn: highway-env defines none; clearlane counts the U-turn as done once the ego drives on
  the straight after the turn (lanes "c" -> "d" of `UTurnEnv`'s road).

An episode is a success when the goal was reached at some step and the ego never crashed
(envs.safety.SafetyMonitor).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Callable

from scenarios.loader import highway_env_class

if TYPE_CHECKING:
    from highway_env.envs.common.abstract import AbstractEnv

GoalCheck = Callable[["AbstractEnv"], bool]

UTURN_RETURN_ROAD = ("c", "d")  # UTurnEnv's straight after the turn: (from node, to node)


@lru_cache(maxsize=1)
def goals() -> tuple[tuple[type, GoalCheck, str], ...]:
    """highway-env class -> "has the ego reached the goal now?" and what that means (highway-env is
    imported here, not when the command line starts)."""
    from highway_env.envs.exit_env import ExitEnv
    from highway_env.envs.intersection_env import IntersectionEnv
    from highway_env.envs.u_turn_env import UTurnEnv

    return (
        (ExitEnv, lambda env: bool(env._is_success()), "on the exit lane (highway-env's is_success)"),
        (IntersectionEnv, lambda env: bool(env.has_arrived(env.vehicle)),
         "25 m into its exit road (highway-env's has_arrived)"),
        (UTurnEnv, lambda env: tuple(env.vehicle.lane_index[:2]) == UTURN_RETURN_ROAD,
         "on the straight after the U-turn"),
    )


def _goal_entry(env_class: type) -> tuple[type, GoalCheck, str] | None:
    return next((entry for entry in goals() if issubclass(env_class, entry[0])), None)


def goal_check(env: AbstractEnv) -> GoalCheck | None:
    """The goal test of a highway-env env's scenario; None for scenarios without a goal."""
    entry = _goal_entry(type(env))
    return None if entry is None else entry[1]


def _env_id_entry(env_id: str) -> tuple[type, GoalCheck, str] | None:
    goals()  # imports highway-env, which registers its ids
    return _goal_entry(highway_env_class(env_id))


def has_goal(env_id: str) -> bool:
    """Whether the scenarios on this highway-env id have a goal (and so a success rate); no env built."""
    return _env_id_entry(env_id) is not None


def goal_description(env_id: str) -> str | None:
    """What reaching the goal means on this highway-env id, in words; None without a goal."""
    entry = _env_id_entry(env_id)
    return None if entry is None else entry[2]
