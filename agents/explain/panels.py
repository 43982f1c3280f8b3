"""One composite frame of a replay or of the live viewer.

    +-------------------+-------------------+----------------------------------------------+
    | attention (x5)    | SHAP (x5)         | top-down of the same instant (simulator)     |
    | camera frame with | camera frame with |----------------------------------------------|
    | the student's     | the keyframe's    | action probabilities (bars), value           |
    | attention; per-   | SHAP map; per-    | speed, time-to-collision, headway, reward    |
    | vehicle share     | vehicle SHAP share|                                              |
    |                   | and counterfactual|                                              |
    +-------------------+-------------------+----------------------------------------------+
    | timeline: one tick per step coloured by action; collisions, hard brakes, keyframes    |
    +---------------------------------------------------------------------------------------+

`--overlay attention` or `shap` shows one camera panel, `none` the plain camera. Between SHAP
keyframes the SHAP panel keeps the last keyframe's map and says how old it is; its per-vehicle
numbers are drawn only on the keyframe itself, where they belong to the boxes shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from agents.explain.overlays import attention_overlay, shap_overlay, shap_pixel_map
from agents.explain.session import StepRecord
from agents.explain.shapley import Keyframe
from agents.explain.vehicles import VehicleReasons
from envs.fast.simulator import META_ACTIONS

SCALE = 5  # camera pixels -> panel pixels (nearest neighbour)
RIGHT_WIDTH = 600  # [px] the top-down view's width (highway-env's default screen)
BAND = 22  # [px] caption band
TIMELINE = 44  # [px]
GAP = 6
FONT = cv2.FONT_HERSHEY_SIMPLEX
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
DIM = (150, 150, 150)
ALERT = (255, 80, 80)
WARN = (255, 170, 40)
# META_ACTIONS: highway-env's DiscreteMetaAction by index; intersection's is longitudinal only (SLOWER,
# IDLE, FASTER): envs.policies.action_names(env) gives an env's own.
ACTION_COLOURS = {"LANE_LEFT": (110, 200, 255), "IDLE": (200, 200, 200), "LANE_RIGHT": (70, 110, 255),
                  "FASTER": (90, 220, 120), "SLOWER": (200, 110, 255)}  # hard brakes: WARN


def action_name(index: int, names: tuple[str, ...] = META_ACTIONS) -> str:
    """The name of action `index` among the env's `names`."""
    return names[int(index)] if 0 <= int(index) < len(names) else f"action {index}"


def action_colour(index: int, names: tuple[str, ...] = META_ACTIONS) -> tuple[int, int, int]:
    """The colour of action `index` (by its name, so that FASTER is green on every scenario)."""
    return ACTION_COLOURS.get(action_name(index, names), TEXT)


@dataclass
class Timeline:
    """What the strip shows: one entry per step so far (or of the whole episode, for replays)."""

    total_steps: int  # the strip's length: the scenario's episode steps
    action_names: tuple[str, ...] = META_ACTIONS  # the env's actions by index (envs.policies.action_names)
    actions: list[int] = field(default_factory=list)  # action taken at step i
    crashes: list[int] = field(default_factory=list)  # steps where the ego crashed
    hard_brakes: list[int] = field(default_factory=list)
    keyframes: list[int] = field(default_factory=list)

    @classmethod
    def of_records(cls, records: list[StepRecord], total_steps: int, keyframes: list[int],
                   action_names: tuple[str, ...] = META_ACTIONS) -> "Timeline":
        timeline = cls(max(total_steps, len(records) - 1), action_names, keyframes=list(keyframes))
        for record in records:
            timeline.add(record)
        return timeline

    def add(self, record: StepRecord) -> None:
        if record.taken:
            self.actions.append(record.decision.action)
        if record.safety.get("crashed"):
            self.crashes.append(record.step)
        if record.safety.get("hard_brake"):
            self.hard_brakes.append(record.step)


@dataclass
class ShapView:
    """The SHAP panel's content: the latest keyframe at or before this step."""

    keyframe: Keyframe
    step: int  # the keyframe's step
    frame: np.ndarray  # (H, W, 3) the keyframe's camera frame


def _put(image: np.ndarray, text: str, x: int, y: int, colour=TEXT, scale: float = 0.45, thickness: int = 1) -> None:
    cv2.putText(image, text, (int(x), int(y)), FONT, scale, colour, thickness, cv2.LINE_AA)


def _label(image: np.ndarray, text: str, x: float, y: float, colour=TEXT, scale: float = 0.38) -> None:
    """Text on a dark box, kept inside the image."""
    (width, height), base = cv2.getTextSize(text, FONT, scale, 1)
    x = int(min(max(x, 1), image.shape[1] - width - 2))
    y = int(min(max(y, height + 2), image.shape[0] - base - 1))
    cv2.rectangle(image, (x - 1, y - height - 2), (x + width + 1, y + base), (0, 0, 0), -1)
    _put(image, text, x, y, colour, scale)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if math.isfinite(value) else "inf"


