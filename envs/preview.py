"""Preview videos: the camera frame the agent sees, beside highway-env's own top-down view.

A preview is how a user checks that a scenario (or their own YAML file) and the camera look
right before training on them. Each video frame is

    +------------------------------+--------------------------------------+
    | camera (what the agent sees) | highway-env top-down                 |
    | clean camera frame, upscaled | env.top_down() (on the fast backend: |
    | (INTER_NEAREST) to the       | our camera zoomed out, 600 x 150 px) |
    | top-down's height            |                                      |
    +------------------------------+--------------------------------------+
    | scenario  step  speed  TTC  headway  action                         |
    +---------------------------------------------------------------------+

`.mp4` is H.264 (plays in browsers) through imageio-ffmpeg; `.gif` goes through Pillow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import imageio.v2 as imageio
import numpy as np

from envs.backends import CameraEnv, backend_of, get_backend
from envs.driving_env import with_camera_view
from envs.files import atomic_write
from envs.policies import action_indexes, make_policy
from envs.video import VIDEO_SUFFIXES, write_video
from scenarios import Scenario, load_scenario

logger = logging.getLogger(__name__)

CAMERA_CAPTION = "camera (what the agent sees)"
PREVIEW_POLICY = "lane-changing"

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_BAND_PX = 22  # height of the caption band above and the status band below [px]
_GAP_PX = 4  # dark gap between the two panels [px]
_BACKGROUND = (24, 24, 24)  # RGB
_TEXT = (235, 235, 235)
_ALERT = (255, 80, 80)


def write_preview(
    scenario: str | Path | Scenario,
    out: str | Path,
    camera: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    fps: float | None = None,
    backend: str = "highway-env",
) -> Path:
    """Drive the scenario with `LaneChangingPolicy` and write a side-by-side video to `out`.

    backend: the simulator (envs.backends; the right-hand panel is its top-down view, e.g. the fast
    backend's own camera zoomed out).

    `steps=None` records one episode; otherwise exactly `steps` policy steps, starting a new
    episode (seed + 1, ...) when one ends. The video has one frame per policy step plus the
    first one after reset, at `fps` (default: the policy frequency, i.e. real time).
    Returns the path written.
    """
    out = Path(out)
    _check_video_name(out)  # before any work: the preview's own message
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")

    env = _make_env(scenario, camera, backend)
    try:
        fps = fps or float(env.metadata["render_fps"])
        # Frames stream into the writer: a long preview never sits in memory as a whole.
        write_video(out, _episode_frames(env, seed, steps), fps, fill=_BACKGROUND)
    finally:
        env.close()
    logger.debug("preview of %s at %.3g fps -> %s", env.scenario.name, fps, out)
    return out


def save_still(
    scenario: str | Path | Scenario,
    out: str | Path,
    camera: str | None = None,
    seed: int = 0,
    step: int = 5,
    backend: str = "highway-env",
) -> Path:
    """Write one composite frame, after `step` policy steps, as a PNG (for docs and reports)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"a still must be a .png file, got {out.name!r}")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    env = _make_env(scenario, camera, backend)
    try:
        frame = list(_episode_frames(env, seed, step))[-1]
    finally:
        env.close()
    atomic_write(out, lambda tmp: imageio.imwrite(tmp, frame, format="PNG"))
    return out


def composite_frame(env: CameraEnv, info: dict[str, Any], step: int, action: int | None = None) -> np.ndarray:
    """(h, w, 3) uint8 RGB: captioned camera frame beside the top-down view, status line below."""
    backend = backend_of(env)
    top_down = backend.top_down(env)  # (h, w_td, 3)
    height = top_down.shape[0]
    camera = env.clean_frame  # (H, W, 3)
    scale = height / camera.shape[0]
    camera = cv2.resize(camera, (max(1, round(camera.shape[1] * scale)), height), interpolation=cv2.INTER_NEAREST)

    # The camera panel is at least as wide as its caption; the frame sits centred in it.
    panel_width = max(camera.shape[1], _text_width(CAMERA_CAPTION) + 12)
    width = panel_width + _GAP_PX + top_down.shape[1]
    frame = np.empty((_BAND_PX + height + _BAND_PX, width, 3), np.uint8)
    frame[:] = _BACKGROUND
    left = (panel_width - camera.shape[1]) // 2
    frame[_BAND_PX : _BAND_PX + height, left : left + camera.shape[1]] = camera
    frame[_BAND_PX : _BAND_PX + height, panel_width + _GAP_PX :] = top_down

    _put(frame, CAMERA_CAPTION, (panel_width - _text_width(CAMERA_CAPTION)) // 2, _BAND_PX - 7)
    _put(frame, backend.top_down_caption, panel_width + _GAP_PX + 6, _BAND_PX - 7)
    status, alert = _status_line(env, info, step, action)
    _put(frame, status, 6, frame.shape[0] - 7, _ALERT if alert else _TEXT)
    return frame


# -- Internals ---------------------------------------------------------------------------------


def _scenario(scenario: str | Path | Scenario, camera: str | None) -> Scenario:
    base = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    return with_camera_view(base, camera)


def _make_env(scenario: str | Path | Scenario, camera: str | None, backend: str) -> CameraEnv:
    """The backend's env (a backend refuses a scenario it cannot reproduce)."""
    simulator = get_backend(backend)
    return simulator.make_env(_scenario(scenario, camera), render_mode="rgb_array")


def _check_video_name(out: Path) -> None:
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(
            f"cannot write a preview to {out.name!r}: the file name must end in one of "
            f"{', '.join(VIDEO_SUFFIXES)} (e.g. preview.mp4)"
        )


def _episode_frames(env: gym.Env, seed: int, steps: int | None) -> Iterator[np.ndarray]:
    """Yield composite frames: one after reset, then one per policy step."""
    policy = make_policy(PREVIEW_POLICY, env, np.random.default_rng(seed))
    episode_seed = seed
    _, info = env.reset(seed=episode_seed)
    policy.reset()
    yield composite_frame(env, info, 0)
    limit = env.scenario.episode_steps if steps is None else steps
    episode_step = 0
    for _ in range(limit):
        action = policy(info)
        _, _, terminated, truncated, info = env.step(action)
        episode_step += 1
        yield composite_frame(env, info, episode_step, action)
        if terminated or truncated:
            if steps is None:
                return
            episode_seed += 1
            _, info = env.reset(seed=episode_seed)
            policy.reset()
            episode_step = 0


def _status_line(env: gym.Env, info: dict[str, Any], step: int, action: int | None) -> tuple[str, bool]:
    safety = info["safety"]
    names = {index: name for name, index in action_indexes(env).items()}
    parts = [
        env.scenario.name,
        f"step {step}/{env.scenario.episode_steps}",
        f"speed {safety['speed']:.1f} m/s",
        f"TTC {_seconds(safety['ttc'])}",
        f"headway {_seconds(safety['headway'])}",
        f"action {names.get(action, '-') if action is not None else '-'}",
    ]
    if safety["crashed"]:
        parts.append("CRASHED")
    elif safety["off_road"]:
        parts.append("OFF ROAD")
    return "  ".join(parts), bool(safety["crashed"] or safety["off_road"])


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if math.isfinite(value) else "inf"


def _text_width(text: str) -> int:
    (width, _), _ = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
    return width


def _put(frame: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int] = _TEXT) -> None:
    cv2.putText(frame, text, (x, y), _FONT, _FONT_SCALE, color, 1, cv2.LINE_AA)


