"""Train a perception model to regress the label vector from camera frames: clean or adversarial.

    metrics = train(TrainConfig(arch="teacher", mode="pgd", eps=4/255), train_set, val_set)

Datasets yield `(frames (C, H, W) uint8, target (D,) float32, mask (D,) float32)`; frames are
turned into floats in [0, 1] on the device, the same pixel space the attacks work in.

Modes (what each optimizer step minimises, L = perception.models.label_loss, masked MSE):
    clean    L(f(x), y)
    pgd      L(f(x_adv), y), x_adv = PGD-k on L in the ℓ∞ ball of radius eps (Madry et al.)
    fgsm_rs  L(f(x_adv), y), x_adv = one FGSM step from a random start (Wong et al.): ~2x clean cost
    trades   L(f(x), y) + beta * L(f(x_adv), f(x)), x_adv = PGD-k on the second term (Zhang et al.).
             TRADES' KL divergence between clean and adversarial class probabilities has no meaning
             for regression; the masked MSE between clean and adversarial predictions replaces it.

This module supplies the modes' loss step (`training_loss`) and validation; the loop itself
(perception.loop: resume, TensorBoard, schedule, AMP, checkpoints, divergence check) is shared
with distillation. Every epoch: validation label error (masked MAE of the normalised labels, the
`label_error` of perception.labels.describe_errors), a PGD probe (PGD-`probe_steps` at `probe_eps`
on a fixed validation batch), TensorBoard scalars under `perception/`, a checkpoint (`out`,
safetensors) and a training state next to it (`<out stem>.state.pt`) from which `resume=True`
continues. For the adversarial modes a warning is logged when the probe error jumps while the
clean error keeps falling: the "catastrophic overfitting" of FGSM-RS.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch.utils.data import DataLoader, Dataset

from perception.attacks import fgsm_rs, pgd
from perception.loop import AtLeastOne, LoopConfig, Number, PathText, Positive, Task, evaluate, run, to_device
from perception.models import PerceptionNet, build_model, label_loss

__all__ = ["MODES", "TrainConfig", "evaluate", "train", "training_loss"]

Mode = Literal["clean", "pgd", "fgsm_rs", "trades"]
MODES: tuple[str, ...] = typing.get_args(Mode)


class TrainConfig(LoopConfig):
    """Everything a perception training run depends on (stored in every checkpoint).

    The shared settings (arch, epochs, lr, eps, probe, device, amp, out, resume, ...) are
    perception.loop.LoopConfig's; the defaults below are training's own.
    """

    mode: Mode = "clean"
    """"clean" | "pgd" | "fgsm_rs" | "trades" (see the module docstring)"""
    epochs: AtLeastOne = 10
    """total epochs; with resume=True, the run continues until this many are done (`run.py perception
    train` always defaulted to 10; this default said 20 but no command used it)"""
    fgsm_alpha: Positive | None = None
    """FGSM-RS step size; None = 1.25 * eps (Wong et al.)"""
    trades_beta: Annotated[Number, Field(ge=0.0)] = 6.0
    """weight of the clean-vs-adversarial consistency term in mode "trades" """
    out: PathText = "runs/perception/teacher.safetensors"
    """checkpoint path; the training state is written next to it as <stem>.state.pt"""

    @field_validator("pgd_steps")
    @classmethod
    def _attack_has_steps(cls, steps: int, info: ValidationInfo) -> int:
        mode = info.data.get("mode")
        if mode in ("pgd", "trades") and steps < 1:
            raise ValueError(f"must be >= 1 for mode {mode!r}, got {steps}")
        return steps


def training_loss(
    model: PerceptionNet, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, config: TrainConfig
) -> torch.Tensor:
    """The loss of one batch for config.mode. x (B, C, H, W) in [0, 1]; target, mask (B, D)."""
    if config.mode == "clean":
        return label_loss(model(x).labels, target, mask)
    if config.mode == "pgd":
        x_adv = pgd(model, x, target, mask, eps=config.eps, alpha=config.train_alpha, steps=config.pgd_steps)
        return label_loss(model(x_adv).labels, target, mask)
    if config.mode == "fgsm_rs":
        x_adv = fgsm_rs(model, x, target, mask, eps=config.eps, alpha=config.fgsm_alpha)
        return label_loss(model(x_adv).labels, target, mask)
    # trades: the attack maximises the masked MSE between adversarial and clean predictions
    clean = model(x).labels  # (B, D)
    x_adv = pgd(model, x, clean.detach(), mask, eps=config.eps, alpha=config.train_alpha, steps=config.pgd_steps)
    return label_loss(clean, target, mask) + config.trades_beta * label_loss(model(x_adv).labels, clean, mask)


class _Training(Task):
    """perception.loop's task for one training mode: one model, `training_loss`."""

    name, activity, history_keys = "perception", "training", ("val_label_error", "probe_pgd_error")

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @property
    def label(self) -> str:
        return f"{self.config.arch} {self.config.mode}"

    def build(self, input_shape: tuple[int, int, int], device: torch.device) -> None:
        self.model = self.modules = build_model(self.config.arch, *input_shape).to(device)
        self.device = device

    def prepare(self, train_set: Dataset, val_set: Dataset) -> Dataset:
        self.val_loader = DataLoader(
            val_set, batch_size=max(self.config.batch_size, 256), num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return train_set

    def loss(self, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, target, mask = to_device(batch, device)  # (B, C, H, W) in [0, 1]; (B, D); (B, D)
        return training_loss(self.model, x, target, mask, self.config), {}

    def validate(self, probe_batch, device: torch.device) -> dict[str, float]:
        config = self.config
        return {
            "val_label_error": evaluate(self.model, self.val_loader, device),
            "probe_pgd_error": evaluate(
                self.model, [probe_batch], device, eps=config.probe_budget, steps=config.probe_steps
            ),
        }

    @property
    def warns_on_robust_overfitting(self) -> bool:
        return self.config.mode != "clean"  # clean training makes no robustness claim

    def identity(self, input_shape: tuple[int, int, int]) -> dict[str, Any]:
        return {"arch": self.config.arch, "input_shape": list(input_shape)}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"train_config": self.config.model_dump()}

    def summary(self, metrics: dict[str, float]) -> str:
        config = self.config
        return (
            f"val error {metrics['val_label_error']:.4f}  PGD-{config.probe_steps}@{config.probe_budget:.4f} "
            f"probe error {metrics['probe_pgd_error']:.4f}"
        )


def train(config: TrainConfig, train_set: Dataset, val_set: Dataset) -> dict[str, float]:
    """Train (or resume) a perception model; returns the metrics of the last epoch.

    Returned keys: epoch (epochs completed), step, epochs_run (this call), train_loss,
    val_label_error, probe_pgd_error, epoch_seconds.
    """
    return run(config, _Training(config), train_set, val_set)
