"""Explanations of a trained agent: why it acts as it does, frame by frame.

    decision.py        the explained function: uint8 frames -> [0, 1] -> student -> policy -> logits / value
    overlays.py        attention (every frame) and SHAP maps as heat maps blended into camera frames
    shapley.py         SHAP (`shap.GradientExplainer`) keyframes, their background, their on-disk cache
    vehicles.py        per-vehicle boxes, attribution inside them, counterfactual re-rendering without a vehicle
    session.py         the one place that builds an env, and plays an episode recording what the panels show
    panels.py          one composite video frame: camera + overlays, top-down, probabilities, signals, timeline
    replay.py          `run.py replay`: videos (H.264 MP4, GIF) + index.html
    watch.py           `run.py watch`: the same panels live in a pygame window, SHAP off the drawing thread
    faithfulness.py    deletion/insertion, randomisation sanity check, grounding, SHAP-vs-counterfactual -> docs/EXPLAIN.md
    tensorboard.py     a replay's frames into a TensorBoard event file (works with moviepy >= 2)
"""
