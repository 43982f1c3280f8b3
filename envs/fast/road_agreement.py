"""Do FastRoad's episodes end like highway-env's? Outcome statistics of a scenario on both simulators.

FastRoad draws its spawns with its own counter-based random numbers, so an episode seed does not
give highway-env's episode (tests/envs/fast/test_road_sim.py checks the step rules exactly from
copied states instead). What can be compared over many episodes is how they end: the same
policy, here one fixed action per step drawn from (episode seed, step) so that both simulators
get the same sequences, plays N episodes on each, and the outcomes (collision rate, return,
length, the ego's final x, the distance it drove, whether it reached the scenario's goal: 0 where
there is none) are set side by side with 95 % intervals (issue 21, deliverable 1). Any scenario
FastRoad supports (merge, roundabout, two-way, u-turn, exit, intersection).

    python -m envs.fast.road_agreement --scenario merge --episodes 1000
    python -m envs.fast.road_agreement --scenario roundabout --episodes 300
    python -m envs.fast.road_agreement --scenario two-way --episodes 300
    python -m envs.fast.road_agreement --scenario u-turn --episodes 300
    python -m envs.fast.road_agreement --scenario exit --episodes 300
    python -m envs.fast.road_agreement --scenario intersection --episodes 1000
"""

from __future__ import annotations

import argparse
import time
import zlib

import numpy as np
import torch

from envs.fast.road_sim import FastRoad
from envs.progress import track
from envs.system import set_threads
from scenarios import Scenario, load_scenario

FIRST_SEED = 2_000_000_000  # away from training and evaluation seeds
OUTCOMES = ("collided", "return", "length", "final_x", "distance", "goal")  # per episode; distance: the safety
# signal [m]; goal: envs.goals' goal reached at the end (info["goal_reached"]; 0 without one)


def policy_actions(seed: int, steps: int, actions: int) -> np.ndarray:
    """(steps,) the fixed random action sequence of one episode, the same on both simulators."""
    return np.random.default_rng(zlib.crc32(f"agreement/{seed}".encode())).integers(actions, size=steps)


def highway_env_outcomes(scenario: Scenario, seeds: list[int]) -> dict[str, np.ndarray]:
    """Per-episode (collided, return, length, final x, distance) of highway-env itself (DrivingEnv without frames' cost
    of corruptions), one episode per seed."""
    from envs.driving_env import DrivingEnv

    env = DrivingEnv(scenario, corruptions=False)
    rows = []
    for seed in track(seeds, "highway-env", unit="episodes"):
        env.reset(seed=seed)
        sequence = policy_actions(seed, scenario.episode_steps, int(env.action_space.n))
        total, steps, done, crashed = 0.0, 0, False, False
        while not done:
            _, reward, terminated, truncated, info = env.step(int(sequence[steps]))
            total, steps = total + reward, steps + 1
            crashed |= bool(info["safety"]["crashed"])
            done = terminated or truncated
        ego = env.sim.vehicle
        rows.append((float(crashed), total, steps, float(ego.position[0]), float(info["safety"]["distance"]),
                     float(bool(info.get("goal_reached")))))
    return dict(zip(OUTCOMES, np.array(rows).T))


def fast_outcomes(scenario: Scenario, seeds: list[int], batch: int = 256, frames: bool = True) -> dict[str, np.ndarray]:
    """The same on FastRoad: episodes `batch` at a time, each row's first episode (camera frames drawn
    unless `frames` is False, as DrivingEnv draws them)."""
    rows = []
    for start in track(range(0, len(seeds), batch), "FastRoad", unit="batches"):
        chunk = seeds[start : start + batch]
        sim = FastRoad(scenario, len(chunk), render=frames, corruptions=False)
        sim.reset(seeds=torch.tensor(chunk))
        count = int(sim.road.action_table.shape[0])  # the scenario's discrete actions
        actions = torch.tensor(np.stack([policy_actions(seed, scenario.episode_steps, count) for seed in chunk]))
        playing = torch.ones(len(chunk), dtype=torch.bool)
        total = torch.zeros(len(chunk), dtype=torch.float64)
        length = torch.zeros(len(chunk), dtype=torch.long)
        crashed = torch.zeros(len(chunk), dtype=torch.bool)
        final_x = torch.zeros(len(chunk), dtype=torch.float64)
        distance = torch.zeros(len(chunk), dtype=torch.float64)
        goal = torch.zeros(len(chunk), dtype=torch.float64)
        for step in range(scenario.episode_steps):
            result = sim.step(actions[:, step])
            total += torch.where(playing, result.reward.double(), 0.0)
            length += playing.long()
            crashed |= playing & result.terminated & sim.state.crashed[:, 0]
            done = playing & (result.terminated | result.truncated)
            final_x = torch.where(done, sim.state.vehicles.x[:, 0].double(), final_x)
            distance = torch.where(done, result.signals["distance"].double(), distance)
            reached = sim.goal_reached()
            if reached is not None:
                goal = torch.where(done, reached.double(), goal)
            playing &= ~done
            if not playing.any():
                break
        rows += list(zip(crashed.double().tolist(), total.tolist(), length.tolist(), final_x.tolist(),
                         distance.tolist(), goal.tolist()))
    return dict(zip(OUTCOMES, np.array(rows).T))


def interval(values: np.ndarray) -> str:
    """mean [95 % Student-t interval]."""
    from scipy import stats

    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():.3f} [{values.mean() - half:.3f}, {values.mean() + half:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="merge")
    parser.add_argument("--episodes", type=int, default=1000)
    args = parser.parse_args()
    if args.episodes < 2:
        parser.error("--episodes must be at least 2")
    set_threads(1)
    scenario = load_scenario(args.scenario)
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.episodes))
    began = time.perf_counter()
    fast = fast_outcomes(scenario, seeds)
    fast_s = time.perf_counter() - began
    began = time.perf_counter()
    reference = highway_env_outcomes(scenario, seeds)
    reference_s = time.perf_counter() - began
    print(f"{scenario.name}: {args.episodes} episodes per simulator, a fixed random action sequence per seed")
    print("| outcome | highway-env | FastRoad |")
    print("| --- | --- | --- |")
    for key in OUTCOMES:
        print(f"| {key} | {interval(reference[key])} | {interval(fast[key])} |")
    fast_steps, reference_steps = fast["length"].sum(), reference["length"].sum()
    print(f"highway-env (DrivingEnv, camera frames): {reference_steps:,.0f} env steps in {reference_s:.0f} s, "
          f"{reference_steps / reference_s:,.0f} env steps/s; FastRoad (256 envs at a time, camera frames): "
          f"{fast_steps:,.0f} in {fast_s:.0f} s, {fast_steps / fast_s:,.0f} env steps/s (finished rows idle until "
          f"their batch ends); one thread")


if __name__ == "__main__":
    main()
