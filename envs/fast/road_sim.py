"""`FastRoad`: B copies of a highway-env road-network scenario stepped as tensors (issue 21).

The road-network counterpart of `envs.fast.simulator.FastHighway`, with the same public interface
where it applies: `FastRoad(scenario, batch_size, device, dtype, render, corruptions)`,
`reset(rows, seeds)`, `load(rows, traffic, seeds)`, `step(actions) -> StepResult`, `observation()`,
`observations_of(rows)`, `clean_frames`, `reset_signals`, `episode_seeds`, `steps`.

Supported: highway-env's merge-v1, roundabout-v1, two-way-v0, u-turn-v1, exit-v1 and intersection-v2
(clearlane's scenarios/merge.yaml, roundabout.yaml, two-way.yaml, u-turn.yaml, exit.yaml and
intersection.yaml). What differs between them is one `RoadTask` each in `road_tasks.ROAD_TASKS` (its
spawn's draws, the spawn, reward, termination, whether it truncates at its duration, its goal if any,
its changes to the road after each step and its IDM constants where it has them, the configs its
spawn cannot reproduce: road_merge.py, road_roundabout.py, road_two_way.py, road_u_turn.py,
road_exit.py, road_intersection.py, where their spawns and rewards are described); the stepping, the
signals and the frames are shared here. One `step(actions)` is one policy step of highway-env's
ConnectedLaneMergeEnv (ConnectedLaneRoundaboutEnv, TwoWayEnv, ConnectedLaneUTurnEnv,
ConnectedLaneExitEnv, ConnectedLaneIntersectionEnv) for every env (merge's terms below; the others'
in their modules; intersection then clears and spawns vehicles, before the signals and the frame).
The actions are the scenario's DiscreteMetaAction's (`action_indexes`: intersection's ego only
changes speed, SLOWER / IDLE / FASTER):

    road_traffic.policy_step     the ego's DiscreteMetaAction (index -> road_motion code), then
                                 simulation_frequency / policy_frequency sub-steps of Road.act()
                                 and Road.step() (IDM, MOBIL, collisions; the obstacle at the end
                                 of the ramp included)
    MergeEnv._rewards            collision_reward = crashed, right_lane_reward = lane _id / 1,
                                 high_speed_reward = lmap(speed, reward_speed_range, [0, 1]) (not
                                 clipped, the speed not projected: as MergeEnv), lane_change_reward
                                 = action index in (0, 2), merging_speed_reward = sum over the
                                 controlled vehicles (ego and IDM, not the obstacle) whose closest
                                 lane is ("b", "c", 2) of (target_speed - speed) / target_speed
    MergeEnv._reward             the weighted sum, lmap-ed from [collision + merging_speed,
                                 high_speed + right_lane] to [0, 1] (always: merge has no
                                 normalize_reward key; lane_change_reward is summed but not in the
                                 range; no on-road factor)
    MergeEnv._is_terminated      the ego crashed, or its x > 370 m
    truncated                    steps >= scenario.episode_steps (MergeEnv._is_truncated is False,
                                 merge has no duration: DrivingEnv's limit, max_episode_steps)
    signals                      envs.safety's StepTracker, on the lane graph (`RoadSignalTracker`)
    frame                        BatchedBevCamera(..., network=the scenario's network), stacked as
                                 FastHighway stacks them (simulator.FrameStack), sensor corruptions too

Exactness: in float64, equal to highway-env / DrivingEnv to rounding (tests/envs/fast/test_road_sim.py,
test_road_roundabout.py, test_road_two_way.py, test_road_u_turn.py, test_road_exit.py, test_road_intersection.py:
positions ~1e-14 m over whole episodes, rewards, terms, terminated,
truncated and signals; on the roundabout, policy steps where the ego crawls below 0.5 m/s to 1e-3,
where highway-env's own lateral loop amplifies round-off, and on the u-turn, where IDM vehicles
crawl, and on the intersection, where they stop to yield (to 1e-3 within such a step), with rows re-synchronised after such steps: within a step ~1e-12); each spawn is its env's given the same draws (intersection's per-step spawns too), but its draws are our RNG's, not numpy's (same
distributions, not the same episodes per seed). IDM constants are highway-env's defaults, read
without touching IDMVehicle's class (IntersectionEnv rewrites them; DrivingEnv restores them);
intersection's are the ones its reset writes (RoadTask.idm_constants).
Cost (`python run.py --threads 1 bench env --backend fast --scenarios merge roundabout`, one thread,
a training job on the other core): at B = 1,024 with camera frames merge 3,342 and roundabout 2,060
env steps/s (41x and 51x highway-env through DrivingEnv), 4,251 and 2,520 without frames: the road
rules (road_traffic's neighbour searches, IDM/MOBIL, collisions; 15 sub-steps per policy step)
dominate, the camera is 10-20 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING

import torch

from envs.fast.lanes import LaneGraph
from envs.fast.road_motion import is_reachable_from
from envs.fast.road_scenario import RoadScenario
from envs.fast.road_tasks import ROAD_TASKS, SUPPORTED_ROAD_ENV_IDS, duration_steps
from envs.fast.road_traffic import RoadTraffic, neighbour_vehicles, policy_step
from envs.fast.scenes import scenes_of_columns
from envs.fast.signals import SignalTracker, time_margins
from envs.fast.simulator import FrameStack, StepResult, UnsupportedScenario
from envs.fast.spawn_reserve import SpawnReserve
from envs.scene import Scene
from scenarios import Scenario
from scenarios.schema import BevCameraConfig

if TYPE_CHECKING:
    from envs.fast.camera import BatchedBevCamera

IDM_VEHICLE_TYPE = "highway_env.vehicle.behavior.IDMVehicle"


def road_unsupported_reasons(scenario: Scenario) -> list[str]:
    """Why FastRoad cannot reproduce this scenario faithfully; empty when it can."""
    env_id = scenario.highway_env.id
    if env_id not in SUPPORTED_ROAD_ENV_IDS:
        return [f"its highway-env id is {env_id}"]
    reasons = []
    if scenario.camera.view != "bev":
        reasons.append(f"its camera is {scenario.camera.view!r} (only 'bev' is batched)")
    config = scenario.highway_env_config()
    if config.get("other_vehicles_type", IDM_VEHICLE_TYPE) != IDM_VEHICLE_TYPE:
        reasons.append(f"its other vehicles are {config['other_vehicles_type']} (only IDMVehicle)")
    if config.get("controlled_vehicles", 1) != 1:
        reasons.append("it has several controlled vehicles")
    action = config.get("action", {"type": "DiscreteMetaAction"})
    if action.get("type") != "DiscreteMetaAction":
        reasons.append(f"its action type is {action.get('type')} (only DiscreteMetaAction)")
    task = ROAD_TASKS[env_id]
    if task.unsupported is not None:
        reasons += task.unsupported(config)
    return reasons


def check_road_supported(scenario: Scenario) -> None:
    """Raise UnsupportedScenario (a ValueError), naming the supported ids, unless FastRoad supports it."""
    reasons = road_unsupported_reasons(scenario)
    if reasons:
        name = scenario.source or scenario.name or "this scenario"
        raise UnsupportedScenario(
            f"the fast road-network simulator does not support {name}: {'; '.join(reasons)}. "
            f"Supported highway-env ids: {', '.join(SUPPORTED_ROAD_ENV_IDS)}"
        )


def assign_traffic(target: RoadTraffic, rows: torch.Tensor, source: RoadTraffic) -> None:
    """Overwrite the envs `rows` of `target` with `source` (E envs, as many columns and route slots)."""
    for f in fields(target.vehicles):
        getattr(target.vehicles, f.name)[rows] = getattr(source.vehicles, f.name).to(getattr(target.vehicles, f.name))
    for f in fields(target):
        if f.name != "vehicles":
            getattr(target, f.name)[rows] = getattr(source, f.name).to(getattr(target, f.name))


# Safety signals on the lane graph.


def leader_gap(graph: LaneGraph, traffic: RoadTraffic, connected: bool) -> tuple[torch.Tensor, ...]:
    """envs.safety.leader_gap on a lane graph: (gap [m], ttc [s], headway [s], leader column), each (B,).

    The leader is Road.neighbour_vehicles(ego, ego.lane_index)'s front vehicle (obstacles
    included, connected lanes as the road has them); s of both on the ego's lane (extrapolated
    past its ends), gap bumper to bumper with each one's length, speeds projected on the lane's
    heading at each one's s."""
    v = traffic.vehicles
    lane = v.lane[:, :1]  # (B, 1)
    front, _ = neighbour_vehicles(graph, traffic, v.lane, connected)
    leader = front[:, 0]  # (B,)
    has_leader = leader >= 0
    index = leader.clamp(min=0)[:, None]
    s_ego, _ = graph.local_coordinates(lane, v.x[:, :1], v.y[:, :1])
    lx, ly = v.x.gather(1, index), v.y.gather(1, index)
    s_leader, _ = graph.local_coordinates(lane, lx, ly)

    def along(speed, heading, s):
        direction = graph.heading_at(lane, s)
        return (speed * torch.cos(heading) * torch.cos(direction) + speed * torch.sin(heading) * torch.sin(direction))[:, 0]

    ego_speed = along(v.speed[:, :1], v.heading[:, :1], s_ego)
    leader_speed = along(v.speed.gather(1, index), v.heading.gather(1, index), s_leader)
    half = (traffic.length[:, 0] + traffic.length.gather(1, index)[:, 0]) / 2
    gap = torch.where(has_leader, (s_leader - s_ego)[:, 0] - half, torch.full_like(ego_speed, math.inf))
    return (gap, *time_margins(gap, ego_speed, leader_speed, has_leader), leader)


