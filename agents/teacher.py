"""`LookaheadTeacher`: a privileged expert that plans on copies of the fast simulator's exact state.

PPO on highway plateaus below the driving-quality bar even on perfect perception (docs/BENCHMARKS.md,
"ceiling"): with a short discount it speeds and crashes, with a longer one it dawdles. A planner
with the simulator as its model does not have that problem. highway-env's traffic is deterministic
once spawned (IDM and MOBIL, no noise), so a copy of an env's state predicts its future
exactly, for every action sequence the ego could choose.

For each env the teacher tries every sequence of `depth` actions (A^depth of them, A = 5 meta-actions,
3 on intersection), each followed by
IDLE up to `horizon` policy steps, as rows of batched simulators without frames of the advised
one's class (`FastHighway` or `FastRoad`; one row per first action for the first step, then one
per sequence), and scores each first action by the best discounted return of the sequences that
start with it. A sequence that crashes loses the rewards it would have earned after the crash, and also
`survival_value` per step for the rest of the episode. Each step closer than `min_headway_s` to
the car ahead costs `headway_penalty`, and each step closing in on it with a time to collision
below `min_ttc_s` costs `ttc_penalty`: a teacher that keeps a margin is one a camera policy can
imitate, whereas one that threads gaps by centimetres is not (students of teachers without the
margins crashed more; most of the camera agent's crashes came from closing in fast on slower
traffic until only one escape was left). That is the "learning by cheating" recipe (Chen et al.,
CoRL 2019): a privileged agent that sees the true state teaches the camera agent, which sees only
frames (agents/imitation.py).

Where a scenario's reward waits at the end of a manoeuvre beyond the horizon (exit: the exit lane,
hundreds of metres and six lane changes away), the simulator estimates the policy steps each plan
still needs to get there (`steps_to_goal`), and a plan that survives its horizon is worth
`goal_value` per step from then on, discounted by those steps, on top of its survival value: a
search with a heuristic at its leaves.

With `sight="camera"` the teacher plans as if the world held only the vehicles inside the
scenario's top-down camera frame (`hide_unseen`), replanning from that every step: whether the
vehicles a plan depends on are in the frame at all, which a camera agent needs in order to imitate it
(intersection's crossing traffic and two-way's oncoming traffic were not at 1.5 px/m: docs/BENCHMARKS.md,
"What the camera shows"). It is memoryless and takes the unseen road for empty, so it bounds a camera
agent neither above nor below. The default, "all", sees everything.

With `routes="guessed"` (intersection, whose vehicles choose their exits and do not signal them) the
teacher does not know where the other vehicles go until they turn: it plans `route_guesses` times, each
with every undecided vehicle's destination drawn anew (FastRoad.guess_routes), and scores each action by
its mean over the guesses, as a driver who sees them but not their intentions would: its decisions do not
depend on what the frames cannot show. With enough guesses it keeps ~95 % of the privileged teacher's
return on intersection (docs/BENCHMARKS.md, "A teacher that does not know where the others go").

The defaults (depth 2, horizon 3, 0.5 s headway and 3 s TTC margins) and the variants measured are
in docs/BENCHMARKS.md ("The teacher"); `python run.py bench teacher` plays them.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import torch

from envs.fast.simulator import META_ACTIONS, StepResult
from envs.fast.simulators import BatchedSimulator, routes_can_be_guessed
from envs.fast.state import TrafficState
from scenarios.schema import BevCameraConfig, Scenario

TIE_ORDER = ("IDLE", "FASTER", "SLOWER", "LANE_RIGHT", "LANE_LEFT")  # the first of equals wins
TIE_BREAK_SPAN = 4e-4  # smaller than any real difference between plans (a speed step changes a reward by
# >= 0.01), larger than float32 rounding of returns below ~40


CPU_CHUNK_ENVS = 64  # envs planned at once on a CPU: 64 x 25 = 1,600 planning rows, a cache-sized batch


@functools.cache
def tie_break(action_names: tuple[str, ...]) -> torch.Tensor:
    """(A,) small bonuses, largest first in TIE_ORDER, for the actions `action_names` (by index);
    computed once per action set (the imitation's fit asks for it every minibatch)."""
    ranks = torch.tensor([TIE_ORDER.index(name) for name in action_names], dtype=torch.float64)
    return TIE_BREAK_SPAN * (1 - ranks / (len(TIE_ORDER) - 1))


def best_actions(values: torch.Tensor, action_names: tuple[str, ...] = META_ACTIONS) -> torch.Tensor:
    """(E, A) action values -> (E,) int64 best actions, equal values resolved by TIE_ORDER."""
    return (values + tie_break(action_names).to(values)).argmax(dim=1)


SIGHTS = ("all", "camera")  # what the teacher plans with: every vehicle, or those inside the camera frame
ROUTES = ("known", "guessed")  # the other vehicles' routes: exact, or guessed for those not yet turning
ROUTE_GUESS_SEED = 0  # the guesses' generator: the same calls give the same labels


def hide_unseen(state, camera: BevCameraConfig) -> None:
    """Mark absent, in place, every vehicle whose centre lies outside the top-down `camera`'s frame
    around its env's ego (a TrafficState or a FastRoad RoadTraffic, (B, N)); the ego (column 0) stays."""
    kinematics = state if isinstance(state, TrafficState) else state.vehicles
    dx, dy = kinematics.x - kinematics.x[:, :1], kinematics.y - kinematics.y[:, :1]  # (B, N) [m]
    cos, sin = torch.cos(kinematics.heading[:, :1]), torch.sin(kinematics.heading[:, :1])
    along, across = dx * cos + dy * sin, dy * cos - dx * sin  # (B, N) [m] in the ego's frame
    seen = (along < camera.meters_ahead) & (along > -camera.meters_behind) & (across.abs() < camera.meters_to_each_side)
    seen[:, 0] = True
    state.present &= seen


def planning_scenario(scenario: Scenario, plan_hz: int | None) -> Scenario:
    """`scenario` with its physics at `plan_hz` steps per second (itself when None): what the planners simulate."""
    if plan_hz is None:
        return scenario
    episode = scenario.highway_env_config()
    policy_hz, own_hz = episode["policy_frequency"], episode["simulation_frequency"]
    if not policy_hz <= plan_hz <= own_hz:
        raise ValueError(f"plan_hz must lie between the scenario's policy frequency ({policy_hz} Hz) and its "
                         f"simulation frequency ({own_hz} Hz), got {plan_hz}")
    return dataclasses.replace(scenario, episode={**scenario.episode, "simulation_frequency": plan_hz})


class LookaheadTeacher:
    def __init__(self, sim: BatchedSimulator, depth: int = 2, horizon: int = 3, gamma: float = 0.95,
                 survival_value: float = 0.8, min_headway_s: float = 0.5, headway_penalty: float = 0.5,
                 min_ttc_s: float = 3.0, ttc_penalty: float = 0.5, goal_value: float = 1.0,
                 chunk: int | None = None, sight: str = "all", plan_hz: int | None = None, routes: str = "known",
                 route_guesses: int = 4) -> None:
        """sim: the simulator whose envs it advises. depth: actions searched exhaustively; horizon:
        policy steps simulated per sequence (IDLE after `depth`); gamma: discount of the plan;
        survival_value: the reward per step assumed after the horizon for a sequence that did not
        crash; min_ttc_s, ttc_penalty: the cost of a step closing in on the car ahead with a time
        to collision below min_ttc_s [s] (as min_headway_s, headway_penalty for the gap); goal_value:
        the reward per step at the goal, where the simulator estimates the steps to it; chunk:
        envs planned at once (the planning batch is chunk * 5^depth rows); by default
        CPU_CHUNK_ENVS on a CPU, where a cache-sized batch is fastest, and all of them on a GPU,
        where each simulator call costs thousands of kernel launches whatever its size; sight: "all"
        (plan with every vehicle) or "camera" (only those inside the scenario's top-down camera frame);
        plan_hz: the physics steps per second of the plans' simulation [Hz] (None: the scenario's own);
        a coarser one plans an approximate future at a fraction of the cost (the road scenarios simulate
        at 15 Hz, the highways at 5); routes: the other vehicles' routes, "known" (exact) or "guessed"
        (drawn anew `route_guesses` times per plan for those not yet committed, the values averaged;
        scenarios for which envs.fast.simulators.routes_can_be_guessed), at `route_guesses` times the cost."""
        if not 1 <= depth <= horizon:
            raise ValueError(f"need 1 <= depth <= horizon, got depth {depth} and horizon {horizon}")
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        if min(min_headway_s, headway_penalty, min_ttc_s, ttc_penalty, goal_value) < 0:
            raise ValueError(f"margins, penalties and the goal's value must be >= 0, got min_headway_s {min_headway_s}, "
                             f"headway_penalty {headway_penalty}, min_ttc_s {min_ttc_s}, ttc_penalty {ttc_penalty}, "
                             f"goal_value {goal_value}")
        if sight not in SIGHTS:
            raise ValueError(f"sight must be one of {', '.join(SIGHTS)}, got {sight!r}")
        if routes not in ROUTES:
            raise ValueError(f"routes must be one of {', '.join(ROUTES)}, got {routes!r}")
        if routes == "guessed" and not routes_can_be_guessed(sim.scenario):
            raise ValueError(f"routes='guessed' needs a scenario whose other vehicles choose among routes a camera "
                             f"cannot see (intersection); {sim.scenario.name}'s do not")
        if route_guesses < 1:
            raise ValueError(f"route_guesses must be >= 1, got {route_guesses}")
        self.route_guesses = route_guesses if routes == "guessed" else None
        self._guesses = torch.Generator().manual_seed(ROUTE_GUESS_SEED)  # on the CPU: the same draws on any device
        self.plan_scenario = planning_scenario(sim.scenario, plan_hz)
        # the frame it plans within, if any (the fast simulators take only the top-down camera)
        self.sight = sim.scenario.camera.bev if sight == "camera" else None
        self.sim = sim
        self.depth, self.horizon, self.gamma = depth, horizon, gamma
        self.min_headway_s, self.headway_penalty = min_headway_s, headway_penalty
        self.min_ttc_s, self.ttc_penalty = min_ttc_s, ttc_penalty
        self.chunk = chunk or (CPU_CHUNK_ENVS if sim.device.type == "cpu" else None)
        self.action_names = sim.action_names
        self.actions = len(self.action_names)  # A
        self.idle = self.action_names.index("IDLE")
        self.sequences = torch.tensor(list(itertools.product(range(self.actions), repeat=depth)),
                                      device=sim.device)  # (S, depth)
        # A sequence that survives the horizon is worth this much more than its rewards so far:
        # survival_value per step for ever after, discounted.
        self.tail_value = gamma**horizon * survival_value / (1.0 - gamma)
        self.goal_value = goal_value
        self._planners: dict[str, BatchedSimulator] = {}

    def act(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(E,) int64: the teacher's action for each env `rows` of `sim` (all when None), in its current state.

        Actions with the same value (FASTER at the top speed, LANE_LEFT in the leftmost lane, ... do
        the same as IDLE) go to the first in TIE_ORDER, so that equal situations get equal labels."""
        return best_actions(self.action_values(rows), self.action_names)

    def action_values(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(E, A): for each env `rows` and each first action, the best plan's discounted return."""
        sim = self.sim
        rows = torch.arange(sim.batch_size, device=sim.device) if rows is None else rows.to(sim.device)
        chunk = self.chunk or max(len(rows), 1)
        return torch.cat([self._plan(rows[start : start + chunk]) for start in range(0, len(rows), chunk)])

    def _plan(self, rows: torch.Tensor) -> torch.Tensor:
        """(E, A) action values of the envs `rows`: with guessed routes, the mean over the guesses."""
        start = self.sim.state.select(rows)  # a copy
        if self.sight is not None:
            hide_unseen(start, self.sight)
        if self.route_guesses is None:
            return self._plan_from(start)
        total = 0.0
        for _ in range(self.route_guesses):
            guessed = start.clone()  # a copy to write the guesses into
            uniforms = torch.rand(guessed.present.shape, generator=self._guesses, dtype=torch.float64)
            self.sim.guess_routes(guessed, uniforms)
            total = total + self._plan_from(guessed)
        return total / self.route_guesses

    def _plan_from(self, start) -> torch.Tensor:
        """(E, A) action values of E envs starting from `start` (E rows of the advised simulator's state).

        The first step depends only on the first action, so it is simulated once per env and
        action (E * A rows); its outcome is then copied into one row per sequence (E * A^depth)
        for the remaining steps. At depth 2 that saves a fifth of the simulation.
        """
        count, options, choices = start.present.shape[0], len(self.sequences), self.actions
        first = self._planner_for("first", count * choices)
        first.load(torch.arange(count * choices, device=first.device),
                   start.select(torch.arange(count, device=first.device).repeat_interleave(choices)))
        value, alive, ended = self._score(first.step(torch.arange(choices, device=first.device).repeat(count)), step=0)
        # sequences are ordered by their first action: sequence s starts with s // (options / A)
        parent = torch.arange(count * options, device=first.device) // (options // choices)  # (E * S,) row of `first`
        rest = self._planner_for("rest", count * options)
        rest.load(torch.arange(count * options, device=rest.device), first.state.select(parent))
        value, alive, ended = value[parent], alive[parent], ended[parent]
        idle = torch.full((count * options,), self.idle, dtype=torch.long, device=rest.device)
        for step in range(1, self.horizon):
            actions = self.sequences[:, step].repeat(count) if step < self.depth else idle
            reward, survived, ends = self._score(rest.step(actions), step)
            value += ~ended * reward  # an ended episode (crash, or merge's end of road) earns nothing more
            alive &= survived | ended
            ended |= ends
        value += alive * (self.tail_value + self._goal_tail(rest))
        # (E, A): the best sequence that starts with each action
        return value.view(count, choices, options // choices).amax(dim=2)

    def _goal_tail(self, planner: BatchedSimulator) -> torch.Tensor | float:
        """(rows,) the value of the goal beyond the horizon from each plan's last state: goal_value
        per step once there, discounted by the steps still needed (0 where it cannot be reached)."""
        steps = planner.steps_to_goal()
        if steps is None or not self.goal_value:
            return 0.0
        gamma = self.gamma
        return gamma**self.horizon * self.goal_value * torch.pow(gamma, steps).to(planner.dtype) / (1.0 - gamma)

    def _score(self, result: StepResult, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(discounted reward, not crashed, episode over) of one planning step, each (rows,).

        An episode that ends without a crash (merge's ego past the end of the road) keeps its
        `tail_value` like one still driving: arriving is as good as surviving, so the plan does
        not dawdle to collect more steps, nor rush to end the episode."""
        reward = result.reward
        if self.headway_penalty:
            reward = reward - self.headway_penalty * (result.signals["headway"] < self.min_headway_s).to(reward)
        if self.ttc_penalty:
            reward = reward - self.ttc_penalty * (result.signals["ttc"] < self.min_ttc_s).to(reward)
        crashed = result.signals["crashed"]
        return (self.gamma**step) * reward, ~crashed, result.terminated | crashed

    def _planner_for(self, role: str, rows: int) -> BatchedSimulator:
        """The planning simulator for `role` ("first" or "rest") with `rows` rows, of the advised
        simulator's class (rebuilt when the size changes: it holds no frames, so that is cheap)."""
        planner = self._planners.get(role)
        if planner is None or planner.batch_size != rows:
            planner = type(self.sim)(self.plan_scenario, rows, device=self.sim.device, dtype=self.sim.dtype, render=False)
            self._planners[role] = planner
        return planner


def teacher_for(sim: BatchedSimulator, training) -> LookaheadTeacher:
    """The teacher a run's `training` section (agents.config.TrainingConfig: teacher_depth, _horizon,
    _min_ttc_s, _sight, _plan_hz, _routes, _route_guesses) asks for, advising `sim`: what the imitation imitates."""
    return LookaheadTeacher(sim, depth=training.teacher_depth, horizon=training.teacher_horizon,
                            min_ttc_s=training.teacher_min_ttc_s, sight=training.teacher_sight,
                            plan_hz=training.teacher_plan_hz, routes=training.teacher_routes,
                            route_guesses=training.teacher_route_guesses)
