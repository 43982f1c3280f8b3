"""`python -m agents.robust.bench_sa`: the extra training cost of `train --robust-reg sa`.

    python -m agents.robust.bench_sa [--n-envs 8] [--n-steps 32] [--batch-size 64] [--epochs 10] \
        [--pgd-steps 3] [--repeats 3] [--threads 1] [--device cpu] [--out bench-sa.json]

One rollout of `--n-steps` per env is collected on the fast backend (`highway`, the `fast:` block of
agents/defaults.yaml: the shipped student, net_arch [256, 256], the feature map), then PPO's update
on that same rollout buffer is timed, from the same weights and optimizer state each time:

    plain         CachedFeaturesPPO.train  (what `train` runs: the student once per rollout, MLPs per epoch)
    sa rollout    SmoothPPO.train, `robust_refresh: rollout` (the default): MAD PGD-`--pgd-steps` through
                  the whole policy once per rollout frame, then kappa * R per minibatch from cached features
    sa minibatch  SmoothPPO.train, `robust_refresh: minibatch`: the same + kappa * R per minibatch with
                  the MAD attack afresh through the whole policy from the frames (SA-PPO's own way)

All at the full ε (3/255).
Each is run `--repeats` times, alternating; the median is reported, with the rollout's collection
time for scale (a PPO iteration is collection + update). One thread by default, so the ratio is a
property of the work and not of how many cores happen to be free.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from envs.system import set_threads

REFRESH = ("rollout", "minibatch")  # training.robust_refresh


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(n_envs: int = 8, n_steps: int = 32, batch_size: int = 64, epochs: int = 10, pgd_steps: int = 3,
            eps: float = 3 / 255, repeats: int = 3, device: str = "cpu", seed: int = 0) -> dict:
    """Seconds of one PPO update without and with the regulariser, on the same rollout buffer."""
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import VecMonitor

    from agents.cached_features import CachedFeaturesPPO
    from agents.config import load_agent_config
    from agents.policy import PerceptionPolicy
    from agents.robust.sa_ppo import SASchedule, SmoothPPO
    from agents.runs import policy_kwargs
    from envs.fast.vec_env import FastVecEnv
    from envs.system import resolve_device
    from perception.extractor import DEFAULT_STUDENT
    from scenarios import load_scenario

    where = resolve_device(device)
    config = load_agent_config("highway", None, {"training": {"robust_reg": "sa"}}, backend="fast")
    params = {name: getattr(config.ppo, name) for name in config.ppo.__dataclass_fields__}
    params.update(n_steps=n_steps, batch_size=batch_size, n_epochs=epochs)
    weight = float(config.training.robust_reg_weight)
    env = VecMonitor(FastVecEnv(load_scenario("highway"), n_envs, device=where))
    model = SmoothPPO(PerceptionPolicy, env, policy_kwargs=policy_kwargs(config, DEFAULT_STUDENT), seed=seed,
                      device=where, verbose=0, smoothing=SASchedule(weight, eps, pgd_steps, ramp_end=0), **params)
    model.set_logger(configure(None, []))
    try:
        _, callback = model._setup_learn(n_steps * n_envs, None)
        callback.on_training_start(locals(), globals())
        began = time.perf_counter()
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=n_steps)
        _synchronize(where)
        collect_s = time.perf_counter() - began
        weights = copy.deepcopy(model.policy.state_dict())
        optimizer = copy.deepcopy(model.policy.optimizer.state_dict())
        schedule = model.smoothing

        def smooth(refresh: str):
            def update() -> None:
                model.smoothing = dataclasses.replace(schedule, refresh=refresh)
                model.train()
            return update

        updates = {"plain": lambda: CachedFeaturesPPO.train(model), **{refresh: smooth(refresh) for refresh in REFRESH}}
        seconds: dict[str, list[float]] = {name: [] for name in updates}
        for _ in range(repeats):
            for name, update in updates.items():
                model.policy.load_state_dict(weights)
                model.policy.optimizer.load_state_dict(optimizer)
                torch.manual_seed(seed)
                _synchronize(where)
                began = time.perf_counter()
                update()
                _synchronize(where)
                seconds[name].append(time.perf_counter() - began)
    finally:
        env.close()
    samples = n_steps * n_envs
    minibatches = epochs * -(-samples // batch_size)
    plain = statistics.median(seconds["plain"])
    modes = {}
    for refresh in REFRESH:
        sa = statistics.median(seconds[refresh])
        modes[refresh] = {"update_s": sa, "ratio": sa / plain, "extra_ms_per_minibatch": 1e3 * (sa - plain) / minibatches,
                          "iteration_ratio": (collect_s + sa) / (collect_s + plain), "runs_s": seconds[refresh]}
    return {
        "device": str(where), "threads": torch.get_num_threads(), "n_envs": n_envs, "n_steps": n_steps,
        "samples": samples, "batch_size": batch_size, "epochs": epochs, "minibatches": minibatches,
        "pgd_steps": pgd_steps, "eps": eps, "weight": weight, "repeats": repeats,
        "collect_s": collect_s, "plain_update_s": plain, "plain_runs_s": seconds["plain"], "sa": modes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.robust.bench_sa", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=32, help="rollout steps per env")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10, help="PPO epochs per update (the config's: 10)")
    parser.add_argument("--pgd-steps", type=int, default=3, help="MAD PGD steps (training.robust_steps: 3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if min(args.n_envs, args.n_steps, args.batch_size, args.epochs, args.pgd_steps, args.repeats, args.threads) < 1:
        parser.error("every count must be a positive integer")
    set_threads(args.threads)
    result = measure(args.n_envs, args.n_steps, args.batch_size, args.epochs, args.pgd_steps, repeats=args.repeats,
                     device=args.device)
    print(f"PPO update on one rollout of {result['samples']} samples ({result['minibatches']} minibatches of "
          f"{result['batch_size']}, {result['epochs']} epochs), {result['device']}, {result['threads']} thread(s), "
          f"median of {result['repeats']}:")
    print(f"  plain (CachedFeaturesPPO)                     {result['plain_update_s']:8.2f} s")
    for refresh, mode in result["sa"].items():
        print(f"  --robust-reg sa, {refresh:9} (PGD-{result['pgd_steps']}, 3/255)  {mode['update_s']:8.2f} s   "
              f"x{mode['ratio']:.1f}  (+{mode['extra_ms_per_minibatch']:.0f} ms per minibatch; whole iteration, "
              f"collect + update: x{mode['iteration_ratio']:.2f})")
    print(f"  rollout collection                            {result['collect_s']:8.2f} s")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
