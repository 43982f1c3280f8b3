"""Batched sensor corruptions (envs.fast.corruptions) against the reference SensorCorruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.corruptions import SensorCorruption
from envs.fast import rng
from envs.fast.corruptions import (
    MIN_BANK_OFFSETS,
    BatchedSensorCorruption,
    NoiseBank,
    gaussian_kernel,
)
from envs.fast.simulator import FastHighway
from envs.fast.vec_env import FastVecEnv
from envs.registration import make_env
from scenarios import load_scenario
from scenarios.schema import CorruptionConfig

HEIGHT, WIDTH = 96, 48


def rendered_frames(count: int = 8) -> torch.Tensor:
    """(count, 3, H, W) uint8 clean highway frames a few steps into their episodes."""
    sim = FastHighway(load_scenario("highway"), count)
    sim.reset(seeds=torch.arange(count))
    for action in (1, 3, 0):
        sim.step(torch.full((count,), action))
    return sim.frames[:, -1].clone()


def random_frames(count: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, H, W) uint8 white noise: every pixel an edge, the hardest case for a blur."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, 3, HEIGHT, WIDTH), dtype=np.uint8))


def corrupt(config: CorruptionConfig, frames: torch.Tensor, frame_index: int = 0, seeds=None,
            corruption: BatchedSensorCorruption | None = None) -> torch.Tensor:
    """Corrupt a batch of frames, all rows, at one frame index."""
    count = frames.shape[0]
    corruption = corruption or BatchedSensorCorruption(config, count)
    seeds = torch.arange(count) if seeds is None else seeds
    return corruption(frames, None, seeds, torch.full((count,), frame_index))


def reference(config: CorruptionConfig, frames: torch.Tensor) -> torch.Tensor:
    """SensorCorruption on each (H, W, 3) frame; fine without a generator when nothing is random."""
    outputs = [SensorCorruption(config)(frame.permute(1, 2, 0).numpy(), None) for frame in frames]
    return torch.from_numpy(np.stack(outputs)).permute(0, 3, 1, 2)


def test_kernel_size_follows_opencv_for_float_images():
    # cvRound(sigma * 4 * 2 + 1) | 1
    assert [gaussian_kernel(sigma).shape[0] for sigma in (0.05, 0.5, 0.7, 1.3, 2.0)] == [1, 5, 7, 11, 17]
    assert float(gaussian_kernel(0.7).sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 0.7, 1.3, 2.5])
@pytest.mark.parametrize("shift", [0.0, -0.15, 0.2])
def test_blur_and_brightness_match_the_reference_exactly_on_a_cpu(sigma, shift):
    config = CorruptionConfig(blur_sigma_px=sigma, brightness_shift=shift)
    for frames in (rendered_frames(), random_frames(8)):
        assert torch.equal(corrupt(config, frames), reference(config, frames))  # OpenCV's own blur, per plane


@pytest.mark.parametrize("sigma", [0.5, 0.7, 1.3, 2.5])
def test_the_gpus_blur_matches_the_reference(sigma):
    # The sums of shifted slices that blur on a GPU, run here on the CPU against OpenCV's numbers.
    config = CorruptionConfig(blur_sigma_px=sigma)
    corruption = BatchedSensorCorruption(config, 8)
    for frames in (rendered_frames(), random_frames(8)):
        blurred = corruption._blur_slices(frames.to(torch.float32) / 255)
        output = blurred.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        difference = (output.int() - reference(config, frames).int()).abs()
        # Float sums rounded in another order (OpenCV fuses multiply-adds): a handful of pixels
        # per million land on the other side of a rounding tie.
        assert int(difference.max()) <= 1
        assert float((difference > 0).float().mean()) < 1e-4


def test_brightness_alone_matches_the_reference_exactly():
    config = CorruptionConfig(brightness_shift=-0.15)
    frames = rendered_frames()
    assert torch.equal(corrupt(config, frames), reference(config, frames))


def test_noise_has_the_configured_mean_and_spread():
    frames = torch.full((16, 3, HEIGHT, WIDTH), 128, dtype=torch.uint8)  # flat mid-grey, far from clipping
    config = CorruptionConfig(gaussian_noise_std=0.05, brightness_shift=-0.1)
    difference = (corrupt(config, frames, frame_index=5).double() - 128) / 255  # (16, 3, H, W) [full scale]
    assert float(difference.mean()) == pytest.approx(-0.1, abs=0.002)
    assert float(difference.std()) == pytest.approx(0.05, rel=0.03)
    # Each pixel and frame draws its own noise: neighbouring pixels and the next frame are uncorrelated.
    later = (corrupt(config, frames, frame_index=6).double() - 128) / 255
    centred, later_centred = difference - difference.mean(), later - later.mean()
    assert abs(float((centred[..., 1:] * centred[..., :-1]).mean())) < 0.05 * 0.05**2 * 2
    assert abs(float((centred * later_centred).mean())) < 0.05 * 0.05**2 * 2


def test_normal_draws_are_standard_normal():
    draws = rng.normal(torch.arange(100), stream=9, count=5001).double()  # (100, 5001)
    assert draws.shape == (100, 5001)
    assert float(draws.mean()) == pytest.approx(0.0, abs=0.005)
    assert float(draws.std()) == pytest.approx(1.0, abs=0.005)
    assert float((draws.abs() > 1.96).double().mean()) == pytest.approx(0.05, abs=0.003)
    assert float(draws.abs().max()) < 4.8  # Box–Muller on 16-bit uniforms: tails cut at 4.7 sd


def test_a_frames_noise_is_the_sum_of_one_window_of_each_bank_array():
    values = 3 * HEIGHT * WIDTH
    bank = NoiseBank(values, std_grey_levels=12.75, device=torch.device("cpu"))
    assert bank.offsets == MIN_BANK_OFFSETS and bank.arrays.shape == (2, MIN_BANK_OFFSETS + values - 1)
    assert torch.equal(bank.arrays, NoiseBank(values, 12.75, torch.device("cpu")).arrays)  # fixed, not drawn per run
    assert float(bank.arrays.std()) == pytest.approx(12.75 / 2**0.5, rel=0.01)
    offsets = bank.window_offsets(torch.arange(500))
    assert offsets.shape == (500, 2) and int(offsets.min()) >= 0 and int(offsets.max()) < bank.offsets
    assert len(set(offsets[:, 0].tolist())) > 490  # frames start their windows at different offsets
    images = torch.zeros(4, values)
    bank.add_to(images, offsets[:4])
    a, b = offsets[1].tolist()
    assert torch.equal(images[1], bank.arrays[0, a:a + values] + bank.arrays[1, b:b + values])
    gathered = torch.zeros(4, values)
    bank._add_gathered(gathered, offsets[:4])  # the GPU's way, the same numbers
    assert torch.equal(gathered, images)


def test_a_large_cameras_bank_has_room_for_rare_overlaps():
    bank = NoiseBank(100_000, std_grey_levels=1.0, device=torch.device("cpu"))
    assert bank.offsets == 1 << 21  # 16 n = 1.6 M offsets, rounded up to a power of two
    assert bank.arrays.shape == (2, (1 << 21) + 100_000 - 1)  # a window never wraps


def test_dropped_frames_repeat_the_previous_output_at_the_configured_rate():
    count, steps, probability = 64, 40, 0.3
    config = CorruptionConfig(gaussian_noise_std=0.05, frame_drop_prob=probability)
    corruption = BatchedSensorCorruption(config, count)
    seeds = torch.arange(count) + 1000
    previous = corrupt(config, random_frames(count, seed=0), 0, seeds, corruption).clone()
    drops = 0
    for step in range(1, steps + 1):
        output = corrupt(config, random_frames(count, seed=step), step, seeds, corruption).clone()
        # With fresh noise on fresh frames, an output equal to the previous one is a dropped frame.
        repeated = (output == previous).flatten(1).all(dim=1)
        different = (output != previous).flatten(1).float().mean(dim=1)
        assert bool(((different > 0.5) | repeated).all())  # each frame is either all new or an exact repeat
        drops += int(repeated.sum())
        previous = output
    assert drops / (count * steps) == pytest.approx(probability, abs=0.05)


def test_no_frame_is_dropped_right_after_a_reset():
    config = CorruptionConfig(frame_drop_prob=1.0, brightness_shift=-0.1)
    corruption = BatchedSensorCorruption(config, 4)
    first = corrupt(config, random_frames(4, seed=1), 0, corruption=corruption).clone()
    frozen = corrupt(config, random_frames(4, seed=2), 1, corruption=corruption)
    assert torch.equal(frozen, first)  # p = 1: every later frame repeats the first
    rows = torch.tensor([1, 3])
    corruption.reset(rows)
    fresh = random_frames(2, seed=3)
    output = corruption(fresh, rows, torch.tensor([7, 8]), torch.zeros(2, dtype=torch.long))
    assert torch.equal(output, reference(config, fresh))  # new episodes: their first frame is never dropped
    later = corrupt(config, random_frames(4, seed=4), 1, corruption=corruption)
    assert torch.equal(later[rows], output) and torch.equal(later[0], first[0])


def test_corruptions_are_off_when_the_config_has_none():
    frames = rendered_frames(2)
    assert torch.equal(corrupt(CorruptionConfig(), frames), frames)
    sim = FastHighway(load_scenario("highway"), 2)
    assert sim.corruption is None and sim.clean_frames.data_ptr() == sim.frames[:, -1].data_ptr()


def run_envs(seeds: list[int], actions: list[int]) -> torch.Tensor:
    """Observations of highway-noisy envs with these episode seeds after these actions, (E, 9, H, W)."""
    sim = FastHighway(load_scenario("highway-noisy"), len(seeds))
    sim.reset(seeds=torch.tensor(seeds))
    for action in actions:
        sim.step(torch.full((len(seeds),), action))
    return sim.observation().clone()


def test_frames_in_later_cpu_chunks_are_corrupted_as_alone():
    # 40 frames: three chunks of CPU_CHUNK_FRAMES; each frame's noise and blur must be its own.
    config = load_scenario("highway-noisy").corruptions
    frames, seeds = random_frames(40, seed=3), torch.arange(100, 140)
    together = corrupt(config, frames, frame_index=3, seeds=seeds)
    for row in (0, 17, 39):
        alone = corrupt(config, frames[row:row + 1], frame_index=3, seeds=seeds[row:row + 1])
        assert torch.equal(together[row], alone[0])
    assert not torch.equal(together[17], corrupt(config, frames[17:18], frame_index=4, seeds=seeds[17:18])[0])


def test_a_rows_frames_do_not_depend_on_its_batch():
    actions = [1, 3, 1, 0, 1, 2]
    batch = run_envs([10, 11, 12, 13, 14, 15], actions)
    alone = run_envs([13, 11], actions)
    assert torch.equal(alone[0], batch[3]) and torch.equal(alone[1], batch[1])


def test_a_partial_reset_corrupts_the_new_episode_as_a_full_one():
    sim = FastHighway(load_scenario("highway-noisy"), 3)
    sim.reset(seeds=torch.tensor([1, 2, 3]))
    sim.step(torch.ones(3, dtype=torch.long))
    sim.reset(torch.tensor([1]), torch.tensor([42]))
    fresh = FastHighway(load_scenario("highway-noisy"), 1)
    fresh.reset(seeds=torch.tensor([42]))
    assert torch.equal(sim.observation()[1], fresh.observation()[0])
    assert torch.equal(sim.clean_frames[1], fresh.clean_frames[0])


def test_highway_noisy_runs_on_the_fast_backend():
    env = FastVecEnv(load_scenario("highway-noisy"), 4)
    observations = env.reset()
    for _ in range(3):
        env.step_async(np.ones(4, dtype=np.int64))
        observations, rewards, dones, infos = env.step_wait()
    assert observations.shape == (4, 9, HEIGHT, WIDTH) and observations.dtype == np.uint8
    assert rewards.shape == (4,) and len(infos) == 4

    noisy = make_env("highway-noisy", backend="fast")
    observation, _ = noisy.reset(seed=5)
    again, _ = noisy.reset(seed=5)
    assert np.array_equal(observation, again)  # corruptions are part of the seeded episode
    observation, *_ = noisy.step(1)
    newest = observation[-3:].transpose(1, 2, 0).astype(np.int64)  # (H, W, 3)
    clean = noisy.clean_frame.astype(np.int64)
    assert not np.array_equal(newest, clean)
    assert float((newest - clean).mean()) == pytest.approx(-0.15 * 255, abs=8)  # dimmer (clipped at black)

    plain = make_env("highway-noisy", backend="fast", corruptions=False)
    plain.reset(seed=5)
    observation, *_ = plain.step(1)
    assert np.array_equal(observation[-3:].transpose(1, 2, 0), noisy.clean_frame)  # the same world, unspoilt


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_corrupt_frames_alike():
    config = load_scenario("highway-noisy").corruptions
    frames = random_frames(16)
    outputs = []
    for device in ("cpu", "cuda"):
        corruption = BatchedSensorCorruption(config, 16, device)
        for index in range(4):
            output = corruption(frames.to(device), None, torch.arange(16), torch.full((16,), index)).cpu()
        outputs.append(output.int())
    assert float((outputs[0] - outputs[1]).abs().float().mean()) < 0.01  # float rounding of the noise only
