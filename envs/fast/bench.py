"""`python run.py bench env --backend fast`: the batched simulator's steps/s against highway-env.

Both are measured in one run, on the same scenario and one PyTorch thread unless asked
otherwise: highway-env with our camera (DrivingEnv, one env) and the batched simulator of the
scenario (FastHighway or FastRoad) at each batch size B, with camera frames and without, random actions, finished envs reset as a VecEnv would.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from envs.fast.simulators import check_supported, make_simulator
from envs.fast.spawn_reserve import episodes_ahead
from scenarios import load_scenario

WARMUP_STEPS = 2


def highway_env_steps_per_s(scenario, steps: int, seed: int) -> float:
    """DrivingEnv (highway-env + our camera + signals) steps per wall second, random actions."""
    from envs.driving_env import DrivingEnv

    env = DrivingEnv(scenario)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    began = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            env.reset(seed=int(rng.integers(1 << 30)))
    elapsed = time.perf_counter() - began
    env.close()
    return steps / elapsed


def fast_steps_per_s(scenario, batch: int, steps: int, seed: int, device: str, render: bool) -> float:
    """Batched simulator (FastHighway or FastRoad) env steps (B per call) per wall second, random
    actions, auto-reset."""
    sim = make_simulator(scenario, batch, device=device, render=render)
    generator = torch.Generator().manual_seed(seed)
    sim.reset(seeds=torch.arange(batch) + seed * batch)
    next_seed = seed * batch + batch
    ahead = batch * episodes_ahead(batch)

    def one_step() -> None:
        nonlocal next_seed
        result = sim.step(torch.randint(len(sim.action_indexes), (batch,), generator=generator))
        finished = (result.terminated | result.truncated).nonzero(as_tuple=True)[0]
        if finished.numel():  # seeds in order, the next ones spawned ahead as FastVecEnv's are
            following = next_seed + finished.numel()
            sim.reset(finished, torch.arange(next_seed, following),
                      upcoming=lambda: torch.arange(following, following + ahead))
            next_seed += finished.numel()

    for _ in range(WARMUP_STEPS):
        one_step()
    _synchronize(sim.device)
    began = time.perf_counter()
    for _ in range(steps):
        one_step()
    _synchronize(sim.device)
    return batch * steps / (time.perf_counter() - began)


def _vehicles(scenario, device: str) -> int:
    """Columns of the scenario's batched state: the ego and every other road object."""
    return int(make_simulator(scenario, 1, device=device, render=False).state.present.shape[1])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_fast(
    scenarios: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (256, 1024, 4096),
    steps: int = 20,
    reference_steps: int = 300,
    seed: int = 0,
    device: str = "cpu",
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Rows: scenario, vehicles, batch, fast_sps (with frames), sim_only_sps, highway_env_sps, speedup,
    camera_us (what the frames add to one env step [µs])."""
    from envs.system import resolve_device

    device = str(resolve_device(device))  # "auto" -> cuda when present; a clear error for cuda without it
    names = list(scenarios) if scenarios else ["highway", "highway-dense"]
    loaded = [load_scenario(name) for name in names]
    for scenario in loaded:
        check_supported(scenario)
    console = console or Console()
    rows = []
    for scenario in loaded:
        reference = highway_env_steps_per_s(scenario, reference_steps, seed)
        for batch in batch_sizes:
            with_frames = fast_steps_per_s(scenario, batch, steps, seed, device, render=True)
            sim_only = fast_steps_per_s(scenario, batch, steps, seed, device, render=False)
            rows.append({
                "scenario": scenario.name, "vehicles": _vehicles(scenario, device),
                "batch": batch, "fast_sps": with_frames, "sim_only_sps": sim_only,
                "highway_env_sps": reference, "speedup": with_frames / reference,
                "camera_us": 1e6 * (1 / with_frames - 1 / sim_only),  # frames' share of a step [µs/env step]
            })
    table = Table(title=f"fast backend vs highway-env + camera ({device}, {torch.get_num_threads()} thread(s))")
    for column in ("scenario", "vehicles", "B", "fast steps/s (frames)", "fast steps/s (no frames)",
                   "frames µs/step", "highway-env steps/s", "speed-up"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["scenario"], str(row["vehicles"]), str(row["batch"]), f"{row['fast_sps']:,.0f}",
                      f"{row['sim_only_sps']:,.0f}", f"{row['camera_us']:.0f}", f"{row['highway_env_sps']:.1f}", f"{row['speedup']:,.0f}x")
    console.print(table)
    return rows
