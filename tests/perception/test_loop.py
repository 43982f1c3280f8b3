"""The shared perception training loop: torch's scheduler gives the old hand-written cosine per
step and is restored on resume; config errors name the class and the field; mixed precision on
the CPU is refused; the CLI's perception defaults are the configs'."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from perception.distill import DistillConfig
from perception.loop import cosine_schedule, field_default
from perception.training import TrainConfig, train
from tests.perception import KilledAfter
from tests.perception.test_training import shortcut_task


def old_cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """perception.training.cosine_lr as it was at commit bb0926f, set by hand before every step."""
    progress = min(step / max(total_steps, 1), 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("base_lr, total", [(1e-3, 100), (3e-3, 8), (2e-3, 1), (0.7, 37)])
def test_schedule_gives_the_old_cosine_at_every_step(base_lr, total) -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = cosine_schedule(optimizer, total)
    for step in range(total + 3):  # past the end it stays at 0, as before
        assert optimizer.param_groups[0]["lr"] == old_cosine_lr(base_lr, step, total), step  # bit for bit
        optimizer.step()
        scheduler.step()


def _config(tmp_path, **changes) -> TrainConfig:
    settings = dict(
        arch="student", mode="clean", epochs=3, batch_size=32, lr=3e-3, probe_steps=1, probe_size=16, seed=0,
        device="cpu", logdir=None, out=str(tmp_path / "model.safetensors"), progress=False,
    )
    return TrainConfig(**{**settings, **changes})


def test_resume_restores_the_scheduler_and_matches_an_uninterrupted_run(tmp_path) -> None:
    train_set, val_set = shortcut_task(64, seed=0), shortcut_task(16, seed=1)
    reference = train(_config(tmp_path / "ref"), train_set, val_set)

    with pytest.raises(KeyboardInterrupt):  # 1 read by the shape check, 64 per epoch: dies in epoch 2
        train(_config(tmp_path / "run"), KilledAfter(train_set, limit=1 + 64 + 10), val_set)
    state = torch.load(tmp_path / "run" / "model.state.pt", weights_only=True)
    scheduler = state["extra"]["scheduler"]
    assert scheduler["last_epoch"] == state["step"] == 2  # 2 steps of 32 per epoch
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(old_cosine_lr(3e-3, 2, 6), rel=1e-15)

    resumed = train(_config(tmp_path / "run", resume=True), train_set, val_set)
    assert resumed["epochs_run"] == 2 and resumed["step"] == reference["step"] == 6
    for key in ("train_loss", "val_label_error", "probe_pgd_error"):
        assert resumed[key] == reference[key], key  # same numbers, bit for bit
    final = torch.load(tmp_path / "run" / "model.state.pt", weights_only=True)
    assert final["extra"]["scheduler"]["last_epoch"] == 6


def test_resume_from_a_state_without_a_scheduler(tmp_path) -> None:
    """Training states written before the scheduler was kept resume on the same schedule."""
    train_set, val_set = shortcut_task(64, seed=0), shortcut_task(16, seed=1)
    reference = train(_config(tmp_path / "ref"), train_set, val_set)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "run"), KilledAfter(train_set, limit=1 + 64 + 10), val_set)
    path = tmp_path / "run" / "model.state.pt"
    state = torch.load(path, weights_only=True)
    del state["extra"]["scheduler"]
    for group in state["optimizer"]["param_groups"]:
        group.pop("initial_lr")
    torch.save(state, path)
    resumed = train(_config(tmp_path / "run", resume=True), train_set, val_set)
    assert resumed["train_loss"] == reference["train_loss"]


@pytest.mark.parametrize("config_class", [TrainConfig, DistillConfig])
def test_amp_on_the_cpu_is_refused(config_class, tmp_path) -> None:
    from perception.distill import distill

    run = train if config_class is TrainConfig else distill
    data = shortcut_task(8, seed=0)
    config = config_class(amp=True, device="cpu", logdir=None, out=str(tmp_path / "m.safetensors"), progress=False)
    with pytest.raises(ValueError, match=f"^{config_class.__name__}.amp=True needs a CUDA device"):
        run(config, data, data)


@pytest.mark.parametrize(
    "config_class, changes, message",
    [
        (TrainConfig, {"batch_size": 0}, "TrainConfig: batch_size: Input should be greater than or equal to 1 (got 0)"),
        (TrainConfig, {"amp": "yes"}, "TrainConfig: amp: Input should be a valid boolean (got 'yes')"),
        (TrainConfig, {"teacher": "t.safetensors"}, "TrainConfig: teacher: unknown key; allowed keys here: amp, arch"),
        (DistillConfig, {"probe_eps": 2.0}, "DistillConfig: probe_eps: Input should be less than or equal to 1 (got 2.0)"),
        (DistillConfig, {"teacher_batch_size": 0}, "DistillConfig: teacher_batch_size: Input should be greater than"),
    ],
)
def test_config_errors_name_the_class_and_the_field(config_class, changes, message) -> None:
    with pytest.raises(ValueError) as error:
        config_class(**changes)
    assert str(error.value).startswith(message), str(error.value)


def test_cli_defaults_and_choices_are_the_configs() -> None:
    from perception.distill import MODES as DISTILL_MODES
    from perception.training import MODES as TRAIN_MODES
    from run import build_parser

    parser = build_parser()
    args = parser.parse_args(["perception", "train"])
    for name in ("arch", "mode", "epochs", "batch_size", "lr", "seed", "device"):
        assert getattr(args, name) == field_default(TrainConfig, name), name
    assert str(args.out) == TrainConfig().out and args.epochs == 10
    assert args.eps == "4/255" and TrainConfig().eps == 4 / 255
    args = parser.parse_args(["perception", "distill"])
    for name in ("mode", "pgd_steps", "epochs", "batch_size", "lr", "seed", "device"):
        assert getattr(args, name) == field_default(DistillConfig, name), name
    assert str(args.out) == DistillConfig().out and str(args.teacher) == DistillConfig().teacher
    for mode in TRAIN_MODES:
        assert parser.parse_args(["perception", "train", "--mode", mode]).mode == mode
    for mode in DISTILL_MODES:
        assert parser.parse_args(["perception", "distill", "--mode", mode]).mode == mode


def test_bad_data_is_refused_before_training(tmp_path) -> None:
    good = shortcut_task(8, seed=0)
    frames, target, mask = good.tensors
    with pytest.raises(ValueError, match="validation frames have shape"):
        train(_config(tmp_path), good, TensorDataset(frames[:, :, :8], target, mask))
