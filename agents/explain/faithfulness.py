"""Is an explanation faithful to the decision it explains? Scripted checks and docs/EXPLAIN.md.

    python -m agents.explain.faithfulness --run RUN [--episodes 20] [--every 3] [--out docs/EXPLAIN.md]

- Deletion / insertion (Petsiuk et al., RISE): pixels ranked by a map (SHAP, attention, random)
  are replaced by the background's mean frame in that order (deletion), or put back into it
  (insertion); the chosen action's probability is read at every step. A faithful ranking drops
  the probability fast on deletion (low AUC) and raises it fast on insertion (high AUC).
  A pixel = a location of the frame, all channels of every stacked frame at once.
- Model randomisation (Adebayo et al., "Sanity checks for saliency maps"): the policy's layers,
  then the student's, are re-initialised from the output backwards, cumulatively; a map that
  explains the model must change (Spearman rank correlation of |map| with the original map falls).
- Grounding: the share of |attribution| on vehicles, lane markings, road edges, empty road and
  off-road, against each class's share of the pixels (classes from the camera's palette).
- Per-vehicle agreement (agents.explain.vehicles): SHAP mass and attention mass in each vehicle's
  box against the counterfactual change of log p(action) without that vehicle: Spearman over the
  vehicles of a keyframe, and top-1 agreement.
"""

from __future__ import annotations

import argparse
import copy
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import nn

from envs import palette
from envs.system import set_threads

CLASSES: dict[str, tuple[int, int, int]] = {
    "vehicles": palette.OTHER_VEHICLE, "ego": palette.EGO_VEHICLE, "lane markings": palette.LANE_MARKING,
    "road edges": palette.ROAD_EDGE, "empty road": palette.ROAD, "off-road": palette.OFF_ROAD,
}
CURVE_STEPS = 24  # points of a deletion / insertion curve after the start


# -- deletion and insertion ------------------------------------------------------------------------


def pixel_order(pixel_map: np.ndarray) -> np.ndarray:
    """(H, W) scores -> flat pixel indices, highest score first (stable for ties)."""
    return np.argsort(-pixel_map.reshape(-1), kind="stable")


