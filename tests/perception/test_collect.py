"""Collection writes shards of whole episodes + a manifest, resumes after a kill, and mixes scenarios."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perception.collect import collect
from perception.dataset import FrameDataset, load_manifest, split_shards
from perception.labels import GROUP, LABEL_DIM, describe_errors, encode


def test_collect_writes_labelled_shards(tmp_path):
    manifest = collect(["highway"], frames=40, out=tmp_path, shard_frames=20, seed=1)
    assert [shard["index"] for shard in manifest.shards] == [0, 1]
    assert manifest.frames >= 40
    data = FrameDataset(tmp_path)
    frames, target, mask = data[0]
    assert frames.shape == (9, 96, 48) and frames.dtype.is_floating_point is False
    assert target.shape == mask.shape == (LABEL_DIM,)
    assert len(data) == manifest.frames
    speeds = data.targets[:, GROUP["ego_speed"].start] * 30.0
    assert 5.0 < speeds.mean() < 40.0  # plausible highway speeds [m/s]
    assert data.frames.std() > 10  # not blank


def test_a_small_collection_is_one_small_shard(tmp_path):
    manifest = collect(["highway"], frames=5, out=tmp_path, shard_frames=1000, seed=2)
    assert len(manifest.shards) == 1
    assert 5 <= manifest.frames < 100  # whole episodes: at least 5 frames, far fewer than a 1,000-frame shard


def test_killed_collection_resumes_with_identical_shards(tmp_path):
    full, partial = tmp_path / "full", tmp_path / "partial"
    collect(["highway"], frames=30, out=full, shard_frames=10, seed=3)
    collect(["highway"], frames=10, out=partial, shard_frames=10, seed=3)  # as if killed after shard 0
    (partial / ".shard-00001.npz.tmp-999").write_bytes(b"half a file")  # a kill mid-write leaves this
    resumed = collect(["highway"], frames=30, out=partial, shard_frames=10, seed=3)
    assert [shard["index"] for shard in resumed.shards] == [0, 1, 2]
    for index in range(3):
        a = np.load(full / f"shard-{index:05d}.npz")
        b = np.load(partial / f"shard-{index:05d}.npz")
        assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["targets"], b["targets"])


def test_resume_with_other_settings_is_refused(tmp_path):
    collect(["highway"], frames=5, out=tmp_path, shard_frames=5, seed=0)
    with pytest.raises(ValueError, match="other settings"):
        collect(["merge"], frames=5, out=tmp_path, shard_frames=5, seed=0)


def test_collect_on_the_fast_backend(tmp_path, unsupported_scenario):
    from envs.fast.simulator import UnsupportedScenario

    manifest = collect(["highway"], frames=40, out=tmp_path / "fast", shard_frames=20, seed=1, backend="fast")
    assert manifest.backend == "fast" and load_manifest(tmp_path / "fast").backend == "fast"
    data = FrameDataset(tmp_path / "fast")
    assert len(data) == manifest.frames >= 40 and data.frames.shape[1:] == (9, 96, 48)
    speeds = data.targets[:, GROUP["ego_speed"].start] * 30.0
    assert 5.0 < speeds.mean() < 40.0 and data.frames.std() > 10
    with pytest.raises(ValueError, match="other settings"):  # same folder, other simulator
        collect(["highway"], frames=40, out=tmp_path / "fast", shard_frames=20, seed=1)
    with pytest.raises(UnsupportedScenario, match="Supported scenarios"):
        collect([str(unsupported_scenario)], frames=5, out=tmp_path / "racetrack", backend="fast")


def test_scenario_mix_and_holdout_split(tmp_path):
    manifest = collect(["highway", "merge"], frames=40, out=tmp_path, shard_frames=8, seed=0)
    assert manifest.scenarios == ["highway", "merge"]
    train, held_out = split_shards(tmp_path, holdout_every=5)
    assert held_out == [4] and train == [0, 1, 2, 3]
    assert len(FrameDataset(tmp_path, held_out)) == manifest.shards[4]["frames"]


def test_scenarios_with_different_cameras_are_not_mixed(tmp_path):
    # two-way's camera is zoomed out (0.75 px/m, ego at 0.85): same frame shape, other metres per pixel
    with pytest.raises(ValueError, match=r"highway and two-way have different bev cameras "
                                         r"\(pixels_per_meter 1.5 vs 0.75, ego_row 0.7 vs 0.85\)"):
        collect(["highway", "two-way"], frames=5, out=tmp_path, shard_frames=5)
    assert not (tmp_path / "manifest.json").exists()


def test_bad_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no perception dataset"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"scenarios": []}))
    with pytest.raises(ValueError, match="not a clearlane dataset manifest"):
        load_manifest(tmp_path)


def test_label_encoding_masks_absent_neighbours_and_round_trips_units():
    truth = {
        "presence": np.array([1, 0, 0, 0, 0, 0, 0, 0], np.float32),
        "rel_position": np.zeros((8, 2), np.float32),
        "rel_velocity": np.zeros((8, 2), np.float32),
        "occupancy": np.zeros((3, 2), np.float32),
        "ego_lane": np.float32(2),
        "ego_speed": np.float32(24.0),
    }
    truth["rel_position"][0] = [25.0, -4.0]
    target, mask = encode(truth)
    position = GROUP["rel_position"].start
    np.testing.assert_allclose(target[position : position + 2], [0.5, -0.4], rtol=1e-6)
    assert mask[position : position + 2].tolist() == [1, 1] and mask[position + 2 : position + 16].sum() == 0
    prediction = target.copy()
    prediction[position] += 0.1  # 5 m too far ahead
    prediction[GROUP["ego_speed"].start] += 0.1  # 3 m/s too fast
    errors = describe_errors(prediction[None], target[None], mask[None])
    assert errors["position_mae_m"] == pytest.approx(2.5)  # (5 + 0) / 2 coordinates
    assert errors["ego_speed_mae_mps"] == pytest.approx(3.0)
    assert errors["presence_error_rate"] == 0.0
