"""Batched sensor faults: `envs.corruptions.SensorCorruption` for B camera streams at once, in torch.

The pipeline is the reference's, frame by frame: uint8 -> float32 in [0, 1], Gaussian blur
(`cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)`: OpenCV's kernel and kernel size for float
images, its default BORDER_REFLECT_101 border), brightness shift, additive Gaussian noise,
then round half to even and clip back to uint8. A dropped frame repeats the stream's previous
output (a frozen camera), never on the first frame of an episode.

Randomness. Every draw is keyed by the env's episode seed and the frame's index in the episode
(0 at reset) through the backend's counter-based generator (`envs.fast.rng`), so an env's
frames are corrupted the same way whatever its batch neighbours, batch size or device. The draws
are therefore not the highway-env backend's (which takes them from the env's NumPy generator),
exactly as the fast backend's traffic is not: the same distributions, other samples.

Pixel noise comes from a `NoiseBank`: two fixed arrays of standard normal draws, made once from
the counter-based generator (Box–Muller on 16-bit uniforms, tails cut at 4.7 sd, `rng.normal`).
A frame's noise is the sum of one window of each, at offsets drawn from the frame's key, divided
by sqrt 2: normal, independent from pixel to pixel within a frame (each pixel its own two
draws), and the same bits on every device. Two frames share one of their two terms, at shifted
pixels, when their windows in that array overlap (a chance of about 2 n / L per array for n
values a frame and L offsets: 10.5 % at the default 96 x 48 camera); both, with a chance of
about 1 / L. Hashing each pixel's own draw instead cost ~80 µs a frame on one CPU thread, more
than simulating and rendering the env step together (~55 µs); the two windows cost ~12 µs.

Cost. Only what the config switches on runs. On a CPU, frames are processed CPU_CHUNK_FRAMES at a
time so that their float32 scratch stays in cache, and the blur is the reference's own OpenCV
call on each plane (its numbers exactly); on a GPU all frames at once, the blur as sums of
shifted slices.
"""

from __future__ import annotations

import math

import cv2
import torch
import torch.nn.functional as F

from envs.fast import rng
from scenarios.schema import CorruptionConfig

FRAME_STREAM = 3  # rng stream: (episode seed, frame index) -> the frame's own key
DROP_STREAM = 0  # substreams of a frame's key
NOISE_STREAM = 1
BANK_STREAM = 4  # rng stream of the noise bank's two arrays (keyed 1 and 2)
MIN_BANK_OFFSETS = 1 << 18  # L: window offsets per array; 2 x 1 MB of float32 at the default camera, cache-sized
CPU_CHUNK_FRAMES = 16  # frames corrupted together on a CPU: ~0.9 MB of float32 scratch at 96 x 48
_KEY_RANGE = 1 << 48


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """(K,) float32 taps of the 1-D kernel that `cv2.GaussianBlur(float32 image, (0, 0), sigma)` uses.

    OpenCV derives the size from sigma as cvRound(sigma * 4 * 2 + 1) | 1 for non-8-bit images
    (createGaussianKernels in imgproc/src/smooth.dispatch.cpp; 3 sd instead of 4 for 8-bit) and
    builds the taps with getGaussianKernel(size, sigma, CV_32F), which we call.
    """
    size = int(round(sigma * 4 * 2 + 1)) | 1  # round half even, like cvRound; `| 1` makes ties agree anyway
    taps = cv2.getGaussianKernel(size, sigma, ktype=cv2.CV_32F)  # (K, 1) float32, sums to 1
    return torch.from_numpy(taps.reshape(-1).copy())


