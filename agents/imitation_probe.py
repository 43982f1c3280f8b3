"""How well can a policy imitate the teacher from its camera frames? A diagnostic of the imitation phase.

A run's DAgger logs the fit on its own samples (imitation/agreement); this measures the fit on episodes
it never saw, and whether the frozen perception student is what limits it. On the fast backend the
teacher drives B envs for `iterations` x the run's `imitation_steps` (as DAgger's first iteration does)
and labels every state; envs 0..B-held_out-1 are fitted, the last `held_out` envs' episodes measured:

- always <action>: what a policy that reads nothing gets;
- frozen student: a fresh actor of the run's architecture on the shipped student's features, fitted as
  the imitation fits (agents/imitation.py: the same loss, minibatches and learning rate);
- student tuned: the same with the student trained along, end to end on the frames
  (`training.imitation_tunes_perception`);
- privileged state (`--privileged`): an actor of the run's MLP on the simulator's exact kinematics instead
  of any camera (`kinematic_features`: the ego's pose and speed, and the nearest vehicles' positions,
  velocities and headings in its frame), fitted the same way: the imitation with a perfect perception.
  A held-out regret no lower than the frozen student's says the frames are not what limits the fit; a
  lower one says they lose what the teacher plans with.

Per fit, after every EPOCHS passes: mean regret (the teacher's value units) and agreement with the teacher's
best action, on the fitted and on the held-out envs.

    python -m agents.imitation_probe --run RUN [--iterations 5] [--held-out 56] [--rounds 4] [--seed 11]
        [--frozen-only] [--privileged] [--samples FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from agents.imitation import EPOCHS, Encoder, fit_imitation, imitation_optimizer, imitation_progress
from agents.runs import activation_module, build_agent, read_run_config
from agents.teacher import best_actions, teacher_for
from envs.backends import get_backend, privileged_simulator
from envs.progress import track
from envs.scene import Scene

NEAREST = 15  # vehicles in the privileged state (highway-env's intersection observes 15)
POSITION_SCALE_M = 50.0  # [m] positions divided by this in the privileged state
SPEED_SCALE_M_S = 10.0  # [m/s] velocities divided by this
FEATURE_CLIP = 2.0  # scaled features are clipped to +-this (+-100 m, +-20 m/s: highway-env's Kinematics ranges),
# or a highway's world x (kilometres) would saturate the MLP's tanh units


@dataclass(frozen=True)
class ProbeSamples:
    """Teacher-driven states, (T, B, ...) by step and env."""

    frames: torch.Tensor  # (T, B, C, H, W) uint8, what the policy sees
    features: torch.Tensor  # (T, B, F) the frozen student's features of them
    values: torch.Tensor  # (T, B, A) the teacher's action values
    action_names: tuple[str, ...]
    kinematics: torch.Tensor | None = None  # (T, B, K) the simulator's exact state (`kinematic_features`)


@dataclass(frozen=True)
class FitRow:
    model: str  # "always IDLE", "frozen student", "student tuned"
    epochs: int  # passes over the fitted samples so far (0 for the constant policies)
    fitted_regret: float
    fitted_agreement: float
    held_out_regret: float
    held_out_agreement: float


def kinematic_features(scenes: list[Scene], nearest: int = NEAREST) -> torch.Tensor:
    """(B, 5 + 7 * nearest) float32: per env the ego's world x, y (/ POSITION_SCALE_M), cos and sin of its
    heading and its speed (/ SPEED_SCALE_M_S); then the `nearest` other road objects by distance, each
    presence, position and velocity relative to the ego in its frame (x ahead, y to its right) and
    cos and sin of its heading relative to the ego's, zeros where fewer are there; all clipped to
    +-FEATURE_CLIP."""
    rows = []
    for scene in scenes:
        heading = scene.ego_heading
        cos, sin = np.cos(heading), np.sin(heading)
        to_ego = np.array([[cos, sin], [-sin, cos]])  # world -> ego frame
        velocities = scene.speeds[:, None] * np.stack([np.cos(scene.headings), np.sin(scene.headings)], axis=1)
        offsets = (scene.positions[1:] - scene.positions[0]) @ to_ego.T  # (n, 2) [m]
        relative_velocities = (velocities[1:] - velocities[0]) @ to_ego.T  # (n, 2) [m/s]
        relative_headings = scene.headings[1:] - heading  # (n,) [rad]
        order = np.argsort(np.hypot(offsets[:, 0], offsets[:, 1]))[:nearest]
        others = np.zeros((nearest, 7))
        others[: len(order)] = np.column_stack([
            np.ones(len(order)), offsets[order] / POSITION_SCALE_M, relative_velocities[order] / SPEED_SCALE_M_S,
            np.cos(relative_headings[order]), np.sin(relative_headings[order]),
        ])
        ego = [*(scene.positions[0] / POSITION_SCALE_M), cos, sin, scene.speeds[0] / SPEED_SCALE_M_S]
        rows.append(np.concatenate([ego, others.ravel()]))
    return torch.as_tensor(np.stack(rows), dtype=torch.float32).clamp(-FEATURE_CLIP, FEATURE_CLIP)


def collect(run_dir: Path, iterations: int, seed: int, n_envs: int = 256) -> ProbeSamples:
    """The run's teacher (its training.teacher_* settings) drives `n_envs` fast envs of the run's scenario
    for `iterations` x imitation_steps steps; every state's frames, student features, exact kinematics and
    action values."""
    config = read_run_config(run_dir)
    training = config.training
    env = get_backend("fast").make_vec_env(config.scenario, n_envs)
    try:
        env.seed(seed)
        policy = build_agent(config, run_dir, env, "cpu", seed=seed).policy
        simulator = privileged_simulator(env)
        teacher = teacher_for(simulator, training)
        observations = env.reset()
        rows = list(range(n_envs))
        frames, features, values, kinematics = [], [], [], []
        steps = range(iterations * training.imitation_steps)
        for _ in track(steps, "teacher labelling states", unit="steps"):  # each step: all envs
            frames.append(torch.as_tensor(observations).clone())
            with torch.no_grad():
                features.append(policy.extract_features(frames[-1]))
            kinematics.append(kinematic_features(simulator.scenes(rows)))
            values.append(teacher.action_values())
            observations, _, _, _ = env.step(best_actions(values[-1], teacher.action_names).numpy())
    finally:
        env.close()
    return ProbeSamples(torch.stack(frames), torch.stack(features), torch.stack(values), teacher.action_names,
                        torch.stack(kinematics))


def _split(samples: torch.Tensor, held_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, B, ...) -> the fitted envs' and the held-out envs' samples, each (N, ...)."""
    fitted, rest = samples[:, :-held_out], samples[:, -held_out:]
    return fitted.reshape(-1, *samples.shape[2:]), rest.reshape(-1, *samples.shape[2:])


