"""ONNX export: parity with PyTorch, a failed check writes nothing, onboard inference on uint8 frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import perception.export as export_module
from perception.checkpoint import save_checkpoint
from perception.export import PARITY_TOLERANCE, export
from perception.labels import LABEL_DIM
from perception.models import build_model, export_onnx
from perception.onboard import OnnxPerception, TorchPerception


SHAPE = (9, 32, 16)  # (C, H, W)


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every parameter non-trivial (residual branches start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module", params=["student", "teacher"])
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    model = _perturb(build_model(request.param, *SHAPE)).eval()
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.safetensors"
    save_checkpoint(path, model)
    return path, model


@pytest.fixture(scope="module")
def exported(checkpoint):
    path, model = checkpoint
    onnx_path, diff = export(path)
    return onnx_path, diff, model


def test_export_matches_pytorch(exported, checkpoint) -> None:
    onnx_path, diff, _ = exported
    assert onnx_path == checkpoint[0].with_suffix(".onnx") and onnx_path.is_file()
    assert 0.0 <= diff < 1e-4
    assert not [p.name for p in onnx_path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_export_to_an_explicit_path(checkpoint, tmp_path) -> None:
    out, diff = export(checkpoint[0], out=tmp_path / "sub" / "model.onnx")
    assert out == tmp_path / "sub" / "model.onnx" and out.is_file() and diff < 1e-4
    with pytest.raises(ValueError, match="would overwrite the checkpoint"):
        export(checkpoint[0], out=checkpoint[0])


def test_export_refuses_a_graph_that_differs(checkpoint, tmp_path, monkeypatch) -> None:
    """A broken exporter (here: the labels head shifted by 0.01) is caught; `out` is left alone."""
    _, model = checkpoint

    def corrupted_export(model, path, opset=17):
        broken = build_model(model.arch, *model.input_shape)
        broken.load_state_dict(model.state_dict())
        with torch.no_grad():
            broken.head.bias.add_(0.01)
        export_onnx(broken, path, opset=opset)

    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous good export")
    monkeypatch.setattr(export_module, "export_onnx", corrupted_export)
    with pytest.raises(ValueError, match=f"does not match PyTorch: max \\|difference\\| 0.01 > {PARITY_TOLERANCE:g}"):
        export(path)
    assert out.read_bytes() == b"the previous good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.safetensors"]


def test_nan_weights_are_never_exported(checkpoint, tmp_path) -> None:
    """NaN compares false: the parity check once reported "max diff 0.00e+00" for a NaN model."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, model = checkpoint
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    del metadata["tensors_sha256"]  # as a file from before digests: only the finite-values check stands
    tensors["head.bias"].fill_(float("nan"))
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(ValueError, match=r"tensor 'head.bias' holds \d+ non-finite \(NaN or infinite\)"):
        export(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.safetensors"]  # no .onnx, no temporary file
    # the parity check itself: NaN outputs are an error, not a difference of 0
    broken = build_model(model.arch, *model.input_shape).eval()
    broken.load_state_dict(model.state_dict())
    onnx_path = tmp_path / "good.onnx"
    export_onnx(model, onnx_path)
    with torch.no_grad():
        broken.head.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="output 'labels' holds NaN or infinite values in PyTorch"):
        export_module.parity(broken, onnx_path)


def test_export_of_a_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="perception checkpoint not found"):
        export(tmp_path / "missing.safetensors")


def _frames(batch: int | None, seed: int = 0) -> np.ndarray:
    shape = SHAPE if batch is None else (batch, *SHAPE)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("batch", [None, 1, 7])
def test_onboard_perception_matches_pytorch_on_uint8_frames(exported, batch) -> None:
    onnx_path, _, model = exported
    frames = _frames(batch)
    with torch.no_grad():
        x = torch.from_numpy(frames if batch is not None else frames[None]).float() / 255.0
        expected = model(x)
    onboard, torch_onboard = OnnxPerception(onnx_path), TorchPerception(onnx_path.with_suffix(".safetensors"))
    assert onboard.input_shape == torch_onboard.input_shape == SHAPE
    h, w = model.feature_shape[1:]
    for out in (onboard(frames), torch_onboard(frames), onboard(torch.from_numpy(frames))):
        assert set(out) == {"embedding", "labels", "attention"}
        lead = () if batch is None else (batch,)
        assert out["embedding"].shape == (*lead, model.embed_dim)
        assert out["labels"].shape == (*lead, LABEL_DIM)
        assert out["attention"].shape == (*lead, h, w)
        for name, reference in zip(("embedding", "labels", "attention"), expected):
            reference = reference.numpy() if batch is not None else reference[0].numpy()
            assert out[name].dtype == np.float32
            np.testing.assert_allclose(out[name], reference, atol=1e-4, rtol=0, err_msg=name)


def test_onboard_perception_refuses_bad_frames(exported, tmp_path) -> None:
    onnx_path, _, _ = exported
    onboard = OnnxPerception(onnx_path, threads=1)
    with pytest.raises(TypeError, match="expects uint8 camera frames.*got dtype float32"):
        onboard(_frames(2).astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"expects frames of shape \(C, H, W\) = \(9, 32, 16\).*got \(2, 3, 32, 16\)"):
        onboard(_frames(2)[:, :3])
    with pytest.raises(FileNotFoundError, match="ONNX perception model not found.*perception export"):
        OnnxPerception(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        OnnxPerception(onnx_path, threads=0)
