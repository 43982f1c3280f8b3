"""The road-network scenarios the fast backend simulates: one `RoadTask` per highway-env id, what
that env adds to the shared stepping of `FastRoad` (its spawn, reward and end, its spawns and clears
during the episode where it has them). Adding a scenario is a module like road_merge.py and one
entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from envs.fast.road_exit import (
    exit_draws,
    exit_goal,
    exit_reward,
    exit_steps_to_goal,
    exit_unsupported,
    spawn_exit,
)
from envs.fast.road_intersection import (
    INTERSECTION_IDM_CONSTANTS,
    arrived,
    guess_routes,
    intersection_after_step,
    intersection_draws,
    intersection_reward,
    intersection_step_draws,
    intersection_terminated,
    spawn_intersection,
)
from envs.fast.road_merge import merge_draws, merge_reward, merge_terminated, spawn_merge
from envs.fast.road_roundabout import crashed_terminated, roundabout_draws, roundabout_reward, spawn_roundabout
from envs.fast.road_scenario import RoadScenario, duration_steps  # noqa: F401  (duration_steps: re-exported)
from envs.fast.road_two_way import spawn_two_way, two_way_draws, two_way_reward
from envs.fast.road_u_turn import spawn_u_turn, u_turn_draws, u_turn_goal, u_turn_reward
from envs.fast.road_traffic import RoadTraffic

@dataclass(frozen=True)
class RoadTask:
    """What one highway-env road-network env adds to the shared stepping: its spawn and its ends.

    draws(seeds, road) -> the spawn's random draws ((E,) int64 episode seeds, envs.fast.rng);
    spawn(draws, road) -> RoadTraffic (its _make_vehicles); reward(road, traffic, actions) -> ((B,)
    reward, terms) (its _reward and _rewards, after the step); terminated(road, traffic) -> (B,) bool
    (its _is_terminated); truncates_at_duration: its _is_truncated is time >= config["duration"];
    goal(road, traffic) -> (B,) bool: envs.goals' check of the scenario (DrivingEnv's
    info["goal_reached"]), None where the scenario has no goal. steps_to_goal(road, traffic) -> (B,)
    float: a lower bound on the policy steps each ego still needs to reach a goal its reward pays for
    (inf where it cannot), the teacher's estimate beyond its horizon, None where no reward waits at
    the end of a manoeuvre. unsupported(config) -> why the spawn cannot reproduce this config (the
    scenario's highway_env config; empty when it can), None where any config is fine. Where the env
    changes its road after each step (intersection's clears and spawns, after the reward and the end
    are computed, before DrivingEnv's frame and signals): step_draws(seeds, steps) -> that step's
    draws ((B,) seeds, (B,) policy steps from 1) and after_step(road, traffic, draws), in place.
    idm_constants: IDMVehicle class constants the env's reset writes (FastRoad's rules use them; the
    class is not written). guess_routes(road, traffic, uniforms): where the other vehicles choose among
    routes that a camera cannot see, replace those not yet committed by routes drawn from (B, N) uniforms,
    in place (the teacher's routes="guessed"); None where their routes are not a choice."""

    draws: Callable[[torch.Tensor, RoadScenario], torch.Tensor]
    spawn: Callable[[torch.Tensor, RoadScenario], RoadTraffic]
    reward: Callable[[RoadScenario, RoadTraffic, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    terminated: Callable[[RoadScenario, RoadTraffic], torch.Tensor]
    truncates_at_duration: bool
    goal: Callable[[RoadScenario, RoadTraffic], torch.Tensor] | None = None
    unsupported: Callable[[dict], list[str]] | None = None
    steps_to_goal: Callable[[RoadScenario, RoadTraffic], torch.Tensor] | None = None
    step_draws: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    after_step: Callable[[RoadScenario, RoadTraffic, torch.Tensor], None] | None = None
    idm_constants: dict[str, float] | None = None
    guess_routes: Callable[[RoadScenario, RoadTraffic, torch.Tensor], None] | None = None


def _seeds_only(draws: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, RoadScenario], torch.Tensor]:
    """A scenario whose draws depend on the seeds only."""
    return lambda seeds, road: draws(seeds)


ROAD_TASKS: dict[str, RoadTask] = {
    "merge-v1": RoadTask(_seeds_only(merge_draws), spawn_merge, merge_reward, merge_terminated, truncates_at_duration=False),
    "roundabout-v1": RoadTask(_seeds_only(roundabout_draws), spawn_roundabout, roundabout_reward, crashed_terminated,
                              truncates_at_duration=True),
    "two-way-v0": RoadTask(_seeds_only(two_way_draws), spawn_two_way, two_way_reward, crashed_terminated,
                           truncates_at_duration=False),
    "u-turn-v1": RoadTask(_seeds_only(u_turn_draws), spawn_u_turn, u_turn_reward, crashed_terminated, truncates_at_duration=True,
                          goal=u_turn_goal),
    "exit-v1": RoadTask(_seeds_only(exit_draws), spawn_exit, exit_reward, crashed_terminated, truncates_at_duration=True,
                        goal=exit_goal, unsupported=exit_unsupported, steps_to_goal=exit_steps_to_goal),
    "intersection-v2": RoadTask(intersection_draws, spawn_intersection, intersection_reward, intersection_terminated,
                                truncates_at_duration=True, goal=arrived, step_draws=intersection_step_draws,
                                after_step=intersection_after_step, idm_constants=INTERSECTION_IDM_CONSTANTS,
                                guess_routes=guess_routes),
}
SUPPORTED_ROAD_ENV_IDS = tuple(ROAD_TASKS)
