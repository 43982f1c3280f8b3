"""Preview videos, stills and the env benchmark, on tiny budgets."""

from __future__ import annotations

import math

import imageio.v2 as imageio
import numpy as np
import pytest

from envs.bench import bench_env
from envs.preview import save_still, write_preview

STEPS = 3


def read_frames(path) -> list[np.ndarray]:
    """Every frame of a video file, (h, w, 3) uint8 each."""
    reader = imageio.get_reader(path)
    try:
        return [np.asarray(frame)[..., :3] for frame in reader]  # GIF frames may come back RGBA
    finally:
        reader.close()


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_write_preview_writes_a_readable_video(tmp_path, suffix):
    out = tmp_path / "nested" / f"preview{suffix}"  # parent folders are created
    path = write_preview("highway", out=out, seed=0, steps=STEPS)
    assert path == out and out.stat().st_size > 0
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    frames = read_frames(out)
    assert len(frames) == STEPS + 1  # the frame after reset, then one per step
    first = frames[0]
    if suffix == ".mp4":
        assert first.shape[0] % 2 == 0 and first.shape[1] % 2 == 0  # H.264 in yuv420p needs even sides
    assert first.shape[1] > first.shape[0]  # two panels side by side
    for frame in frames:
        assert frame.std() > 20  # road, vehicles, text: not a blank image
    # The camera panel (left) holds the red ego somewhere: what the agent sees is in the video.
    red = (first[..., 0] > 200) & (first[..., 1] < 120) & (first[..., 2] < 120)
    assert red[:, : first.shape[1] // 3].any()


def test_write_preview_on_the_fast_backend(tmp_path, unsupported_scenario):
    from envs.fast.gym_env import FastDrivingEnv
    from envs.fast.simulator import UnsupportedScenario

    frames = read_frames(write_preview("highway", out=tmp_path / "fast.gif", steps=STEPS, backend="fast"))
    assert len(frames) == STEPS + 1 and frames[0].shape[1] > frames[0].shape[0]
    env = FastDrivingEnv("highway")
    env.reset(seed=0)
    top_down = env.top_down()
    assert top_down.shape == (150, 600, 3)
    ego = (top_down[..., 0] > 200) & (top_down[..., 1] < 120) & (top_down[..., 2] < 120)  # the red ego
    rows, cols = np.nonzero(ego)
    assert abs(cols.mean() - 300) < 3 and abs(rows.mean() - 75) < 20  # at the centre, road left to right
    assert np.ptp(cols) > np.ptp(rows)  # longer along the road than across it
    with pytest.raises(UnsupportedScenario, match="Supported scenarios"):
        write_preview(unsupported_scenario, out=tmp_path / "racetrack.gif", steps=1, backend="fast")


def test_write_preview_front_camera_is_even_sized(tmp_path):
    out = write_preview("highway", out=tmp_path / "front.mp4", camera="front", steps=1)
    frames = read_frames(out)
    assert len(frames) == 2
    assert frames[0].shape[0] % 2 == 0 and frames[0].shape[1] % 2 == 0


@pytest.mark.parametrize("name", ["preview.avi", "preview", "preview.png"])
def test_write_preview_rejects_other_suffixes(tmp_path, name):
    with pytest.raises(ValueError, match=r"\.mp4, \.gif"):
        write_preview("highway", out=tmp_path / name, steps=1)
    assert not any(tmp_path.iterdir())


def test_write_preview_rejects_bad_steps(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        write_preview("highway", out=tmp_path / "p.gif", steps=0)


def test_save_still_writes_a_png(tmp_path):
    out = save_still("highway", tmp_path / "still.png", step=1)
    image = imageio.imread(out)
    assert image.ndim == 3 and image.std() > 20
    with pytest.raises(ValueError, match=".png"):
        save_still("highway", tmp_path / "still.jpg")


def test_bench_env_returns_positive_finite_numbers():
    rows = bench_env(scenarios=["highway"], steps=5, seed=0)
    assert [row["scenario"] for row in rows] == ["highway"]
    row = rows[0]
    for key in ("camera_sps", "grayscale_sps", "bare_sps", "camera_vs_grayscale", "raster_bev_us", "raster_front_us"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert math.isfinite(row["camera_overhead_pct"])
    assert row["camera_vs_grayscale"] == pytest.approx(row["camera_sps"] / row["grayscale_sps"], rel=0.01)


def test_bench_env_rejects_unknown_scenarios_and_bad_steps():
    with pytest.raises(FileNotFoundError, match="unknown scenario"):
        bench_env(scenarios=["no-such-road"], steps=5)
    with pytest.raises(ValueError, match="steps"):
        bench_env(scenarios=["highway"], steps=0)
