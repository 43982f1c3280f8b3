"""Heat maps blended into camera frames: the student's attention (every frame) and SHAP maps (keyframes).

Attention: the student's pool gives (h, w) = (12, 6) weights that sum to 1, one per 8 x 8 px cell
of the (H, W) = (96, 48) frame. It is upsampled bilinearly to the frame (cell centres stay where
the pool saw them), divided by its maximum (so the strongest place is always full colour: the map
says *where* relative to the rest, its absolute level 1/72 is uniform), and blended with a weight
that grows with the heat, so cold places keep the camera's own colours.

SHAP: (C, H, W) attributions of the stacked frames are summed over the channels of all stacked
frames into one (H, W) map (the sum of a pixel's attributions: what that place contributed in
the stack), then shown diverging: red pushes towards the explained output, blue against it,
scaled by a high percentile of |value| so that one extreme pixel does not wash out the rest.

Both work at the camera's own resolution (a few thousand pixels): lookups and one blend, well
under a millisecond per frame (`benchmark_attention_overlay`).
"""

from __future__ import annotations

import time

import cv2
import numpy as np

OVERLAYS: tuple[str, ...] = ("attention", "shap", "both", "none")
ATTENTION_ALPHA = 0.65  # blend weight of the hottest place
SHAP_ALPHA = 0.8
SHAP_PERCENTILE = 99.0  # |SHAP| at this percentile maps to full colour


def check_overlay(name: str) -> str:
    if name not in OVERLAYS:
        raise ValueError(f"unknown overlay {name!r}; choose one of: {', '.join(OVERLAYS)}")
    return name


def _rgb_lut(colormap: int) -> np.ndarray:
    """(256, 3) uint8 RGB colours of an OpenCV colormap (OpenCV gives BGR)."""
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.applyColorMap(ramp, colormap)[:, 0, ::-1].copy()


HEAT_LUT = _rgb_lut(cv2.COLORMAP_INFERNO)  # (256, 3): attention, dark -> yellow
HEAT_LUT[:64] = HEAT_LUT[64]  # the darkest quarter is near black; start at purple so weak heat still shows
POSITIVE_RGB = np.array([255, 40, 40], dtype=np.float32)  # SHAP: towards the explained output
NEGATIVE_RGB = np.array([40, 140, 255], dtype=np.float32)  # SHAP: against it


def upsample_attention(attention: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) attention -> (height, width) float32 in [0, 1], bilinear, divided by its maximum."""
    grid = np.asarray(attention, dtype=np.float32)
    heat = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)  # cell centres kept
    peak = float(heat.max())
    if peak <= 0.0 or not np.isfinite(peak):
        return np.zeros((height, width), np.float32)
    return heat * (1.0 / peak)


def blend_heat(frame: np.ndarray, heat: np.ndarray, alpha: float = ATTENTION_ALPHA, lut: np.ndarray = HEAT_LUT) -> np.ndarray:
    """(H, W, 3) uint8 frame + (H, W) heat in [0, 1] -> (H, W, 3) uint8; the blend weight is alpha * heat."""
    index = np.clip(heat * 255.0, 0, 255).astype(np.uint8)  # (H, W)
    colour = lut[index].astype(np.float32)  # (H, W, 3)
    weight = (alpha * np.clip(heat, 0.0, 1.0))[..., None]  # (H, W, 1)
    out = frame.astype(np.float32) * (1.0 - weight) + colour * weight
    return out.astype(np.uint8)


def attention_overlay(frame: np.ndarray, attention: np.ndarray, alpha: float = ATTENTION_ALPHA) -> np.ndarray:
    """The camera frame (H, W, 3) uint8 with the student's (h, w) attention blended in as heat."""
    return blend_heat(frame, upsample_attention(attention, frame.shape[0], frame.shape[1]), alpha)


def shap_pixel_map(values: np.ndarray) -> np.ndarray:
    """(C, H, W) attributions of the stacked frames -> (H, W) float32: each pixel's sum over channels."""
    values = np.asarray(values)
    if values.ndim != 3:
        raise ValueError(f"SHAP values must have shape (C, H, W), got {values.shape}")
    return values.sum(axis=0, dtype=np.float64).astype(np.float32)


def shap_scale(pixel_map: np.ndarray, percentile: float = SHAP_PERCENTILE) -> float:
    """|value| shown at full colour: a high percentile of |map| (0 for an all-zero map)."""
    return float(np.percentile(np.abs(pixel_map), percentile))


def shap_overlay(frame: np.ndarray, pixel_map: np.ndarray, scale: float | None = None, alpha: float = SHAP_ALPHA) -> np.ndarray:
    """The frame (H, W, 3) uint8 with an (H, W) signed SHAP map: red = towards the output, blue = against."""
    scale = shap_scale(pixel_map) if scale is None else scale
    if scale <= 0.0:
        return frame.copy()
    strength = np.clip(pixel_map / scale, -1.0, 1.0)  # (H, W) in [-1, 1]
    weight = (alpha * np.abs(strength))[..., None]  # (H, W, 1)
    colour = np.where((strength >= 0)[..., None], POSITIVE_RGB, NEGATIVE_RGB)  # (H, W, 3)
    out = frame.astype(np.float32) * (1.0 - weight) + colour * weight
    return out.astype(np.uint8)


def benchmark_attention_overlay(frames: int = 2000, height: int = 96, width: int = 48, grid: tuple[int, int] = (12, 6),
                                seed: int = 0) -> dict[str, float]:
    """Milliseconds per frame of `attention_overlay` (upsample + blend) on random frames: median and p95."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    maps = rng.random((64, *grid)).astype(np.float32)
    maps /= maps.sum(axis=(1, 2), keepdims=True)
    times = []
    for index in range(frames):
        start = time.perf_counter()
        attention_overlay(frame, maps[index % len(maps)])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "frames": frames}