class NoiseBank:
    """Gaussian pixel noise for camera frames of n values: one window of each of two fixed arrays.

    Why windows, and what they share between frames: the module's docstring. The arrays hold
    L + n - 1 draws each (L = MIN_BANK_OFFSETS, or 16 n rounded up to a power of two for large
    cameras, so that a window never wraps and overlaps stay rare), already scaled to the noise's
    standard deviation in grey levels and by 1/sqrt 2 for the sum.
    """

    def __init__(self, values_per_frame: int, std_grey_levels: float, device: torch.device) -> None:
        self.values = values_per_frame
        self.offsets = max(MIN_BANK_OFFSETS, 1 << (16 * values_per_frame - 1).bit_length())  # L
        draws = rng.normal(torch.tensor([1, 2]), BANK_STREAM, self.offsets + values_per_frame - 1)  # (2, L + n - 1), CPU
        self.arrays = draws.mul_(std_grey_levels / math.sqrt(2.0)).to(device)  # the same bits on every device

    def window_offsets(self, keys: torch.Tensor) -> torch.Tensor:
        """(C,) int64 frame keys -> (C, 2) int64 offsets in [0, L): where each frame's two windows start."""
        return rng.uniform(keys, NOISE_STREAM, 2).mul_(self.offsets).to(torch.int64)

    def add_to(self, images: torch.Tensor, offsets: torch.Tensor) -> None:
        """Add each frame's noise, in grey levels, to (C, n) float32 `images` in place.

        offsets: (C, 2) int64 from `window_offsets` (drawn for all frames at once: per chunk of
        frames, drawing them cost more than the noise).
        """
        if images.device.type == "cpu":
            self._add_sliced(images, offsets)
        else:
            self._add_gathered(images, offsets)

    def _add_sliced(self, images: torch.Tensor, offsets: torch.Tensor) -> None:
        """On a CPU: one slice of each array per frame, no (C, n) temporaries; the arrays stay in cache."""
        first, second = self.arrays[0], self.arrays[1]
        for image, (a, b) in zip(images, offsets.tolist()):
            image.add_(first[a:a + self.values]).add_(second[b:b + self.values])

    def _add_gathered(self, images: torch.Tensor, offsets: torch.Tensor) -> None:
        """On a GPU: one gather per array for all frames, the same numbers as `_add_sliced`."""
        for array, column in zip(self.arrays, offsets.unbind(1)):
            windows = array.as_strided((self.offsets, self.values), (1, 1))  # row a: the window that starts at a
            images.add_(windows.index_select(0, column))