def _constant_rows(values: tuple[torch.Tensor, torch.Tensor], action_names: tuple[str, ...]) -> list[FitRow]:
    rows = []
    for action, name in enumerate(action_names):
        scores = []
        for part in values:
            regret = part.amax(dim=1) - part[:, action]
            scores += [float(regret.mean()), float((best_actions(part, action_names) == action).float().mean())]
        rows.append(FitRow(f"always {name}", 0, *scores))
    return rows


def fit_rows(run_dir: Path, samples: ProbeSamples, held_out: int, rounds: int, tune_perception: bool,
             seed: int = 0) -> list[FitRow]:
    """A fresh actor of the run's architecture fitted on the fitted envs' samples, `rounds` x EPOCHS
    passes (with `tune_perception` the student too, on the frames), measured after each round."""
    config = read_run_config(run_dir)
    env = get_backend("fast").make_vec_env(config.scenario, 1)
    try:
        with warnings.catch_warnings():  # SB3: one env's rollout is smaller than a minibatch (none runs here)
            warnings.filterwarnings("ignore", message="You have specified a mini-batch size")
            policy = build_agent(config, run_dir, env, "cpu", seed=seed).policy
    finally:
        env.close()
    torch.manual_seed(seed)
    inputs = _split(samples.frames if tune_perception else samples.features, held_out)
    name = "student tuned" if tune_perception else "frozen student"
    return _fit_and_measure(policy, name, inputs, _split(samples.values, held_out), samples.action_names, rounds,
                            tune_perception)


def _fit_and_measure(policy: ActorCriticPolicy, name: str, inputs: tuple[torch.Tensor, torch.Tensor],
                     values: tuple[torch.Tensor, torch.Tensor], action_names: tuple[str, ...], rounds: int,
                     tune_perception: bool = False) -> list[FitRow]:
    """`rounds` fits of EPOCHS passes on the fitted part (agents.imitation's loss and optimizer), each
    measured on both parts."""
    encode, optimizer = Encoder(policy, tune_perception), imitation_optimizer(policy, tune_perception)
    rows = []
    for round_ in track(range(1, rounds + 1), f"fitting ({name})", unit="rounds"):
        with encode.trainable():
            fit_imitation(policy, optimizer, inputs[0], values[0], action_names, encode)
        scores = []
        for part_inputs, part_values in zip(inputs, values):
            progress = imitation_progress(policy, round_, part_inputs, part_values, action_names, encode, 0.0)
            scores += [progress.regret, progress.agreement]
        rows.append(FitRow(name, round_ * EPOCHS, *scores))
    return rows


