"""`python run.py bench reference`: highway-env's own kind of agent beside clearlane's, on the same episodes.

highway-env's scripts (scripts/sb3_highway_dqn.py, sb3_highway_ppo.py) train SB3 DQN or PPO with an
MLP on its `Kinematics` observation: the exact positions and speeds of the nearest vehicles, state a
camera agent never sees. Each scenario's reference observes its env's own default observation, all
privileged state (`STATE_OBSERVATIONS`): `Kinematics` on most, `ExitObservation` on exit (Kinematics
with the ego's distance along the exit lane), `TimeToCollision` on two-way and u-turn (a grid of
times to collision per lane and speed). That is the *reference* a driving agent from pixels should beat. This
bench gives it what clearlane's agent had:

- the same env-step budget (the clearlane model's `num_timesteps`) and the same wall-clock limit
  (its training time), whichever ends first; it trains on highway-env itself, without camera
  frames (`reference_env`), the way highway-env's scripts do;
- the same evaluation: the scenario's first `episodes` evaluation seeds on highway-env, deterministic
  actions, the safety metrics of `run.py evaluate`. It plays a `DrivingEnv` seen through
  `StateView`, so both agents meet the same traffic (a test checks that the two envs agree).

Hyperparameters are the scripts' (`REFERENCE_RECIPES`), with the discount of the scenario's block
in agents/defaults.yaml (0.8 on the highways, as in the scripts; longer for manoeuvre scenarios).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from envs.files import atomic_write
from scenarios import Scenario, load_scenario
from scenarios.loader import highway_env_defaults

if TYPE_CHECKING:
    from envs.driving_env import DrivingEnv  # imports highway-env: loaded when an env is built, not for --help

REFERENCE_ALGOS = ("dqn", "ppo")

# highway-env's scripts/sb3_highway_{dqn,ppo}.py; "gamma" comes from agents/defaults.yaml's scenario block.
REFERENCE_RECIPES: dict[str, dict[str, Any]] = {
    "dqn": {"learning_rate": 5e-4, "buffer_size": 15_000, "learning_starts": 200, "batch_size": 32,
            "train_freq": 1, "gradient_steps": 1, "target_update_interval": 50,
            "policy_kwargs": {"net_arch": [256, 256]}},
    "ppo": {"batch_size": 64, "n_epochs": 10, "learning_rate": 5e-4,
            "policy_kwargs": {"net_arch": {"pi": [256, 256], "vf": [256, 256]}}},
}
PPO_ROLLOUT_STEPS = 64 * 12  # [env steps of all envs] per PPO rollout: the script's n_steps = batch_size * 12 // n_cpu


STATE_OBSERVATIONS = ("Kinematics", "ExitObservation", "TimeToCollision")  # highway-env's privileged-state observations


def state_observation_config(scenario: Scenario) -> dict[str, Any]:
    """highway-env's own default observation config of the scenario's env id, when it is privileged state."""
    import highway_env  # noqa: F401  (registers its ids, also in a fresh worker process)

    observation = dict(highway_env_defaults(scenario.highway_env.id)["observation"])
    if observation.get("type") not in STATE_OBSERVATIONS:
        raise ValueError(f"{scenario.highway_env.id} observes {observation.get('type')!r} by default, not one of "
                         f"{', '.join(STATE_OBSERVATIONS)}: bench reference has no highway-env reference agent for it")
    return observation


def reference_env(scenario: Scenario) -> gym.Env:
    """highway-env with the scenario's config and its own state observation, episodes cut where
    DrivingEnv cuts them: what the reference trains on (no camera frames drawn)."""
    config = {**scenario.highway_env_config(), "observation": state_observation_config(scenario)}
    env = gym.make(scenario.highway_env.id, config=config, disable_env_checker=True)
    return gym.wrappers.TimeLimit(env.unwrapped, max_episode_steps=scenario.episode_steps)


class StateView(gym.Wrapper):
    """A DrivingEnv observed through highway-env's own state observation of the same simulator.

    The episode, reward and `info` (safety signals, ground truth) are DrivingEnv's, so `run_episodes`
    measures the reference exactly as it measures a camera agent, on the same seeds."""

    def __init__(self, env: DrivingEnv) -> None:
        from highway_env.envs.common.observation import observation_factory

        super().__init__(env)
        self.observer = observation_factory(env.sim, state_observation_config(env.scenario))
        self.observation_space = self.observer.space()  # (vehicles, features) float32

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        return self.observer.observe(), info

    def step(self, action):
        _, reward, terminated, truncated, info = self.env.step(action)
        return self.observer.observe(), reward, terminated, truncated, info


def wall_clock_limit(seconds: float):
    """An SB3 callback that stops `learn` once `seconds` of wall time have passed since training began."""
    from stable_baselines3.common.callbacks import BaseCallback

    class WallClockLimit(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.began = 0.0
            self.hit = False  # True when the limit, not the step budget, ended training

        def _on_training_start(self) -> None:
            self.began = time.perf_counter()

        def _on_step(self) -> bool:
            self.hit = time.perf_counter() - self.began >= seconds
            return not self.hit

    return WallClockLimit()


@dataclasses.dataclass(frozen=True)
class ReferenceTraining:
    algo: str
    num_timesteps: int  # env steps it trained
    seconds: float  # [s] wall time of `learn`
    stopped_by_clock: bool  # the wall-clock limit ended it before the step budget
    model_path: Path


def train_reference(scenario: Scenario, algo: str, timesteps: int, time_limit_s: float | None, seed: int,
                    out_dir: Path, n_envs: int | None = None, show_progress: bool = True):
    """Train highway-env's reference agent; saves `out_dir/model.zip` and TensorBoard logs. Returns (model, ReferenceTraining).

    PPO steps `n_envs` highway-env processes (default: the usable cores, as highway-env's script does
    with its 6); DQN steps one env, as its script does."""
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from agents.config import load_agent_config
    from agents.train import progress_bar
    from envs.system import usable_cores

    if algo not in REFERENCE_ALGOS:
        raise ValueError(f"unknown reference algorithm {algo!r}; choose one of: {', '.join(REFERENCE_ALGOS)}")
    gamma = load_agent_config(scenario.name, backend="highway-env").ppo.gamma
    recipe = {**REFERENCE_RECIPES[algo], "gamma": gamma}
    if algo == "ppo":
        n_envs = n_envs or usable_cores()
        recipe["n_steps"] = max(PPO_ROLLOUT_STEPS // n_envs, 1)
        vec_cls = SubprocVecEnv if n_envs > 1 else DummyVecEnv
        env = make_vec_env(lambda: reference_env(scenario), n_envs=n_envs, seed=seed, vec_env_cls=vec_cls)
        model = PPO("MlpPolicy", env, seed=seed, device="cpu", tensorboard_log=str(out_dir), verbose=0, **recipe)
    else:
        env = make_vec_env(lambda: reference_env(scenario), n_envs=1, seed=seed)
        model = DQN("MlpPolicy", env, seed=seed, device="cpu", tensorboard_log=str(out_dir), verbose=0, **recipe)
    clock = wall_clock_limit(time_limit_s if time_limit_s is not None else float("inf"))
    callbacks = [clock] + ([progress_bar()] if show_progress else [])  # DQN's n_steps is 1: a bar of env steps
    began = time.perf_counter()
    try:
        model.learn(total_timesteps=timesteps, callback=CallbackList(callbacks), tb_log_name=f"reference-{algo}")
    finally:
        seconds = time.perf_counter() - began
        env.close()
        model_path = out_dir / "model.zip"
        model.save(model_path)  # also after Ctrl-C: what was trained is kept
    return model, ReferenceTraining(algo, int(model.num_timesteps), seconds, clock.hit, model_path)


def evaluate_reference(model, scenario: Scenario, episodes: int) -> list:
    """The reference agent on the scenario's first `episodes` evaluation seeds, on highway-env (per-episode metrics)."""
    from agents.evaluate import evaluation_seeds, run_episodes
    from envs.driving_env import DrivingEnv

    env = StateView(DrivingEnv(scenario))
    try:
        return run_episodes(model, env, evaluation_seeds(scenario, episodes), progress="evaluating the reference")
    finally:
        env.close()