class RoadSignalTracker(SignalTracker):
    """envs.safety.StepTracker for B envs on a lane graph: the same keys as envs.fast.signals."""

    def __init__(self, graph: LaneGraph, connected: bool, batch_size: int, dt_s: float,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(batch_size, dt_s, device, dtype)
        self.graph, self.connected = graph, connected

    def ego(self, traffic: RoadTraffic) -> tuple[torch.Tensor, ...]:
        v = traffic.vehicles
        return tuple(t[:, 0].clone() for t in (v.x, v.y, v.speed, v.lane))

    def lane_changed(self, lane: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """The lane id (lane_index[2]) changed within one road (edge), as envs.safety counts it."""
        graph = self.graph
        return (graph.edge[lane] == graph.edge[previous]) & (graph.lane_number[lane] != graph.lane_number[previous])

    def observe(self, traffic: RoadTraffic, distance: torch.Tensor) -> dict[str, torch.Tensor]:
        v, graph = traffic.vehicles, self.graph
        gap, ttc, headway, _ = leader_gap(graph, traffic, self.connected)
        lane = v.lane[:, 0]
        return {
            "crashed": traffic.crashed[:, 0].clone(),
            "off_road": ~graph.on_lane(lane, v.x[:, 0], v.y[:, 0]),  # not ego.on_road
            "speed": v.speed[:, 0].clone(),
            "ttc": ttc,
            "headway": headway,
            "gap": gap,
            "distance": distance.clone(),
            "lane_id": graph.lane_number[lane].clone(),  # lane_index[2]
        }


# The simulator.


class FastRoad(FrameStack):
    """B copies of a road-network scenario (ROAD_TASKS: merge-v1, roundabout-v1, two-way-v0, u-turn-v1,
    exit-v1, intersection-v2), on the CPU or a GPU."""

    def __init__(
        self,
        scenario: Scenario,
        batch_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        render: bool = True,
        corruptions: bool = True,
    ) -> None:
        """corruptions: apply the scenario's sensor corruptions to the frames (when it has any)."""
        check_road_supported(scenario)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.scenario = scenario
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.task = ROAD_TASKS[scenario.highway_env.id]
        self.road = RoadScenario.of(scenario, self.device, dtype, self.task.idm_constants)
        self.graph = self.road.graph
        self.config = self.road.config
        policy_hz, sim_hz = self.config["policy_frequency"], self.config["simulation_frequency"]
        self.substeps = int(sim_hz // policy_hz)
        self.dt = 1.0 / sim_hz  # [s] per sub-step
        # DrivingEnv's step limit, and the env's own time limit where its _is_truncated has one
        by_duration = duration_steps(self.config) if self.task.truncates_at_duration else None
        self.max_steps = min(scenario.episode_steps, by_duration or scenario.episode_steps)
        self.camera = None
        if render:
            from envs.fast.camera import BatchedBevCamera

            self.camera = BatchedBevCamera(scenario.camera.bev, device=self.device, network=self.road.network)
        self._init_frames(scenario, batch_size, corruptions)
        self.tracker = RoadSignalTracker(self.graph, self.road.rules.connected_lanes, batch_size, 1.0 / policy_hz,
                                         self.device, dtype)
        self.steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.episode_seeds = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        # episode 0 in every row until reset or load: spawned once and copied, as a spawn of many
        # (intersection's: 45 warm-up sub-steps) costs many times one; planners are built often
        self.state = self.spawn(torch.zeros(1, dtype=torch.long, device=self.device)).select(
            torch.zeros(batch_size, dtype=torch.long, device=self.device))
        self.reserve = SpawnReserve(self.spawn)  # starts spawned ahead for `reset(..., upcoming=)`
        self.reset_signals: dict[str, torch.Tensor] = {}

    # -- episodes ------------------------------------------------------------------------------
    def spawn(self, seeds: torch.Tensor) -> RoadTraffic:
        """The initial traffic of episodes `seeds` ((E,) int64), as `reset` draws it."""
        return self.task.spawn(self.task.draws(seeds.to(self.device, torch.long), self.road), self.road)

    @property
    def columns(self) -> int:
        """N: the objects per env (the scenario's spawn)."""
        return self.state.present.shape[1]

    @property
    def route_slots(self) -> int:
        """R: the route entries each vehicle can hold (0 where the scenario plans no routes)."""
        return self.state.vehicles.route_edge.shape[-1]

    def reset(self, rows: torch.Tensor | None = None, seeds: torch.Tensor | None = None,
              upcoming: Callable[[], torch.Tensor] | None = None) -> None:
        """Respawn the envs `rows` ((E,) int64; all when None) from episode `seeds` ((E,) int64).

        upcoming: -> the seeds the next resets will ask for ((U,) int64), if the caller knows them;
        called only when one of `seeds` was not spawned ahead: they and `seeds` are then spawned in
        one batch (envs.fast.spawn_reserve: the same starts, a fraction of the per-call cost)."""
        rows = torch.arange(self.batch_size, device=self.device) if rows is None else rows.to(self.device)
        if seeds is None:
            raise ValueError("reset needs one episode seed per env")
        seeds = seeds.to(self.device, torch.long)
        if seeds.shape != rows.shape:
            raise ValueError(f"{rows.shape[0]} envs to reset but {seeds.shape[0]} seeds")
        self.load(rows, self.reserve.take(seeds, upcoming), seeds)

    def load(self, rows: torch.Tensor, traffic: RoadTraffic, seeds: torch.Tensor | None = None) -> None:
        """Start the envs `rows` from a given state (used by reset, and to copy highway-env states:
        RoadTraffic.from_highway_env(graph, roads, egos, self.columns, self.route_slots))."""
        rows = rows.to(self.device)
        assign_traffic(self.state, rows, traffic)
        self.steps[rows] = 0
        if seeds is not None:
            self.episode_seeds[rows] = seeds.to(self.device, torch.long)
        self.reset_signals = self.tracker.reset(rows, self.state)
        if self.camera is not None:
            self._start_stacks(rows)

    # -- stepping ------------------------------------------------------------------------------
    def step(self, actions: torch.Tensor, step_draws: torch.Tensor | None = None) -> StepResult:
        """One policy step of every env for (B,) int64 DiscreteMetaAction indices. Where the scenario
        changes its road after a step (intersection's clears and spawns: RoadTask.after_step), that
        happens after the reward and the end, before the signals and the frame, as in highway-env
        and DrivingEnv; its draws come from (episode seed, step) unless `step_draws` gives them."""
        actions = actions.to(self.device, torch.long)
        codes = self.road.action_table[actions]
        policy_step(self.graph, self.state, codes, self.road.target_speeds, self.substeps, self.dt, self.road.rules)
        self.steps += 1
        reward, terms = self.task.reward(self.road, self.state, actions)
        terminated = self.task.terminated(self.road, self.state)
        if self.task.after_step is not None:
            if step_draws is None:
                step_draws = self.task.step_draws(self.episode_seeds, self.steps)
            self.task.after_step(self.road, self.state, step_draws.to(self.device))
        truncated = self.steps >= self.max_steps
        signals = self.tracker.step(self.state)
        if self.camera is not None:
            self._push_frame()
        return StepResult(reward=reward, terminated=terminated, truncated=truncated, signals=signals, rewards=terms)

    # -- views of one env, for FastDrivingEnv (the same methods as FastHighway's) --------------------
    def scenes(self, rows: list[int]) -> list[Scene]:
        """Envs `rows` as envs.scene.Scene: the ego, the other vehicles, then the obstacle (DrivingEnv's
        snapshot order); each object's own size."""
        traffic = self.state
        v = traffic.vehicles
        return scenes_of_columns(rows, traffic.present, v.x, v.y, v.heading, v.speed, traffic.length, traffic.width)

    def make_camera(self, view: BevCameraConfig, device: torch.device | str) -> BatchedBevCamera:
        """A camera of another view (top-down, counterfactual renders) on this road network."""
        from envs.fast.camera import BatchedBevCamera

        return BatchedBevCamera(view, device=device, network=self.road.network)

    def render_with(self, camera: BatchedBevCamera, traffic: RoadTraffic,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """(E, 3, H, W) uint8 frames of E envs through `camera` (into `out` when given); each object's own size."""
        v = traffic.vehicles
        as32 = [t.to(torch.float32) for t in (v.x, v.y, v.heading, traffic.length, traffic.width)]
        return camera.render(*as32, traffic.present, out=out)

    def goal_reached(self) -> torch.Tensor | None:
        """(B,) bool: whether each env's ego is at its scenario's goal now (envs.goals; DrivingEnv's
        info["goal_reached"]); None where the scenario has no goal."""
        return None if self.task.goal is None else self.task.goal(self.road, self.state)

    @property
    def action_indexes(self) -> dict[str, int]:
        """DiscreteMetaAction.actions_indexes of the scenario (intersection: SLOWER, IDLE, FASTER)."""
        return self.road.action_indexes

    @property
    def action_names(self) -> tuple[str, ...]:
        """DiscreteMetaAction's names by index, as the scenario configures it (envs.policies.action_names)."""
        return self.road.action_names

    def steps_to_goal(self) -> torch.Tensor | None:
        """(B,) float: a lower bound on the policy steps each env's ego needs to reach the goal its
        reward pays for (RoadTask.steps_to_goal; inf where it cannot); None where there is none."""
        return None if self.task.steps_to_goal is None else self.task.steps_to_goal(self.road, self.state)

    def guess_routes(self, traffic: RoadTraffic, uniforms: torch.Tensor) -> None:
        """Replace, in place, the routes of `traffic`'s vehicles not yet committed to one by routes
        drawn from (B, N) `uniforms` in [0, 1) (RoadTask.guess_routes): the world as a camera sees it."""
        if self.task.guess_routes is None:
            raise ValueError(f"{self.scenario.name}'s other vehicles do not choose among routes; only "
                             f"{', '.join(i for i, t in ROAD_TASKS.items() if t.guess_routes)}'s do")
        self.task.guess_routes(self.road, traffic, uniforms)

    def available_actions(self, row: int) -> list[int]:
        """DiscreteMetaAction.get_available_actions of env `row`: a lane change (where the action type
        has them) only to a lane of the same road that is reachable from the ego's position, no speed
        change past the last or first target speed."""
        v, graph, indexes = self.state.vehicles, self.graph, self.road.action_indexes
        a, b, number = graph.indices[int(v.lane[row, 0])]
        x, y = v.x[row, 0], v.y[row, 0]
        actions = [indexes["IDLE"]]
        for side_number, name in ((number - 1, "LANE_LEFT"), (number + 1, "LANE_RIGHT")):
            side = graph.lane_ids.get((a, b, side_number))
            if name in indexes and side is not None and bool(
                    is_reachable_from(graph, torch.tensor(side, device=self.device), x, y)):
                actions.append(indexes[name])
        speed_index = int(v.speed_index[row, 0])
        if "FASTER" in indexes and speed_index < len(self.road.target_speeds) - 1:
            actions.append(indexes["FASTER"])
        if "SLOWER" in indexes and speed_index > 0:
            actions.append(indexes["SLOWER"])
        return actions

    def ego_lane_numbers(self, rows: list[int]) -> list[int]:
        """The ego's lane _id within its road (0 = leftmost) in envs `rows`."""
        return self.graph.lane_number[self.state.vehicles.lane[rows, 0]].tolist()

    def ego_lane_width(self, row: int) -> float:
        """[m] the width of env `row`'s ego lane (ground truth's lane offsets), as DrivingEnv reads it."""
        return float(self.graph.width[self.state.vehicles.lane[row, 0]])

    def _render(self, traffic: RoadTraffic, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.render_with(self.camera, traffic, out)
