"""Distillation: the student moves towards the teacher, robust distillation transfers robustness,
attacks are crafted against the student, a killed run resumes."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open
from torch.utils.data import TensorDataset

import perception.distill as distill_module
from perception.attacks import pgd as real_pgd
from perception.checkpoint import load_model, read_metadata, save_checkpoint, training_state_path
from perception.distill import (
    DistillConfig,
    attention_kl,
    distill,
    pgd_teacher_gap,
    resize_attention,
    soft_label_loss,
    teacher_outputs,
)
from perception.labels import LABEL_DIM
from perception.models import ArchConfig, build_model, label_loss
from tests.perception import KilledAfter


SHAPE = (9, 32, 16)  # (C, H, W): three stacked RGB frames
EPS = 8 / 255
# a small 4-stage teacher: its attention map (2, 1) is coarser than the student's (4, 2), like the
# real teacher (6, 3) vs student (12, 6) at 96x48, so attention transfer has to resize it
TINY_TEACHER = ArchConfig(
    name="teacher", widths=(8, 16, 16, 32), blocks_per_stage=(0, 1, 1, 1), embed_dim=32, attention_heads=2
)


def boxes(n: int, seed: int) -> TensorDataset:
    """One box per colour channel (repeated over the 3 stacked frames) at a random place; the
    labels 0-2 are the boxes' brightness parameters y_k ~ U(0, 1) (the rest undefined)."""
    generator = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.05 * torch.rand(n, *SHAPE, generator=generator)
    y = torch.rand(n, 3, generator=generator)
    rows = torch.randint(0, SHAPE[1] - 7, (n, 3), generator=generator)
    cols = torch.randint(0, SHAPE[2] - 5, (n, 3), generator=generator)
    for i in range(n):
        for k in range(3):
            x[i, k::3, rows[i, k] : rows[i, k] + 8, cols[i, k] : cols[i, k] + 6] = 0.2 + 0.6 * y[i, k]
    target, mask = torch.zeros(n, LABEL_DIM), torch.zeros(n, LABEL_DIM)
    target[:, :3], mask[:, :3] = y, 1.0
    frames = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # (N, C, H, W) like camera frames
    return TensorDataset(frames, target, mask)


@pytest.fixture(scope="module")
def data():
    return boxes(512, seed=0), boxes(128, seed=1)