# -- the bench -----------------------------------------------------------------------------------

TABLE_COLUMNS = (("return", "return", 2), ("collision_rate", "collisions", 1), ("success_rate", "success", 1),
                 ("mean_speed", "speed [m/s]", 2), ("driving_score", "driving score", 3))
PERCENT_COLUMNS = ("collision_rate", "success_rate")


def bench_reference(scenario: str, run: str | None = None, algo: str = "dqn", episodes: int = 200, seed: int = 0,
                    timesteps: int | None = None, time_limit_s: float | None = None, logdir: str | Path = "runs",
                    out: str | Path | None = None, command: str = "") -> dict[str, Any]:
    """Train (or take) clearlane's agent, train the reference with its budget, evaluate both; writes
    `<out>/reference.json` and `<out>/reference.md` and returns the JSON's dict.

    run: a trained clearlane run of this scenario; None trains one with the scenario's default recipe
    (`run.py train --scenario S --seed seed`). time_limit_s: the reference's wall-clock limit; default
    the clearlane run's training time (its training.json), none for a run trained before that file
    existed (the step budget alone)."""
    from agents.evaluate import evaluate_run, summarize
    from agents.runs import find_run, read_run_config, training_seconds
    from agents.train import TrainOptions, train

    loaded = load_scenario(scenario)
    if algo not in REFERENCE_ALGOS:
        raise ValueError(f"unknown reference algorithm {algo!r}; choose one of: {', '.join(REFERENCE_ALGOS)}")
    for name, value in (("--episodes", episodes), ("--timesteps", timesteps), ("--time-limit", time_limit_s)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    observation = state_observation_config(loaded)  # refuse a scenario without a state reference before any training
    if run is None:
        result = train(TrainOptions(scenario=scenario, seed=seed, logdir=logdir, command=command))
        if result.interrupted:
            raise KeyboardInterrupt
        run_dir = result.run_dir
    else:
        run_dir = find_run(run, logdir)
        trained_on = read_run_config(run_dir).scenario
        if load_scenario(trained_on).name != loaded.name:
            raise ValueError(f"{run_dir} trained on {trained_on!r}, not {loaded.name!r}")
    clearlane_seconds = training_seconds(run_dir)
    clearlane, _ = evaluate_run(run_dir, episodes=episodes, backend="highway-env", command=command, progress=True)
    budget = timesteps or clearlane.num_timesteps
    limit = time_limit_s if time_limit_s is not None else clearlane_seconds
    out_dir = Path(out) if out is not None else run_dir / f"reference-{algo}"
    out_dir.mkdir(parents=True, exist_ok=True)
    model, training = train_reference(loaded, algo, budget, limit, seed, out_dir)
    per_episode = evaluate_reference(model, loaded, episodes)
    reference_metrics = summarize(per_episode)
    data = {
        "scenario": loaded.name, "episodes": episodes, "evaluation_backend": "highway-env",
        "seeds": {"first": clearlane.first_seed, "last": clearlane.last_seed},
        "budget": {"env_steps": budget, "wall_clock_s": limit},
        "clearlane": {"run": str(run_dir), "model": clearlane.model, "env_steps": clearlane.num_timesteps,
                      "training_s": clearlane_seconds, "observation": "camera frames",
                      "metrics": {key: estimate.to_dict() for key, estimate in clearlane.metrics.items()}},
        "reference": {"algo": algo, "model": str(training.model_path), "env_steps": training.num_timesteps,
                      "training_s": training.seconds, "stopped_by_clock": training.stopped_by_clock,
                      "observation": f"highway-env {observation['type']} (privileged state)",
                      "hyperparameters": {**REFERENCE_RECIPES[algo], "gamma": model.gamma},
                      "metrics": {key: estimate.to_dict() for key, estimate in reference_metrics.items()},
                      "per_episode": per_episode},
        "command": command,
    }
    atomic_write(out_dir / "reference.json", lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
    atomic_write(out_dir / "reference.md", lambda tmp: tmp.write_text(format_table(data) + "\n"))
    return data


def format_table(data: dict[str, Any]) -> str:
    """Markdown: one row per agent, means with 95 % intervals, training minutes and env steps/s (the
    success column only where the scenario has a goal)."""
    columns = [column for column in TABLE_COLUMNS if column[0] in data["clearlane"]["metrics"]]
    header = ["agent", "observation", *[label for _, label, _ in columns], "training [min]", "env steps",
              "env steps/s"]
    lines = [f"`{data['scenario']}`: {data['episodes']} highway-env evaluation episodes (seeds "
             f"{data['seeds']['first']}..{data['seeds']['last']}), mean [95 % CI]", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name in ("clearlane", "reference"):
        agent = data[name]
        label = "clearlane (PPO from pixels)" if name == "clearlane" else f"highway-env reference ({agent['algo'].upper()})"
        cells = [label, agent["observation"]]
        for key, _, digits in columns:
            cells.append(_estimate_text(agent["metrics"][key], digits, percent=key in PERCENT_COLUMNS))
        seconds = agent["training_s"]
        cells += ["n/a" if seconds is None else f"{seconds / 60:.1f}", f"{agent['env_steps']:,}",
                  "n/a" if not seconds else f"{agent['env_steps'] / seconds:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if data["reference"]["stopped_by_clock"]:
        lines += ["", f"The reference hit the wall-clock limit ({data['budget']['wall_clock_s']:.0f} s) before "
                      f"the step budget ({data['budget']['env_steps']:,} env steps)."]
    return "\n".join(lines)


def _estimate_text(estimate: dict[str, Any], digits: int, percent: bool = False) -> str:
    scale, suffix = (100.0, " %") if percent else (1.0, "")
    mean = f"{estimate['mean'] * scale:.{digits}f}{suffix}"
    if estimate["ci_low"] is None:
        return mean
    return f"{mean} [{estimate['ci_low'] * scale:.{digits}f}, {estimate['ci_high'] * scale:.{digits}f}]"

