"""Checkpoints: exact round trips, clear errors for bad files, atomic writes, training state."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from envs.files import atomic_write
from perception.checkpoint import (
    DIGEST_KEY,
    FORMAT_NAME,
    load_model,
    load_training_state,
    read_metadata,
    save_checkpoint,
    save_training_state,
    tensors_digest,
    training_state_path,
    verify_checkpoint,
)
from perception.labels import LABEL_DIM
from perception.models import STUDENT, PerceptionNet, build_model

SHAPE = (9, 32, 16)



@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("student", *SHAPE)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path / "student.safetensors"
    save_checkpoint(path, model, "student", SHAPE, extra={"epoch": 3, "metrics": {"val_label_error": 0.1}})
    return model, path


@pytest.mark.parametrize("arch", ["student", "teacher"])
def test_round_trip_gives_identical_outputs(arch: str, tmp_path) -> None:
    torch.manual_seed(1)
    model = build_model(arch, *SHAPE)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = save_checkpoint(tmp_path / "m.safetensors", model, extra={"note": "hi"})
    loaded, metadata = load_model(path, "cpu", expected_arch=arch, expected_input_shape=SHAPE)
    assert not loaded.training
    x = torch.rand(3, *SHAPE)
    model.eval()
    with torch.no_grad():
        for ours, theirs in zip(model(x), loaded(x)):
            assert torch.equal(ours, theirs)
    assert metadata["format"] == FORMAT_NAME
    assert metadata["arch"] == arch and metadata["input_shape"] == SHAPE and metadata["label_dim"] == LABEL_DIM
    assert metadata["arch_config"] == model.arch
    assert metadata["extra"] == {"note": "hi"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary files left


def test_metadata_is_readable_without_weights(saved) -> None:
    _, path = saved
    metadata = read_metadata(path)
    assert metadata["extra"]["epoch"] == 3
    with safe_open(str(path), framework="pt") as handle:  # plain safetensors, readable by any tool
        assert json.loads(handle.metadata()["input_shape"]) == list(SHAPE)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="perception checkpoint not found: .*nope.safetensors"):
        load_model(tmp_path / "nope.safetensors")


def test_random_bytes(tmp_path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="garbage.safetensors is not a clearlane perception checkpoint or is corrupt"):
        load_model(path)


@pytest.mark.parametrize("keep", [0, 5, 100, 0.5, -1])
def test_truncated_file(keep, saved, tmp_path) -> None:
    _, path = saved
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="is not a clearlane perception checkpoint or is corrupted"):
        load_model(truncated)


def test_safetensors_file_from_elsewhere(tmp_path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a clearlane perception checkpoint.*format is 'pt'"):
        load_model(path)


def test_mismatched_arch_and_shape(saved) -> None:
    _, path = saved
    with pytest.raises(ValueError, match="expected architecture 'teacher', found 'student'"):
        load_model(path, expected_arch="teacher")
    with pytest.raises(ValueError, match=r"expected input shape \(C, H, W\) = \(9, 96, 48\), found \(9, 32, 16\)"):
        load_model(path, expected_input_shape=(9, 96, 48))


def test_mismatched_label_dim(tmp_path) -> None:
    model = PerceptionNet(STUDENT, *SHAPE, label_dim=10)
    path = save_checkpoint(tmp_path / "old.safetensors", model)
    with pytest.raises(ValueError, match=f"expected label dimension {LABEL_DIM} .*found 10"):
        load_model(path)


def test_weights_that_do_not_fit_the_recorded_arch(saved, tmp_path) -> None:
    _, path = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    del metadata["tensors_sha256"]  # as a file from before digests: the digest would refuse it first
    tensors["head.weight"] = torch.zeros(LABEL_DIM, 7)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(ValueError, match=r"tensor 'head.weight' has shape \(48, 7\), expected \(48, 64\)"):
        load_model(bad)
    del tensors["head.weight"]
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(ValueError, match="missing \\['head.weight'\\]"):
        load_model(bad)


def _tensors_and_metadata(path):
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


def test_the_digest_of_the_tensors_is_saved_and_survives_a_round_trip(saved, tmp_path) -> None:
    model, path = saved
    metadata = read_metadata(path)
    assert metadata[DIGEST_KEY] == tensors_digest(model.state_dict()) and len(metadata[DIGEST_KEY]) == 64
    loaded, _ = load_model(path)
    again = save_checkpoint(tmp_path / "again.safetensors", loaded)
    assert read_metadata(again)[DIGEST_KEY] == metadata[DIGEST_KEY]  # same numbers, same digest


def test_flipped_bytes_in_the_weights_are_refused_as_corrupted(saved) -> None:
    _, path = saved
    data = bytearray(path.read_bytes())
    start = len(data) - 4096 - 100  # 4 KB inside the tensor data (the JSON header is at the start)
    data[start:start + 4096] = bytes(byte ^ 0xFF for byte in data[start:start + 4096])
    path.write_bytes(bytes(data))
    read_metadata(path)  # the header is intact
    for load in (load_model, verify_checkpoint):
        with pytest.raises(ValueError, match="is corrupted or was modified after it was saved: its weights do not "
                                             "match the SHA-256 recorded in its metadata"):
            load(path)


def test_non_finite_weights_are_refused_on_load_and_on_save(saved, tmp_path) -> None:
    model, path = saved
    tensors, metadata = _tensors_and_metadata(path)
    del metadata[DIGEST_KEY]  # a file without a digest (saved before digests existed) is checked for NaN/inf too
    tensors["head.weight"][0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(ValueError, match=r"tensor 'head.weight' holds 1 non-finite \(NaN or infinite\) value"):
        load_model(bad)
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite"):
        save_checkpoint(tmp_path / "inf.safetensors", model)
    assert not (tmp_path / "inf.safetensors").exists()


def test_a_file_without_a_digest_still_loads(saved, tmp_path) -> None:
    model, path = saved
    tensors, metadata = _tensors_and_metadata(path)
    del metadata[DIGEST_KEY]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=metadata)
    loaded, loaded_metadata = load_model(old)
    assert loaded_metadata[DIGEST_KEY] is None
    assert tensors_digest(loaded.state_dict()) == tensors_digest(model.state_dict())


def test_the_shipped_student_carries_its_digest_in_the_file_and_the_card() -> None:
    from perception.extractor import DEFAULT_STUDENT

    card = json.loads(DEFAULT_STUDENT.with_name("student.json").read_text())
    metadata = verify_checkpoint(DEFAULT_STUDENT)
    assert metadata[DIGEST_KEY] is not None and card["tensors_sha256"] == metadata[DIGEST_KEY]
    assert card["bytes"] == DEFAULT_STUDENT.stat().st_size


def test_save_rejects_inconsistent_arguments(saved, tmp_path) -> None:
    model, _ = saved
    with pytest.raises(ValueError, match="does not match the model's architecture 'student'"):
        save_checkpoint(tmp_path / "x.safetensors", model, "teacher", SHAPE)
    with pytest.raises(ValueError, match="does not match the model's input shape"):
        save_checkpoint(tmp_path / "x.safetensors", model, "student", (3, 32, 32))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "x.safetensors", model, extra={"bad": object()})
    assert not (tmp_path / "x.safetensors").exists()


def test_failed_write_keeps_the_old_file(saved) -> None:
    _, path = saved
    before = path.read_bytes()

    def crash(tmp) -> None:
        tmp.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.safetensors"]
    load_model(path)


def _fit(model, optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(4, *SHAPE, generator=generator)
        loss = model(x).labels.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_training_state_round_trip_resumes_exactly(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("student", *SHAPE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _fit(model, optimizer, 2, seed=0)
    path = save_training_state(tmp_path / "s.state.pt", model, optimizer, epoch=1, step=2, extra={"history": [0.5]})
    noise_after_save = torch.rand(3)
    _fit(model, optimizer, 2, seed=1)

    resumed = build_model("student", *SHAPE)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    state = load_training_state(path, resumed, resumed_optimizer)
    assert state == {"epoch": 1, "step": 2, "extra": {"history": [0.5]}}
    assert torch.equal(torch.rand(3), noise_after_save)  # RNG restored
    _fit(resumed, resumed_optimizer, 2, seed=1)
    for ours, theirs in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_bad_training_state(tmp_path) -> None:
    model = build_model("student", *SHAPE)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(FileNotFoundError, match="training state not found"):
        load_training_state(tmp_path / "none.state.pt", model, optimizer)
    bad = tmp_path / "bad.state.pt"
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="is not a clearlane training state or is corrupted"):
        load_training_state(bad, model, optimizer)
    path = save_training_state(tmp_path / "t.state.pt", build_model("teacher", *SHAPE), optimizer, epoch=0, step=0)
    with pytest.raises(ValueError, match="weights do not match"):
        load_training_state(path, model, optimizer)


def test_training_state_path() -> None:
    assert training_state_path("runs/p/teacher.safetensors").as_posix() == "runs/p/teacher.state.pt"
