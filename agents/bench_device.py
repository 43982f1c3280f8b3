"""`python -m agents.bench_device`: PPO training env steps/s on the fast backend, today's host path
(`CachedFeaturesPPO` on `VecMonitor(FastVecEnv)`, what `agents.runs.build_agent` builds) against
the device-resident path (`DevicePPO`), and how many kernels (CUDA) or aten ops (CPU) each spends.

    python -m agents.bench_device --device cuda --n-envs 256 1024 4096 --out bench-device.json

For each number of envs B and each path: one warm-up PPO iteration (a rollout of n_steps per env,
then the update), then `--steps` env steps per env (whole rollouts) are timed, synchronising
CUDA before the clock is read. Hyperparameters are the `fast:` block of agents/defaults.yaml for
`highway` (net_arch [256, 256], the feature map, batch 512, 10 epochs), `--n-steps` overriding
n_steps. Counts come from torch.profiler, per call: one simulator step (all B envs, host
conversions included: what the trainer calls), one policy forward (features + heads + sampling)
and one PPO minibatch update (an epoch's update divided by its minibatches; on the host path that
includes re-running the student over the buffer). "host infos ms/step" is what the device path
still spends on the host per step: the packed copy of the step's columns and B info dicts.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecMonitor

from agents.cached_features import CachedFeaturesPPO
from agents.config import load_agent_config
from agents.device_rollout import DevicePPO, act
from agents.policy import PerceptionPolicy
from agents.runs import policy_kwargs
from envs.fast.vec_env import FastVecEnv
from envs.system import resolve_device, set_threads
from perception.extractor import DEFAULT_STUDENT
from scenarios import load_scenario

PATHS = {"host": CachedFeaturesPPO, "device": DevicePPO}  # today's path (build_agent) and the new one


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RolloutClock(BaseCallback):
    """Wall seconds spent collecting rollouts (the rest of `learn` is the update)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.collecting = 0.0
        self._began = 0.0

    def _on_rollout_start(self) -> None:
        synchronize(self.device)
        self._began = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        synchronize(self.device)
        self.collecting += time.perf_counter() - self._began


def build(path: str, n_envs: int, n_steps: int, device: torch.device, seed: int = 0):
    """The model of `path` on VecMonitor(FastVecEnv(highway, n_envs)), with the fast defaults."""
    config = load_agent_config("highway", None, {}, backend="fast")
    params = {name: getattr(config.ppo, name) for name in config.ppo.__dataclass_fields__}
    params["n_steps"] = n_steps
    env = VecMonitor(FastVecEnv(load_scenario("highway"), n_envs, device=device))
    return PATHS[path](PerceptionPolicy, env, policy_kwargs=policy_kwargs(config, DEFAULT_STUDENT), seed=seed,
                       device=device, verbose=0, **params)


