"""SB3 PPO/A2C agents on the perception student's features: training, callbacks, evaluation.

    python run.py train --scenario highway [--algo a2c] [--resume RUN]
    python run.py evaluate --run RUN [--episodes 50] [--scenario OTHER]

- `agents.config`    hyperparameters: `agents/defaults.yaml` per scenario, `--config` overrides (strict)
- `agents.runs`      run folders, checkpoints, building and loading an agent without unpickling
- `agents.train`     the training loop: envs, callbacks, Ctrl-C, resume
- `agents.callbacks` safety_train/*, eval/*, checkpoints, hparams for TensorBoard (tags and units: `agents.safety_board`)
- `agents.evaluate`  deterministic evaluation on the scenario's evaluation seeds, 95 % t intervals
"""