@pytest.fixture(scope="module")
def teacher_path(data, tmp_path_factory):
    """A teacher trained (clean, briefly) on the box task: its outputs depend on the input."""
    train_set, _ = data
    torch.manual_seed(0)
    teacher = build_model(TINY_TEACHER, *SHAPE)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True)
    for _ in range(8):
        for frames, target, mask in loader:
            loss = label_loss(teacher(frames.float() / 255).labels, target, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_checkpoint(path, teacher, extra={"epoch": 8})
    return path


def config(tmp_path, teacher_path, mode: str, **changes) -> DistillConfig:
    settings = dict(
        teacher=str(teacher_path),
        mode=mode,
        eps=EPS,
        epochs=12,
        batch_size=32,
        lr=3e-3,
        pgd_steps=2,
        probe_steps=2,
        probe_size=32,
        seed=0,
        device="cpu",
        logdir=None,
        out=str(tmp_path / f"{mode}.safetensors"),
        progress=False,
    )
    settings.update(changes)
    return DistillConfig(**settings)


def _labels(model, dataset: TensorDataset) -> torch.Tensor:
    with torch.no_grad():
        return model(dataset.tensors[0].float() / 255).labels  # (N, D)


@pytest.fixture(scope="module")
def distilled(data, teacher_path, tmp_path_factory):
    """Students distilled from the same teacher, clean and robust, with the same seed and budget."""
    train_set, val_set = data
    students = {}
    for mode in ("clean", "robust"):
        cfg = config(tmp_path_factory.mktemp(mode), teacher_path, mode)
        metrics = distill(cfg, train_set, val_set)
        students[mode] = (load_model(cfg.out, expected_arch="student")[0], metrics, cfg)
    return students


def test_distillation_closes_the_gap_to_the_teacher(data, teacher_path, distilled) -> None:
    _, val_set = data
    teacher, _ = load_model(teacher_path)
    student, metrics, _ = distilled["clean"]
    torch.manual_seed(0)  # the student distill() starts from (same seed)
    untrained = build_model("student", *SHAPE)
    t = _labels(teacher, val_set)  # (N, D)
    before = (_labels(untrained, val_set) - t).abs().mean()
    after = (_labels(student, val_set) - t).abs().mean()
    # measured (seeds 0-3 of teacher, data and student): after / before = 0.20-0.31
    assert after < 0.45 * before
    assert metrics["val_teacher_gap"] == pytest.approx(float(after), rel=1e-4)
    # not just the teacher's average output: on the defined labels, where the teacher's output depends
    # on the box brightness, the student beats the best constant (measured: 0.49-0.53 of its error)
    defined = slice(0, 3)
    constant = (t[:, defined] - t[:, defined].mean(dim=0)).abs().mean()
    assert (_labels(student, val_set)[:, defined] - t[:, defined]).abs().mean() < 0.7 * constant


def test_robust_distillation_transfers_robustness(data, teacher_path, distilled) -> None:
    _, val_set = data
    teacher, _ = load_model(teacher_path)
    x = val_set.tensors[0][:64].float() / 255  # (64, C, H, W)
    t = _labels(teacher, val_set)[:64]
    torch.manual_seed(0)
    gaps = {mode: pgd_teacher_gap(distilled[mode][0], x, t, eps=EPS, steps=10) for mode in ("clean", "robust")}
    # under PGD-10 against each student, distance to the teacher's clean labels
    # (measured, seeds 0-3: robust / clean = 0.33-0.46, e.g. 0.10 vs 0.29)
    assert gaps["robust"] < 0.65 * gaps["clean"]
    assert distilled["robust"][1]["probe_gap_pgd"] < distilled["clean"][1]["probe_gap_pgd"]
    # and not by collapsing to a constant (which no attack moves): on the defined labels the robust
    # student still follows the teacher better than the best constant (measured: 0.76-0.90 of its error)
    t_all, defined = _labels(teacher, val_set), slice(0, 3)
    constant = (t_all[:, defined] - t_all[:, defined].mean(dim=0)).abs().mean()
    assert (_labels(distilled["robust"][0], val_set)[:, defined] - t_all[:, defined]).abs().mean() < constant


def test_attacks_are_crafted_against_the_student_towards_the_teachers_clean_labels(
    data, teacher_path, tmp_path, monkeypatch
) -> None:
    train_set, val_set = boxes(64, seed=2), boxes(32, seed=3)
    teacher, _ = load_model(teacher_path)
    calls = []

    def spy(model, x, target, mask, eps, alpha, steps, random_start=True, loss_fn=label_loss):
        x_adv = real_pgd(model, x, target, mask, eps, alpha, steps, random_start, loss_fn)
        calls.append((model, x, target, eps, steps, loss_fn, x_adv, model(x_adv).labels.detach()))
        return x_adv

    monkeypatch.setattr(distill_module, "pgd", spy)
    distill(config(tmp_path, teacher_path, "robust", epochs=1, probe_steps=0), train_set, val_set)
    assert len(calls) == 64 // 32  # one attack per training batch; the probe (0 steps) does not attack
    for model, x, target, eps, steps, loss_fn, x_adv, adv_labels in calls:
        assert model.arch.name == "student"
        assert loss_fn is soft_label_loss and eps == EPS and steps == 2
        # the target is the teacher's output on the CLEAN frames of this batch
        torch.testing.assert_close(target, _labels_of(teacher, x), atol=1e-5, rtol=0)
        assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv - x).abs().max() > 0.5 * EPS
        with torch.no_grad():
            clean_loss = soft_label_loss(model(x).labels, target)
        assert soft_label_loss(adv_labels, target) > clean_loss  # the attack pushed the student away


def _labels_of(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).labels


def test_checkpoint_holds_the_student_only(distilled, teacher_path) -> None:
    student, metrics, cfg = distilled["robust"]
    metadata = read_metadata(cfg.out)
    assert metadata["arch"] == "student" and metadata["input_shape"] == SHAPE
    extra = metadata["extra"]
    assert extra["teacher"] == str(teacher_path) and extra["epoch"] == 12
    assert extra["distill_config"]["mode"] == "robust" and extra["metrics"]["epoch"] == 12
    with safe_open(cfg.out, framework="pt") as handle:
        assert not [name for name in handle.keys() if "projection" in name]
    assert set(metrics) >= {
        "train_loss", "loss_soft", "loss_label", "loss_feature", "loss_attention", "val_label_error",
        "val_teacher_gap", "probe_gap_pgd", "probe_pgd_error", "teacher_val_label_error",
    }
    assert all(math.isfinite(value) for value in metrics.values())
    state = torch.load(training_state_path(cfg.out), weights_only=True)
    assert any(name.startswith("projection.") for name in state["model"])  # kept for resuming


