"""Rule-based ego policies: drive an env without a trained agent.

Previews, benchmarks and the perception data collector need traffic seen from many ego
behaviours (random, cautious, lane-changing) before any agent exists. Each policy reads the
`info` of the previous step (`info["safety"]`, `info["ground_truth"]`) and returns an action
index. Indices come from the env's own `DiscreteMetaAction` (`actions_indexes`), so the same
policy drives the 5-action envs and intersection's 3 longitudinal actions:

    policy = make_policy("lane-changing", env, rng)
    obs, info = env.reset(seed=0)
    policy.reset()
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(info))
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

POLICY_NAMES = ("random", "cautious", "lane-changing")

# Thresholds of the cautious driver. Below the "slow" ones it brakes, above the "fast" ones it
# speeds up, in between it holds its speed. 1.5 s headway / 4 s TTC are common comfort limits;
# envs.safety counts < 1 s / < 2 s as unsafe, so the cautious driver reacts well before that.
SLOW_HEADWAY_S = 1.5  # [s]
SLOW_TTC_S = 4.0  # [s]
FAST_HEADWAY_S = 2.5  # [s]
FAST_TTC_S = 8.0  # [s]
LANE_CHANGE_COOLDOWN_STEPS = 2  # policy steps between lane changes, so a change can finish

# ground_truth["occupancy"] rows and columns (see envs.ground_truth).
_LEFT, _OWN, _RIGHT = 0, 1, 2
_AHEAD, _BEHIND = 0, 1


def _action_type(env: gym.Env):
    """highway-env's action type: a highway-env env and a FastDrivingEnv carry one, a DrivingEnv's
    is on the highway-env env it wraps (`sim`)."""
    unwrapped = env.unwrapped
    found = getattr(unwrapped, "action_type", None)
    return found if found is not None else getattr(getattr(unwrapped, "sim", None), "action_type", None)


def action_indexes(env: gym.Env) -> dict[str, int]:
    """Action name -> index of a `DrivingEnv`, a `FastDrivingEnv` or a highway-env env (e.g. {"IDLE": 1, ...})."""
    action_type = _action_type(env)
    indexes = getattr(action_type, "actions_indexes", None)
    if not isinstance(indexes, Mapping) or "IDLE" not in indexes:
        raise ValueError(
            f"rule-based policies need highway-env's DiscreteMetaAction; {type(env.unwrapped).__name__} "
            f"has {type(action_type).__name__}"
        )
    return dict(indexes)


def action_names(env: gym.Env) -> tuple[str, ...]:
    """The env's action names by index: highway-env's DiscreteMetaAction (LANE_LEFT, IDLE, LANE_RIGHT,
    FASTER, SLOWER; intersection: SLOWER, IDLE, FASTER)."""
    indexes = action_indexes(env)
    return tuple(sorted(indexes, key=indexes.__getitem__))


class RandomPolicy:
    """Uniformly random actions: the widest spread of states for perception data."""

    def __init__(self, actions: Mapping[str, int], rng: np.random.Generator | None = None) -> None:
        self.indices = sorted(set(actions.values()))
        self.rng = rng if rng is not None else np.random.default_rng()

    def reset(self) -> None:
        """Nothing to forget between episodes."""

    def __call__(self, info: dict[str, Any]) -> int:
        return int(self.rng.choice(self.indices))


class CautiousPolicy:
    """Keeps its lane; brakes when the leader is close, speeds up when the road ahead is clear."""

    def __init__(
        self,
        actions: Mapping[str, int],
        slow_headway_s: float = SLOW_HEADWAY_S,
        slow_ttc_s: float = SLOW_TTC_S,
        fast_headway_s: float = FAST_HEADWAY_S,
        fast_ttc_s: float = FAST_TTC_S,
    ) -> None:
        if not (slow_headway_s <= fast_headway_s and slow_ttc_s <= fast_ttc_s):
            raise ValueError(
                "thresholds must satisfy slow <= fast, got headway "
                f"{slow_headway_s}/{fast_headway_s} s and TTC {slow_ttc_s}/{fast_ttc_s} s"
            )
        self.actions = dict(actions)
        self.slow_headway_s, self.slow_ttc_s = slow_headway_s, slow_ttc_s
        self.fast_headway_s, self.fast_ttc_s = fast_headway_s, fast_ttc_s

    def reset(self) -> None:
        """Nothing to forget between episodes."""

    def __call__(self, info: dict[str, Any]) -> int:
        return self._longitudinal(info["safety"])

    def _action(self, name: str) -> int:
        """Index of `name`, or IDLE where the env lacks it (e.g. no FASTER in a lateral-only env)."""
        return self.actions.get(name, self.actions["IDLE"])

    def danger(self, safety: Mapping[str, Any]) -> bool:
        """Leader too close in time: brake (or get out of the lane)."""
        return float(safety["ttc"]) < self.slow_ttc_s or float(safety["headway"]) < self.slow_headway_s

    def clear(self, safety: Mapping[str, Any]) -> bool:
        """Leader far enough (or none, inf): safe to speed up."""
        return float(safety["ttc"]) >= self.fast_ttc_s and float(safety["headway"]) >= self.fast_headway_s

    def _longitudinal(self, safety: Mapping[str, Any]) -> int:
        if self.danger(safety):
            return self._action("SLOWER")
        if self.clear(safety):
            return self._action("FASTER")
        return self._action("IDLE")


class LaneChangingPolicy(CautiousPolicy):
    """Cautious, but overtakes: leaves a lane blocked ahead for a neighbour free ahead and behind.

    Prefers the left lane (overtaking side). Without lane-change actions (intersection) it is
    `CautiousPolicy`. `available` optionally returns the action indices possible right now
    (highway-env's `get_available_actions`), so it never steers into a lane that does not
    exist; without it, only the leftmost lane (lane_id 0) is known to have no left neighbour.
    """

    def __init__(
        self,
        actions: Mapping[str, int],
        available: Callable[[], Collection[int]] | None = None,
        cooldown_steps: int = LANE_CHANGE_COOLDOWN_STEPS,
        **thresholds: float,
    ) -> None:
        super().__init__(actions, **thresholds)
        self.available = available
        self.cooldown_steps = cooldown_steps
        self._cooldown = 0

    def reset(self) -> None:
        self._cooldown = 0

    def __call__(self, info: dict[str, Any]) -> int:
        safety = info["safety"]
        if self._cooldown > 0:
            self._cooldown -= 1
        else:
            change = self._lane_change(safety, info["ground_truth"])
            if change is not None:
                self._cooldown = self.cooldown_steps
                return change
        return self._longitudinal(safety)

    def _lane_change(self, safety: Mapping[str, Any], truth: Mapping[str, Any]) -> int | None:
        """The lane-change action to take now, or None to stay in lane."""
        occupancy = np.asarray(truth["occupancy"])  # (3, 2) lanes (left, own, right) x (ahead, behind)
        blocked = occupancy[_OWN, _AHEAD] > 0.5 and not self.clear(safety)
        if not blocked:
            return None
        possible = set(self.available()) if self.available is not None else None
        for name, row in (("LANE_LEFT", _LEFT), ("LANE_RIGHT", _RIGHT)):
            index = self.actions.get(name)
            if index is None or (possible is not None and index not in possible):
                continue
            if name == "LANE_LEFT" and int(safety["lane_id"]) <= 0:
                continue  # already in the leftmost lane
            if not occupancy[row].any():  # free ahead and behind
                return index
        return None


def make_policy(name: str, env: gym.Env, rng: np.random.Generator | None = None) -> RandomPolicy | CautiousPolicy:
    """Build a policy by name ("random", "cautious", "lane-changing") for `env`'s actions."""
    actions = action_indexes(env)
    if name == "random":
        return RandomPolicy(actions, rng)
    if name == "cautious":
        return CautiousPolicy(actions)
    if name == "lane-changing":
        return LaneChangingPolicy(actions, available=_action_type(env).get_available_actions)
    raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}")
