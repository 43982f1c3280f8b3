"""Perception CNNs: shapes, attention, ONNX parity, SHAP-friendly structure, FLOP counts."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from perception.labels import LABEL_DIM
from perception.models import (
    ARCHS,
    STUDENT,
    TEACHER,
    ArchConfig,
    PerceptionNet,
    SpatialAttentionPool,
    build_model,
    count_flops,
    count_params,
    export_onnx,
    label_loss,
)

SHAPES = [(9, 32, 16), (3, 32, 32)]



def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every parameter non-trivial (residual branches start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shapes_and_attention(arch: str, shape: tuple[int, int, int]) -> None:
    model = build_model(arch, *shape).eval()
    x = torch.rand(5, *shape)
    out = model(x)
    channels, h, w = model.feature_shape
    assert out.embedding.shape == (5, ARCHS[arch].embed_dim)
    assert out.labels.shape == (5, LABEL_DIM)
    assert out.attention.shape == (5, h, w)
    stride = 2 ** len(ARCHS[arch].widths)  # every stage halves H and W, rounding up
    assert (h, w) == (-(-shape[1] // stride), -(-shape[2] // stride))
    assert torch.all(out.attention >= 0)
    torch.testing.assert_close(out.attention.sum(dim=(1, 2)), torch.ones(5), atol=1e-5, rtol=0)
    assert torch.equal(model.pool.last_attention, out.attention.detach())
    assert torch.all(out.embedding >= 0)  # ReLU embedding


def test_embedding_depends_on_each_sample() -> None:
    model = _perturb(build_model("student", 9, 32, 16)).eval()
    x = torch.rand(4, 9, 32, 16)
    batched = model(x).labels
    single = torch.cat([model(x[i : i + 1]).labels for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_attention_pool_heads_each_sum_to_one() -> None:
    pool = SpatialAttentionPool(channels=6, height=4, width=3, heads=3)
    pooled, attention = pool(torch.randn(2, 6, 4, 3))
    assert pooled.shape == (2, 18)
    assert attention.shape == (2, 4, 3)
    torch.testing.assert_close(pool.last_attention_heads.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(attention, pool.last_attention_heads.mean(dim=1))


def test_pooled_features_know_where_things_are() -> None:
    """A blob moved across the map changes the pooled vector only thanks to the position embedding."""
    pool = SpatialAttentionPool(channels=4, height=5, width=5, heads=1)
    left, right = torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 5, 5)
    left[:, 1:, 2, 0] = 3.0
    right[:, 1:, 2, 4] = 3.0
    with torch.no_grad():
        pool.position.zero_()
        pool.position[0, 0] = torch.linspace(-1, 1, 5)  # channel 0 encodes the column
        pool.logits.weight.fill_(1.0)  # attend to bright places
        pool.logits.bias.zero_()
    assert pool(left)[0][0, 0] < -0.5 and pool(right)[0][0, 0] > 0.5  # "the blob is left / right"
    with torch.no_grad():
        pool.position.zero_()  # without it, attention pooling is permutation invariant: same vector
    torch.testing.assert_close(pool(left)[0], pool(right)[0])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_onnx_export_matches_pytorch(arch: str, tmp_path) -> None:
    shape = (9, 32, 16)
    model = _perturb(build_model(arch, *shape)).eval()
    path = tmp_path / f"{arch}.onnx"
    export_onnx(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, *shape)  # batch 3 although exported with batch 1: dynamic batch axis
    got = session.run(None, {"frames": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for name, ours, theirs in zip(("embedding", "labels", "attention"), expected, got):
        assert theirs.shape == tuple(ours.shape), name
        assert np.max(np.abs(theirs - ours.numpy())) < 1e-4, name
    assert not model.training  # export leaves the mode as it was
    assert [p.name for p in tmp_path.iterdir()] == [f"{arch}.onnx"]  # no temporary files left


def test_no_reused_or_inplace_activations() -> None:
    """SHAP's DeepExplainer needs each activation module used once and nothing in place."""
    model = _perturb(build_model("teacher", 9, 32, 16))
    calls: dict[str, int] = {}
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        for name, module in model.named_modules()
        if isinstance(module, (nn.ReLU, nn.Softmax))
    ]
    model(torch.rand(2, 9, 32, 16))
    for handle in handles:
        handle.remove()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(not relu.inplace for relu in relus)
    assert len(calls) == len(relus) + 1 and set(calls.values()) == {1}


def test_wrong_input_shape_is_a_clear_error() -> None:
    model = build_model("student", 9, 32, 16)
    with pytest.raises(ValueError, match=r"expects frames of shape \(B, 9, 32, 16\).*got \(2, 9, 16, 32\)"):
        model(torch.rand(2, 9, 16, 32))


def test_count_flops_of_a_known_network() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    assert count_flops(net, (3, 8, 8)) == 8 * 8 * 4 * 3 * 9 + 256 * 5
    assert count_params(net) == 4 * 3 * 9 + 4 + 256 * 5 + 5


def test_teacher_and_student_budgets_at_camera_size() -> None:
    shape = (9, 96, 48)
    teacher, student = build_model("teacher", *shape), build_model("student", *shape)
    teacher_macs, student_macs = count_flops(teacher, shape), count_flops(student, shape)
    assert 20e6 <= teacher_macs <= 80e6
    assert student_macs < 3e6
    assert teacher_macs > 20 * student_macs
    assert count_params(teacher) > 20 * count_params(student)
    assert student.feature_shape[1:] == (12, 6)


def test_label_loss_ignores_masked_entries() -> None:
    pred, target = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert label_loss(pred, target, mask).item() == pytest.approx((1 + 9) / 4)
    pred_masked = pred.clone()
    pred_masked[0, 1] = 100.0
    assert label_loss(pred_masked, target, mask).item() == pytest.approx((1 + 9) / 4)
    assert label_loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_bad_arch_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown perception architecture 'resnet50'"):
        build_model("resnet50", 9, 96, 48)
    with pytest.raises(ValueError, match="one block count per stage"):
        ArchConfig("x", widths=(8, 16), blocks_per_stage=(0,), embed_dim=8)
    with pytest.raises(ValueError, match="height must be >= 1"):
        PerceptionNet(STUDENT, 9, 0, 48)
    assert ArchConfig.from_dict(TEACHER.to_dict()) == TEACHER
