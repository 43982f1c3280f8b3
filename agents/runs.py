"""Run folders, checkpoints, and building or loading the agent of a run.

A run folder `runs/<scenario>-<algo>-<YYYYmmdd-HHMMSS>/` holds

    config.yaml                  the resolved RunConfig; `--resume` and `evaluate` read it back
    command.txt                  every command line that trained this run, one per line
    perception.safetensors       the perception weights the policy started from (the folder is self-contained)
    events.out.tfevents.*        TensorBoard: rollout/*, train/*, safety/*, eval/*, eval_final/*, hparams
    checkpoints/step-<N>.zip     SB3 `model.save` every `checkpoint_every` env steps; the newest few are kept
    model.zip                    the final model (SB3 `model.save`)
    evaluation-<scenario>.json   written by `python run.py evaluate`

Every file that matters is written to a temporary name and renamed (`envs.files.atomic_write`), so
a killed run leaves the previous checkpoint intact.

Loading never unpickles: SB3's `Algorithm.load` rebuilds objects from cloudpickle strings stored in
the zip. Here the agent is rebuilt from `config.yaml` and only the tensors are read from the zip
(`set_parameters`, which uses `torch.load(weights_only=True)`); the step counters come from the
zip's JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import yaml

from agents.config import RunConfig, parse_run_config
from envs.files import atomic_write

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
PERCEPTION_FILE = "perception.safetensors"
FINAL_MODEL = "model.zip"
CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT = re.compile(r"^step-(\d+)\.zip$")


# -- folders -------------------------------------------------------------------------------------


def run_name(scenario_name: str, algo: str, now: float | None = None) -> str:
    """`<scenario>-<algo>-<YYYYmmdd-HHMMSS>` in local time."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{scenario_name}-{algo}-{stamp}"


def create_run_dir(path: str | os.PathLike, force: bool = False) -> Path:
    """Make a new, empty run folder; an existing one is replaced only with `force`."""
    path = Path(path)
    if path.exists():
        if not force:
            raise ValueError(
                f"run folder {path} already exists; pass --force to replace it, or --resume {path} to continue it"
            )
        if not path.is_dir() or (any(path.iterdir()) and not (path / CONFIG_FILE).is_file()):
            raise ValueError(f"{path} exists and is not a run folder (no {CONFIG_FILE}); refusing to delete it")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def find_run(run: str | os.PathLike, logdir: str | os.PathLike = "runs") -> Path:
    """The run folder named by `run`: a path, or a name inside `logdir`."""
    candidates = [Path(run).expanduser()]
    if not Path(run).is_absolute():
        candidates.append(Path(logdir) / run)
    for path in candidates:
        if path.is_dir():
            if not (path / CONFIG_FILE).is_file():
                raise FileNotFoundError(
                    f"{path} is not a run folder: it has no {CONFIG_FILE} (run folders are made by `python run.py train`)"
                )
            return path
    raise FileNotFoundError(
        f"run folder not found: {run} (give a folder made by `python run.py train`, e.g. {Path(logdir) / 'highway-ppo-<time>'})"
    )


def read_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
    return parse_run_config(data, path)