def test_killed_run_resumes_where_it_stopped(teacher_path, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_set, val_set = boxes(128, seed=0), boxes(32, seed=1)
    reference = distill(config(tmp_path / "ref", teacher_path, "robust", epochs=2), train_set, val_set)

    logdir = str(tmp_path / "run" / "tb")
    cfg = config(tmp_path / "run", teacher_path, "robust", epochs=2, logdir=logdir)
    # reads: 1 (shape check) + 128 (teacher pass) + 128 (epoch 1) + 50 (into epoch 2)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, KilledAfter(train_set, limit=1 + 128 + 128 + 50), val_set)
    assert read_metadata(cfg.out)["extra"]["epoch"] == 1

    resumed = config(tmp_path / "run", teacher_path, "robust", epochs=2, logdir=logdir, resume=True)
    metrics = distill(resumed, train_set, val_set)
    assert metrics["epochs_run"] == 1 and metrics["epoch"] == 2 and metrics["step"] == 2 * (128 // 32)
    for key in ("train_loss", "val_teacher_gap", "probe_gap_pgd", "val_label_error"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    again = distill(resumed, train_set, val_set)
    assert again["epochs_run"] == 0 and again["epoch"] == 2

    other_mode = config(tmp_path / "run", teacher_path, "clean", epochs=3, resume=True, out=cfg.out)
    with pytest.raises(ValueError, match="cannot resume"):
        distill(other_mode, train_set, val_set)

    events = EventAccumulator(logdir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"distill/train_loss", "distill/val_teacher_gap", "distill/probe_gap_pgd", "distill/lr"} <= tags
    assert sorted(event.step for event in events.Scalars("distill/val_teacher_gap")) == [1, 2]


def test_teacher_outputs_are_cached_in_order(data, teacher_path) -> None:
    _, val_set = data
    teacher, _ = load_model(teacher_path)
    labels, embedding, attention = teacher_outputs(teacher, val_set, batch_size=50)
    out = teacher(val_set.tensors[0].float() / 255)
    torch.testing.assert_close(labels, out.labels.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(embedding, out.embedding.detach(), atol=1e-5, rtol=0)
    assert attention.shape == (128, *teacher.feature_shape[1:])


def test_teacher_outputs_with_the_feature_map(data, teacher_path) -> None:
    _, val_set = data
    teacher, _ = load_model(teacher_path)
    *_, feature_map = teacher_outputs(teacher, val_set, batch_size=50, with_map=True)
    _, expected = teacher.forward_with_map(val_set.tensors[0].float() / 255)
    assert feature_map.shape == (128, *teacher.feature_shape)
    torch.testing.assert_close(feature_map, expected.detach(), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def student_path(data, tmp_path_factory):
    """A student distilled briefly: the teacher of self-distillation (map_weight needs its map shape)."""
    train_set, val_set = data
    out = tmp_path_factory.mktemp("self") / "student.safetensors"
    teacher = tmp_path_factory.mktemp("self-teacher") / "teacher.safetensors"
    torch.manual_seed(0)
    save_checkpoint(teacher, build_model(TINY_TEACHER, *SHAPE))
    distill(config(out.parent, teacher, "clean", epochs=2, out=str(out)), train_set, val_set)
    return out


def test_self_distillation_starts_where_the_student_is(data, student_path, tmp_path) -> None:
    """The student as its own teacher and starting point: the projection starts as the identity and
    the maps are scaled alike, so with a vanishing learning rate every matching term is ~0."""
    train_set, val_set = data
    cfg = config(tmp_path, student_path, "clean", epochs=1, lr=1e-12, init=str(student_path), map_weight=1.0)
    metrics = distill(cfg, train_set, val_set)
    for term in ("loss_soft", "loss_feature", "loss_attention", "loss_map"):
        assert metrics[term] == pytest.approx(0.0, abs=1e-6), term  # (the KL clamps probabilities at 1e-8)
    assert metrics["loss_label"] > 1e-3  # the ground truth is still what the student gets wrong


def test_feature_attacks_push_the_whole_objective_up(data, student_path, tmp_path, monkeypatch) -> None:
    """attack_target "features": one PGD per batch on the weighted loss, none on labels. With every weight
    but the map's at 0 the objective is the map term alone: the attack raises it from ~0 only if the map is in it."""
    from perception.attacks import ascend as real_ascend

    train_set, val_set = boxes(64, seed=2), boxes(32, seed=3)
    calls = []

    def spy(loss_fn, x, eps, steps, step_size, **options):
        x_adv = real_ascend(loss_fn, x, eps, steps, step_size, **options)
        with torch.no_grad():
            calls.append((eps, steps, float(loss_fn(x)), float(loss_fn(x_adv)), (x_adv - x).abs().max()))
        return x_adv

    def no_label_attack(*args, **kwargs):
        raise AssertionError("attack_target 'features' ran the soft-label PGD")

    monkeypatch.setattr(distill_module, "ascend", spy)
    monkeypatch.setattr(distill_module, "pgd", no_label_attack)
    cfg = config(tmp_path, student_path, "robust", epochs=1, probe_steps=0, init=str(student_path), map_weight=1.0,
                 attack_target="features", soft_weight=0, label_weight=0, feature_weight=0, attention_weight=0)
    distill(cfg, train_set, val_set)
    assert len(calls) == 64 // 32
    for eps, steps, clean_loss, adversarial_loss, distance in calls:
        assert eps == EPS and steps == 2 and distance <= EPS + 1e-6
        assert adversarial_loss > clean_loss and adversarial_loss > 1e-4


def test_map_matching_needs_a_teacher_with_the_students_map(data, teacher_path, tmp_path) -> None:
    train_set, val_set = boxes(8, 0), boxes(8, 1)
    with pytest.raises(ValueError, match=r"map_weight 1.0 matches feature maps, but the teacher's map \(32, 2, 1\)"):
        distill(config(tmp_path, teacher_path, "clean", map_weight=1.0), train_set, val_set)


def test_attention_resize_and_kl() -> None:
    attention = torch.softmax(torch.randn(4, 6), dim=1).reshape(4, 2, 3)  # (B, h, w), sums to 1
    resized = resize_attention(attention, (4, 6))
    assert resized.shape == (4, 4, 6) and torch.all(resized >= 0)
    torch.testing.assert_close(resized.sum(dim=(1, 2)), torch.ones(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(resize_attention(attention, (2, 3)), attention)
    assert float(attention_kl(attention, attention)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full_like(attention, 1 / 6)
    assert float(attention_kl(uniform, attention)) > 0


def test_teacher_with_other_input_shape_is_refused(tmp_path) -> None:
    path = tmp_path / "teacher.safetensors"
    save_checkpoint(path, build_model("student", 3, 32, 16))
    with pytest.raises(ValueError, match=r"reads frames of shape \(C, H, W\) = \(3, 32, 16\).*\(9, 32, 16\)"):
        distill(config(tmp_path, path, "clean"), boxes(8, 0), boxes(8, 1))
    with pytest.raises(FileNotFoundError, match="perception checkpoint not found"):
        distill(config(tmp_path, tmp_path / "missing.safetensors", "clean"), boxes(8, 0), boxes(8, 1))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mode": "pgd"}, "DistillConfig: mode: Input should be 'robust' or 'clean' (got 'pgd')"),
        ({"arch": "vgg"}, "DistillConfig: arch: unknown architecture 'vgg'"),
        ({"eps": 4.0}, "DistillConfig: eps: Input should be less than or equal to 1 (got 4.0)"),
        ({"robust_weight": 1.5}, "DistillConfig: robust_weight: Input should be less than or equal to 1 (got 1.5)"),
        ({"soft_weight": -1.0}, "DistillConfig: soft_weight: Input should be greater than or equal to 0 (got -1.0)"),
        ({"soft_weight": float("inf")}, "DistillConfig: soft_weight: Input should be a finite number (got inf)"),
        (
            {"soft_weight": 0, "label_weight": 0, "feature_weight": 0, "attention_weight": 0, "map_weight": 0},
            "DistillConfig: <top level>: all loss weights are 0; nothing to learn",
        ),
        ({"pgd_steps": 0}, "DistillConfig: pgd_steps: must be >= 1 for mode 'robust', got 0"),
        ({"attack_target": "map"}, "DistillConfig: attack_target: Input should be 'labels' or 'features' (got 'map')"),
        ({"epochs": 0}, "DistillConfig: epochs: Input should be greater than or equal to 1 (got 0)"),
        ({"fgsm_alpha": 0.1}, "DistillConfig: fgsm_alpha: unknown key; allowed keys here: amp, arch, attack_target, attention_weight"),
    ],
)
def test_bad_configs(changes, message, tmp_path) -> None:
    """Strict pydantic: one line that names the class and the field."""
    with pytest.raises(ValueError) as error:
        config(tmp_path, "teacher.safetensors", **{"mode": "robust", **changes})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
