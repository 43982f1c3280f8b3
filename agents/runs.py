"""Run folders, checkpoints, and building or loading the agent of a run.

A run folder `runs/<scenario>-<algo>-<YYYYmmdd-HHMMSS>/` holds

    config.yaml                  the resolved RunConfig; `--resume` and `evaluate` read it back
    command.txt                  every command line that trained this run, one per line
    perception.safetensors       the perception weights the policy started from (the folder is self-contained)
    events.out.tfevents.*        TensorBoard: rollout/*, train/*, safety/*, eval/*, eval_final/*, hparams
    checkpoints/step-<N>.zip     SB3 `model.save` every `checkpoint_every` env steps; the newest few are kept
    model.zip                    the final model (SB3 `model.save`)
    evaluation-<scenario>.json   written by `python run.py evaluate`
    training.json                each training session's env steps and wall time (`bench reference` reads it)

Every file that matters is written to a temporary name and renamed (`envs.files.atomic_write`), so
a killed run leaves the previous checkpoint intact.

Loading never unpickles: SB3's `Algorithm.load` rebuilds objects from cloudpickle strings stored in
the zip. Here the agent is rebuilt from `config.yaml` and only the tensors are read from the zip
(`set_parameters`, which uses `torch.load(weights_only=True)`); the step counters come from the
zip's JSON.

`evaluate`, `train --resume` and the explanations load the newest *valid* model
(`load_newest_agent`): model.zip or a checkpoint whose zip is intact and whose tensors fit the run's
policy. Newer files that are damaged or of another architecture are skipped with a warning that
names them and the fault; when none is valid, one error names every file.

A run folder is made only after every check of a new run passed, and `train` removes it again when
the start fails before anything was saved (`remove_unstarted_run`), so the same `--name` is free.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import re
import shutil
import time
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agents.config import RunConfig, parse_run_config
from envs.files import atomic_write
from scenarios.schema import TRAINING_SEED_LIMIT

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
PERCEPTION_FILE = "perception.safetensors"
FINAL_MODEL = "model.zip"
TRAINING_LOG = "training.json"
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


def remove_unstarted_run(run_dir: Path) -> bool:
    """Delete the folder of a new run whose start failed, unless it already holds a model or a
    checkpoint (then it can be resumed). `create_run_dir` made it, so it holds nothing of anyone
    else's. Returns whether it was removed."""
    if (run_dir / FINAL_MODEL).exists() or checkpoint_paths(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


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


def record_training_session(run_dir: Path, start_timesteps: int, num_timesteps: int, seconds: float,
                            interrupted: bool) -> Path:
    """Add one training session (its env steps and wall time [s]) to training.json."""
    sessions = _training_sessions(run_dir)
    sessions.append({"start_timesteps": int(start_timesteps), "num_timesteps": int(num_timesteps),
                     "seconds": round(float(seconds), 3), "interrupted": bool(interrupted)})
    text = json.dumps({"sessions": sessions}, indent=2) + "\n"
    return atomic_write(run_dir / TRAINING_LOG, lambda tmp: tmp.write_text(text))


def training_seconds(run_dir: Path) -> float | None:
    """The run's wall time of training [s], all sessions together; None for a run trained before training.json."""
    sessions = _training_sessions(run_dir)
    return sum(session["seconds"] for session in sessions) if sessions else None


def _training_sessions(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / TRAINING_LOG
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["sessions"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a training log ({error}); delete it to start a new one") from None


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


MODEL_ENTRIES = ("data", "policy.pth")  # what every SB3 model zip holds (besides the optimizer, version, ...)


def saved_counters(path: Path) -> dict[str, int]:
    """num_timesteps and _n_updates stored in an SB3 zip (read from its JSON; nothing is unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
        return {"num_timesteps": int(data["num_timesteps"]), "_n_updates": int(data.get("_n_updates", 0))}
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, EOFError, zlib.error) as error:
        raise ValueError(f"{path} is not a stable-baselines3 model file or is corrupted ({error!r})") from None


def check_model_file(path: Path) -> dict[str, int]:
    """The counters of an SB3 zip that opens, holds `MODEL_ENTRIES` and whose every member passes its
    CRC check; ValueError saying what is wrong otherwise. Whether its tensors fit the run's policy is
    `load_agent`'s check."""
    try:
        with zipfile.ZipFile(path) as archive:
            missing = [name for name in MODEL_ENTRIES if name not in archive.namelist()]
            if missing:
                raise ValueError(f"{path} is not a stable-baselines3 model file: it has no {', '.join(missing)}")
            damaged = archive.testzip()  # reads every member: a flipped byte fails its CRC
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:  # an unreadable file (OSError) is not a damaged one
        raise ValueError(f"{path} is not a stable-baselines3 model file or is corrupted ({error})") from None
    if damaged is not None:
        raise ValueError(f"{path} is corrupted: its member {damaged} fails the zip's CRC check")
    return saved_counters(path)


def model_paths(run_dir: Path) -> list[Path]:
    """model.zip and the periodic checkpoints, newest first: by the timesteps they hold (a file whose
    count cannot be read: model.zip first, a checkpoint by the step in its name). On a tie, model.zip."""

    def steps(path: Path) -> float:
        try:
            return saved_counters(path)["num_timesteps"]
        except ValueError:
            match = _CHECKPOINT.match(path.name)
            return int(match.group(1)) if match else math.inf

    candidates = [run_dir / FINAL_MODEL] if (run_dir / FINAL_MODEL).is_file() else []
    candidates += checkpoint_paths(run_dir)[::-1]
    return sorted(candidates, key=lambda path: -steps(path))  # stable: model.zip before a checkpoint of its count


def _no_model(run_dir: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{run_dir} has no model: no {FINAL_MODEL} and no {CHECKPOINT_DIR}/step-*.zip "
        f"(the run stopped before its first checkpoint; train it again, with --force to reuse its name)"
    )


def latest_model(run_dir: Path) -> Path:
    """The newest model file of the run that is intact (`check_model_file`): model.zip or a checkpoint,
    whichever has more timesteps. Damaged newer files are skipped with a warning; ValueError when none
    is intact. (`load_newest_agent` also checks that its tensors fit the run's policy.)"""
    candidates = model_paths(run_dir)
    if not candidates:
        raise _no_model(run_dir)
    skipped: list[tuple[str, str]] = []
    for path in candidates:
        try:
            check_model_file(path)
        except ValueError as error:
            skipped.append(_short(error, path, run_dir))
            continue
        _report_skipped(run_dir, path, skipped)
        return path
    raise _nothing_valid(run_dir, skipped)


def _short(error: Exception, path: Path, run_dir: Path, limit: int = 320) -> tuple[str, str]:
    """An error about one of the run's model files -> (its name inside the run folder, the rest of
    the message on one line)."""
    text = " ".join(str(error).split())
    text = text.removeprefix(str(path))
    return str(path.relative_to(run_dir)), text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(skipped: list[tuple[str, str]]) -> str:
    """'model.zip is corrupted ...; checkpoints/step-...zip: the same' (a fault is spelled out once)."""
    parts, previous = [], None
    for name, fault in skipped:
        parts.append(f"{name}: the same" if fault == previous else name + fault)
        previous = fault
    return "; ".join(parts)


def _report_skipped(run_dir: Path, used: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        log.warning(
            "skipped %d newer model file(s) of %s: %s; using %s (%s steps)", len(skipped), run_dir, _describe(skipped),
            used.relative_to(run_dir), f"{saved_counters(used)['num_timesteps']:,}",
        )


def _nothing_valid(run_dir: Path, skipped: list[tuple[str, str]]) -> ValueError:
    return ValueError(
        f"{run_dir} has no usable model: {_describe(skipped)}. Restore a good {FINAL_MODEL} or checkpoint, "
        f"or train the run again (--force to reuse its name)"
    )


# -- building and loading agents -----------------------------------------------------------------


def policy_kwargs(config: RunConfig, perception_path: Path) -> dict[str, Any]:
    """SB3 policy_kwargs of `PerceptionPolicy`: the perception extractor, then actor and critic MLPs of
    `net_arch` (reading the student's feature map too when `map_channels` > 0)."""
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
        "activation_fn": activation_module(config.policy.activation),
        "normalize_images": True,  # uint8 frames / 255 -> [0, 1], what the extractor reads
    }


def activation_module(name: str) -> type:
    """policy.activation ("tanh" or "relu") -> the torch module class of the actor's and critic's MLPs."""
    from torch import nn

    return {"tanh": nn.Tanh, "relu": nn.ReLU}[name]


def build_agent(config: RunConfig, run_dir: Path, env, device: str, seed: int | None = None):
    """A fresh SB3 PPO or A2C for `config` on `env` (a VecEnv), perception weights from the run folder.

    PPO is `CachedFeaturesPPO`: SB3's PPO, which reads a frozen student's features once per rollout
    instead of once per epoch, or with `training.device_rollout` its `DevicePPO`, whose rollouts stay
    on the device; both save and load as plain PPO. With `training.robust_reg: sa` it is `SmoothPPO`
    (agents/robust/sa_ppo.py: CachedFeaturesPPO plus SA-PPO's regulariser), which saves as plain PPO too."""
    from stable_baselines3 import A2C

    from agents.cached_features import CachedFeaturesPPO
    from agents.device_rollout import DevicePPO
    from agents.policy import PerceptionPolicy

    from agents.robust.sa_ppo import SmoothPPO, check_robust_training, schedule_for

    check_robust_training(config.algo, config.training)
    ppo = DevicePPO if config.training.device_rollout else CachedFeaturesPPO
    algorithm = {"ppo": ppo, "a2c": A2C}[config.algo]
    params = dataclasses.asdict(config.algo_params)
    if config.training.robust:  # `--robust-reg sa`: PPO with SA-PPO's regulariser (agents/robust/sa_ppo.py)
        algorithm = SmoothPPO
        params["smoothing"] = schedule_for(config.training, config.n_envs)
    perception = run_dir / PERCEPTION_FILE
    model = algorithm(
        PerceptionPolicy, env, policy_kwargs=policy_kwargs(config, perception),
        seed=config.seed if seed is None else seed, device=device, verbose=0, **params,
    )
    seed_episodes(model.get_env(), model.seed)
    return model


def seed_episodes(env: VecEnv | None, seed: int | None) -> None:
    """Env i's episodes start from seed * num_envs + i. SB3 seeds env i with seed + i, so runs of
    seeds 0 and 1 on 256 envs would share 255 of their 256 episode streams (differing in the policy's
    initialisation and what follows from it, not in where episodes start); seed 0 keeps SB3's seeds
    0 .. num_envs - 1. Wrapped below the evaluation seeds (a resume's seed adds its step count), so no
    run trains on them."""
    if env is not None and seed is not None:
        env.seed(seed * env.num_envs % (TRAINING_SEED_LIMIT - env.num_envs))


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
    """The run's agent on `env` with the weights (and optimizer state, counters) of `path`
    (default: the newest valid model, `load_newest_agent`)."""
    if path is None:
        return load_newest_agent(config, run_dir, env, device, seed=seed)[0]
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    model = build_agent(config, run_dir, env, device, seed=seed)
    _load_weights(model, path, run_dir, device)
    return model


def load_agent_to_play(config: RunConfig, run_dir: Path, env, device: str, seed: int | None = None):
    """The run's newest valid agent (`load_newest_agent`) on one gym env, to play or check, not to train
    -> (agent, path of its model). PPO warns that its mini-batch does not divide one env's rollout:
    nothing trains here, so that warning is silenced."""
    import warnings

    from stable_baselines3.common.vec_env import DummyVecEnv

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You have specified a mini-batch size")
        return load_newest_agent(config, run_dir, DummyVecEnv([lambda: env]), device, seed=seed)


def load_newest_agent(config: RunConfig, run_dir: Path, env, device: str, seed: int | None = None):
    """The run's agent on `env` with the newest model that is valid -> (agent, path of that model).

    Valid: the zip is intact (`check_model_file`) and its tensors load into this run's policy. Newer
    files that are not are skipped, and a warning says which and why; ValueError naming every file
    and its fault when none is valid. The agent is built once; a failed load is overwritten by the
    next (`set_parameters(exact_match=True)` replaces every tensor and the optimizer state).
    """
    candidates = model_paths(run_dir)
    if not candidates:
        raise _no_model(run_dir)
    model = build_agent(config, run_dir, env, device, seed=seed)
    skipped: list[tuple[str, str]] = []
    for path in candidates:
        try:
            check_model_file(path)
            _load_weights(model, path, run_dir, device)
        except ValueError as error:
            skipped.append(_short(error, path, run_dir))
            continue
        _report_skipped(run_dir, path, skipped)
        return model, path
    raise _nothing_valid(run_dir, skipped)


def _load_fault(error: Exception) -> str:
    """torch's load_state_dict error ("Error(s) in loading state_dict for X:", then lines that list
    every missing, unexpected or differently shaped tensor) in a few words, the first tensor named."""
    faults, mismatches = [], []
    for line in (line.strip() for line in str(error).splitlines()[1:]):
        names = re.findall(r'"([^"]+)"', line)
        if line.startswith("Missing key(s)") and names:
            faults.append(f"{len(names)} tensor(s) missing, e.g. {names[0]}")
        elif line.startswith("Unexpected key(s)") and names:
            faults.append(f"{len(names)} unexpected tensor(s), e.g. {names[0]}")
        elif match := re.match(r"size mismatch for (\S+): copying a param with shape torch.Size\((\[.*?\])\) "
                               r"from checkpoint, the shape in current model is torch.Size\((\[.*?\])\)", line):
            mismatches.append(f"size mismatch for {match[1]}: {match[2]} in the file, {match[3]} in the policy")
    if mismatches:
        faults.append(mismatches[0] + (f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""))
    text = "; ".join(faults) if faults else " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _load_weights(model, path: Path, run_dir: Path, device: str) -> None:
    """`set_parameters` from `path`, and the step counters from its JSON; ValueError naming the file
    when it is damaged or its tensors do not fit the run's policy (another architecture, another run's model)."""
    counters = check_model_file(path)
    try:
        model.set_parameters(str(path), exact_match=True, device=device)
    except (RuntimeError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError) as error:
        raise ValueError(
            f"{path} is not a model of this run's architecture (its tensors do not fit the run's policy: "
            f"{_load_fault(error)})"
        ) from None
    model.num_timesteps = counters["num_timesteps"]
    # SB3 has no public way to restore its update counter (train/n_updates) without unpickling:
    # `PPO.load` restores it from the zip's pickled data, which a run folder never unpickles, and
    # `set_parameters` loads weights only. So the private attribute is set, from the zip's JSON.
    model._n_updates = counters["_n_updates"]
