"""Does `--n-envs` fit? The memory a training run needs per env, estimated before any work starts.

`train --n-envs 1000000` would otherwise run for minutes before the simulator, the DAgger buffer or the
rollout buffer fails to allocate (or the kernel kills the process). `check_n_envs_fit` answers in one
line how much the run needs, where, and how many envs fit (issue 20, "Bad input").

What grows with the number of envs B, per env (F: the policy's features per sample, float32;
A: actions; C*H*W: the camera's uint8 observation):

    simulator   the fast backend's state, frame stack and the camera's peak while it draws:
                SIMULATOR_BYTES_PER_ENV, measured (see there); on the training device
    worker      highway-env: one Python process per env, WORKER_BYTES (measured RSS); on the host
    imitation   DAgger's samples, imitation_iterations x imitation_steps x (F + A) float32 (with
                training.imitation_tunes_perception the frames, C*H*W bytes, instead of F); on the device
    rollout     PPO/A2C's buffer of n_steps samples per env: with DevicePPO (training.device_rollout on
                the fast backend) (F + 7) float32 on the device; else SB3's buffer, the frames (C*H*W
                bytes) on the host, plus the frozen student's features (F float32) swapped in for PPO's
                update (agents/cached_features.py)
    robust      SA-PPO's regulariser (training.robust_reg sa, PPO): clean and attacked features of every
                rollout sample, 2 x n_steps x F float32, on the device

The counted parts leave out transient copies (SB3 flattens its buffer by copying it; features are
computed in chunks), the teacher's search over B x 25 branches, and the allocator's slack; the peak
is MEASURED_PER_COUNTED times their sum (see there), plus the parts that are measured peaks already
(simulator, worker). Fixed costs (Python, the models, the periodic
evaluation's envs, CUDA's context) do not grow with `--n-envs` and are not counted. An estimate,
calibrated once: the message says "about".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.config import RunConfig

SIMULATOR_BYTES_PER_ENV = 350_000
"""[bytes] the fast simulator with frames, per env, at its peak: 40 GiB at B = 262,144 on an H100
(164 KB, `highway`, docs/BENCHMARKS.md); on the CPU the slope of peak RSS from B = 512 to 2,048
(`resource.getrusage`): highway 134 KB, merge, two-way, u-turn ~130 KB, highway-noisy 150 KB,
intersection 326 KB. The largest, rounded up, for every scenario."""
WORKER_BYTES = 370_000_000
"""[bytes] one highway-env worker process (torch imported, one env stepped): 364 MB peak RSS"""
MEASURED_PER_COUNTED = 1.7
"""peak memory per env / the counted parts, for `highway`'s recipe on the CPU: peak RSS (`/usr/bin/time -v`)
of `train --scenario highway --n-envs N` grows by 15.1-15.4 MiB per env (N = 64, 192, 256: 1.96, 3.95,
4.96 GB, ~0.95 GB fixed); less the simulator's measured 0.33 MiB, that is 1.70 x the 8.74 MiB of counted
buffers (docs/BENCHMARKS.md, "Session 21")"""
MEASURED_PARTS = ("simulator", "worker")  # peaks measured as such: the factor above is not applied to them
ROLLOUT_FLOATS = 7  # per sample besides the observation: action, reward, return, start, value, log-prob, advantage
GIB = 1024**3


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes per env by part, and where each part lives ("device": the training device; "host")."""

    parts: dict[str, tuple[int, str]]  # name -> (bytes per env, "device" | "host")

    def per_env(self, places: tuple[str, ...]) -> int:
        """The parts in `places` as counted (MEASURED_PER_COUNTED not applied)."""
        return sum(size for size, place in self.parts.values() if place in places)

    def peak_per_env(self, places: tuple[str, ...]) -> int:
        """The estimated peak: measured parts as they are, counted buffers times MEASURED_PER_COUNTED."""
        measured = sum(size for name, (size, place) in self.parts.items() if place in places and name in MEASURED_PARTS)
        return measured + math.ceil(MEASURED_PER_COUNTED * (self.per_env(places) - measured))

    def describe(self, places: tuple[str, ...]) -> str:
        """"simulator 0.33, imitation 4.63" (MiB per env) for the parts in `places`."""
        return ", ".join(f"{name} {size / 2**20:.2f}" for name, (size, place) in self.parts.items() if place in places)


def features_per_sample(config: RunConfig, perception: str | Path | None = None) -> int:
    """F: the policy's features per sample (embedding, predicted labels, the flattened feature map): the
    `features_dim` of the extractor the run's policy builds (`agents.runs.policy_kwargs`), reading the
    perception checkpoint `perception` (default: the config's). The student has a few k parameters: cheap."""
    from gymnasium import spaces

    from agents.runs import policy_kwargs

    kwargs = policy_kwargs(config, Path(perception or config.policy.perception))
    frames = spaces.Box(0, 255, config.observation_shape, np.uint8)
    return kwargs["features_extractor_class"](frames, **kwargs["features_extractor_kwargs"]).features_dim


def memory_need(config: RunConfig, features: int) -> MemoryNeed:
    """What one env of `config` costs, by part (the module docstring)."""
    training, params = config.training, config.algo_params
    frame_bytes = math.prod(config.observation_shape)  # uint8
    parts: dict[str, tuple[int, str]] = {}
    if config.backend == "fast":
        parts["simulator"] = (SIMULATOR_BYTES_PER_ENV, "device")
    else:
        parts["worker"] = (WORKER_BYTES, "host")
    if training.imitates:
        samples = training.imitation_iterations * training.imitation_steps
        kept = frame_bytes if training.imitation_tunes_perception else features * 4  # frames, or features (float32)
        parts["imitation"] = (samples * (kept + config.n_actions * 4), "device")
    if config.algo == "ppo" and training.device_rollout and config.backend == "fast" and not config.policy.fine_tune:
        parts["rollout"] = (params.n_steps * (features + ROLLOUT_FLOATS) * 4, "device")
    else:
        features_swapped = 0 if config.policy.fine_tune else features * 4
        parts["rollout"] = (params.n_steps * (frame_bytes + features_swapped + ROLLOUT_FLOATS * 4), "host")
    if config.algo == "ppo" and training.robust:
        parts["robust"] = (2 * params.n_steps * features * 4, "device")
    return MemoryNeed(parts)


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device` now: CUDA's free bytes, or the host's MemAvailable; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def check_n_envs_fit(config: RunConfig, device: torch.device, perception: str | Path | None = None,
                     available=available_bytes) -> None:
    """Raise ValueError (one line) when `config.n_envs` envs need more memory than `device` (and, for
    a GPU, the host) have free; `perception`: the checkpoint the policy reads (default: the config's; a
    resumed run's own copy); `available(pool)` gives a pool's free bytes (None: unknown, not checked)."""
    need = memory_need(config, features_per_sample(config, perception))
    if device.type == "cpu":  # one pool: the host holds everything
        pools = {device: ("device", "host")}
    else:
        pools = {device: ("device",), torch.device("cpu"): ("host",)}
    for pool, places in pools.items():
        per_env, free = need.peak_per_env(places), available(pool)  # bytes
        if free is None or per_env == 0 or config.n_envs * per_env <= free:
            continue
        raise ValueError(
            f"--n-envs {config.n_envs:,} needs about {config.n_envs * per_env / GIB:.1f} GiB on {pool} "
            f"({per_env / 2**20:.1f} MiB per env: {need.describe(places)}, buffers x {MEASURED_PER_COUNTED:g}), "
            f"but {free / GIB:.1f} GiB are free there: at most {free // per_env:,} envs fit"
        )
