"""Shipping copies a valid student with its ONNX export and a card that says how it was made."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from perception.checkpoint import load_model, save_checkpoint
from perception.dataset import Manifest, save_manifest
from perception.models import STUDENT, TEACHER, PerceptionNet
from perception.ship import ship

SHAPE = (9, 32, 16)


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    manifest = Manifest(scenarios=["highway"], camera="bev", frames_requested=10, seed=3, policies=["random"],
                        observation_shape=list(SHAPE))
    manifest.shards.append({"index": 0, "file": "shard-00000.npz", "frames": 10, "episodes": 1})
    save_manifest(data, manifest)
    return data


def test_ship_writes_weights_onnx_and_card(tmp_path, dataset):
    torch.manual_seed(0)
    student = PerceptionNet(STUDENT, *SHAPE)
    source = save_checkpoint(tmp_path / "student.safetensors", student, extra={"metrics": {"val_label_error": 0.2}})
    out = tmp_path / "weights"
    card_path = ship(source, data=dataset, out_dir=out)

    card = json.loads(card_path.read_text())
    assert card["data"]["scenarios"] == ["highway"] and card["data"]["frames"] == 10 and card["data"]["seed"] == 3
    assert card["training"]["metrics"]["val_label_error"] == 0.2
    assert card["input"]["shape_chw"] == list(SHAPE)
    assert card["params"] == sum(p.numel() for p in student.parameters())
    assert card["onnx_max_abs_diff"] < 1e-4
    shipped, metadata = load_model(out / "student.safetensors")
    assert card["tensors_sha256"] == metadata["tensors_sha256"] and len(card["tensors_sha256"]) == 64
    assert card["bytes"] == (out / "student.safetensors").stat().st_size
    frames = torch.rand(2, *SHAPE)
    torch.testing.assert_close(shipped(frames).labels, student(frames).labels)
    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    labels = session.run(["labels"], {"frames": frames.numpy()})[0]
    np.testing.assert_allclose(labels, student(frames).labels.detach().numpy(), atol=1e-4)


def test_only_students_are_shipped(tmp_path, dataset):
    teacher = save_checkpoint(tmp_path / "teacher.safetensors", PerceptionNet(TEACHER, *SHAPE))
    with pytest.raises(ValueError, match="only a student is shipped"):
        ship(teacher, data=dataset, out_dir=tmp_path / "weights")
    assert not (tmp_path / "weights" / "student.safetensors").exists()


def test_the_card_quotes_the_evaluation_file():
    """The shipped evaluation file's robust student and target checklist go onto the card as they are stored."""
    from pathlib import Path

    from perception.ship import _student_rows

    path = Path(__file__).resolve().parents[2] / "docs" / "perception_eval.json"
    stored = json.loads(path.read_text())
    rows = _student_rows(path)
    assert rows == {
        "robust_student": stored["models"][stored["meta"]["roles"]["robust_student"]],
        "targets": stored["targets"],
        "date": stored["meta"]["date"],
    }
    assert _student_rows(None) == {} and _student_rows(path.with_name("missing.json")) == {}
