"""SB3 PPO/A2C agents on perception features: training, callbacks, evaluation, explanations.

Arrives with the issue "Agents"; the package exists so the project layout is complete.
"""
