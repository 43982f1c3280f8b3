"""Hyperparameters: defaults.yaml per scenario, --config overrides, strict errors naming file and key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from agents.config import DEFAULTS_FILE, RunConfig, check_algo, load_agent_config
from agents.runs import read_run_config, write_run_config
from scenarios import available_scenarios


@pytest.mark.parametrize("scenario", available_scenarios())
def test_every_shipped_scenario_gets_a_complete_valid_config(scenario):
    config = load_agent_config(scenario)
    assert config.training.timesteps > 0
    assert 0.0 < config.ppo.gamma <= 1.0 and 0.0 < config.a2c.gamma <= 1.0
    assert config.policy.fine_tune is False  # the student stays frozen by default


def test_highway_follows_highway_envs_ppo_recipe():
    ppo = load_agent_config("highway").ppo
    assert (ppo.gamma, ppo.learning_rate, ppo.batch_size, ppo.n_epochs) == (0.8, 5e-4, 64, 10)


def test_layers_apply_in_order_defaults_scenario_file_flags(tmp_path):
    assert load_agent_config(None).ppo.gamma == 0.8  # a user's scenario file: the default block
    assert load_agent_config("intersection").ppo.gamma == 0.95  # its own block
    user = tmp_path / "mine.yaml"
    user.write_text("ppo: {gamma: 0.7, n_steps: 64}\ntraining: {timesteps: 1000}\n")
    config = load_agent_config("intersection", user, overrides={"training": {"timesteps": 50}})
    assert config.ppo.gamma == 0.7 and config.ppo.n_steps == 64
    assert config.ppo.ent_coef == 0.01  # from the intersection block, untouched by the file
    assert config.training.timesteps == 50  # the command line wins
    assert config.a2c == load_agent_config("intersection").a2c


def test_a_backend_block_applies_after_the_scenario_and_before_the_user(tmp_path):
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())
    defaults["fast"] = {"ppo": {"n_steps": 8, "gamma": 0.5}}
    path = tmp_path / "defaults.yaml"
    path.write_text(yaml.safe_dump(defaults))
    on_fast = load_agent_config("intersection", defaults_file=path, backend="fast")
    assert (on_fast.ppo.n_steps, on_fast.ppo.gamma) == (8, 0.5)  # the backend's block wins over the scenario's
    assert on_fast.ppo.ent_coef == 0.01  # keys it does not set come from the scenario's block
    user = tmp_path / "mine.yaml"
    user.write_text("ppo: {gamma: 0.7}\n")
    assert load_agent_config("intersection", user, defaults_file=path, backend="fast").ppo.gamma == 0.7
    on_highway_env = load_agent_config("intersection", defaults_file=path)
    assert on_highway_env.ppo.n_steps == defaults["default"]["ppo"]["n_steps"]


def test_a_scenario_at_backend_block_applies_after_the_backend_and_before_the_user(tmp_path):
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())
    defaults["fast"] = {"ppo": {"n_steps": 8, "gamma": 0.5}}
    defaults["intersection@fast"] = {"ppo": {"gamma": 0.6}}
    path = tmp_path / "defaults.yaml"
    path.write_text(yaml.safe_dump(defaults))
    on_fast = load_agent_config("intersection", defaults_file=path, backend="fast")
    assert (on_fast.ppo.n_steps, on_fast.ppo.gamma, on_fast.ppo.ent_coef) == (8, 0.6, 0.01)  # fast, its own, scenario's
    assert load_agent_config("exit", defaults_file=path, backend="fast").ppo.gamma == 0.5  # other scenarios: not it
    assert load_agent_config("intersection", defaults_file=path).ppo.gamma == 0.95  # other backends: not it
    user = tmp_path / "mine.yaml"
    user.write_text("ppo: {gamma: 0.7}\n")
    assert load_agent_config("intersection", user, defaults_file=path, backend="fast").ppo.gamma == 0.7
    for bad in ("intersection@slow", "nowhere@fast"):
        path.write_text(yaml.safe_dump({**defaults, bad: {"ppo": {"gamma": 0.9}}}))
        with pytest.raises(ValueError, match=f"{bad}: unknown block.*scenario@backend"):
            load_agent_config("highway", defaults_file=path)


def test_the_shipped_fast_block_trains_many_envs_per_call():
    fast, reference = load_agent_config("highway", backend="fast"), load_agent_config("highway")
    assert fast.ppo.n_steps < reference.ppo.n_steps and fast.ppo.batch_size > reference.ppo.batch_size


def test_the_shipped_fast_recipe_imitates_then_leaves_ppo_several_rollouts():
    from envs.backends import FAST_N_ENVS

    config = load_agent_config("highway", backend="fast")
    fast, reference = config.training, load_agent_config("highway").training
    assert fast.imitates and not reference.imitates  # the teacher exists only on the fast backend
    imitation_steps = fast.imitation_iterations * fast.imitation_steps * FAST_N_ENVS
    ppo_rollout = config.ppo.n_steps * FAST_N_ENVS  # env steps of one PPO rollout
    assert fast.timesteps - imitation_steps >= 4 * ppo_rollout
    assert config.policy.map_channels > 0 and load_agent_config("highway").policy.map_channels == 0


def test_a_run_config_saved_before_map_channels_existed_reads_as_zero(tmp_path):
    """Runs trained before the feature-map policy (session 8) keep loading: the missing key means 0."""
    agent = load_agent_config("highway", backend="fast")
    config = RunConfig(
        scenario="highway", algo="ppo", seed=0, n_envs=256, device="auto", observation_shape=(9, 96, 48),
        n_actions=5, training=agent.training, policy=agent.policy, ppo=agent.ppo, backend="fast",
    )
    old = config.to_dict()
    del old["policy"]["map_channels"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert read_run_config(tmp_path) == dataclasses.replace(
        config, policy=dataclasses.replace(config.policy, map_channels=0))


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("ppo: {n_step: 64}\n", ["ppo.n_step: unknown key", "allowed keys here:", "n_steps"]),
        ("ppoo: {gamma: 0.9}\n", ["ppoo: unknown key", "training, policy, ppo, a2c"]),
        ("ppo: {gamma: 1.5}\n", ["ppo.gamma:", "less than or equal to 1"]),
        ("ppo: {learning_rate: 5e-4}\n", ["ppo.learning_rate:", "5.0e-4"]),  # YAML 1.1 reads 5e-4 as text
        ("policy: {activation: elu}\n", ["policy.activation:", "'tanh' or 'relu'"]),
        ("training: {timesteps: 0}\n", ["training.timesteps:", "greater than or equal to 1"]),
        ("training: {teacher_depth: 3, teacher_horizon: 2}\n", ["training:", "teacher_depth (3) must be <= teacher_horizon (2)"]),
        ("training: {teacher_min_ttc_s: -1}\n", ["training.teacher_min_ttc_s:", "greater than or equal to 0"]),
        ("training: {imitation_tunes_perception: true}\n",  # highway's recipe has the SA regulariser
         ["training:", "imitation_tunes_perception needs robust_reg: none"]),
        ("ppo: 3\n", ["ppo: expected a mapping"]),
        ("[1, 2]\n", ["expected a mapping of keys at the top level"]),
    ],
)
def test_config_file_mistakes_name_the_file_and_the_key(tmp_path, text, fragments):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_agent_config("highway", path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_config_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_agent_config("highway", tmp_path / "nope.yaml")


def test_defaults_file_is_checked_too(tmp_path):
    from agents.config import DEFAULTS_FILE

    data = yaml.safe_load(DEFAULTS_FILE.read_text())
    bad = tmp_path / "defaults.yaml"
    bad.write_text(yaml.safe_dump({**data, "hihgway": {"ppo": {"gamma": 0.9}}}))
    with pytest.raises(ValueError, match="hihgway: unknown block"):
        load_agent_config("highway", defaults_file=bad)
    del data["default"]["ppo"]["gamma"]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"default\.ppo\.gamma: required key is missing"):
        load_agent_config("highway", defaults_file=bad)


def test_unknown_algorithm_is_a_clear_error():
    assert check_algo("a2c") == "a2c"
    with pytest.raises(ValueError, match="unknown algorithm 'dqn'; choose one of: ppo, a2c"):
        check_algo("dqn")


def test_run_config_round_trips_through_the_run_folder(tmp_path):
    agent = load_agent_config("highway")
    config = RunConfig(
        scenario="highway", algo="a2c", seed=3, n_envs=2, device="auto", observation_shape=(9, 96, 48),
        n_actions=5, training=agent.training, policy=agent.policy, a2c=agent.a2c,
    )
    write_run_config(tmp_path, config)
    assert read_run_config(tmp_path) == config
    assert "ppo" not in yaml.safe_load((tmp_path / "config.yaml").read_text())
    # a hand-edited config.yaml is validated like any other file
    broken = config.to_dict()
    broken["a2c"]["n_step"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ValueError, match=r"config\.yaml: a2c\.n_step: unknown key"):
        read_run_config(tmp_path)
    assert dataclasses.replace(config, seed=4).seed == 4
