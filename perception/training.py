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

Every epoch: validation label error (masked MAE of the normalised labels, the `label_error` of
perception.labels.describe_errors), a PGD probe (PGD-`probe_steps` at `probe_eps` on a fixed
validation batch), TensorBoard scalars under `perception/`, a checkpoint (`out`, safetensors)
and a training state next to it (`<out stem>.state.pt`) from which `resume=True` continues.
A warning is logged when the probe error jumps while the clean error keeps falling: the
"catastrophic overfitting" of FGSM-RS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from envs.system import resolve_device
from perception.attacks import fgsm_rs, pgd
from perception.checkpoint import (
    load_model,
    load_training_state,
    save_checkpoint,
    save_training_state,
    training_state_path,
)
from perception.labels import LABEL_DIM
from perception.models import ARCHS, PerceptionNet, build_model, label_loss

logger = logging.getLogger(__name__)

MODES = ("clean", "pgd", "fgsm_rs", "trades")


@dataclass
class TrainConfig:
    """Everything a perception training run depends on (stored in every checkpoint)."""

    arch: str = "teacher"
    """architecture: "teacher" (ResNet-style) or "student" (tiny), see perception.models.ARCHS"""
    epochs: int = 20
    """total epochs; with resume=True, the run continues until this many are done"""
    batch_size: int = 64
    lr: float = 1e-3
    """peak learning rate of AdamW; cosine-annealed to 0 over all optimizer steps"""
    weight_decay: float = 1e-4
    mode: str = "clean"
    """"clean" | "pgd" | "fgsm_rs" | "trades" (see the module docstring)"""
    eps: float = 4 / 255
    """ℓ∞ training budget in [0, 1] pixel units (unused by mode "clean" except as the probe default)"""
    pgd_steps: int = 3
    """attack steps of the training attack for modes "pgd" and "trades" """
    pgd_alpha: float | None = None
    """step size of the training attack; None = 2.5 * eps / pgd_steps (Madry et al.)"""
    fgsm_alpha: float | None = None
    """FGSM-RS step size; None = 1.25 * eps (Wong et al.)"""
    trades_beta: float = 6.0
    """weight of the clean-vs-adversarial consistency term in mode "trades" """
    probe_eps: float | None = None
    """ℓ∞ budget of the per-epoch PGD probe; None = eps"""
    probe_steps: int = 5
    probe_size: int = 128
    """validation samples in the fixed probe batch"""
    max_grad_norm: float | None = 5.0
    """clip the gradient norm to this (None = no clipping)"""
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when available) | "cpu" | "cuda" | "cuda:N" """
    amp: bool | None = None
    """mixed precision (torch.autocast); None = on for CUDA, off for CPU; True on CPU is an error"""
    logdir: str | None = "runs/perception"
    """TensorBoard folder (None = no TensorBoard)"""
    out: str = "runs/perception/model.safetensors"
    """checkpoint path; the training state is written next to it as <stem>.state.pt"""
    resume: bool = False
    """continue from the training state next to `out` when there is one"""
    init: str | None = None
    """start from this checkpoint's weights (e.g. adversarial fine-tuning of a clean teacher)"""
    num_workers: int = 0
    """DataLoader worker processes"""
    progress: bool = True
    """show a tqdm progress bar per epoch"""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"TrainConfig.arch: unknown architecture {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.mode not in MODES:
            raise ValueError(f"TrainConfig.mode: unknown mode {self.mode!r}; choose one of {list(MODES)}")
        for name in ("epochs", "batch_size", "probe_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("pgd_steps", "probe_steps", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.mode in ("pgd", "trades") and self.pgd_steps < 1:
            raise ValueError(f"TrainConfig.pgd_steps must be >= 1 for mode {self.mode!r}, got {self.pgd_steps}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("eps", "probe_eps"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1] (pixel units; 4/255 for 4 levels), got {value}")
        for name in ("pgd_alpha", "fgsm_alpha", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0 or None, got {value}")
        if self.trades_beta < 0:
            raise ValueError(f"TrainConfig.trades_beta must be >= 0, got {self.trades_beta}")

    @property
    def train_alpha(self) -> float:
        return self.pgd_alpha if self.pgd_alpha is not None else 2.5 * self.eps / max(self.pgd_steps, 1)

    @property
    def probe_budget(self) -> float:
        return self.eps if self.probe_eps is None else self.probe_eps


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    if config.amp is None:
        enabled = device.type == "cuda"
    elif config.amp and device.type != "cuda":
        raise ValueError("TrainConfig.amp=True needs a CUDA device; mixed precision is off on the CPU")
    else:
        enabled = bool(config.amp)
    if not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _to_device(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    frames, target, mask = batch
    if frames.dtype != torch.uint8:
        raise ValueError(f"dataset frames must be uint8 camera frames (C, H, W), got dtype {frames.dtype}")
    x = frames.to(device, non_blocking=True).float() / 255.0  # (B, C, H, W) in [0, 1]
    return x, target.to(device, non_blocking=True).float(), mask.to(device, non_blocking=True).float()


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine annealing from base_lr at step 0 to 0 at total_steps."""
    progress = min(step / max(total_steps, 1), 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def evaluate(
    model: PerceptionNet,
    data: Dataset | Iterable,
    device: torch.device | str = "cpu",
    eps: float = 0.0,
    steps: int = 10,
    alpha: float | None = None,
    batch_size: int = 256,
) -> float:
    """Masked mean absolute label error over `data`, clean (eps=0) or under PGD-`steps` at eps.

    data: a Dataset of (frames uint8 (C, H, W), target (D,), mask (D,)), or an iterable of such
    batches (a DataLoader). alpha defaults to 2.5 * eps / steps. Uses the model in its current mode.
    """
    device = torch.device(device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False) if isinstance(data, Dataset) else data
    error_sum, weight_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    for batch in loader:
        x, target, mask = _to_device(batch, device)
        if eps > 0 and steps > 0:
            step_size = alpha if alpha is not None else 2.5 * eps / steps
            x = pgd(model, x, target, mask, eps=eps, alpha=step_size, steps=steps)
        with torch.no_grad():
            pred = model(x).labels.float()  # (B, D)
        error_sum += ((pred - target).abs() * mask).sum()
        weight_sum += mask.sum()
    return float(error_sum / weight_sum.clamp_min(1.0))


def _first_sample(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the dataset is empty; collect frames first")
    frames, target, mask = dataset[0]
    frames, target, mask = torch.as_tensor(frames), torch.as_tensor(target), torch.as_tensor(mask)
    if frames.dim() != 3 or frames.dtype != torch.uint8:
        raise ValueError(
            f"dataset frames must be uint8 (C, H, W), got dtype {frames.dtype} shape {tuple(frames.shape)}"
        )
    if tuple(target.shape) != (LABEL_DIM,) or tuple(mask.shape) != (LABEL_DIM,):
        raise ValueError(
            f"dataset targets and masks must have shape ({LABEL_DIM},) (perception.labels.LABEL_DIM), "
            f"got {tuple(target.shape)} and {tuple(mask.shape)}"
        )
    return frames, target, mask


def train(config: TrainConfig, train_set: Dataset, val_set: Dataset) -> dict[str, float]:
    """Train (or resume) a perception model; returns the metrics of the last epoch.

    Returned keys: epoch (epochs completed), step, epochs_run (this call), train_loss,
    val_label_error, probe_pgd_error, epoch_seconds.
    """
    device = resolve_device(config.device)
    amp_dtype = _amp_dtype(config, device)
    torch.manual_seed(config.seed)
    frames, _, _ = _first_sample(train_set)
    input_shape = tuple(int(n) for n in frames.shape)  # (C, H, W)
    val_frames, _, _ = _first_sample(val_set)
    if tuple(val_frames.shape) != input_shape:
        raise ValueError(f"validation frames have shape {tuple(val_frames.shape)}, training frames {input_shape}")

    model = build_model(config.arch, *input_shape).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) > config.batch_size,  # type: ignore[arg-type]
        generator=generator,
        num_workers=config.num_workers,
        pin_memory=pin,
    )
    val_loader = DataLoader(
        val_set, batch_size=max(config.batch_size, 256), num_workers=config.num_workers, pin_memory=pin
    )
    probe_count = min(config.probe_size, len(val_set))  # type: ignore[arg-type]
    probe_batch = next(iter(DataLoader(Subset(val_set, range(probe_count)), batch_size=probe_count)))
    # probe_batch: a fixed validation batch, (P, C, H, W) uint8, (P, D), (P, D)
    total_steps = config.epochs * len(train_loader)

    out = Path(config.out)
    state_path = training_state_path(out)
    start_epoch, step = 0, 0
    history: dict[str, list[float]] = {"val_label_error": [], "probe_pgd_error": []}
    last: dict[str, float] = {}
    if config.resume and state_path.exists():
        state = load_training_state(state_path, model, optimizer)
        saved = state["extra"]
        if saved.get("arch") != config.arch or tuple(saved.get("input_shape", ())) != input_shape:
            raise ValueError(
                f"{state_path}: cannot resume: it was made for arch {saved.get('arch')!r} with input "
                f"{tuple(saved.get('input_shape', ()))}, this run has arch {config.arch!r} with input {input_shape}"
            )
        start_epoch, step = state["epoch"], state["step"]
        generator.set_state(saved["generator"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        history = {key: [float(v) for v in values] for key, values in saved["history"].items()}
        last = {key: float(value) for key, value in saved["last_metrics"].items()}
        logger.info("resuming %s from %s: %d of %d epochs done", config.arch, state_path, start_epoch, config.epochs)
    elif config.resume:
        logger.warning("resume requested but %s does not exist; training from scratch", state_path)
    if config.init is not None and start_epoch == 0:
        initial, _ = load_model(config.init, device, expected_arch=config.arch, expected_input_shape=input_shape)
        model.load_state_dict(initial.state_dict())
        logger.info("initialised %s from %s", config.arch, config.init)

    writer = None
    if config.logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        Path(config.logdir).mkdir(parents=True, exist_ok=True)
        (Path(config.logdir) / "perception_config.json").write_text(json.dumps(asdict(config), indent=2))
        writer = SummaryWriter(config.logdir)

    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else contextlib.nullcontext
    )
    epochs_run = 0
    for epoch in range(start_epoch, config.epochs):
        model.train()  # no BatchNorm/dropout: same function as eval, attacks included
        started = time.perf_counter()
        loss_sum, batches = torch.zeros((), device=device), 0
        description = f"{config.arch} {config.mode} epoch {epoch + 1}/{config.epochs}"
        bar = tqdm(train_loader, desc=description, disable=not config.progress, leave=False)
        for batch in bar:
            x, target, mask = _to_device(batch, device)  # (B, C, H, W) in [0, 1]; (B, D); (B, D)
            lr = cosine_lr(config.lr, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                loss = training_loss(model, x, target, mask, config)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach().float()
            batches += 1
            if config.progress and batches % 20 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / batches:.4f}", lr=f"{lr:.2e}")
        train_loss = float(loss_sum / max(batches, 1))
        epoch_seconds = time.perf_counter() - started

        model.eval()
        with autocast():
            val_error = evaluate(model, val_loader, device)
            probe_error = evaluate(model, [probe_batch], device, eps=config.probe_budget, steps=config.probe_steps)
        if not (math.isfinite(train_loss) and math.isfinite(val_error)):
            raise RuntimeError(
                f"training diverged at epoch {epoch + 1} (train loss {train_loss}, val error {val_error}); "
                f"lower TrainConfig.lr (now {config.lr})"
            )
        if config.mode != "clean" and history["probe_pgd_error"]:
            previous_probe, previous_val = history["probe_pgd_error"][-1], history["val_label_error"][-1]
            if probe_error > 1.5 * previous_probe + 0.01 and val_error <= previous_val:
                logger.warning(
                    "epoch %d: PGD probe error jumped %.4f -> %.4f while clean error fell %.4f -> %.4f: "
                    "catastrophic overfitting (a known failure of FGSM-RS); the checkpoint of an earlier "
                    "epoch was more robust; try mode='pgd', a smaller eps or fewer epochs",
                    epoch + 1, previous_probe, probe_error, previous_val, val_error,
                )
        history["val_label_error"].append(val_error)
        history["probe_pgd_error"].append(probe_error)
        last = {
            "epoch": float(epoch + 1),
            "step": float(step),
            "train_loss": train_loss,
            "val_label_error": val_error,
            "probe_pgd_error": probe_error,
            "epoch_seconds": epoch_seconds,
        }
        if writer is not None:
            for key in ("train_loss", "val_label_error", "probe_pgd_error", "epoch_seconds"):
                writer.add_scalar(f"perception/{key}", last[key], epoch + 1)
            writer.add_scalar("perception/lr", optimizer.param_groups[0]["lr"], epoch + 1)
            writer.flush()

        # the training state first: resume reads only it, so a kill between the two writes is harmless
        save_training_state(
            state_path,
            model,
            optimizer,
            epoch=epoch + 1,
            step=step,
            extra={
                "arch": config.arch,
                "input_shape": list(input_shape),
                "generator": generator.get_state(),
                "history": history,
                "last_metrics": last,
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            },
        )
        save_checkpoint(
            out,
            model,
            config.arch,
            input_shape,
            extra={"epoch": epoch + 1, "metrics": last, "train_config": asdict(config)},
        )
        epochs_run += 1
        logger.info(
            "epoch %d/%d  loss %.4f  val error %.4f  PGD-%d@%.4f probe error %.4f  %.1fs",
            epoch + 1, config.epochs, train_loss, val_error, config.probe_steps, config.probe_budget,
            probe_error, epoch_seconds,
        )

    if writer is not None:
        writer.close()
    return {**last, "epochs_run": float(epochs_run)}
