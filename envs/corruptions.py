"""Sensor faults applied to camera frames: noise, blur, brightness shift, dropped frames.

All randomness comes from the generator passed in, so an env seeded the same way corrupts
its frames the same way. Pixel-valued parameters are in [0, 1] units of full scale.
"""

from __future__ import annotations

import cv2
import numpy as np

from scenarios.schema import CorruptionConfig


class SensorCorruption:
    """Applies a scenario's `CorruptionConfig` to a stream of (H, W, 3) uint8 frames."""

    def __init__(self, config: CorruptionConfig) -> None:
        self.config = config
        self._last_output: np.ndarray | None = None

    def reset(self) -> None:
        self._last_output = None

    def __call__(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Corrupt one frame. A dropped frame repeats the previous output (a frozen camera)."""
        config = self.config
        if not config.active:
            return frame
        if self._last_output is not None and rng.random() < config.frame_drop_prob:
            return self._last_output
        image = frame.astype(np.float32) * (1.0 / 255.0)  # (H, W, 3) in [0, 1]
        if config.blur_sigma_px > 0:
            image = cv2.GaussianBlur(image, (0, 0), sigmaX=config.blur_sigma_px)
        if config.brightness_shift != 0:
            image += config.brightness_shift
        if config.gaussian_noise_std > 0:
            image += rng.normal(0.0, config.gaussian_noise_std, size=image.shape).astype(np.float32)
        output = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        self._last_output = output
        return output