def _enlarge(frame: np.ndarray) -> np.ndarray:
    return cv2.resize(frame, (frame.shape[1] * SCALE, frame.shape[0] * SCALE), interpolation=cv2.INTER_NEAREST)


def _vehicle_labels(panel: np.ndarray, reasons: VehicleReasons, texts: list[str]) -> None:
    """Each vehicle's text beside its box (to the right, or left near the right edge)."""
    for (u, v), text in zip(reasons.centers, texts):
        if not np.isfinite(u):
            continue
        x, y = (u + 0.5) * SCALE, (v + 0.5) * SCALE
        (width, _), _ = cv2.getTextSize(text, FONT, 0.38, 1)
        left = x + 2.2 * SCALE if x + 2.2 * SCALE + width < panel.shape[1] else x - 2.2 * SCALE - width
        _label(panel, text, left, y + 4)


def camera_panels(record: StepRecord, overlay: str, shap: ShapView | None, reasons: VehicleReasons | None,
                  action_names: tuple[str, ...] = META_ACTIONS) -> list[tuple[str, np.ndarray]]:
    """(caption, enlarged panel) for each camera panel the overlay asks for."""
    panels = []
    if overlay in ("attention", "both"):
        panel = _enlarge(attention_overlay(record.frame, record.decision.attention))
        if reasons is not None and len(reasons.ids):
            _vehicle_labels(panel, reasons, [f"att {100 * share:.0f}%" for share in reasons.attention])
        panels.append(("attention (student)", panel))
    if overlay in ("shap", "both"):
        if shap is None:
            panel = _enlarge(record.frame)
            _label(panel, "SHAP: computing...", 6, 20, DIM)
            caption = "SHAP (waiting)"
        else:
            age = record.step - shap.step
            pixel_map = shap_pixel_map(shap.keyframe.values)
            panel = _enlarge(shap_overlay(record.frame if age == 0 else shap.frame, pixel_map))
            what = action_name(shap.keyframe.output_index, action_names) if shap.keyframe.output == "action" else "value"
            caption = f"SHAP of {what}" + ("" if age == 0 else f" (step {shap.step})")
            if age > 0:
                panel = (panel.astype(np.float32) * 0.6).astype(np.uint8)
                _label(panel, f"keyframe {age} step{'s' if age > 1 else ''} ago", 6, 20, DIM)
            elif reasons is not None and reasons.shap_share is not None and len(reasons.ids):
                _vehicle_labels(panel, reasons, [f"S {100 * s:.0f}% cf {c:+.1f}"
                                                 for s, c in zip(reasons.shap_share, reasons.counterfactual)])
        panels.append((caption, panel))
    if overlay == "none":
        panels.append(("camera (what the agent sees)", _enlarge(record.frame)))
    return panels


