"""Camera-frame driving envs on highway-env, with safety signals.

Importing this package registers `clearlane/<scenario>-v0` for every shipped scenario.
"""

from envs.registration import env_id, make_env, make_env_fn, register_scenarios

register_scenarios()

__all__ = ["env_id", "make_env", "make_env_fn", "register_scenarios"]