def privileged_rows(run_dir: Path, samples: ProbeSamples, held_out: int, rounds: int, seed: int = 0) -> list[FitRow]:
    """A fresh actor of the run's MLP (net_arch, activation) on the exact kinematics, fitted as the student's."""
    if samples.kinematics is None:
        raise ValueError("these samples hold no simulator state (kept before --privileged existed); collect them anew")
    config = read_run_config(run_dir)
    torch.manual_seed(seed)
    width = samples.kinematics.shape[-1]
    policy = ActorCriticPolicy(
        spaces.Box(-np.inf, np.inf, (width,), np.float32), spaces.Discrete(len(samples.action_names)),
        lambda _: 0.0,  # its own optimizer is unused: the fit makes the imitation's (imitation_optimizer)
        net_arch=list(config.policy.net_arch), activation_fn=activation_module(config.policy.activation),
    )
    return _fit_and_measure(policy, "privileged state", _split(samples.kinematics, held_out),
                            _split(samples.values, held_out), samples.action_names, rounds)


def probe(run_dir: Path, iterations: int, held_out: int, rounds: int, seed: int, n_envs: int = 256,
          tuned: bool = True, samples_file: Path | None = None, privileged: bool = False) -> list[FitRow]:
    """The constant policies' rows, then the frozen student's fit, with `tuned` the tuned one's, and with
    `privileged` the fit on the simulator's exact state.
    `samples_file`: where the collected states are kept (torch.save) and, if it exists, read back
    instead of collecting, so that variants of the run's architecture (its config.yaml) share them."""
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"--run {run_dir} is not a run folder (it has no config.yaml)")
    if not 0 < held_out < n_envs:
        raise ValueError(f"--held-out must be between 1 and {n_envs - 1} envs, got {held_out}")
    if samples_file is not None and samples_file.is_file():
        samples = ProbeSamples(**torch.load(samples_file))
        if samples.values.shape[1] != n_envs:
            raise ValueError(f"{samples_file} holds {samples.values.shape[1]} envs' states, not --envs {n_envs}")
    else:
        samples = collect(run_dir, iterations, seed, n_envs)
        if samples_file is not None:
            torch.save(dataclasses.asdict(samples), samples_file)
    rows = _constant_rows(_split(samples.values, held_out), samples.action_names)
    for tune in (False, True) if tuned else (False,):
        rows += fit_rows(run_dir, samples, held_out, rounds, tune)
    if privileged:
        rows += privileged_rows(run_dir, samples, held_out, rounds)
    return rows


def format_rows(rows: list[FitRow]) -> str:
    lines = ["| policy | epochs | regret (fitted) | agreement (fitted) | regret (held out) | agreement (held out) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.model} | {r.epochs} | {r.fitted_regret:.3f} | {r.fitted_agreement:.2f} | {r.held_out_regret:.3f} "
              f"| {r.held_out_agreement:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder (its scenario, teacher and architecture)")
    parser.add_argument("--iterations", type=int, default=5, help="DAgger-sized iterations of teacher-driven states")
    parser.add_argument("--envs", type=int, default=256, help="envs driven side by side")
    parser.add_argument("--held-out", type=int, default=56, help="the last envs, whose episodes are only measured")
    parser.add_argument("--rounds", type=int, default=4, help=f"fits of {EPOCHS} epochs, measured after each")
    parser.add_argument("--seed", type=int, default=11, help="the envs' first episode seeds")
    parser.add_argument("--frozen-only", action="store_true", help="skip the fit that trains the student along")
    parser.add_argument("--privileged", action="store_true",
                        help="also fit an actor on the simulator's exact kinematics (no camera)")
    parser.add_argument("--samples", type=Path, help="keep the collected states here, or read them if it exists")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.rounds < 1:
        parser.error("--iterations and --rounds must be >= 1")
    began = time.perf_counter()
    try:
        rows = probe(args.run, args.iterations, args.held_out, args.rounds, args.seed, args.envs,
                     tuned=not args.frozen_only, samples_file=args.samples, privileged=args.privileged)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(format_rows(rows))
    print(f"\n{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
