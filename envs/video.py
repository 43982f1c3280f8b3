"""Writing frames as a video file that browsers play: H.264 MP4 (yuv420p, through imageio-ffmpeg) or GIF.

OpenCV's `mp4v` codec does not play in browsers, and TensorBoard's `add_video` breaks with moviepy
>= 2, so previews and replays both write their files here. The write is atomic (envs.files): a
killed process leaves the old file or none, never half a video.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import cv2
import imageio.v2 as imageio
import numpy as np

from envs.files import atomic_write

VIDEO_SUFFIXES = (".mp4", ".gif")


def pad_even(frame: np.ndarray, fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """(h, w, 3) -> (h + h % 2, w + w % 2, 3): yuv420p needs an even width and height."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if not (pad_h or pad_w):
        return frame
    return cv2.copyMakeBorder(frame, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=fill)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float,
                fill: tuple[int, int, int] = (0, 0, 0)) -> Path:
    """Frames (h, w, 3) uint8 RGB -> `path` (.mp4: H.264, odd sides padded with `fill`; .gif: loops)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"a video file must end in one of {', '.join(VIDEO_SUFFIXES)}, got {path.name!r}")

    def write(tmp: Path) -> None:
        if suffix == ".gif":
            tmp.write_bytes(encode_gif(frames, fps))
            return
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=1, quality=7)
        try:
            for frame in frames:
                writer.append_data(pad_even(frame, fill))
        finally:
            writer.close()

    return atomic_write(path, write)


def encode_gif(frames: Iterable[np.ndarray], fps: float) -> bytes:
    """Frames (h, w, 3) uint8 RGB -> the bytes of a GIF that loops forever (TensorBoard shows it animated)."""
    buffer = io.BytesIO()
    writer = imageio.get_writer(buffer, format="GIF", mode="I", duration=1000.0 / fps, loop=0)  # duration [ms] per frame
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()
    return buffer.getvalue()
