"""Perception training: adversarial training buys robustness, resume continues a killed run."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from perception.checkpoint import load_model, read_metadata, training_state_path
from perception.labels import LABEL_DIM
from perception.training import TrainConfig, evaluate, train
from tests.perception import KilledAfter

SHAPE = (3, 16, 16)
EPS = 8 / 255



def shortcut_task(n: int, seed: int) -> TensorDataset:
    """A regression task with a robust and a non-robust way to read the target y ~ U(0, 1).

    Robust: a square in channel 0 whose brightness is 0.2 + 0.6 y, plus noise (so it pins y only
    to about +-0.15). Non-robust: channel 2 is shifted by 0.06 (2y - 1) everywhere, exact but
    faint; an ℓ∞ perturbation of 8/255 ≈ 0.031 moves it by half its range. Clean training uses
    the faint shortcut and breaks under attack; adversarial training has to use the square.
    Only label 0 is defined (mask).
    """
    generator = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=generator)
    x = 0.5 + 0.05 * torch.randn(n, *SHAPE, generator=generator)
    brightness = 0.2 + 0.6 * y + 0.15 * torch.randn(n, generator=generator)
    x[:, 0, 4:12, 4:12] = brightness[:, None, None]
    x[:, 2] += (0.06 * (2 * y - 1))[:, None, None]
    frames = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # (N, C, H, W) like camera frames
    target = torch.zeros(n, LABEL_DIM)
    target[:, 0] = y
    mask = torch.zeros(n, LABEL_DIM)
    mask[:, 0] = 1.0
    return TensorDataset(frames, target, mask)


def config(tmp_path, mode: str, **changes) -> TrainConfig:
    settings = dict(
        arch="student",
        mode=mode,
        eps=EPS,
        epochs=8,
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
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def data():
    return shortcut_task(512, seed=0), shortcut_task(128, seed=1)


@pytest.fixture(scope="module")
def clean_model(data, tmp_path_factory):
    train_set, val_set = data
    cfg = config(tmp_path_factory.mktemp("clean"), "clean")
    metrics = train(cfg, train_set, val_set)
    model, _ = load_model(cfg.out)
    return model, metrics


@pytest.mark.parametrize("mode", ["pgd", "fgsm_rs", "trades"])
def test_adversarial_training_is_more_robust_than_clean(mode, data, clean_model, tmp_path) -> None:
    train_set, val_set = data
    clean, clean_metrics = clean_model
    cfg = config(tmp_path, mode)
    metrics = train(cfg, train_set, val_set)
    robust, _ = load_model(cfg.out)

    clean_pgd = evaluate(clean, val_set, eps=EPS, steps=10)
    robust_pgd = evaluate(robust, val_set, eps=EPS, steps=10)
    # measured: clean 0.57-0.79, adversarial 0.20-0.27 over seeds 0-3 (trades 0.23 at seed 0)
    assert robust_pgd < 0.6 * clean_pgd
    assert evaluate(clean, val_set) < 0.15  # the clean model did learn the task (predicting 0.5: 0.25)
    assert clean_pgd > 2 * evaluate(clean, val_set)
    assert metrics["probe_pgd_error"] < clean_metrics["probe_pgd_error"]
    assert metrics["epoch"] == 8 and metrics["step"] == 8 * (512 // 32)


def test_killed_run_resumes_where_it_stopped(data, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_set, val_set = shortcut_task(128, seed=0), shortcut_task(32, seed=1)
    # reference: two epochs in one go
    reference = train(config(tmp_path / "ref", "fgsm_rs", epochs=2, logdir=None), train_set, val_set)

    cfg = config(tmp_path / "run", "fgsm_rs", epochs=2, logdir=str(tmp_path / "run" / "tb"))
    with pytest.raises(KeyboardInterrupt):  # dies during epoch 2 (1 sample read by the shape check)
        train(cfg, KilledAfter(train_set, limit=1 + 128 + 50), val_set)
    assert read_metadata(cfg.out)["extra"]["epoch"] == 1
    assert training_state_path(cfg.out).exists()

    resumed_cfg = config(tmp_path / "run", "fgsm_rs", epochs=2, logdir=str(tmp_path / "run" / "tb"), resume=True)
    metrics = train(resumed_cfg, train_set, val_set)
    assert metrics["epochs_run"] == 1 and metrics["epoch"] == 2 and metrics["step"] == 2 * (128 // 32)
    assert all(math.isfinite(value) for value in metrics.values())
    assert read_metadata(cfg.out)["extra"]["epoch"] == 2
    # same RNG streams and data order as the uninterrupted run
    for key in ("train_loss", "val_label_error", "probe_pgd_error"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key

    # a third call has nothing left to do
    again = train(resumed_cfg, train_set, val_set)
    assert again["epochs_run"] == 0 and again["epoch"] == 2

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train_loss", "val_label_error", "probe_pgd_error", "lr", "epoch_seconds"}
    assert {f"perception/{key}" for key in expected} <= tags
    assert sorted(event.step for event in events.Scalars("perception/val_label_error")) == [1, 2]


@pytest.mark.parametrize(
    "mode, val_errors, probe_errors, warned",
    [
        ("fgsm_rs", [0.20, 0.15, 0.10], [0.10, 0.10, 0.30], True),  # probe jumps, clean error falls
        ("fgsm_rs", [0.20, 0.15, 0.18], [0.10, 0.10, 0.30], False),  # both got worse: not the FGSM-RS failure
        ("fgsm_rs", [0.20, 0.15, 0.10], [0.10, 0.10, 0.12], False),  # no jump
        ("clean", [0.20, 0.15, 0.10], [0.10, 0.10, 0.30], False),  # clean training makes no robustness claim
    ],
)
def test_catastrophic_overfitting_warning(
    mode, val_errors, probe_errors, warned, tmp_path, caplog, monkeypatch
) -> None:
    import perception.training as training

    vals, probes = iter(val_errors), iter(probe_errors)
    def fake_evaluate(model, data, device, eps=0.0, **kwargs) -> float:
        return next(probes if eps > 0 else vals)

    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    train_set, val_set = shortcut_task(64, seed=0), shortcut_task(32, seed=1)
    with caplog.at_level("WARNING", logger="perception.loop"):
        metrics = train(config(tmp_path, mode, epochs=3), train_set, val_set)
    assert metrics["probe_pgd_error"] == probe_errors[-1] and metrics["val_label_error"] == val_errors[-1]
    warnings = [r.getMessage() for r in caplog.records if "catastrophic overfitting" in r.getMessage()]
    if warned:
        assert warnings == [warnings[0]] and warnings[0].startswith("epoch 3: PGD probe error jumped 0.1000 -> 0.3000")
    else:
        assert warnings == []


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mode": "free"}, "TrainConfig: mode: Input should be 'clean', 'pgd', 'fgsm_rs' or 'trades' (got 'free')"),
        ({"arch": "vgg"}, "TrainConfig: arch: unknown architecture 'vgg'; choose one of ['student', 'teacher']"),
        ({"eps": 4.0}, "TrainConfig: eps: Input should be less than or equal to 1 (got 4.0)"),
        ({"epochs": 0}, "TrainConfig: epochs: Input should be greater than or equal to 1 (got 0)"),
        ({"lr": 0.0}, "TrainConfig: lr: Input should be greater than 0 (got 0.0)"),
        ({"mode": "pgd", "pgd_steps": 0}, "TrainConfig: pgd_steps: must be >= 1 for mode 'pgd', got 0"),
        ({"epochs": "3"}, "TrainConfig: epochs: Input should be a valid integer (got '3')"),
        ({"epoch": 3}, "TrainConfig: epoch: unknown key; allowed keys here: amp, arch, batch_size, device, epochs"),
    ],
)
def test_bad_configs(changes, message, tmp_path) -> None:
    """Strict pydantic: one line that names the class and the field."""
    with pytest.raises(ValueError) as error:
        config(tmp_path, **{"mode": "clean", **changes})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_config_defaults_and_paths() -> None:
    from pathlib import Path

    assert TrainConfig().epochs == 10  # what `run.py perception train` always used
    assert TrainConfig(arch="teacher", mode="pgd", eps=4 / 255).train_alpha == pytest.approx(2.5 * (4 / 255) / 3)
    assert TrainConfig(out=Path("a/b.safetensors")).out == "a/b.safetensors"  # paths become text


def test_bad_data_and_amp_on_cpu(tmp_path) -> None:
    good = shortcut_task(8, seed=0)
    frames, target, mask = good.tensors
    with pytest.raises(ValueError, match="frames must be uint8"):
        train(config(tmp_path, "clean"), TensorDataset(frames.float(), target, mask), good)
    with pytest.raises(ValueError, match=f"must have shape \\({LABEL_DIM},\\)"):
        train(config(tmp_path, "clean"), TensorDataset(frames, target[:, :5], mask[:, :5]), good)
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        train(config(tmp_path, "clean", amp=True, device="cpu"), good, good)
