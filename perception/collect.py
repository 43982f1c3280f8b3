"""Record camera frames and privileged labels from the envs, driven by a mix of ego policies.

Shard `i` is a pure function of (seed, i): its own RNG picks the scenarios, the episode seeds
and the policy of each episode. So shards can be made in any order, by several processes, and
a killed run resumes by making the shards the manifest does not list yet.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from envs import make_env
from envs.policies import POLICY_NAMES, make_policy
from envs.progress import progress_bar
from perception.dataset import Manifest, load_manifest, save_manifest, save_shard
from perception.labels import encode
from scenarios import load_scenario
from scenarios.schema import TRAINING_SEED_LIMIT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardJob:
    index: int
    frames: int  # at least this many; the last episode is finished, not cut
    scenarios: tuple[str, ...]
    camera: str
    seed: int
    policies: tuple[str, ...]
    backend: str = "highway-env"


def collect(
    scenarios: list[str],
    frames: int,
    out: Path,
    camera: str = "bev",
    seed: int = 0,
    shard_frames: int = 1000,
    workers: int = 1,
    policies: tuple[str, ...] = POLICY_NAMES,
    backend: str = "highway-env",
) -> Manifest:
    """Collect about `frames` frames into `out`, resuming a previous run with the same settings.

    backend: the simulator that drives the episodes ("fast" refuses scenarios it does not support)."""
    if frames <= 0:
        raise ValueError(f"--frames must be positive, got {frames}")
    scenarios = [load_scenario(name).source if name.endswith((".yaml", ".yml")) else name for name in scenarios]
    check_same_camera(scenarios, camera)
    shapes = set()
    for name in scenarios:
        env = make_env(name, backend, camera=camera)
        shapes.add(env.observation_space.shape)
        env.close()
    if len(shapes) != 1:
        raise ValueError(f"scenarios {scenarios} have different observation shapes {sorted(shapes)}; mix only equal cameras")
    out.mkdir(parents=True, exist_ok=True)
    manifest = _start_or_resume(out, scenarios, frames, camera, seed, list(policies), list(shapes.pop()), backend)
    done = {shard["index"] for shard in manifest.shards}
    shard_frames = min(shard_frames, frames)  # --frames 10 records ~10 frames, not one default-sized shard
    shard_count = -(-frames // shard_frames)  # ceil
    jobs = [
        ShardJob(i, shard_frames, tuple(scenarios), camera, seed, tuple(policies), backend)
        for i in range(shard_count)
        if i not in done
    ]
    if not jobs:
        log.info("%s already holds %d frames in %d shards", out, manifest.frames, len(manifest.shards))
        return manifest
    if done:
        log.info("resuming: %d of %d shards already in %s", len(done), shard_count, out)
    with progress_bar(shard_count * shard_frames, "collect", unit="frames", completed=len(done) * shard_frames) as bar:
        for index, frame_count, episodes in _run(jobs, out, workers):
            manifest.shards.append({"index": index, "file": _shard_name(index), "frames": frame_count, "episodes": episodes})
            manifest.shards.sort(key=lambda shard: shard["index"])
            save_manifest(out, manifest)  # only now does the shard count as done
            bar.advance(shard_frames)
    return manifest


def check_same_camera(scenarios: list[str], view: str) -> None:
    """Refuse to mix scenarios whose `view` cameras differ (scale, framing, size): the same pixels
    would mean different metres, and the student would learn contradictory labels."""
    optics = {name: getattr(load_scenario(name).camera, view) for name in scenarios}
    first_name, first = next(iter(optics.items()))
    for name, other in optics.items():
        differ = [f"{f.name} {getattr(first, f.name)} vs {getattr(other, f.name)}"
                  for f in fields(first) if getattr(first, f.name) != getattr(other, f.name)]
        if differ:
            raise ValueError(f"scenarios {first_name} and {name} have different {view} cameras ({', '.join(differ)}): "
                             f"their frames would teach the student contradictory labels; collect them into separate --out folders")


def _start_or_resume(out: Path, scenarios, frames, camera, seed, policies, shape, backend) -> Manifest:
    fresh = Manifest(scenarios=scenarios, camera=camera, frames_requested=frames, seed=seed,
                     policies=policies, observation_shape=shape, backend=backend)
    if not (out / "manifest.json").exists():
        save_manifest(out, fresh)
        return fresh
    existing = load_manifest(out)
    same = (existing.scenarios, existing.camera, existing.seed, existing.policies, existing.observation_shape,
            existing.backend) == (scenarios, camera, seed, policies, shape, backend)
    if not same:
        raise ValueError(
            f"{out} already holds a dataset made with other settings (scenarios {existing.scenarios}, "
            f"camera {existing.camera}, seed {existing.seed}, backend {existing.backend}); use another --out or "
            f"delete it"
        )
    existing.frames_requested = frames
    return existing


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.npz"


def _run(jobs: list[ShardJob], out: Path, workers: int):
    """Yield (index, frames, episodes) per finished shard, in process or in a pool."""
    if workers <= 1:
        for job in jobs:
            yield make_shard(job, out)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(make_shard, job, out) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def make_shard(job: ShardJob, out: Path) -> tuple[int, int, int]:
    """Drive whole episodes until the shard has `job.frames` frames; write it; return its size."""
    rng = np.random.default_rng([job.seed, job.index])
    frames, targets, masks = [], [], []
    episodes = 0
    envs = {name: make_env(name, job.backend, camera=job.camera) for name in job.scenarios}
    while len(frames) < job.frames:
        env = envs[job.scenarios[rng.integers(len(job.scenarios))]]
        policy = make_policy(job.policies[rng.integers(len(job.policies))], env, rng)
        observation, info = env.reset(seed=int(rng.integers(TRAINING_SEED_LIMIT)))
        policy.reset()
        episodes += 1
        done = False
        while not done:
            target, mask = encode(info["ground_truth"])
            frames.append(observation)
            targets.append(target)
            masks.append(mask)
            observation, _, terminated, truncated, info = env.step(policy(info))
            done = terminated or truncated
    save_shard(out / _shard_name(job.index), np.stack(frames), np.stack(targets), np.stack(masks))
    for env in envs.values():
        env.close()
    return job.index, len(frames), episodes
