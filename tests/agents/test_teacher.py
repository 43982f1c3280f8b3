"""The privileged lookahead teacher: plans on copies, avoids a constructed crash, drives safely and fast."""

from __future__ import annotations

import math

import pytest
import torch

from agents.teacher import LookaheadTeacher, best_actions, hide_unseen, planning_scenario
from envs.fast.params import LANE_WIDTH_M
from envs.fast.simulator import IDLE, FastHighway
from scenarios import load_scenario

LANE_LEFT, LANE_RIGHT, FASTER, SLOWER = 0, 2, 3, 4


def highway(batch: int, first_seed: int = 0) -> FastHighway:
    sim = FastHighway(load_scenario("highway"), batch, render=False)
    sim.reset(torch.arange(batch), torch.arange(first_seed, first_seed + batch))
    return sim


def only_a_slow_car_ahead(sim: FastHighway, gap_m: float) -> None:
    """Env 0: the ego in the middle lane at 25 m/s, one car `gap_m` ahead in its lane at 10 m/s, nobody else."""
    state = sim.state
    state.present[0, 2:] = False
    state.lane[0, :2] = state.target_lane[0, :2] = 1
    state.y[0, :2] = LANE_WIDTH_M
    state.heading[0, :2] = 0.0
    state.x[0, 1] = state.x[0, 0] + gap_m
    state.speed[0, 0], state.speed[0, 1] = 25.0, 10.0
    state.target_speed[0, 1] = 10.0
    state.ego_speed_index[0] = 1  # target speeds (20, 25, 30)
    state.target_speed[0, 0] = 25.0


def test_planning_leaves_the_simulated_envs_untouched():
    sim = highway(3)
    before = sim.state.clone()
    values = LookaheadTeacher(sim).action_values()
    assert values.shape == (3, 5) and torch.isfinite(values).all()
    for name in ("x", "y", "speed", "lane", "crashed"):
        assert torch.equal(getattr(sim.state, name), getattr(before, name))


def test_values_are_the_best_discounted_return_of_each_sequence_simulated_whole():
    """The teacher shares the first step between sequences that start alike; simulating every
    sequence from the start must give the same values."""
    sim = highway(3, first_seed=11)
    sim.step(torch.tensor([FASTER, IDLE, LANE_LEFT]))  # not a fresh spawn
    teacher = LookaheadTeacher(sim, depth=2, horizon=3, min_headway_s=0.5, headway_penalty=0.5, min_ttc_s=2.0,
                               ttc_penalty=0.3)
    sequences = [(first, second) for first in range(5) for second in range(5)]
    whole = FastHighway(sim.scenario, 3 * len(sequences), render=False)
    whole.load(torch.arange(3 * len(sequences)), sim.state.select(torch.arange(3).repeat_interleave(len(sequences))))
    returns = torch.zeros(3 * len(sequences))
    alive = torch.ones(3 * len(sequences), dtype=torch.bool)
    for step in range(3):
        actions = torch.tensor([sequence[step] if step < 2 else IDLE for sequence in sequences]).repeat(3)
        result = whole.step(actions)
        reward = result.reward - 0.5 * (result.signals["headway"] < 0.5).float() - 0.3 * (result.signals["ttc"] < 2.0).float()
        returns += alive * teacher.gamma**step * reward
        alive &= ~result.terminated
    returns += alive * teacher.tail_value
    expected = returns.view(3, 5, 5).amax(dim=2)  # best second action for each first action
    assert torch.allclose(teacher.action_values(), expected, atol=1e-6)


def test_it_avoids_a_slow_car_it_would_hit():
    sim = highway(1)
    only_a_slow_car_ahead(sim, gap_m=20.0)
    teacher = LookaheadTeacher(sim)
    values = teacher.action_values()[0]
    action = int(teacher.act()[0])
    assert action in (LANE_LEFT, LANE_RIGHT)  # both neighbouring lanes are empty
    assert values[FASTER] < values[action] - 1.0  # hitting the car costs the rest of the episode


def test_equal_plans_resolve_to_idle_first():
    values = torch.tensor([[5.0, 5.0, 4.0, 5.0, 1.0], [2.0, 1.0, 3.0, 3.0, 0.0]])
    assert best_actions(values).tolist() == [IDLE, FASTER]  # IDLE beats equal FASTER and LANE_LEFT; FASTER beats LANE_RIGHT
    longitudinal = ("SLOWER", "IDLE", "FASTER")  # intersection's actions: the order goes by name, not index
    assert best_actions(torch.tensor([[2.0, 2.0, 2.0], [3.0, 1.0, 3.0]]), longitudinal).tolist() == [1, 2]