def perturbation_curve(probability: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor,
                       baseline: torch.Tensor, order: np.ndarray, mode: str, steps: int = CURVE_STEPS) -> np.ndarray:
    """(steps + 1,) probability of the explained action as pixels in `order` are deleted (replaced by
    `baseline`) or inserted (into `baseline`). frames, baseline: (C, H, W) floats; probability:
    (B, C, H, W) -> (B,)."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    channels, height, width = frames.shape
    counts = np.round(np.linspace(0, height * width, steps + 1)).astype(int)
    batch = []
    for count in counts:
        chosen = torch.zeros(height * width, dtype=torch.bool)
        chosen[torch.from_numpy(order[:count])] = True
        chosen = chosen.reshape(1, height, width)  # (1, H, W), broadcast over channels
        if mode == "deletion":
            batch.append(torch.where(chosen, baseline, frames))
        else:
            batch.append(torch.where(chosen, frames, baseline))
    with torch.no_grad():
        return probability(torch.stack(batch)).cpu().numpy()


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at evenly spaced fractions of [0, 1] (trapezoid)."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


# -- model randomisation ---------------------------------------------------------------------------


def randomisation_cascade(decision) -> list[tuple[str, Callable[[nn.Module], None]]]:
    """(name, re-initialise in place) from the decision's output back to its input: the policy's
    action head and actor MLP layers, then the student's head, embedding, attention pool and stages."""
    def reinit(module_path: str) -> Callable[[nn.Module], None]:
        def apply(model: nn.Module) -> None:
            module = model.get_submodule(module_path)
            generator = torch.Generator().manual_seed(hash(module_path) % (2**31))
            for parameter in module.parameters():
                with torch.no_grad():
                    if parameter.dim() > 1:
                        fan_in = parameter[0].numel()
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                    else:
                        parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
        return apply

    steps = [("policy: action head", reinit("action_net"))]
    actor = decision.mlp.policy_net
    linear = [name for name, module in actor.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    for name in reversed(linear):
        steps.append((f"policy: actor {name}", reinit(f"mlp.policy_net.{name}")))
    student = "extractor.model"
    steps.append(("student: label head", reinit(f"{student}.head")))
    steps.append(("student: embedding", reinit(f"{student}.embed")))
    steps.append(("student: attention pool", reinit(f"{student}.pool")))
    stages = len(decision.student.stages)
    for index in reversed(range(stages)):
        steps.append((f"student: stage {index + 1}", reinit(f"{student}.stages.{index}")))
    return steps


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' |values| (nan when one is constant)."""
    from scipy.stats import spearmanr

    x, y = np.abs(a).reshape(-1), np.abs(b).reshape(-1)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# -- grounding ---------------------------------------------------------------------------------------


def pixel_classes(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) clean camera frame -> (H, W) index into CLASSES: the nearest palette colour."""
    colours = np.array(list(CLASSES.values()), np.float32)  # (K, 3)
    distance = ((frame[:, :, None, :].astype(np.float32) - colours[None, None]) ** 2).sum(axis=3)
    return np.argmin(distance, axis=2)


def class_shares(weights: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(K,) share of the non-negative (H, W) `weights` on each class."""
    total = float(weights.sum()) or 1.0
    return np.array([float(weights[classes == k].sum()) / total for k in range(len(CLASSES))])


# -- per-vehicle agreement -----------------------------------------------------------------------------


def agreement(scores: np.ndarray, counterfactual: np.ndarray) -> tuple[float, bool | None]:
    """(Spearman of scores vs counterfactual over the vehicles (nan under 3 vehicles or ties only),
    top-1 agreement by magnitude (None under 2 vehicles))."""
    from scipy.stats import spearmanr

    if len(scores) < 2:
        return float("nan"), None
    top = int(np.argmax(np.abs(scores))) == int(np.argmax(np.abs(counterfactual)))
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(counterfactual) == 0:
        return float("nan"), top
    return float(spearmanr(scores, counterfactual).statistic), top


# -- the report --------------------------------------------------------------------------------------------


@dataclass
class Collected:
    """Everything the report aggregates, one entry per keyframe."""

    curves: dict[str, list[np.ndarray]] = field(default_factory=dict)  # "<ranking> <mode>" -> curves
    grounding: dict[str, list[np.ndarray]] = field(default_factory=dict)  # "shap" / "attention" / "pixels" -> shares
    agreement: dict[str, list] = field(default_factory=dict)  # "<score> spearman" / "<score> top1" -> values
    vehicles: list[int] = field(default_factory=list)  # vehicles in view per keyframe
    additivity: list[float] = field(default_factory=list)  # |sum SHAP - (f(x) - E f)| / |f(x) - E f|
    shap_seconds: list[float] = field(default_factory=list)
    keyframes: list[tuple] = field(default_factory=list)  # (record, keyframe) kept for pictures and randomisation
    episodes: int = 0


def _append(store: dict, key: str, value) -> None:
    store.setdefault(key, []).append(value)


def collect(env, loaded, explainer, cache, seeds: list[int], every: int, rng: np.random.Generator) -> Collected:
    from agents.explain.overlays import shap_pixel_map, upsample_attention
    from agents.explain.session import FrameRenderer, play_episode
    from agents.explain.shapley import keyframe_steps
    from agents.explain.vehicles import vehicle_reasons
    from envs.progress import track

    scenario = env.unwrapped.scenario
    renderer = FrameRenderer(env)
    decision = loaded.decision
    baseline = explainer.background.mean(dim=0)  # (C, H, W): "deleted" pixels take the background's mean
    data = Collected()
    for seed in track(seeds, "faithfulness", unit="episodes"):
        episode = play_episode(env, decision, seed, top_down=False)
        data.episodes += 1
        for step in keyframe_steps(episode.length, every):
            record = episode.records[step]
            keyframe = cache.explain(explainer, record.observation)
            if not keyframe.cached:
                data.shap_seconds.append(keyframe.seconds)
            difference = keyframe.model_output - keyframe.expected_output
            if abs(difference) > 1e-6:
                data.additivity.append(abs(float(keyframe.values.sum()) - difference) / abs(difference))
            action = keyframe.output_index
            frames = torch.from_numpy(record.observation).float() / 255.0  # (C, H, W)

            def probability(batch: torch.Tensor) -> torch.Tensor:
                return torch.softmax(decision(batch), dim=1)[:, action]

            height, width = record.frame.shape[:2]
            maps = {"SHAP": shap_pixel_map(keyframe.values),
                    "attention": upsample_attention(record.decision.attention, height, width)}
            orders = {name: pixel_order(pixel_map) for name, pixel_map in maps.items()}
            orders["random"] = rng.permutation(height * width)
            for name, order in orders.items():
                for mode in ("deletion", "insertion"):
                    _append(data.curves, f"{name} {mode}", perturbation_curve(probability, frames, baseline, order, mode))
            classes = pixel_classes(record.frame)
            newest = np.abs(keyframe.values[-3:]).sum(axis=0)  # (H, W): the newest frame's channels
            heat = upsample_attention(record.decision.attention, height, width)
            _append(data.grounding, "SHAP", class_shares(newest, classes))
            _append(data.grounding, "attention", class_shares(heat, classes))
            _append(data.grounding, "pixels", class_shares(np.ones_like(heat), classes))
            reasons = vehicle_reasons(scenario, decision, renderer, record.stack, action, record.decision.attention,
                                      keyframe.values)
            data.vehicles.append(len(reasons.ids))
            for name, scores, target in (("SHAP signed", reasons.shap, reasons.counterfactual),
                                         ("SHAP abs mass", reasons.shap_share, np.abs(reasons.counterfactual)),
                                         ("attention", reasons.attention, np.abs(reasons.counterfactual))):
                rho, top = agreement(scores, target)
                if top is not None:
                    _append(data.agreement, f"{name} top1", top)
                if np.isfinite(rho):
                    _append(data.agreement, f"{name} spearman", rho)
            data.keyframes.append((record, keyframe))
    return data


def randomisation(loaded, explainer, keyframes: list[tuple], nsamples: int) -> list[dict]:
    """Cumulative re-initialisation, output to input: mean Spearman of each map with the original."""
    from agents.explain.overlays import shap_pixel_map, upsample_attention
    from agents.explain.shapley import ShapExplainer

    background = (explainer.background * 255).round().to(torch.uint8).cpu().numpy()
    model = copy.deepcopy(loaded.decision)
    originals = [(shap_pixel_map(keyframe.values), record.decision.attention) for record, keyframe in keyframes]
    rows = []
    for name, apply in randomisation_cascade(model):
        apply(model)
        shap_explainer = ShapExplainer(model, background, nsamples=nsamples)
        shap_rho, attention_rho = [], []
        for (record, _), (shap_map, attention) in zip(keyframes, originals):
            shap_rho.append(rank_correlation(shap_map, shap_pixel_map(shap_explainer.explain(record.observation).values)))
            with torch.no_grad():
                model(torch.from_numpy(record.observation[None]).float() / 255.0)
            new_attention = model.extractor.last_attention[0].cpu().numpy()
            h, w = record.frame.shape[:2]
            attention_rho.append(rank_correlation(upsample_attention(attention, h, w), upsample_attention(new_attention, h, w)))
        rows.append({"layers": name, "SHAP": float(np.nanmean(shap_rho)), "attention": float(np.nanmean(attention_rho))})
    return rows


def draw_curves(data: Collected, path: Path) -> Path:
    """Mean deletion and insertion curves of the three rankings, side by side, as a PNG (OpenCV, no matplotlib)."""
    from envs.files import atomic_write

    colours = {"SHAP": (220, 50, 50), "attention": (230, 150, 0), "random": (120, 120, 120)}  # RGB
    panel_w, panel_h, margin = 460, 320, 50
    image = np.full((panel_h + 2 * margin, 2 * (panel_w + margin) + margin, 3), 255, np.uint8)
    for column, mode in enumerate(("deletion", "insertion")):
        left, top = margin + column * (panel_w + margin), margin
        cv2.rectangle(image, (left, top), (left + panel_w, top + panel_h), (0, 0, 0), 1)
        for tick in range(0, 11, 2):
            y = top + panel_h - int(panel_h * tick / 10)
            cv2.putText(image, f"{tick / 10:.1f}", (left - 34, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            x = left + int(panel_w * tick / 10)
            cv2.putText(image, f"{tick / 10:.1f}", (x - 10, top + panel_h + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(image, f"{mode}: p(chosen action) vs fraction of pixels {'removed' if mode == 'deletion' else 'inserted'}",
                    (left, top - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for row, (name, colour) in enumerate(colours.items()):
            curve = np.mean(data.curves[f"{name} {mode}"], axis=0)
            points = np.stack([left + np.linspace(0, panel_w, len(curve)), top + panel_h - curve * panel_h], axis=1)
            cv2.polylines(image, [np.round(points).astype(np.int32)], False, colour, 2, cv2.LINE_AA)
            label = f"{name}: AUC {auc(curve):.3f}"
            cv2.putText(image, label, (left + panel_w - 170, top + 20 + 18 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        colour, 1, cv2.LINE_AA)
    import imageio.v2 as imageio

    return atomic_write(path, lambda tmp: imageio.imwrite(tmp, image, format="PNG"))


def draw_grid(keyframes: list[tuple], path: Path, action_names: tuple[str, ...], count: int = 6) -> Path:
    """Typical keyframes (evenly spread), each: camera | attention | SHAP, enlarged x3, as one PNG;
    `action_names`: the env's actions by index."""
    import imageio.v2 as imageio

    from agents.explain.overlays import attention_overlay, shap_overlay, shap_pixel_map
    from agents.explain.panels import action_name
    from envs.files import atomic_write

    picks = np.sort(np.random.default_rng(1).choice(len(keyframes), size=min(count, len(keyframes)), replace=False))
    chosen = [keyframes[int(i)] for i in picks]  # a seeded draw: evenly spaced indices all hit episode ends
    tiles = []
    for record, keyframe in chosen:
        parts = [record.frame, attention_overlay(record.frame, record.decision.attention),
                 shap_overlay(record.frame, shap_pixel_map(keyframe.values))]
        tile = np.concatenate([np.pad(p, ((0, 0), (0, 2), (0, 0)), constant_values=255) for p in parts], axis=1)
        tile = cv2.resize(tile, (tile.shape[1] * 3, tile.shape[0] * 3), interpolation=cv2.INTER_NEAREST)
        band = np.full((24, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(band, f"step {record.step}: {action_name(keyframe.output_index, action_names)} "
                          f"p={record.decision.probabilities[keyframe.output_index]:.2f}",
                    (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.pad(np.concatenate([band, tile]), ((0, 8), (0, 8), (0, 0)), constant_values=255))
    half = (len(tiles) + 1) // 2
    rows = [np.concatenate(tiles[:half], axis=1), np.concatenate(tiles[half:], axis=1)]
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return atomic_write(path, lambda tmp: imageio.imwrite(tmp, np.concatenate(rows), format="PNG"))


def _mean_ci(values) -> str:
    values = np.asarray(values, float)
    if len(values) < 2:
        return "n/a"
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    return f"{values.mean():.3f} ± {half:.3f}"


def write_report(run: str, episodes: int, every: int, backend: str, out: Path, images: Path, nsamples: int,
                 logdir: str, randomised_keyframes: int, command: str) -> Path:
    from agents.evaluate import evaluation_seeds
    from agents.explain.overlays import benchmark_attention_overlay
    from agents.explain.replay import prepare, shap_tools
    from envs.files import atomic_write
    from envs.policies import action_names

    start = time.perf_counter()
    env, loaded, scenario_name = prepare(run, None, backend, "cpu", logdir)
    try:
        explainer, cache = shap_tools(env, loaded, backend, nsamples)
        seeds = evaluation_seeds(env.unwrapped.scenario, episodes)
        data = collect(env, loaded, explainer, cache, seeds, every, np.random.default_rng(0))
        names = action_names(env)
    finally:
        env.close()
    # SHAP speed measured afresh on 20 keyframes (the cache may have answered above)
    timing = [explainer.explain(record.observation).seconds for record, _ in data.keyframes[:: max(1, len(data.keyframes) // 20)][:20]]
    overlay_ms = benchmark_attention_overlay()
    spread = data.keyframes[:: max(1, len(data.keyframes) // randomised_keyframes)][:randomised_keyframes]
    cascade = randomisation(loaded, explainer, spread, nsamples)
    curves_png = draw_curves(data, images / "explain_curves.png")
    grid_png = draw_grid(data.keyframes, images / "explain_grid.png", names)
    seconds = time.perf_counter() - start

    def rel(path: Path) -> str:
        return str(Path(__import__("os").path.relpath(path, out.parent)))

    lines = [
        "# Explanations: how faithful are they?",
        "",
        f"Written by `{command}` ({seconds:.0f} s on one CPU thread of a busy 2-core machine). "
        f"Run `{loaded.run_dir.name}` ({loaded.num_timesteps:,} training steps, {loaded.model_path.name}) on "
        f"`{scenario_name}` ({backend}), {data.episodes} deterministic episodes on the evaluation seeds "
        f"{seeds[0]}..{seeds[-1]}, a SHAP keyframe every {every} policy steps: {len(data.keyframes)} keyframes.",
        "",
        "Explained function: uint8 frames -> [0, 1] -> student -> policy -> the chosen action's logit "
        f"(`shap.GradientExplainer`, {nsamples} expected-gradient samples, {len(explainer.background)} background "
        "frames recorded by the agent on training seeds). Attention: the student's pool weights, upsampled.",
        "",
        "## Speed (one CPU thread)",
        "",
        "| what | number |",
        "| --- | --- |",
        f"| attention overlay (upsample + blend, 96 x 48) | median {overlay_ms['median_ms']:.3f} ms, p95 {overlay_ms['p95_ms']:.3f} ms per frame |",
        f"| SHAP keyframe ({nsamples} samples, chosen action only) | median {np.median(timing):.3f} s, max {np.max(timing):.3f} s ({len(timing)} keyframes) |",
        f"| SHAP additivity: \\|sum of values - (f(x) - E f)\\| / \\|f(x) - E f\\| | median {np.median(data.additivity):.2f}, p90 {np.percentile(data.additivity, 90):.2f} (sampling error of {nsamples} samples) |",
        "",
        "## Deletion and insertion",
        "",
        "Pixels (all channels of all stacked frames at one location) ranked by each map are replaced by the "
        "background's mean frame (deletion) or put back into it (insertion), in 24 steps; the curve is the "
        "probability of the action the agent chose. Lower deletion AUC and higher insertion AUC are better. "
        "Mean ± 95 % interval over keyframes:",
        "",
        "| ranking | deletion AUC | insertion AUC |",
        "| --- | --- | --- |",
    ]
    for name in ("SHAP", "attention", "random"):
        lines.append(f"| {name} | {_mean_ci([auc(c) for c in data.curves[f'{name} deletion']])} | "
                     f"{_mean_ci([auc(c) for c in data.curves[f'{name} insertion']])} |")
    lines += ["", f"![deletion and insertion curves]({rel(curves_png)})", "",
              "## Model randomisation (sanity check)", "",
              f"Layers re-initialised cumulatively from the output back to the input; mean Spearman rank correlation of "
              f"|map| with the trained model's map over {len(spread)} keyframes (1 = unchanged). A map that explains the "
              "model must change; attention cannot change while only policy layers are randomised (it is computed "
              "before them).", "", "| randomised up to | SHAP | attention |", "| --- | --- | --- |"]
    lines += [f"| {row['layers']} | {row['SHAP']:.3f} | {row['attention']:.3f} |" for row in cascade]
    lines += ["", "## Grounding", "",
              "Share of |attribution| per pixel class of the newest frame (classes by the camera's palette), against "
              "the class's share of the pixels; SHAP uses the newest frame's channels.", "",
              "| class | pixels | SHAP | attention |", "| --- | --- | --- | --- |"]
    shares = {key: np.mean(value, axis=0) for key, value in data.grounding.items()}
    for index, name in enumerate(CLASSES):
        lines.append(f"| {name} | {shares['pixels'][index]:.3f} | {shares['SHAP'][index]:.3f} | {shares['attention'][index]:.3f} |")
    counts = np.array(data.vehicles)
    lines += ["", "## Per-vehicle reasons against the simulator's counterfactual", "",
              "For each keyframe: each vehicle in view gets its SHAP mass (inside its box in every stacked frame) and its "
              "attention mass (inside its box in the newest frame); the counterfactual re-renders the same stack without "
              "the vehicle and measures log p(a) - log p(a | without it). Spearman over the vehicles of a keyframe "
              "(keyframes with >= 3 vehicles), top-1 agreement by magnitude (>= 2 vehicles).", "",
              f"{len(counts)} keyframes from {data.episodes} episodes; vehicles in view per keyframe: mean "
              f"{counts.mean():.1f}, {int((counts >= 3).sum())} keyframes with >= 3, {int((counts >= 2).sum())} with >= 2.", "",
              "| score | vs | Spearman (mean ± 95 %) | keyframes | top-1 agreement | keyframes |", "| --- | --- | --- | --- | --- | --- |"]
    for name, against in (("SHAP signed", "signed change"), ("SHAP abs mass", "\\|change\\|"), ("attention", "\\|change\\|")):
        rho = data.agreement.get(f"{name} spearman", [])
        top = data.agreement.get(f"{name} top1", [])
        lines.append(f"| {name} | {against} | {_mean_ci(rho)} | {len(rho)} | "
                     f"{(np.mean(top) if top else float('nan')):.2f} | {len(top)} |")
    shap_top = np.mean(data.agreement.get("SHAP abs mass top1", [np.nan]))
    attention_top = np.mean(data.agreement.get("attention top1", [np.nan]))
    lines += ["", "## Reading", "",
              f"- **SHAP is faithful to the decision in the deletion test**: removing its top pixels drops the chosen "
              f"action's probability far faster than random or attention order; **attention is not** (its deletion "
              f"AUC is about random's): the student's attention pool says where the *student* pools its features for "
              f"its labels, not what the *policy* acts on (the policy also reads the whole feature map).",
              f"- **SHAP only partly passes the randomisation check.** Its maps change as layers are randomised, but "
              f"the rank correlation stays high: expected gradients multiply by (x - background), so pixels where the "
              f"frame equals the background (most of the grass and road) get ~0 in every model. Read SHAP maps for "
              f"*which of the changing things* (vehicles, markings) matter, not as an absolute picture.",
              f"- **Per vehicle, SHAP agrees with the simulator's counterfactual only moderately**: its mass picks the "
              f"vehicle whose removal changes the decision most in {100 * shap_top:.0f} % of keyframes "
              f"(attention: {100 * attention_top:.0f} %), and SHAP's signed mass ranks vehicles in the counterfactual's "
              f"signed order less well than its magnitude does. Removing a vehicle is not a small perturbation (it "
              f"leaves the background's distribution), which first-order attributions cannot be expected to predict exactly; "
              f"where they disagree, trust the counterfactual.",
              "- Method: `shap.GradientExplainer`, not `DeepExplainer`: DeepLIFT's rules do not cover the product of "
              "softmax attention weights with features in the student's pool, and SHAP's own additivity check fails "
              "there; expected gradients need only autograd, exact for every op, and are additive in expectation "
              f"(table above: the remaining error is sampling error of {nsamples} samples).",
              ]
    lines += ["", "## Typical keyframes", "",
              "Each: the camera frame, the student's attention, the SHAP map of the chosen action (red: towards it, "
              "blue: against it).", "", f"![keyframes with attention and SHAP]({rel(grid_png)})", ""]
    return atomic_write(out, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def main(argv: list[str] | None = None) -> int:
    from agents.explain.shapley import NSAMPLES

    parser = argparse.ArgumentParser(prog="python -m agents.explain.faithfulness", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--backend", default="highway-env")
    parser.add_argument("--out", type=Path, default=Path("docs/EXPLAIN.md"))
    parser.add_argument("--images", type=Path, default=Path("docs/images"))
    parser.add_argument("--nsamples", type=int, default=NSAMPLES)
    parser.add_argument("--randomised-keyframes", type=int, default=8)
    parser.add_argument("--logdir", default="runs")
    args = parser.parse_args(argv)
    set_threads(1)
    command = "python -m agents.explain.faithfulness " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    path = write_report(args.run, args.episodes, args.every, args.backend, args.out, args.images, args.nsamples,
                        args.logdir, args.randomised_keyframes, command)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
