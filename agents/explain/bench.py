"""`python run.py bench explain --run RUN`: what explanations cost, against the targets of docs/BENCHMARKS.md.

1. replay: `run.py replay` of one episode (highway: 30 policy steps) with both overlays and a SHAP
   keyframe every `every` steps, once cold (on a copy of the run folder without its stored SHAP
   background and keyframe cache, as the first replay of a run is) and once warm (cached).
2. watch: `run.py watch` with attention on under SDL's dummy driver (played as fast as it goes):
   each policy step's work (env step, decision, per-vehicle reasons) and each redraw, against the
   scenario's policy period; it keeps up when step + redraw fits in one period.
3. training replay: one TensorBoard replay (agents.explain.training_replay), warm.

Timings are wall-clock on whatever threads PyTorch has (`run.py --threads N`); measure on a quiet machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# What a replay needs of a run folder; not its explain/ cache, replays or events files.
_RUN_FILES = ("config.yaml", "command.txt", "perception.safetensors", "model.zip")


def _cold_copy(run_dir: Path, into: Path) -> Path:
    """The run folder's agent without any stored explanation state (checkpoints only when there is no model.zip)."""
    copy = into / run_dir.name
    copy.mkdir()
    for name in _RUN_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, copy / name)
    if not (copy / "model.zip").exists():
        shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    return copy


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"median": float(np.median(array)), "p95": float(np.percentile(array, 95)), "max": float(array.max()),
            "count": int(array.size)}


def bench_explain(run: str | Path, backend: str = "highway-env", every: int = 5, logdir: str | Path = "runs") -> dict:
    """The three measurements of the module docstring, as a dict of seconds."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from agents.explain.decision import load_run
    from agents.explain.replay import write_replays
    from agents.explain.session import make_env
    from agents.explain.training_replay import TrainingReplays
    from agents.explain.watch import watch
    from agents.runs import find_run

    run_dir = find_run(run, logdir)
    results: dict = {"run": str(run_dir), "backend": backend, "every": every, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="clearlane-bench-explain-") as tmp:
        cold_run = _cold_copy(run_dir, Path(tmp))
        for label in ("cold", "warm"):
            result = write_replays(cold_run, episodes=1, overlay="both", every=every, backend=backend,
                                   out=Path(tmp) / f"replay-{label}")
            results[f"replay_{label}"] = {"seconds": result.seconds, "steps": result.episodes[0]["length"],
                                          "shap_keyframes_computed": len(result.shap_seconds),
                                          "shap_keyframe_seconds": result.shap_seconds, "cache_hits": result.cache_hits}

        timings: dict[str, list[float]] = {}
        previous = os.environ.get("SDL_VIDEODRIVER")
        os.environ["SDL_VIDEODRIVER"] = "dummy"
        try:
            watch(cold_run, episodes=1, overlay="attention", backend=backend, out=Path(tmp) / "watch",
                  speed=1000.0, timings=timings)
        finally:
            if previous is None:
                os.environ.pop("SDL_VIDEODRIVER", None)
            else:
                os.environ["SDL_VIDEODRIVER"] = previous
        env = make_env(_scenario_of(cold_run), backend)
        try:
            period = 1.0 / float(env.metadata["render_fps"])
            step, draw = _stats(timings["step"]), _stats(timings["draw"])
            results["watch"] = {"policy_period_s": period, "step": step, "draw": draw,
                                "keeps_up": step["p95"] + draw["p95"] < period}
            loaded = load_run(cold_run, env)
            writer = SummaryWriter(str(Path(tmp) / "tensorboard"))
            replays = TrainingReplays(writer, loaded.config.scenario, backend, every=1)
            replays.log(loaded.agent, 0)  # warms the env up
            began = time.perf_counter()
            frames = replays.log(loaded.agent, 1)
            results["training_replay"] = {"seconds": time.perf_counter() - began, "frames": frames}
            replays.close()
            writer.close()
        finally:
            env.close()
    return results


def _scenario_of(run_dir: Path) -> str:
    from agents.runs import read_run_config

    return read_run_config(run_dir).scenario


def format_bench(results: dict) -> str:
    cold, warm, watched = results["replay_cold"], results["replay_warm"], results["watch"]
    keyframes = cold["shap_keyframe_seconds"]
    lines = [
        f"{results['run']} on {results['backend']}, {results['threads']} PyTorch thread(s), SHAP every {results['every']} steps",
        f"replay, both overlays, one {cold['steps']}-step episode: cold {cold['seconds']:.1f} s "
        f"({cold['shap_keyframes_computed']} SHAP keyframes, median {np.median(keyframes) if keyframes else 0:.2f} s each), "
        f"warm {warm['seconds']:.1f} s ({warm['cache_hits']} cached keyframes)",
        f"watch, attention: step median {watched['step']['median'] * 1e3:.0f} ms (p95 {watched['step']['p95'] * 1e3:.0f}), "
        f"redraw median {watched['draw']['median'] * 1e3:.0f} ms (p95 {watched['draw']['p95'] * 1e3:.0f}); "
        f"policy period {watched['policy_period_s'] * 1e3:.0f} ms: {'keeps up' if watched['keeps_up'] else 'falls behind'}",
        f"training replay for TensorBoard: {results['training_replay']['seconds']:.1f} s "
        f"({results['training_replay']['frames']} frames)",
    ]
    return "\n".join(lines)