def write_run_config(run_dir: Path, config: RunConfig) -> Path:
    text = "# The resolved config of this run; `python run.py train --resume` reads it back.\n"
    text += yaml.safe_dump(config.to_dict(), sort_keys=False)
    return atomic_write(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def append_command(run_dir: Path, command: str) -> None:
    """Add one command line to command.txt (one per training session: start, resumes)."""
    with open(run_dir / COMMAND_FILE, "a") as handle:
        handle.write(command.rstrip("\n") + "\n")


def copy_file(source: Path, target: Path) -> Path:
    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


# -- checkpoints ---------------------------------------------------------------------------------


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The run's periodic checkpoints, oldest first."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _CHECKPOINT.match(path.name))]
    return [path for _, path in sorted(found)]


def save_checkpoint(model, run_dir: Path, keep: int) -> Path:
    """`model.save` to checkpoints/step-<N>.zip (atomically); delete all but the newest `keep`."""
    path = run_dir / CHECKPOINT_DIR / f"step-{model.num_timesteps:010d}.zip"
    atomic_write(path, lambda tmp: model.save(tmp))
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def save_final_model(model, run_dir: Path) -> Path:
    return atomic_write(run_dir / FINAL_MODEL, lambda tmp: model.save(tmp))


def saved_counters(path: Path) -> dict[str, int]:
    """num_timesteps and _n_updates stored in an SB3 zip (read from its JSON; nothing is unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
        return {"num_timesteps": int(data["num_timesteps"]), "_n_updates": int(data.get("_n_updates", 0))}
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a stable-baselines3 model file or is corrupted ({error!r})") from None


def latest_model(run_dir: Path) -> Path:
    """The newest model of the run: model.zip or the last checkpoint, whichever has more timesteps."""
    candidates = [run_dir / FINAL_MODEL] if (run_dir / FINAL_MODEL).is_file() else []
    candidates += checkpoint_paths(run_dir)[-1:]  # on a tie, max() keeps the first: model.zip
    if not candidates:
        raise FileNotFoundError(
            f"{run_dir} has no model: no {FINAL_MODEL} and no {CHECKPOINT_DIR}/step-*.zip "
            f"(the run stopped before its first checkpoint; train it again, with --force to reuse its name)"
        )
    return max(candidates, key=lambda path: saved_counters(path)["num_timesteps"])


# -- building and loading agents -----------------------------------------------------------------


def policy_kwargs(config: RunConfig, perception_path: Path) -> dict[str, Any]:
    """SB3 policy_kwargs of `PerceptionPolicy`: the perception extractor, then actor and critic MLPs of
    `net_arch` (reading the student's feature map too when `map_channels` > 0)."""
    from torch import nn

    from perception.extractor import PerceptionExtractor

    hidden = list(config.policy.net_arch)
    return {
        "features_extractor_class": PerceptionExtractor,
        "features_extractor_kwargs": {
            "model_path": str(perception_path),
            "fine_tune": config.policy.fine_tune,
            "include_labels": config.policy.include_labels,
            "include_map": config.policy.map_channels > 0,
        },
        "map_channels": config.policy.map_channels,  # PerceptionPolicy (agents/policy.py)
        "net_arch": {"pi": hidden, "vf": list(hidden)},
        "activation_fn": {"tanh": nn.Tanh, "relu": nn.ReLU}[config.policy.activation],
        "normalize_images": True,  # uint8 frames / 255 -> [0, 1], what the extractor reads
    }


def build_agent(config: RunConfig, run_dir: Path, env, device: str, seed: int | None = None):
    """A fresh SB3 PPO or A2C for `config` on `env` (a VecEnv), perception weights from the run folder.

    PPO is `CachedFeaturesPPO`: SB3's PPO, which reads a frozen student's features once per rollout
    instead of once per epoch; it saves and loads as plain PPO."""
    from stable_baselines3 import A2C

    from agents.cached_features import CachedFeaturesPPO
    from agents.policy import PerceptionPolicy

    algorithm = {"ppo": CachedFeaturesPPO, "a2c": A2C}[config.algo]
    params = dataclasses.asdict(config.algo_params)
    perception = run_dir / PERCEPTION_FILE
    model = algorithm(
        PerceptionPolicy, env, policy_kwargs=policy_kwargs(config, perception),
        seed=config.seed if seed is None else seed, device=device, verbose=0, **params,
    )
    return model


def check_spaces(config: RunConfig, run_dir: Path, observation_space, action_space, scenario: str) -> None:
    """A clear error when an env's spaces differ from the ones the run was trained on."""
    shape = tuple(int(n) for n in observation_space.shape)
    if shape != tuple(config.observation_shape):
        raise ValueError(
            f"run {run_dir} was trained on observations of shape (C, H, W) = {tuple(config.observation_shape)} "
            f"(scenario {config.scenario}), but scenario {scenario} gives {shape}; use a scenario with the same "
            f"camera view, frame size and stack"
        )
    n_actions = int(getattr(action_space, "n", -1))
    if n_actions != config.n_actions:
        raise ValueError(
            f"run {run_dir} was trained with {config.n_actions} actions (scenario {config.scenario}), but scenario "
            f"{scenario} has {n_actions}; use a scenario with the same action set"
        )


def load_agent(config: RunConfig, run_dir: Path, env, device: str, path: Path | None = None, seed: int | None = None):
    """The run's agent on `env` with the weights (and optimizer state, counters) of `path` (default: newest)."""
    path = latest_model(run_dir) if path is None else path
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    counters = saved_counters(path)
    model = build_agent(config, run_dir, env, device, seed=seed)
    model.set_parameters(str(path), exact_match=True, device=device)
    model.num_timesteps = counters["num_timesteps"]
    # SB3 has no public way to restore its update counter (train/n_updates) without unpickling:
    # `PPO.load` restores it from the zip's pickled data, which a run folder never unpickles, and
    # `set_parameters` loads weights only. So the private attribute is set, from the zip's JSON.
    model._n_updates = counters["_n_updates"]
    return model
