"""SHAP attributions of whole decisions, on keyframes, with a reproducible background and a disk cache.

Explained function (agents.explain.decision.DecisionModel): uint8 frames -> [0, 1] floats ->
student -> policy -> the chosen action's logit (or, selectable, the critic's value). Attributions
are over the [0, 1] input pixels of all stacked frames, (C, H, W).

Method: `shap.GradientExplainer` (expected gradients: Integrated Gradients averaged over a
background of real frames, samples drawn along the path from a background frame to the input).
Why not `DeepExplainer`: DeepLIFT's rescale rule for the softmax of the student's attention pool
and the product of attention weights with features is not the exact backward pass of that
product, and SHAP's own additivity check fails on the shipped student (docs/EXPLAIN.md). Expected
gradients need only autograd, which is exact for every op; additivity (values sum to
f(x) - E[f(background)]) then holds in expectation, up to the sampling error of `nsamples`.

Only the chosen action's logit is explained (`ranked_outputs=1`, "max": the deterministic
action is the largest logit), one backward pass per sample instead of one per action.

Background: >= 32 frames of the same scenario, recorded by the agent itself on fixed training
seeds (never evaluation seeds) and drawn with a fixed generator; stored in the run folder
(`explain/background-*.npz`) and reused. Keyframes are cached under `explain/keyframes/`, keyed
by the observation's bytes, the model file, the background and the settings: a replay never
computes the same keyframe twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.explain.decision import DecisionModel, check_output, decide
from envs.files import atomic_write

BACKGROUND_FRAMES = 32
BACKGROUND_FIRST_SEED = 0  # training-range episode seeds 0, 1, ... record the background (never evaluation seeds)
BACKGROUND_MAX_EPISODES = 200
NSAMPLES = 64  # expected-gradient samples per keyframe (docs/EXPLAIN.md: speed and additivity)
CACHE_DIR = "explain"


@dataclass
class Keyframe:
    """SHAP values of one observation."""

    values: np.ndarray  # (C, H, W) float32 attributions over [0, 1] pixels
    output: str  # "action" or "value"
    output_index: int  # the explained action (0 for the value)
    model_output: float  # f(x): the explained logit or value
    expected_output: float  # E[f(background)]
    seconds: float  # time it took to compute (0.0 when read from the cache)
    cached: bool = False


def digest(*parts: bytes | str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()[:24]


def file_digest(path: Path) -> str:
    return digest(Path(path).read_bytes())


# -- background ----------------------------------------------------------------------------------


def record_background(env, model: DecisionModel, frames: int = BACKGROUND_FRAMES, seed: int = 0) -> np.ndarray:
    """(frames, C, H, W) uint8: observations of the agent's own deterministic episodes on training seeds
    0, 1, ... (until there are 3x as many as needed), `frames` of them drawn without replacement by a
    generator seeded with `seed`."""
    if frames < 1:
        raise ValueError(f"background frames must be >= 1, got {frames}")
    observations: list[np.ndarray] = []
    for episode_seed in range(BACKGROUND_FIRST_SEED, BACKGROUND_FIRST_SEED + BACKGROUND_MAX_EPISODES):
        obs, _ = env.reset(seed=int(episode_seed))
        done = False
        while not done:
            observations.append(obs)
            obs, _, terminated, truncated, _ = env.step(decide(model, obs).action)
            done = terminated or truncated
        if len(observations) >= 3 * frames:
            break
    if len(observations) < frames:
        raise ValueError(f"the background episodes gave only {len(observations)} frames, fewer than {frames}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(observations), size=frames, replace=False))
    return np.stack([observations[i] for i in chosen])


def background_path(run_dir: Path, scenario: str, backend: str, frames: int, seed: int) -> Path:
    return Path(run_dir) / CACHE_DIR / f"background-{scenario}-{backend}-n{frames}-s{seed}.npz"


def load_or_record_background(run_dir: Path, env, model: DecisionModel, scenario: str, backend: str,
                               frames: int = BACKGROUND_FRAMES, seed: int = 0, model_digest: str = "") -> np.ndarray:
    """The stored background of this run, scenario and backend, recorded (and stored atomically) on first use.

    A background recorded by another model of the run (an older checkpoint) is recorded again."""
    path = background_path(run_dir, scenario, backend, frames, seed)
    if path.is_file():
        with np.load(path) as data:
            if str(data["model_digest"]) == model_digest:
                return data["frames"]
    background = record_background(env, model, frames, seed)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, frames=background, model_digest=np.array(model_digest),
                                seed=np.array(seed))

    atomic_write(path, write)
    return background


# -- the explainer ---------------------------------------------------------------------------------


class ShapExplainer:
    """`shap.GradientExplainer` over a DecisionModel with a uint8 background (N, C, H, W)."""

    def __init__(self, model: DecisionModel, background: np.ndarray, output: str = "action",
                 nsamples: int = NSAMPLES, seed: int = 0) -> None:
        if nsamples < 1:
            raise ValueError(f"nsamples must be >= 1, got {nsamples}")
        self.model = model.with_output(check_output(output))
        self.output = output
        self.nsamples = int(nsamples)
        self.seed = int(seed)
        device = next(model.parameters()).device
        self.background = torch.from_numpy(np.ascontiguousarray(background)).to(device, torch.float32) / 255.0
        self._gradient_explainer = None  # built for the first keyframe not in the cache: importing shap takes ~2 s
        with torch.no_grad():
            self._expected = self.model(self.background).mean(dim=0).cpu().numpy()  # (A,) or (1,)
        self.background_digest = digest(np.ascontiguousarray(background).tobytes())

    @property
    def gradient_explainer(self):
        """shap.GradientExplainer over `self.model` (set `model` before the first keyframe to explain another copy)."""
        if self._gradient_explainer is None:
            import shap

            self._gradient_explainer = shap.GradientExplainer(self.model, self.background, batch_size=self.nsamples)
        return self._gradient_explainer

    def settings_digest(self) -> str:
        return digest(self.output, str(self.nsamples), str(self.seed), self.background_digest)

    def explain(self, observation: np.ndarray) -> Keyframe:
        """SHAP values (C, H, W) of one uint8 observation (C, H, W)."""
        start = time.perf_counter()
        frames = torch.from_numpy(np.ascontiguousarray(observation[None])).to(self.background.device, torch.float32) / 255.0
        with torch.no_grad():
            outputs = self.model(frames)[0]  # (A,) or (1,)
        if self.output == "action":
            values, indexes = self.gradient_explainer.shap_values(frames, nsamples=self.nsamples, ranked_outputs=1,
                                                         output_rank_order="max", rseed=self.seed)
            index = int(np.asarray(indexes).reshape(-1)[0])
        else:
            values, index = self.gradient_explainer.shap_values(frames, nsamples=self.nsamples, rseed=self.seed), 0
        values = np.asarray(values, dtype=np.float32).reshape(observation.shape)  # (1, C, H, W, 1) -> (C, H, W)
        return Keyframe(values, self.output, index, float(outputs[index]), float(self._expected[index]),
                        time.perf_counter() - start)


class KeyframeCache:
    """SHAP keyframes on disk: `<folder>/<key>.npz`, key = the observation's bytes + model + settings."""

    def __init__(self, folder: Path, model_digest: str, settings_digest: str) -> None:
        self.folder = Path(folder)
        self.prefix = digest(model_digest, settings_digest)
        self.hits = 0
        self.misses = 0

    def key(self, observation: np.ndarray) -> str:
        return digest(self.prefix, str(observation.shape), np.ascontiguousarray(observation).tobytes())

    def get(self, observation: np.ndarray) -> Keyframe | None:
        path = self.folder / f"{self.key(observation)}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                keyframe = Keyframe(data["values"], cached=True, seconds=0.0, **meta)
        except (OSError, ValueError, KeyError):
            return None  # unreadable: computed again and rewritten
        self.hits += 1
        return keyframe

    def put(self, observation: np.ndarray, keyframe: Keyframe) -> None:
        meta = {"output": keyframe.output, "output_index": keyframe.output_index,
                "model_output": keyframe.model_output, "expected_output": keyframe.expected_output}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, values=keyframe.values.astype(np.float32), meta=np.array(json.dumps(meta)))

        atomic_write(self.folder / f"{self.key(observation)}.npz", write)

    def explain(self, explainer: ShapExplainer, observation: np.ndarray) -> Keyframe:
        """The cached keyframe, or compute it with `explainer` and store it."""
        found = self.get(observation)
        if found is not None:
            return found
        self.misses += 1
        keyframe = explainer.explain(observation)
        self.put(observation, keyframe)
        return keyframe


def keyframe_steps(length: int, every: int) -> list[int]:
    """Keyframe steps of an episode of `length` + 1 records: 0, every, 2 * every, ..."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"--every must be a positive integer (a keyframe every K policy steps), got {every!r}")
    return list(range(0, length + 1, every))