def _bars(panel: np.ndarray, record: StepRecord, top: int, action_names: tuple[str, ...]) -> int:
    """Action probability bars from row `top`; returns the row below them."""
    probabilities = record.decision.probabilities
    bar_left, bar_width = 120, RIGHT_WIDTH - 200
    for index, probability in enumerate(probabilities):
        y = top + 20 * index
        chosen = index == record.decision.action
        colour = action_colour(index, action_names)  # the timeline's colour of this action
        _put(panel, action_name(index, action_names), 8, y + 13, colour, 0.45, 2 if chosen else 1)
        cv2.rectangle(panel, (bar_left, y + 3), (bar_left + bar_width, y + 15), (55, 55, 55), -1)
        cv2.rectangle(panel, (bar_left, y + 3), (bar_left + int(round(bar_width * probability)), y + 15),
                      colour if chosen else tuple(c // 2 for c in colour), -1)
        _put(panel, f"{100 * probability:5.1f}%", bar_left + bar_width + 8, y + 13, TEXT if chosen else DIM)
    return top + 20 * len(probabilities)


def info_panel(record: StepRecord, height: int, episode_return: float, title: str,
               action_names: tuple[str, ...] = META_ACTIONS) -> np.ndarray:
    """Top-down view, action probabilities, value and signals; (height, RIGHT_WIDTH, 3)."""
    panel = np.empty((height, RIGHT_WIDTH, 3), np.uint8)
    panel[:] = BACKGROUND
    y = 0
    if record.top_down is not None:
        view = record.top_down
        if view.shape[1] != RIGHT_WIDTH:
            view = cv2.resize(view, (RIGHT_WIDTH, round(view.shape[0] * RIGHT_WIDTH / view.shape[1])),
                              interpolation=cv2.INTER_AREA)
        view = view[: height // 2]
        panel[: view.shape[0]] = view
        y = view.shape[0]
    y += 18
    _put(panel, "action probabilities", 8, y, DIM)
    y = _bars(panel, record, y + 6, action_names) + 20
    _put(panel, f"value {record.decision.value:+.2f}", 8, y)
    _put(panel, f"return {episode_return:.2f}", 200, y)
    _put(panel, f"reward {record.reward:.2f}", 380, y)
    safety = record.safety
    y += 24
    _put(panel, f"speed {safety.get('speed', float('nan')):.1f} m/s", 8, y)
    ttc = float(safety.get("ttc", math.inf))
    headway = float(safety.get("headway", math.inf))
    _put(panel, f"TTC {_seconds(ttc)}", 200, y, ALERT if ttc < 2.0 else TEXT)
    _put(panel, f"headway {_seconds(headway)}", 380, y, ALERT if headway < 1.0 else TEXT)
    y += 24
    events = []
    if safety.get("crashed"):
        events.append(("CRASHED", ALERT))
    if safety.get("hard_brake"):
        events.append(("HARD BRAKE", WARN))
    if not record.taken:
        events.append(("episode over", DIM))
    x = 8
    for text, colour in events:
        _put(panel, text, x, y, colour, 0.5, 2)
        x += cv2.getTextSize(text, FONT, 0.5, 2)[0][0] + 16
    _put(panel, title, 8, height - 8, DIM, 0.4)
    return panel


def timeline_strip(timeline: Timeline, step: int, width: int) -> np.ndarray:
    """(TIMELINE, width, 3): a tick per step coloured by action, red collisions, orange hard brakes,
    small white marks at SHAP keyframes, a cursor at `step`."""
    strip = np.empty((TIMELINE, width, 3), np.uint8)
    strip[:] = (16, 16, 16)
    left, right, top, bottom = 70, width - 10, 8, 30
    _put(strip, "timeline", 6, 24, DIM, 0.4)
    total = max(timeline.total_steps, 1)

    def x_of(s: float) -> int:
        return int(round(left + (right - left) * s / total))

    cv2.rectangle(strip, (left, top), (right, bottom), (45, 45, 45), -1)
    for index, action in enumerate(timeline.actions):
        cv2.rectangle(strip, (x_of(index), top + 6), (max(x_of(index + 1) - 1, x_of(index)), bottom - 6),
                      action_colour(action, timeline.action_names), -1)
    for s in timeline.keyframes:
        cv2.line(strip, (x_of(s), top), (x_of(s), top + 3), TEXT, 1)
    for s in timeline.hard_brakes:
        cv2.rectangle(strip, (x_of(s) - 2, top), (x_of(s) + 2, bottom), WARN, -1)
    for s in timeline.crashes:
        cv2.rectangle(strip, (x_of(s) - 3, top - 4), (x_of(s) + 3, bottom + 4), ALERT, -1)
    cv2.line(strip, (x_of(step), top - 6), (x_of(step), bottom + 6), (255, 255, 255), 2)
    legend = "colour = action (as the bars)   red = collision   orange = hard brake   white ticks = SHAP keyframes"
    _put(strip, legend, left, TIMELINE - 3, DIM, 0.36)
    return strip


def compose(record: StepRecord, overlay: str, timeline: Timeline, episode_return: float, title: str,
            shap: ShapView | None = None, reasons: VehicleReasons | None = None) -> np.ndarray:
    """The whole frame (h, w, 3) uint8 RGB, even-sized (H.264's yuv420p needs it)."""
    cameras = camera_panels(record, overlay, shap, reasons, timeline.action_names)
    camera_height = cameras[0][1].shape[0]
    left_width = sum(panel.shape[1] for _, panel in cameras) + GAP * (len(cameras) - 1)
    width = left_width + GAP + RIGHT_WIDTH
    height = BAND + camera_height + TIMELINE
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = BACKGROUND
    x = 0
    for caption, panel in cameras:
        frame[BAND : BAND + camera_height, x : x + panel.shape[1]] = panel
        _put(frame, caption, x + 4, BAND - 7)
        x += panel.shape[1] + GAP
    _put(frame, f"step {record.step}/{timeline.total_steps}", left_width + GAP + 4, BAND - 7)
    frame[BAND : BAND + camera_height, left_width + GAP :] = info_panel(record, camera_height, episode_return, title,
                                                                     timeline.action_names)
    frame[BAND + camera_height :] = timeline_strip(timeline, record.step, width)
    return frame[: height - height % 2, : width - width % 2]
