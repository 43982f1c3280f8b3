"""The batched simulator and its SB3 VecEnv: shapes, seeding, partial resets, errors, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.fast import supported_scenarios
from envs.fast.gym_env import FastDrivingEnv
from envs.fast.rng import integers, uniform
from envs.fast.simulator import FastHighway, UnsupportedScenario
from envs.fast.vec_env import FastVecEnv
from envs.registration import make_env
from scenarios import load_scenario
from scenarios.schema import TRAINING_SEED_LIMIT

HIGHWAY = load_scenario("highway")


def test_random_draws_depend_only_on_seed_stream_and_index():
    seeds = torch.tensor([5, 7, 5, 2**40 + 5])
    draws = uniform(seeds, stream=1, count=6)
    assert draws.shape == (4, 6) and draws.dtype == torch.float64
    assert ((draws >= 0) & (draws < 1)).all()
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[3])  # the high 32 bits of the seed count
    assert torch.equal(uniform(seeds[1:2], 1, 6), draws[1:2])  # independent of the batch
    assert not torch.equal(uniform(seeds, 2, 6), draws)  # streams are independent
    values = integers(torch.arange(2000), 0, torch.zeros(2000), TRAINING_SEED_LIMIT)
    assert values.min() >= 0 and values.max() < TRAINING_SEED_LIMIT and values.unique().numel() == 2000


def test_step_shapes_and_value_ranges():
    sim = FastHighway(HIGHWAY, 4)
    sim.reset(seeds=torch.arange(4))
    observation = sim.observation()
    assert observation.shape == (4, 9, 96, 48) and observation.dtype == torch.uint8
    result = sim.step(torch.tensor([0, 1, 3, 4]))
    assert result.reward.shape == (4,) and ((result.reward >= 0) & (result.reward <= 1)).all()
    assert result.terminated.dtype == torch.bool and result.truncated.dtype == torch.bool
    for name, value in result.signals.items():
        assert value.shape == (4,), name
    assert (result.signals["speed"] > 15).all() and (result.signals["distance"] > 15).all()
    # every spawned vehicle is on the road, ahead of the ego, in a lane
    state = sim.state
    assert (state.lane >= 0).all() and (state.lane < 3).all()
    assert (state.x[:, 1:] > state.x[:, :1]).all()


def test_same_seeds_same_episodes_wherever_the_env_sits_in_the_batch():
    actions = torch.tensor([1, 3, 4, 0, 2, 1, 3])
    batch = FastHighway(HIGHWAY, 3)
    batch.reset(seeds=torch.tensor([11, 12, 13]))
    alone = FastHighway(HIGHWAY, 1)
    alone.reset(seeds=torch.tensor([12]))
    for action in actions:
        batch.step(action.repeat(3))
        alone.step(action.repeat(1))
    assert torch.equal(batch.observation()[1], alone.observation()[0])
    assert torch.allclose(batch.state.x[1], alone.state.x[0])
    assert not torch.equal(batch.observation()[0], batch.observation()[1])


def test_reset_touches_only_the_given_envs():
    sim = FastHighway(HIGHWAY, 3)
    sim.reset(seeds=torch.tensor([1, 2, 3]))
    for _ in range(3):
        sim.step(torch.ones(3, dtype=torch.long))
    before = sim.state.clone()
    frames = sim.observation().clone()
    sim.reset(torch.tensor([1]), torch.tensor([99]))
    for keep in (0, 2):
        assert torch.equal(sim.state.x[keep], before.x[keep]) and torch.equal(sim.observation()[keep], frames[keep])
    assert int(sim.steps[1]) == 0 and int(sim.steps[0]) == 3
    fresh = FastHighway(HIGHWAY, 1)
    fresh.reset(seeds=torch.tensor([99]))
    assert torch.equal(sim.state.x[1], fresh.state.x[0])
    assert torch.equal(sim.observation()[1], fresh.observation()[0])  # the stack holds the first frame 3 times


def test_frame_stack_shifts_and_leaves_the_last_observation_untouched():
    """Two frame stacks are used in turn: a step shifts the frames by one and must not
    overwrite the observation handed out before it."""
    sim = FastHighway(HIGHWAY, 2)
    sim.reset(seeds=torch.tensor([1, 2]))
    handed_out = sim.observation()
    for _ in range(5):
        kept = handed_out.clone()
        sim.step(torch.ones(2, dtype=torch.long))
        assert torch.equal(handed_out, kept)
        observation = sim.observation()
        assert torch.equal(observation[:, :-3], kept[:, 3:])  # older frames shift by one
        assert torch.equal(observation[:, -3:], sim._render(sim.state))  # the newest is the current state
        handed_out = observation
    rows = torch.tensor([1])
    copied = sim.observations_of(rows)  # what terminal observations are made of
    assert torch.equal(copied, sim.observation()[rows])
    copied.zero_()
    assert sim.observation()[1].any()  # a copy, not a view


def test_vec_env_observations_stay_valid_through_the_next_step():
    """SB3 stores the previous observation after stepping: that step, resets included, must not change it."""
    env = FastVecEnv(HIGHWAY, 3)
    env.seed(0)
    previous = env.reset()
    for _ in range(12):
        kept = previous.copy()
        observation, _, _, _ = env.step(np.full(3, 3))  # crashes: resets happen too
        assert np.array_equal(previous, kept)
        previous = observation


def test_vec_env_auto_resets_with_sb3_terminal_observations():
    env = FastVecEnv(HIGHWAY, 4)
    env.seed(5)
    observation = env.reset()
    assert observation.shape == (4, 9, 96, 48) and observation.dtype == np.uint8
    assert [info["episode_seed"] for info in env.reset_infos] == [5, 6, 7, 8]
    finished, steps = 0, 0
    while finished < 6:
        observation, reward, done, infos = env.step(np.full(4, 3))  # always faster: crashes and time-outs
        steps += 1
        assert reward.dtype == np.float32 and done.dtype == bool
        for i in np.flatnonzero(done):
            finished += 1
            terminal = infos[i]["terminal_observation"]
            assert terminal.shape == (9, 96, 48) and not np.array_equal(terminal, observation[i])
            assert infos[i]["TimeLimit.truncated"] == (not infos[i]["safety"]["crashed"])
            assert (observation[i][:3] == observation[i][6:]).all()  # a fresh episode: the stack is one frame
        assert all("safety" in info and "episode_seed" in info for info in infos)
    assert steps <= 4 * 30
    with pytest.raises(AttributeError, match="per-env method"):
        env.env_method("render")


def test_training_episode_seeds_stay_below_the_evaluation_seeds():
    env = FastVecEnv(HIGHWAY, 8)
    env.seed(0)
    env.reset()
    seeds = set()
    for _ in range(40):
        _, _, done, infos = env.step(np.full(8, 3))
        seeds.update(infos[i]["episode_seed"] for i in np.flatnonzero(done))
    assert seeds and max(seeds) < TRAINING_SEED_LIMIT


def test_single_env_matches_driving_env_api():
    env = make_env("highway", backend="fast")
    assert isinstance(env, FastDrivingEnv)
    first, info = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    assert np.array_equal(first, again) and info["episode_seed"] == 3
    assert set(info["safety"]) >= {"crashed", "ttc", "headway", "gap", "lane_id", "speed", "distance"}
    assert info["ground_truth"]["presence"].shape == (8,)
    observation, reward, terminated, truncated, info = env.step(1)
    assert observation.shape == env.observation_space.shape and 0 <= reward <= 1
    assert set(info["rewards"]) == {"collision_reward", "right_lane_reward", "high_speed_reward", "on_road_reward"}


def test_unsupported_scenarios_are_refused_with_the_supported_list(unsupported_scenario):
    supported = ["exit", "highway", "highway-dense", "highway-noisy", "intersection", "merge", "roundabout", "two-way",
                 "u-turn"]
    with pytest.raises(UnsupportedScenario, match=f"Supported scenarios: {', '.join(supported)}$"):
        make_env(unsupported_scenario, backend="fast")
    assert supported_scenarios() == supported


def test_fast_highway_refuses_merge_naming_its_own_scenarios():
    with pytest.raises(UnsupportedScenario, match="Supported scenarios: highway, highway-dense, highway-noisy$"):
        FastHighway(load_scenario("merge"), 2)


def test_front_camera_is_refused():
    with pytest.raises(UnsupportedScenario, match="camera"):
        make_env("highway", backend="fast", camera="front")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_give_the_same_episodes():
    results = []
    for device in ("cpu", "cuda"):
        sim = FastHighway(HIGHWAY, 8, device=device, dtype=torch.float64)
        sim.reset(seeds=torch.arange(8))
        for action in (1, 3, 3, 0, 4, 2, 1, 1):
            result = sim.step(torch.full((8,), action))
        results.append((sim.state.x.cpu(), result.reward.cpu(), sim.observation().cpu()))
    (x_cpu, reward_cpu, frames_cpu), (x_gpu, reward_gpu, frames_gpu) = results
    assert torch.allclose(x_cpu, x_gpu, atol=1e-6) and torch.allclose(reward_cpu, reward_gpu, atol=1e-9)
    assert (frames_cpu.int() - frames_gpu.int()).abs().float().mean() < 0.5


def test_bench_rows_are_consistent_measurements(unsupported_scenario):
    from envs.fast.bench import bench_fast

    rows = bench_fast(["highway"], batch_sizes=[2, 8], steps=1, reference_steps=3)
    assert [(row["scenario"], row["batch"], row["vehicles"]) for row in rows] == [("highway", 2, 21), ("highway", 8, 21)]
    for row in rows:
        assert row["fast_sps"] > 0 and row["sim_only_sps"] > 0 and row["highway_env_sps"] > 0
        assert row["speedup"] == pytest.approx(row["fast_sps"] / row["highway_env_sps"])
        assert row["highway_env_sps"] == rows[0]["highway_env_sps"]  # one reference per scenario
    with pytest.raises(UnsupportedScenario):
        bench_fast([str(unsupported_scenario)], batch_sizes=[2], steps=1, reference_steps=1)


def test_rule_based_policies_see_highway_envs_available_actions():
    from envs.fast.gym_env import FastDrivingEnv
    from envs.policies import action_indexes

    env = FastDrivingEnv("highway")
    env.reset(seed=5)
    indexes = action_indexes(env)
    assert indexes == {"LANE_LEFT": 0, "IDLE": 1, "LANE_RIGHT": 2, "FASTER": 3, "SLOWER": 4}
    state = env.sim.state
    state.lane[0, 0], state.ego_speed_index[0] = 0, len(env.sim.target_speeds) - 1  # leftmost lane, top speed
    assert sorted(env.action_type.get_available_actions()) == [indexes["IDLE"], indexes["LANE_RIGHT"], indexes["SLOWER"]]
    state.lane[0, 0], state.ego_speed_index[0] = env.sim.traffic.lanes_count - 1, 0  # rightmost lane, lowest speed
    assert sorted(env.action_type.get_available_actions()) == [indexes["LANE_LEFT"], indexes["IDLE"], indexes["FASTER"]]