def test_it_drives_faster_than_idling_without_crashing():
    """Eight training-seed episodes: the teacher never crashes and goes faster than always-IDLE."""
    speeds = {}
    for policy in ("teacher", "idle"):
        sim = highway(8, first_seed=100)
        teacher = LookaheadTeacher(sim)
        alive = torch.ones(8, dtype=torch.bool)
        crashed = torch.zeros(8, dtype=torch.bool)
        speed_sum = torch.zeros(8)
        for _ in range(sim.max_steps):
            actions = teacher.act() if policy == "teacher" else torch.full((8,), IDLE)
            result = sim.step(actions)
            speed_sum += alive * sim.state.speed[:, 0]
            crashed |= alive & result.terminated
            alive &= ~(result.terminated | result.truncated)
        if policy == "teacher":
            assert not crashed.any()
        speeds[policy] = float(speed_sum.sum() / (sim.max_steps * 8))
    assert speeds["teacher"] > speeds["idle"] + 2.0  # [m/s]


@pytest.mark.parametrize(
    "kwargs", [{"depth": 3, "horizon": 2}, {"depth": 0}, {"gamma": 1.0}, {"min_headway_s": -0.5}, {"headway_penalty": -1.0},
               {"min_ttc_s": -1.0}, {"ttc_penalty": -0.5}, {"goal_value": -1.0}, {"sight": "lidar"},
               {"plan_hz": 0}, {"plan_hz": 6},  # highway: 1 Hz decisions, 5 Hz physics
               {"routes": "guessed"}, {"routes": "psychic"}, {"route_guesses": 0}]  # highway's routes are no choice
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        LookaheadTeacher(highway(1), **kwargs)


def test_plans_at_the_scenarios_own_frequency_unless_told():
    sim = highway(2, first_seed=5)
    assert planning_scenario(sim.scenario, None) is sim.scenario
    assert planning_scenario(sim.scenario, 5) == sim.scenario  # highway simulates at 5 Hz already
    assert torch.equal(LookaheadTeacher(sim, plan_hz=5).action_values(), LookaheadTeacher(sim).action_values())


def test_a_coarser_plan_simulates_fewer_substeps_of_a_longer_step():
    """intersection simulates at 15 Hz; a 5 Hz planner takes 5 physics steps of 0.2 s per decision,
    and the simulator it advises keeps its own 15."""
    from envs.fast.road_sim import FastRoad

    sim = FastRoad(load_scenario("intersection"), 2, render=False)
    sim.reset(seeds=torch.tensor([7, 8]))
    teacher = LookaheadTeacher(sim, depth=1, horizon=2, plan_hz=5)
    values = teacher.action_values()
    assert values.shape == (2, 3) and torch.isfinite(values).all()
    planner = teacher._planners["rest"]
    assert (planner.substeps, planner.dt) == (5, pytest.approx(0.2))
    assert (sim.substeps, sim.dt) == (15, pytest.approx(1 / 15))
    assert planner.config["duration"] == sim.config["duration"]


def intersection(batch: int) -> "FastRoad":
    """`batch` intersection envs two IDLE steps in: vehicles wait on the approaches, undecided."""
    from envs.fast.road_sim import FastRoad

    sim = FastRoad(load_scenario("intersection"), batch, render=False)
    sim.reset(seeds=torch.arange(batch))
    for _ in range(2):
        sim.step(torch.ones(batch, dtype=torch.long))
    return sim


def test_a_route_guessing_teacher_averages_its_plans_over_the_guesses():
    """routes="guessed": each of its `route_guesses` plans is the known-routes plan of a copy whose
    undecided vehicles were rerouted by FastRoad.guess_routes with the teacher's generator."""
    sim = intersection(4)
    before = sim.state.clone()
    guessing = LookaheadTeacher(sim, depth=1, horizon=2, plan_hz=5, routes="guessed", route_guesses=3)
    values = guessing.action_values()
    assert torch.equal(sim.state.vehicles.route_edge, before.vehicles.route_edge)  # the envs keep their routes
    generator = torch.Generator().manual_seed(0)
    plans = []
    for _ in range(3):
        guessed = before.clone()
        sim.guess_routes(guessed, torch.rand(guessed.present.shape, generator=generator, dtype=torch.float64))
        sim.state = guessed
        plans.append(LookaheadTeacher(sim, depth=1, horizon=2, plan_hz=5).action_values())
    assert torch.allclose(values, torch.stack(plans).mean(dim=0))
    assert not torch.equal(plans[0], plans[1])  # the guesses matter to some plan


def test_a_route_guessing_teacher_does_not_read_the_routes_it_cannot_see():
    """Rerouting the undecided vehicles of the real envs changes nothing the guessing teacher says,
    though it changes what the teacher that knows the routes says."""
    sim = intersection(4)
    values = LookaheadTeacher(sim, depth=1, horizon=2, plan_hz=5, routes="guessed", route_guesses=2).action_values()
    knowing = LookaheadTeacher(sim, depth=1, horizon=2, plan_hz=5).action_values()
    rerouted = sim.state.clone()
    sim.guess_routes(rerouted, torch.full(rerouted.present.shape, 0.9, dtype=torch.float64))  # all to the third branch on
    assert not torch.equal(rerouted.vehicles.route_edge, sim.state.vehicles.route_edge)
    sim.state = rerouted
    assert not torch.equal(LookaheadTeacher(sim, depth=1, horizon=2, plan_hz=5).action_values(), knowing)
    assert torch.equal(LookaheadTeacher(sim, depth=1, horizon=2, plan_hz=5, routes="guessed",
                                        route_guesses=2).action_values(), values)


def test_a_runs_training_section_asks_for_guessed_routes():
    from types import SimpleNamespace

    from agents.teacher import teacher_for

    training = SimpleNamespace(teacher_depth=1, teacher_horizon=2, teacher_min_ttc_s=3.0, teacher_sight="all",
                               teacher_plan_hz=5, teacher_routes="guessed", teacher_route_guesses=3)
    assert teacher_for(intersection(1), training).route_guesses == 3
    assert teacher_for(intersection(1), SimpleNamespace(**{**vars(training), "teacher_routes": "known"})).route_guesses is None


def test_the_camera_frames_extent_in_meters():
    highway_camera = load_scenario("highway").camera.bev  # 48 x 96 px at 1.5 px/m, the ego at 0.7 from the top
    assert (highway_camera.meters_ahead, highway_camera.meters_behind, highway_camera.meters_to_each_side) == \
        pytest.approx((44.8, 19.2, 16.0))
    two_way_camera = load_scenario("two-way").camera.bev  # 0.75 px/m, the ego at 0.85
    assert (two_way_camera.meters_ahead, two_way_camera.meters_behind, two_way_camera.meters_to_each_side) == \
        pytest.approx((108.8, 19.2, 32.0))


@pytest.mark.parametrize("heading", [0.0, 2.0])  # [rad] the ego's; the frame turns with it
def test_hide_unseen_keeps_the_vehicles_inside_the_frame(heading):
    """Vehicles just inside and just outside each edge of highway's frame (44.8 m ahead, 19.2 m behind,
    16 m to each side), placed in the ego's frame and then turned with its heading."""
    state = highway(1).state
    offsets = [(44.0, 0.0), (45.6, 0.0), (-18.4, 0.0), (-20.0, 0.0), (0.0, 15.2), (0.0, -15.2), (0.0, 16.8),
               (10.0, -16.8)]  # [m] (along, across) the ego's heading
    expected = [True, False, True, False, True, True, False, False]
    cos, sin = math.cos(heading), math.sin(heading)
    state.present[0, :] = False
    state.present[0, : len(offsets) + 1] = True
    state.heading[0, 0] = heading
    for column, (along, across) in enumerate(offsets, start=1):
        state.x[0, column] = state.x[0, 0] + along * cos - across * sin
        state.y[0, column] = state.y[0, 0] + along * sin + across * cos
    hide_unseen(state, load_scenario("highway").camera.bev)
    assert state.present[0, 1 : len(offsets) + 1].tolist() == expected
    assert state.present[0, 0]  # the ego


@pytest.mark.parametrize("gap_m, seen", [(60.0, False), (30.0, True)])
def test_a_camera_sighted_teacher_plans_without_the_vehicles_outside_the_frame(gap_m, seen):
    """A slow car 60 m ahead lies beyond the frame's 44.8 m: planning with the camera's sight equals
    planning on a road without it, and differs from seeing it. At 30 m it is seen: sight changes nothing."""
    sim = highway(1)
    only_a_slow_car_ahead(sim, gap_m)
    camera = LookaheadTeacher(sim, sight="camera").action_values()
    everything = LookaheadTeacher(sim).action_values()
    sim.state.present[0, 1] = False
    empty_road = LookaheadTeacher(sim).action_values()
    assert not torch.equal(everything, empty_road)  # the car matters to the plan
    assert torch.equal(camera, everything if seen else empty_road)


def test_the_teacher_bench_reports_one_evaluation_episode():
    from agents.ceiling import teacher_ceiling

    report = teacher_ceiling("highway", episodes=1)
    metrics = report.metrics
    assert report.first_seed == load_scenario("highway").evaluation.first_seed
    assert metrics["collision_rate"].mean == 0.0 and metrics["length"].mean == 30
    # above 30 steps x 2/3: what an episode at 20 m/s (the bottom of the rewarded speed range) in the left lane earns
    assert metrics["return"].mean > 20.0
