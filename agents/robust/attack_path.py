"""Where does an attack on the frames reach the policy? (issue 16, deliverable 5: "find out where")

    python run.py bench attack-path --run RUN [--eps 3/255] [--steps 10] [--envs 256] [--policy-steps 8]

The actor reads three parts of the frozen perception student's output (perception/extractor.py):

    embedding  (E)         the attention pool's summary of the frame
    labels     (D)         the student's predicted labels (the part adversarial distillation made robust)
    map        (C' h w)    its last feature map, through the actor's 1x1 conv (agents/policy.py)

The agent drives `--envs` fast-backend episodes for `--policy-steps` decisions (its own greedy actions,
evaluation seeds); on every observation met, PGD on the greedy action (`evaluate --attack pgd`) crafts
the attacked frames. Then the actor is re-run on features in which **only one part** comes from the
attacked frames and the rest from the clean ones: the share of greedy actions each part alone changes
says which path carries the attack. Each part's change is also given relative to its clean size
(||f(x̂) - f(x)|| / ||f(x)||, mean over observations).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.robust.attacks import AttackSpec, perturb_frames

CHUNK = 256  # observations attacked at a time


@dataclass(frozen=True)
class PathRow:
    """One way of mixing clean and attacked features."""

    attacked: str  # which parts come from the attacked frames
    action_changed: float  # share of observations whose greedy action differs from the clean one
    relative_change: float | None  # mean ||Δ part|| / ||part|| over observations (None for the mixtures)


def feature_parts(extractor) -> dict[str, slice]:
    """The slices of a PerceptionExtractor's features: embedding, labels (if read), map (if read)."""
    model = extractor.model
    parts, start = {"embedding": slice(0, model.embed_dim)}, model.embed_dim
    if extractor.include_labels:
        parts["labels"] = slice(start, start + model.label_dim)
        start += model.label_dim
    if extractor.map_shape is not None:
        parts["map"] = slice(start, extractor.features_dim)
    return parts


def collect_observations(agent, scenario, envs: int, policy_steps: int, first_seed: int) -> np.ndarray:
    """(N, C, H, W) uint8 observations the agent meets driving `envs` episodes for `policy_steps` decisions."""
    from envs.fast.vec_env import FastVecEnv

    env = FastVecEnv(scenario, envs, device="cpu")
    try:
        env.seed(first_seed)
        observations = env.reset()
        seen = []
        for _ in range(policy_steps):
            seen.append(observations.copy())
            actions, _ = agent.predict(observations, deterministic=True)
            observations, _, _, _ = env.step(actions)
    finally:
        env.close()
    return np.concatenate(seen)


def attack_path(policy, decision, observations: np.ndarray, spec: AttackSpec) -> list[PathRow]:
    """Rows for: every part attacked, each part alone, and every part but one (see the module docstring)."""
    from agents.imitation import actor_logits

    parts = feature_parts(policy.features_extractor)
    clean_chunks, attacked_chunks = [], []
    for start in range(0, len(observations), CHUNK):
        frames = torch.from_numpy(observations[start : start + CHUNK])  # (b, C, H, W) uint8
        adversarial = perturb_frames(decision, frames, spec)
        with torch.no_grad():
            clean_chunks.append(policy.extract_features(frames))
            attacked_chunks.append(policy.extract_features(adversarial))
    clean, attacked = torch.cat(clean_chunks), torch.cat(attacked_chunks)  # (N, F) each
    with torch.no_grad():
        greedy = actor_logits(policy, clean).argmax(dim=1)

        def changed(names: list[str]) -> float:
            mixed = clean.clone()
            for name in names:
                mixed[:, parts[name]] = attacked[:, parts[name]]
            return float((actor_logits(policy, mixed).argmax(dim=1) != greedy).float().mean())

        def relative(name: str) -> float:
            part = parts[name]
            size = clean[:, part].norm(dim=1).clamp_min(1e-12)
            return float(((attacked[:, part] - clean[:, part]).norm(dim=1) / size).mean())

        rows = [PathRow("all parts", changed(list(parts)), float(((attacked - clean).norm(dim=1)
                                                                    / clean.norm(dim=1).clamp_min(1e-12)).mean()))]
        rows += [PathRow(f"{name} only", changed([name]), relative(name)) for name in parts]
        if len(parts) > 2:
            rows += [PathRow(f"all but {name}", changed([other for other in parts if other != name]), None)
                     for name in parts]
    return rows


def bench_attack_path(run: str | Path, eps: float = 3 / 255, steps: int = 10, envs: int = 256, policy_steps: int = 8,
                      logdir: str | Path = "runs") -> tuple[int, list[PathRow]]:
    """(observations attacked, rows) for a run on its scenario's fast backend, on the evaluation seeds."""
    from agents.evaluate import evaluation_seeds
    from agents.robust.evaluate import load_attackable
    from agents.runs import find_run, read_run_config
    from envs.backends import get_backend

    if not 0.0 < eps <= 1.0:
        raise ValueError(f"invalid epsilon {eps!r}: must be in (0, 1] pixel units, e.g. 3/255")
    run_dir = find_run(run, logdir)
    simulator = get_backend("fast")
    scenario_name = read_run_config(run_dir).scenario
    env = simulator.make_env(scenario_name)
    try:
        loaded = load_attackable(run_dir, env, "cpu", logdir, None)
        scenario = env.scenario
    finally:
        env.close()
    torch.manual_seed(0)
    observations = collect_observations(loaded.agent, scenario, envs, policy_steps,
                                        evaluation_seeds(scenario, 1, 0)[0])
    return len(observations), attack_path(loaded.agent.policy, loaded.decision, observations,
                                          AttackSpec("pgd", eps, steps=steps))


def format_rows(count: int, spec_text: str, rows: list[PathRow]) -> str:
    lines = [f"{spec_text}, {count} observations the agent met:",
             "| features from the attacked frames | greedy action changed | relative change of those features |",
             "| --- | --- | --- |"]
    for row in rows:
        change = "–" if row.relative_change is None else f"{100 * row.relative_change:.1f}%"
        lines.append(f"| {row.attacked} | {100 * row.action_changed:.1f}% | {change} |")
    return "\n".join(lines)
