"""Agent hyperparameters as typed, frozen dataclasses: `agents/defaults.yaml`, then a user's `--config`.

`agents/defaults.yaml` has a `default:` block that sets every key, and one block per shipped
scenario that overrides some of them:

    default:
      training: {timesteps: 100000, checkpoint_every: 5000, ...}
      policy:   {net_arch: [64, 64], ...}
      ppo:      {learning_rate: 5.0e-4, n_steps: 256, ...}
      a2c:      {learning_rate: 7.0e-4, n_steps: 16, ...}
    highway:
      ppo: {gamma: 0.8}

A block named after a backend (`fast:`) overrides both for runs on that simulator: the batched
backend steps hundreds of envs per call, so its rollouts are short per env, its minibatches large
and its budget in steps larger. (Its block is the straight highways' recipe.) A block named
`<scenario>@<backend>` (`merge@fast:`) overrides all three, for that scenario on that backend.

A `--config FILE` has the shape of one block (any subset of `training`, `policy`, `ppo`, `a2c`).
Layers apply in this order, later wins: `default` < the scenario's block < the backend's block <
the scenario@backend block < `--config FILE` < flags on the command line (`--timesteps`, `--fine-tune`). Unknown keys, wrong types and out-of-range
values are errors that name the file and the key, like scenario files.

The resolved values of one run are a `RunConfig`, written to the run folder as `config.yaml` and
read back by `--resume` and `evaluate`.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError,
                      model_validator)
from pydantic.dataclasses import dataclass

from envs.backends import BACKEND_NAMES, BACKENDS, REFERENCE
from scenarios.validation import describe_validation_error

DEFAULTS_FILE = Path(__file__).resolve().parent / "defaults.yaml"
ALGOS = ("ppo", "a2c")
# backends with a block of their own in defaults.yaml (the reference, highway-env, uses `default`)
BACKEND_BLOCKS = tuple(backend.name for backend in BACKENDS if not backend.reference)
SECTIONS = ("training", "policy", *ALGOS)

_STRICT = ConfigDict(extra="forbid")
Number = StrictInt | StrictFloat


@dataclass(frozen=True, config=_STRICT)
class TrainingConfig:
    """How long to train and how often to checkpoint and evaluate. Step counts are env steps, all envs together."""

    timesteps: Annotated[StrictInt, Field(ge=1)]  # total env steps of the run
    checkpoint_every: Annotated[StrictInt, Field(ge=1)]  # [env steps] a kill -9 loses at most this much
    keep_checkpoints: Annotated[StrictInt, Field(ge=1, le=1000)]  # the newest ones are kept
    eval_every: Annotated[StrictInt, Field(ge=0)]  # [env steps] between evaluations; 0 = never
    # episodes of the periodic evaluation, batched on the fast backend where it reproduces the scenario
    # (seconds for hundreds), on the scenario's first evaluation seeds
    eval_episodes: Annotated[StrictInt, Field(ge=1, le=10_000)]
    # Warm start (agents/imitation.py), fast backend only: DAgger iterations of imitating the
    # privileged teacher before PPO/A2C, each `imitation_steps` policy steps of every env. 0 = none.
    # (Defaults here keep run folders written before these keys existed readable.)
    imitation_iterations: Annotated[StrictInt, Field(ge=0, le=1000)] = 0
    imitation_steps: Annotated[StrictInt, Field(ge=1)] = 40  # [policy steps per env] per iteration
    # actions the teacher searches exhaustively (agents.teacher.LookaheadTeacher's depth), then IDLE up to
    # teacher_horizon policy steps per plan (depth <= horizon)
    teacher_depth: Annotated[StrictInt, Field(ge=1, le=3)] = 2
    teacher_horizon: Annotated[StrictInt, Field(ge=1, le=8)] = 3
    # [s] the teacher's margin: a planned step closing in on the car ahead with a time to collision below
    # this costs a penalty (LookaheadTeacher's min_ttc_s); 0 = none
    teacher_min_ttc_s: Annotated[Number, Field(ge=0.0, le=30.0)] = 3.0
    # [Hz] physics steps per second of the teacher's plans (LookaheadTeacher's plan_hz), between the
    # scenario's policy and simulation frequencies; null = the scenario's own
    teacher_plan_hz: Annotated[StrictInt, Field(ge=1)] | None = None
    # the vehicles the teacher plans with: all, or only those inside the camera frame (agents.teacher.SIGHTS)
    teacher_sight: Literal["all", "camera"] = "all"
    # the other vehicles' routes the teacher plans with: exact ("known"), or, where they choose among
    # routes a camera cannot see (intersection), guessed teacher_route_guesses times per plan for those
    # not yet turning and the plans' values averaged (agents.teacher.ROUTES; that many times the cost)
    teacher_routes: Literal["known", "guessed"] = "known"
    teacher_route_guesses: Annotated[StrictInt, Field(ge=1, le=64)] = 4
    # the imitation also trains the perception student's weights with the actor, on the frames (it keeps
    # frames instead of features: agents/imitation.py); they are frozen again for PPO/A2C. Tried on
    # intersection, whose frames the student was not distilled on: a slightly better fit, the same agent
    # after PPO, so no recipe uses it (docs/BENCHMARKS.md, "The student trained along in the imitation")
    imitation_tunes_perception: StrictBool = False
    # PPO on the fast backend: rollouts, features and minibatches stay on the policy's device
    # (agents/device_rollout.py; the same updates as SB3's). Off by default until measured on a GPU.
    device_rollout: StrictBool = False
    # episodes on highway-env (~1 s each): the final check of a run evaluated on the fast backend, and the
    # periodic evaluation of scenarios the fast backend does not reproduce; 0 = none
    reference_eval_episodes: Annotated[StrictInt, Field(ge=0, le=10_000)] = 20
    # [env steps] between replays in TensorBoard (one episode with the attention overlay, as an animated
    # GIF in the IMAGES tab: agents/explain/training_replay.py); 0 = none
    replay_every: Annotated[StrictInt, Field(ge=0)] = 0
    # Robust policy training (agents/robust/sa_ppo.py, docs/ROBUSTNESS.md): "sa" adds SA-PPO's smoothness
    # regulariser, KL(pi(.|x) || pi(.|x^)) with x^ the MAD attack's frames within robust_eps, to PPO's
    # loss and to the imitation phase's, weighted by robust_reg_weight; the budget ramps up linearly
    # from 0 at step 0 to robust_eps at robust_ramp_steps (0: no ramp). "none" = off (the default).
    robust_reg: Literal["none", "sa"] = "none"
    robust_eps: Annotated[Number, Field(gt=0.0, le=1.0)] = 3 / 255  # [0, 1] pixel units: the l-inf budget at full ramp
    robust_reg_weight: Annotated[Number, Field(ge=0.0)] = 1.0  # kappa: the regulariser's weight in the loss
    robust_steps: Annotated[StrictInt, Field(ge=1, le=100)] = 3  # PGD steps of the MAD attack that crafts x^
    # [env steps of the run] where the ramp reaches robust_eps; 0 = the full budget from the first step
    # (imitation included); None = halfway through the PPO phase
    robust_ramp_steps: Annotated[StrictInt, Field(ge=0)] | None = 0
    # When x^ is crafted. "rollout": once per PPO rollout (and per DAgger iteration), against the policy of
    # that moment, and the student's features of x and x^ cached, so that each minibatch's R runs only the
    # actor (MLP and 1x1 map conv); "minibatch": afresh for every minibatch through the whole network,
    # SA-PPO's own way, which costs x29-82 per PPO update on the CPU (docs/ROBUSTNESS.md).
    robust_refresh: Literal["rollout", "minibatch"] = "rollout"
    # The attack that crafts x^ with robust_refresh "rollout": "mad" (PGD on the KL, SA-PPO's) or "pgd" (PGD
    # pushing the policy off its clean greedy action, `evaluate --attack pgd`'s objective; its PPO phase broke the
    # agent on the one seed tried: docs/ROBUSTNESS.md, (l)).
    robust_attack: Literal["mad", "pgd"] = "mad"
    # lambda: adversarial imitation. In the imitation phase, lambda x the regret loss on the attacked frames'
    # features, labelled with the privileged teacher's action values of the same states: the actor learns
    # which action is right under attack, not only to change little (agents/imitation.py). 0 = off. One seed
    # tried (docs/ROBUSTNESS.md, (k)): no more robust after the imitation, and it drove worse after PPO.
    robust_imitation_weight: Annotated[Number, Field(ge=0.0)] = 0.0

    @model_validator(mode="after")
    def _teacher_plans_within_its_horizon(self) -> TrainingConfig:
        if self.teacher_depth > self.teacher_horizon:
            raise ValueError(f"teacher_depth ({self.teacher_depth}) must be <= teacher_horizon ({self.teacher_horizon}): "
                             "the teacher searches that many actions within its horizon")
        return self

    @model_validator(mode="after")
    def _attacked_frames_are_cached(self) -> TrainingConfig:
        if self.robust_refresh == "minibatch" and (self.robust_attack != "mad" or self.robust_imitation_weight > 0):
            raise ValueError("robust_attack other than mad and robust_imitation_weight > 0 need robust_refresh: "
                             "rollout (the attacked frames' features are cached once per rollout)")
        if self.robust_imitation_weight > 0 and not self.robust:
            raise ValueError("robust_imitation_weight > 0 needs robust_reg: sa (--robust-reg sa), which crafts "
                             "the attacked frames")
        if self.imitation_tunes_perception and self.robust:
            raise ValueError("imitation_tunes_perception needs robust_reg: none: the SA regulariser reads the "
                             "student's features cached once per iteration, which tuning the student would make stale")
        return self

    @property
    def imitates(self) -> bool:
        return self.imitation_iterations > 0

    @property
    def robust(self) -> bool:
        return self.robust_reg != "none"


@dataclass(frozen=True, config=_STRICT)
class PolicyConfig:
    """The policy: the perception student as features extractor, then small actor and critic MLPs."""

    net_arch: Annotated[tuple[Annotated[StrictInt, Field(ge=1, le=4096)], ...], Field(max_length=8)]  # hidden sizes of pi and vf
    activation: Literal["tanh", "relu"]
    perception: StrictStr | None  # checkpoint (.safetensors); null = the shipped student
    fine_tune: StrictBool  # train the perception weights too (default: frozen)
    include_labels: StrictBool  # features = embedding + predicted labels
    # > 0: the actor and critic also read the student's last feature map, each through a 1x1 conv
    # to this many channels per place (agents/policy.py); 0 = embedding (+ labels) only.
    # (Runs saved before this key existed read as 0.)
    map_channels: Annotated[StrictInt, Field(ge=0, le=256)] = 0


@dataclass(frozen=True, config=_STRICT)
class PPOConfig:
    """stable-baselines3 PPO arguments (same names and meaning)."""

    learning_rate: Annotated[Number, Field(gt=0.0, le=1.0)]
    n_steps: Annotated[StrictInt, Field(ge=2)]  # env steps per env per rollout
    batch_size: Annotated[StrictInt, Field(ge=2)]  # minibatch size [samples]
    n_epochs: Annotated[StrictInt, Field(ge=1)]
    gamma: Annotated[Number, Field(ge=0.0, le=1.0)]
    gae_lambda: Annotated[Number, Field(ge=0.0, le=1.0)]
    clip_range: Annotated[Number, Field(gt=0.0, le=1.0)]
    ent_coef: Annotated[Number, Field(ge=0.0)]
    vf_coef: Annotated[Number, Field(ge=0.0)]
    max_grad_norm: Annotated[Number, Field(gt=0.0)]
    normalize_advantage: StrictBool
    target_kl: Annotated[Number, Field(gt=0.0)] | None  # stop an update early past this KL


@dataclass(frozen=True, config=_STRICT)
class A2CConfig:
    """stable-baselines3 A2C arguments (same names and meaning)."""

    learning_rate: Annotated[Number, Field(gt=0.0, le=1.0)]
    n_steps: Annotated[StrictInt, Field(ge=1)]  # env steps per env per update
    gamma: Annotated[Number, Field(ge=0.0, le=1.0)]
    gae_lambda: Annotated[Number, Field(ge=0.0, le=1.0)]
    ent_coef: Annotated[Number, Field(ge=0.0)]
    vf_coef: Annotated[Number, Field(ge=0.0)]
    max_grad_norm: Annotated[Number, Field(gt=0.0)]
    use_rms_prop: StrictBool
    rms_prop_eps: Annotated[Number, Field(gt=0.0)]
    normalize_advantage: StrictBool


@dataclass(frozen=True, config=_STRICT)
class AgentConfig:
    """Every hyperparameter for one scenario, both algorithms."""

    training: TrainingConfig
    policy: PolicyConfig
    ppo: PPOConfig
    a2c: A2CConfig

    def algo_config(self, algo: str) -> PPOConfig | A2CConfig:
        return getattr(self, check_algo(algo))


@dataclass(frozen=True, config=_STRICT)
class RunConfig:
    """What one run used: written as `<run>/config.yaml`, read back by `--resume` and `evaluate`."""

    scenario: StrictStr  # a shipped scenario's name, or the absolute path of a YAML file
    algo: Literal["ppo", "a2c"]
    seed: Annotated[StrictInt, Field(ge=0)]
    n_envs: Annotated[StrictInt, Field(ge=1)]
    device: StrictStr  # as asked for: auto | cpu | cuda[:N]
    observation_shape: tuple[StrictInt, StrictInt, StrictInt]  # (C, H, W) of the camera
    n_actions: Annotated[StrictInt, Field(ge=1)]
    training: TrainingConfig
    policy: PolicyConfig
    ppo: PPOConfig | None = None  # the chosen algorithm's block; the other one is None
    a2c: A2CConfig | None = None
    backend: Literal[BACKEND_NAMES] = REFERENCE.name  # the simulator it trains on (envs.backends)

    @property
    def algo_params(self) -> PPOConfig | A2CConfig:
        params = getattr(self, self.algo)
        if params is None:
            raise ValueError(f"run config has algo {self.algo!r} but no {self.algo}: block")
        return params

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["observation_shape"] = list(self.observation_shape)
        data["policy"]["net_arch"] = list(self.policy.net_arch)
        return {key: value for key, value in data.items() if value is not None or key not in ALGOS}


def check_algo(algo: str) -> str:
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of: {', '.join(ALGOS)}")
    return algo


# -- loading -------------------------------------------------------------------------------------


def load_agent_config(
    scenario_name: str | None,
    config_file: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    defaults_file: str | Path = DEFAULTS_FILE,
    backend: str = "highway-env",
    overrides_source: str | Path | None = None,
) -> AgentConfig:
    """The hyperparameters for `scenario_name` on `backend`: defaults, the scenario's block, the
    backend's block, the user's file, then `overrides`.

    scenario_name: a shipped scenario (its block applies, if any); None for a user's scenario file.

    overrides: {section: {key: value}} from command-line flags, e.g. {"training": {"timesteps": 5000}}.

    overrides_source: the file that errors in `overrides` are reported against (a sweep's grid), if any.
    """
    defaults_file = Path(defaults_file)
    blocks = _read_defaults(str(defaults_file), defaults_file.stat().st_mtime_ns)
    merged = _merge(blocks["default"], blocks.get(scenario_name, {}))
    merged = _merge(merged, blocks.get(backend, {}))
    merged = _merge(merged, blocks.get(f"{scenario_name}@{backend}", {}))
    source: Path = defaults_file
    if config_file is not None:
        config_file = Path(config_file).expanduser()
        user = _read_block(config_file)
        merged = _merge(merged, user)
        source = config_file
    if overrides:
        merged = _merge(merged, overrides)
        if overrides_source is not None:
            source = Path(overrides_source)
    return _validate(AgentConfig, merged, source)


def config_file_sets(config_file: str | Path | None, section: str, key: str) -> bool:
    """Whether the user's --config file sets `section.key` itself (not only the defaults do)."""
    if config_file is None:
        return False
    return key in (_read_block(Path(config_file).expanduser()).get(section) or {})


def parse_run_config(data: Any, path: Path) -> RunConfig:
    """Validate a `config.yaml` read from a run folder."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of keys at the top level")
    return _validate(RunConfig, data, path)


@lru_cache(maxsize=8)
def _read_defaults(path_text: str, _mtime_ns: int) -> dict[str, dict[str, Any]]:
    from scenarios import available_scenarios

    path = Path(path_text)
    raw = _read_yaml(path)
    if "default" not in raw:
        raise ValueError(f"{path}: needs a 'default:' block that sets every key")
    scenarios = set(available_scenarios())
    blocks = {}
    for name, block in raw.items():
        scenario, _, backend = name.partition("@")
        known = name == "default" or name in BACKEND_BLOCKS or name in scenarios or (
            scenario in scenarios and backend in BACKEND_BLOCKS)
        if not known:
            raise ValueError(
                f"{path}: {name}: unknown block; blocks are 'default', a backend ({', '.join(BACKEND_BLOCKS)}), "
                f"a shipped scenario ({', '.join(sorted(scenarios))}) or scenario@backend (merge@fast)"
            )
        blocks[name] = _check_block(block, path, prefix=f"{name}.")
    _validate(AgentConfig, blocks["default"], path, prefix="default.")  # the default block alone is complete
    for name, block in blocks.items():
        _validate(AgentConfig, _merge(blocks["default"], block), path, prefix=f"{name}.")
    return blocks


def _read_block(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return _check_block(_read_yaml(path), path, prefix="")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of keys at the top level")
    return raw


def _check_block(block: Any, path: Path, prefix: str) -> dict[str, Any]:
    """A block maps section names to mappings; unknown sections are errors."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ValueError(f"{path}: {prefix.rstrip('.') or '<top level>'}: expected a mapping of sections")
    for section, body in block.items():
        if section not in SECTIONS:
            raise ValueError(f"{path}: {prefix}{section}: unknown key; allowed keys here: {', '.join(SECTIONS)}")
        if not isinstance(body, dict):
            raise ValueError(f"{path}: {prefix}{section}: expected a mapping of keys, got {body!r}")
    return block


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Two-level merge: sections, then keys (a list value replaces, it is not appended)."""
    merged = {section: dict(body) for section, body in base.items()}
    for section, body in update.items():
        merged.setdefault(section, {}).update(body)
    return merged


def _validate(cls: type, data: dict[str, Any], path: Path, prefix: str = ""):
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as error:
        raise ValueError(describe_validation_error(cls, error, path, prefix)) from None