class BatchedSensorCorruption:
    """Applies a scenario's `CorruptionConfig` to the camera streams of B envs.

    Keeps each env's previous output, (B, 3, H, W) uint8 (allocated on the first frame), for
    dropped frames; `reset(rows)` forgets it, as `SensorCorruption.reset` does.
    """

    def __init__(self, config: CorruptionConfig, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.active = config.active
        self.noise_std = float(config.gaussian_noise_std)
        self.shift = float(config.brightness_shift)
        self.drop_prob = float(config.frame_drop_prob)
        self.sigma = float(config.blur_sigma_px)  # [px]
        self.kernel: torch.Tensor | None = None  # (K,) float32 blur taps
        if config.blur_sigma_px > 0:
            self.kernel = gaussian_kernel(float(config.blur_sigma_px))
        self._taps = [] if self.kernel is None else self.kernel.tolist()  # Python floats: scalar multipliers
        self._noise: NoiseBank | None = None  # made on the first noisy frame, when its size is known
        self._last: torch.Tensor | None = None  # (B, 3, H, W) uint8: each stream's previous output
        self._has_last = torch.zeros(batch_size, dtype=torch.bool, device=self.device)

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Forget the previous output of the envs `rows` ((E,) int64; all when None): new episodes."""
        if rows is None:
            self._has_last.fill_(False)
        else:
            self._has_last[rows.to(self.device)] = False

    def __call__(self, frames: torch.Tensor, rows: torch.Tensor | None, seeds: torch.Tensor,
                 frame_index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Corrupt one new frame of each env `rows` ((E,) int64; all B envs when None).

        frames: (E, 3, H, W) uint8 clean frames. seeds: (E,) int64 episode seeds. frame_index:
        (E,) int64, the frame's index in its episode (0 at reset). out: (E, 3, H, W) uint8 to
        write into (it may be a strided view, e.g. a frame-stack slot, but not `frames`); a new
        tensor when None. Returns the corrupted frames: `out` when given.
        """
        if out is None:
            out = torch.empty_like(frames)
        if not self.active:
            return out.copy_(frames)
        last = self._previous_outputs(frames)
        keys = rng.integers(seeds.to(self.device), FRAME_STREAM, frame_index.to(self.device), _KEY_RANGE)  # (E,)
        noise_offsets = self._noise_bank(frames).window_offsets(keys) if self.noise_std > 0 else None  # (E, 2)
        chunk = CPU_CHUNK_FRAMES if self.device.type == "cpu" else max(frames.shape[0], 1)
        for start in range(0, frames.shape[0], chunk):
            stop = min(start + chunk, frames.shape[0])
            offsets = None if noise_offsets is None else noise_offsets[start:stop]
            out[start:stop].copy_(self._corrupt(frames[start:stop], offsets))
        if self.drop_prob > 0:
            self._repeat_dropped(out, rows, keys)
        if rows is None:
            last.copy_(out)
            self._has_last.fill_(True)
        else:
            rows = rows.to(self.device)
            last[rows] = out
            self._has_last[rows] = True
        return out

    # -- internals -----------------------------------------------------------------------------
    def _previous_outputs(self, frames: torch.Tensor) -> torch.Tensor:
        """The (B, 3, H, W) uint8 previous outputs, allocated for the frames' size on first use."""
        shape = (self.batch_size, *frames.shape[1:])
        if self._last is None or self._last.shape != shape:
            if self.kernel is not None and self.kernel.shape[0] // 2 >= min(frames.shape[-2:]):
                size = tuple(frames.shape[-2:])
                raise ValueError(f"a {self.kernel.shape[0]}-tap blur needs frames larger than {size}")
            self._last = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            self._has_last.fill_(False)
        return self._last

    def _noise_bank(self, frames: torch.Tensor) -> NoiseBank:
        """The noise bank for frames of this size, made on first use (again if the size changes)."""
        if self._noise is None or self._noise.values != frames[0].numel():
            self._noise = NoiseBank(frames[0].numel(), self.noise_std * 255.0, self.device)
        return self._noise

    def _corrupt(self, frames: torch.Tensor, noise_offsets: torch.Tensor | None) -> torch.Tensor:
        """(C, 3, H, W) uint8 -> (C, 3, H, W) float32 whole grey levels in [0, 255]: blur, shift, noise.

        noise_offsets: (C, 2) int64, where each frame's noise windows start (None: no noise).
        """
        image = frames.to(torch.float32, memory_format=torch.contiguous_format).mul_(1.0 / 255.0)  # [0, 1], as the reference
        if self.kernel is not None:
            image = self._blur_planes(image) if image.device.type == "cpu" else self._blur_slices(image)
        if self.shift != 0:
            image.add_(self.shift)
        image.mul_(255.0)  # grey levels
        if noise_offsets is not None:
            self._noise_bank(frames).add_to(image.view(image.shape[0], -1), noise_offsets)
        return image.round_().clamp_(0.0, 255.0)

    def _blur_planes(self, image: torch.Tensor) -> torch.Tensor:
        """The blur on a CPU, in place: the reference's own `cv2.GaussianBlur` on each (H, W) plane.

        (C, 3, H, W) contiguous float32. Bit for bit the reference's numbers (a separable filter
        treats channels apart), and ~4x faster than `_blur_slices` on one thread (~24 against
        ~100 µs a 96 x 48 frame).
        """
        for plane in image.view(-1, *image.shape[-2:]).numpy():  # (H, W) views into `image`
            cv2.GaussianBlur(plane, (0, 0), sigmaX=self.sigma, dst=plane)
        return image

    def _blur_slices(self, image: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur of (C, 3, H, W) float32, rows then columns, as OpenCV filters float images.

        Borders reflect without repeating the edge pixel (BORDER_REFLECT_101 = torch "reflect").
        Sums of shifted slices, in OpenCV's order (rows tap by tap; columns centre first, then
        each symmetric pair added before weighting), so most sums round as OpenCV's do; it
        fuses multiply-adds (FMA) where torch does not, which moves ~1 pixel in 10^5 by one
        grey level after rounding. (Emulating FMA in float64 is bit exact but 6x slower.)
        """
        count, channels, height, width = image.shape
        taps = self._taps
        radius = len(taps) // 2
        planes = image.reshape(count * channels, 1, height, width)
        padded = F.pad(planes, (radius, radius, 0, 0), mode="reflect")[:, 0]  # (C 3, H, W + 2 r)
        rows = padded[:, :, 0:width] * taps[0]
        for tap in range(1, len(taps)):
            rows.add_(padded[:, :, tap:tap + width] * taps[tap])
        padded = F.pad(rows[:, None], (0, 0, radius, radius), mode="reflect")[:, 0]  # (C 3, H + 2 r, W)
        columns = padded[:, radius:radius + height] * taps[radius]
        for offset in range(1, radius + 1):
            below = padded[:, radius + offset:radius + offset + height]
            above = padded[:, radius - offset:radius - offset + height]
            columns.add_((below + above).mul_(taps[radius + offset]))
        return columns.view(count, channels, height, width)

    def _repeat_dropped(self, out: torch.Tensor, rows: torch.Tensor | None, keys: torch.Tensor) -> None:
        """Overwrite with its previous output each frame dropped with probability p (never an episode's first)."""
        has_last = self._has_last if rows is None else self._has_last[rows.to(self.device)]
        dropped = has_last & (rng.uniform(keys, DROP_STREAM, 1, torch.float32)[:, 0] < self.drop_prob)  # (E,)
        where = dropped.nonzero(as_tuple=True)[0]  # (D,) positions in this call
        if where.numel():
            sources = where if rows is None else rows.to(self.device)[where]
            out[where] = self._last[sources]