def count_ops(device: torch.device, work: Callable[[], Any]) -> int:
    """CUDA kernels launched by `work` (on CUDA), or aten ops called (on the CPU, nested ones too)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        work()
        synchronize(device)
    events = profiler.events()
    if device.type == "cuda":  # device-side activities: kernels, and memcpy / memset
        on_device = sum(1 for event in events if event.device_type == torch.autograd.DeviceType.CUDA)
        return on_device or sum(len(event.kernels) for event in events)  # older profilers attach them to CPU events
    return sum(1 for event in events if event.name.startswith("aten::"))


def op_counts(model, path: str, device: torch.device) -> dict[str, float]:
    """Kernels (CUDA) or aten ops (CPU) of one simulator step, one policy forward, one minibatch update."""
    env = model.get_env()
    fast = env.venv
    policy = model.policy
    observations = fast.observe_tensor()
    with torch.no_grad():
        actions, _, _ = act(policy, policy.extract_features(observations.to(model.device)))
    if path == "host":
        host_actions = actions.cpu().numpy()
        step = lambda: env.step(host_actions)  # noqa: E731
        forward = lambda: policy(obs_as_tensor(fast.observe(), model.device))  # noqa: E731
    else:
        def step() -> None:
            fast.step_async_on_device(actions)
            env.step_wait()

        forward = lambda: act(policy, policy.extract_features(observations.to(model.device)))  # noqa: E731
    counts = {"sim_step": count_ops(device, step)}
    if path == "device":  # what the host still does per step: one packed copy, then B info dicts
        synchronize(device)
        began = time.perf_counter()
        for _ in range(5):
            fast.host_results(fast.last_step)
        counts["host_infos_ms"] = (time.perf_counter() - began) / 5 * 1e3
    observations = fast.observe_tensor()  # the step moved the frame stack on
    with torch.no_grad():
        counts["policy_forward"] = count_ops(device, forward)
    epochs, model.n_epochs = model.n_epochs, 1  # one epoch: buffer_size * n_envs / batch_size minibatches
    minibatches = math.ceil(model.n_steps * model.n_envs / model.batch_size)
    try:
        counts["minibatch_update"] = count_ops(device, model.train) / minibatches
    finally:
        model.n_epochs = epochs
    return counts


def measure(path: str, n_envs: int, n_steps: int, steps: int, device: torch.device, profile_ops: bool) -> dict[str, Any]:
    model = build(path, n_envs, n_steps, device)
    model.learn(total_timesteps=n_steps * n_envs)  # warm-up: one rollout and one update
    iterations = max(1, math.ceil(steps / n_steps))
    clock = RolloutClock(device)
    synchronize(device)
    began = time.perf_counter()
    model.learn(total_timesteps=iterations * n_steps * n_envs, reset_num_timesteps=False, callback=clock)
    synchronize(device)
    elapsed = time.perf_counter() - began
    timed_steps = iterations * n_steps * n_envs
    result = {
        "path": path, "n_envs": n_envs, "n_steps": n_steps, "iterations": iterations, "env_steps": timed_steps,
        "seconds": elapsed, "env_steps_per_s": timed_steps / elapsed,
        "rollout_env_steps_per_s": timed_steps / clock.collecting, "update_seconds": elapsed - clock.collecting,
        "buffer": type(model.rollout_buffer).__name__,
    }
    if profile_ops:
        result["ops_per_call"] = op_counts(model, path, device)
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    del model
    return result


def run(device_name: str, n_envs: Sequence[int], steps: int | None, n_steps: int | None, out: Path | None,
        host_max_envs: int, profile_ops: bool = True, threads: int | None = None) -> list[dict[str, Any]]:
    device = resolve_device(device_name)
    warnings.filterwarnings("ignore", message="You have specified a mini-batch size")  # small B in dry runs
    if threads is not None:
        set_threads(threads)
    defaults = load_agent_config("highway", None, {}, backend="fast").ppo
    n_steps = n_steps or defaults.n_steps
    steps = steps or 2 * n_steps
    console = Console()
    results = []
    for batch in n_envs:
        for path in PATHS:
            if path == "host" and batch > host_max_envs:
                results.append({"path": path, "n_envs": batch, "skipped": f"n_envs > --host-max-envs {host_max_envs}"})
                continue
            console.log(f"{path} path, {batch} envs on {device}")
            results.append(measure(path, batch, n_steps, steps, device, profile_ops))
    table = Table(title=f"PPO on the fast backend, {device} ({torch.get_num_threads()} threads), "
                        f"n_steps {n_steps}, batch {defaults.batch_size}, {defaults.n_epochs} epochs")
    unit = "kernels" if device.type == "cuda" else "aten ops"
    for column in ("envs", "path", "env steps/s", "x host", "rollout steps/s", "update s",
                   f"{unit}/sim step", f"{unit}/forward", f"{unit}/minibatch", "host infos ms/step"):
        table.add_column(column, justify="right")
    host_speed = {r["n_envs"]: r["env_steps_per_s"] for r in results if r["path"] == "host" and "skipped" not in r}
    for r in results:
        if "skipped" in r:
            table.add_row(str(r["n_envs"]), r["path"], "skipped", *[""] * 7)
            continue
        ops = r.get("ops_per_call", {})
        speedup = r["env_steps_per_s"] / host_speed[r["n_envs"]] if r["n_envs"] in host_speed else None
        table.add_row(
            str(r["n_envs"]), r["path"], f"{r['env_steps_per_s']:,.0f}", "" if speedup is None else f"{speedup:.2f}",
            f"{r['rollout_env_steps_per_s']:,.0f}", f"{r['update_seconds']:.2f}",
            *(f"{ops[key]:,.0f}" if key in ops else "" for key in ("sim_step", "policy_forward", "minibatch_update")),
            f"{ops['host_infos_ms']:.2f}" if "host_infos_ms" in ops else "",
        )
    console.print(table)
    if out is not None:
        meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "threads": torch.get_num_threads(), "torch": torch.__version__, "n_steps": n_steps,
                "batch_size": defaults.batch_size, "n_epochs": defaults.n_epochs, "op_unit": unit}
        out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        console.log(f"wrote {out}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.bench_device", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[256, 1024, 4096], help="numbers of envs B")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed env steps per env, in whole rollouts (default: 2 rollouts)")
    parser.add_argument("--n-steps", type=int, default=None, help="PPO n_steps per env per rollout (default: the fast block's)")
    parser.add_argument("--host-max-envs", type=int, default=1024,
                        help="skip the host path above this many envs (its frame buffer is n_steps * B * 41 KB of RAM, twice)")
    parser.add_argument("--no-profile", action="store_true", help="skip the kernel / op counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    for value in args.n_envs:
        if value < 1:
            parser.error(f"--n-envs must be positive, got {value}")
    run(args.device, args.n_envs, args.steps, args.n_steps, args.out, args.host_max_envs,
        profile_ops=not args.no_profile, threads=args.threads)


if __name__ == "__main__":
    main()
