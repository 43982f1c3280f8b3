"""The one perception training loop: what training (perception.training) and distillation
(perception.distill) share. Each supplies only a `Task`: the modules it trains and its loss step.

    metrics = run(config, task, train_set, val_set)

The loop owns, in this order: the input checks (uint8 frames (C, H, W), labels (D,)), the seed,
building the task's modules, AdamW, the data loaders and a fixed probe batch (the first
`probe_size` validation samples), resume (the training state next to the checkpoint, read with
`torch.load(weights_only=True)`: weights, optimizer, learning-rate schedule, data order, RNG), the
TensorBoard writer (`<name>/<metric>` scalars, and `<name>_config.json`), the learning-rate
schedule (torch's `LambdaLR`, cosine from `lr` at step 0 to 0 after the last step), mixed
precision on CUDA (autocast, and a GradScaler for float16), gradient clipping, per-epoch validation
and probe, the divergence check, the "catastrophic overfitting" warning of adversarial training,
the checkpoint writes (atomic: the training state first, then the safetensors checkpoint) and the
progress bar.

`LoopConfig` holds the settings every run has; `TrainConfig` and `DistillConfig` extend it. They
are strict pydantic models: unknown keys, wrong types and out-of-range values are `ValueError`s
that name the class and the field (scenarios.validation formats them, as for scenario files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterable

import torch
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, Subset

from envs.progress import track
from envs.system import resolve_device
from perception.attacks import pgd
from perception.checkpoint import (
    load_model,
    load_training_state,
    save_checkpoint,
    save_training_state,
    training_state_path,
)
from perception.labels import LABEL_DIM
from perception.models import ARCHS, PerceptionNet
from scenarios.validation import describe_validation_error

logger = logging.getLogger(__name__)

Number = StrictInt | StrictFloat
Budget = Annotated[Number, Field(ge=0.0, le=1.0)]  # ℓ∞ budget in [0, 1] pixel units
Positive = Annotated[Number, Field(gt=0.0)]
Weight = Annotated[Number, Field(ge=0.0, allow_inf_nan=False)]
AtLeastOne = Annotated[StrictInt, Field(ge=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathText = Annotated[StrictStr, BeforeValidator(_path_text)]  # a path, given as str or os.PathLike


# --------------------------------------------------------------------------- configuration


class LoopConfig(BaseModel):
    """The settings every perception training run has (subclasses set their own defaults)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    arch: StrictStr = "teacher"
    """architecture: "teacher" (ResNet-style) or "student" (tiny), see perception.models.ARCHS"""
    mode: StrictStr = "clean"
    """the kind of training; each subclass lists its modes"""
    epochs: AtLeastOne = 20
    """total epochs; with resume=True, the run continues until this many are done"""
    batch_size: AtLeastOne = 64
    lr: Positive = 1e-3
    """peak learning rate of AdamW; cosine-annealed to 0 over all optimizer steps"""
    weight_decay: Weight = 1e-4
    eps: Budget = 4 / 255
    """ℓ∞ budget of the training attack in [0, 1] pixel units; also the probe's default"""
    pgd_steps: NonNegative = 3
    """steps of the training attack (PGD)"""
    pgd_alpha: Positive | None = None
    """step size of the training attack; None = 2.5 * eps / pgd_steps (Madry et al.)"""
    probe_eps: Budget | None = None
    """ℓ∞ budget of the per-epoch PGD probe; None = eps"""
    probe_steps: NonNegative = 5
    probe_size: AtLeastOne = 128
    """validation samples in the fixed probe batch"""
    max_grad_norm: Positive | None = 5.0
    """clip the gradient norm to this (None = no clipping)"""
    init: PathText | None = None
    """start from this checkpoint's weights (e.g. adversarial fine-tuning of a clean teacher)"""
    seed: StrictInt = 0
    device: StrictStr = "auto"
    """"auto" (CUDA when available) | "cpu" | "cuda" | "cuda:N" """
    amp: StrictBool | None = None
    """mixed precision (torch.autocast); None = on for CUDA, off for CPU; True on CPU is an error"""
    logdir: PathText | None = "runs/perception"
    """TensorBoard folder (None = no TensorBoard)"""
    out: PathText = "runs/perception/model.safetensors"
    """checkpoint path; the training state is written next to it as <stem>.state.pt"""
    resume: StrictBool = False
    """continue from the training state next to `out` when there is one"""
    num_workers: NonNegative = 0
    """DataLoader worker processes"""
    progress: StrictBool = True
    """show a progress bar per epoch"""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ValueError(describe_validation_error(type(self), error, type(self).__name__)) from None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
        return arch

    @property
    def train_alpha(self) -> float:
        return self.pgd_alpha if self.pgd_alpha is not None else 2.5 * self.eps / max(self.pgd_steps, 1)

    @property
    def probe_budget(self) -> float:
        return self.eps if self.probe_eps is None else self.probe_eps


def field_default(config: type[BaseModel], name: str) -> Any:
    """The default of one config field (for command-line defaults)."""
    return config.model_fields[name].default


# --------------------------------------------------------------------------- shared helpers


def to_device(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frames uint8, target, mask) -> (x (B, C, H, W) floats in [0, 1], target (B, D), mask (B, D)) on device."""
    frames, target, mask = batch
    if frames.dtype != torch.uint8:
        raise ValueError(f"dataset frames must be uint8 camera frames (C, H, W), got dtype {frames.dtype}")
    x = frames.to(device, non_blocking=True).float() / 255.0  # (B, C, H, W) in [0, 1]
    return x, target.to(device, non_blocking=True).float(), mask.to(device, non_blocking=True).float()


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
        x, target, mask = to_device(batch, device)
        if eps > 0 and steps > 0:
            step_size = alpha if alpha is not None else 2.5 * eps / steps
            x = pgd(model, x, target, mask, eps=eps, alpha=step_size, steps=steps)
        with torch.no_grad():
            pred = model(x).labels.float()  # (B, D)
        error_sum += ((pred - target).abs() * mask).sum()
        weight_sum += mask.sum()
    return float(error_sum / weight_sum.clamp_min(1.0))


def input_shape_of(train_set: Dataset, val_set: Dataset) -> tuple[int, int, int]:
    """The (C, H, W) of the frames, after checking both datasets' first samples."""
    shape = tuple(int(n) for n in _first_sample(train_set)[0].shape)
    val_shape = tuple(int(n) for n in _first_sample(val_set)[0].shape)
    if val_shape != shape:
        raise ValueError(f"validation frames have shape {val_shape}, training frames {shape}")
    return shape  # type: ignore[return-value]


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


def skip_seed_draw(generator: torch.Generator | None = None) -> None:
    """Draw and drop the one number a DataLoader iterator draws for its workers' base seed, from
    `generator` (None: torch's global RNG).

    Only for the numbers: the progress bars used before the loop was shared (tqdm.auto) opened a
    second, unused iterator of every DataLoader they wrapped, and that draw shifted the data order
    and the attacks' random starts. Drawing it here keeps every result (and resuming from training
    states written then) as it was; dropping it is a change of the recorded numbers
    (tests/perception/test_loop_regression.py).
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)


def cosine_factor(step: int, total_steps: int) -> float:
    """The schedule's multiple of the peak learning rate: 1 at step 0, 0 at total_steps (cosine)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
    """torch's LambdaLR with `cosine_factor`; step it once after every optimizer step."""
    return LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps))


def amp_dtype(config: LoopConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    if config.amp is None:
        enabled = device.type == "cuda"
    elif config.amp and device.type != "cuda":
        raise ValueError(f"{type(config).__name__}.amp=True needs a CUDA device; mixed precision is off on the CPU")
    else:
        enabled = bool(config.amp)
    if not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# --------------------------------------------------------------------------- the task


class Task:
    """What one kind of training supplies to `run`: its modules and its loss step.

    `run` calls, in this order: `build` (after seeding), `prepare`, then per epoch `loss` for every
    batch and `validate` once; `identity` and `checkpoint_extra` go into what it writes.
    """

    name: ClassVar[str]  # TensorBoard namespace and "<name>_config.json"
    activity: ClassVar[str]  # "training", "distillation": for messages
    history_keys: ClassVar[tuple[str, ...]]  # validation metrics kept in the training state
    model: PerceptionNet  # the model written to the checkpoint (set by build)
    modules: nn.Module  # everything the optimizer trains and the training state holds (set by build)

    @property
    def label(self) -> str:
        """What the progress bar calls the run, e.g. "teacher pgd"."""
        raise NotImplementedError

    def build(self, input_shape: tuple[int, int, int], device: torch.device) -> None:
        raise NotImplementedError

    def prepare(self, train_set: Dataset, val_set: Dataset) -> Dataset:
        """One-off work before the epochs; returns the dataset the training loader reads."""
        return train_set

    def loss(self, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to minimise, other terms whose epoch means are reported) of one training batch."""
        raise NotImplementedError

    def validate(self, probe_batch, device: torch.device) -> dict[str, float]:
        """Per-epoch metrics; must hold val_label_error and probe_pgd_error."""
        raise NotImplementedError

    @property
    def warns_on_robust_overfitting(self) -> bool:
        """Whether to watch the probe for the catastrophic overfitting of adversarial training."""
        return False

    def identity(self, input_shape: tuple[int, int, int]) -> dict[str, Any]:
        """What a training state must match to be resumed by this run."""
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}

    def summary(self, metrics: dict[str, float]) -> str:
        """The epoch's log line after "loss ...": validation numbers."""
        raise NotImplementedError


# --------------------------------------------------------------------------- the loop


def run(config: LoopConfig, task: Task, train_set: Dataset, val_set: Dataset) -> dict[str, float]:
    """Train (or resume) `task`; returns the metrics of the last epoch.

    Returned keys: epoch (epochs completed), step, train_loss, the task's loss terms and validation
    metrics, epoch_seconds, epochs_run (this call).
    """
    device = resolve_device(config.device)
    autocast_dtype = amp_dtype(config, device)
    torch.manual_seed(config.seed)
    input_shape = input_shape_of(train_set, val_set)
    task.build(input_shape, device)
    optimizer = torch.optim.AdamW(task.modules.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)  # data order; part of the training state

    train_data = task.prepare(train_set, val_set)
    train_loader = DataLoader(
        train_data,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) > config.batch_size,  # type: ignore[arg-type]
        generator=generator,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    probe_count = min(config.probe_size, len(val_set))  # type: ignore[arg-type]
    probe_batch = next(iter(DataLoader(Subset(val_set, range(probe_count)), batch_size=probe_count)))
    # probe_batch: a fixed validation batch, (P, C, H, W) uint8, (P, D), (P, D)
    total_steps = config.epochs * len(train_loader)
    scheduler = cosine_schedule(optimizer, total_steps)

    out = Path(config.out)
    state_path = training_state_path(out)
    identity = task.identity(input_shape)
    start_epoch, step = 0, 0
    history: dict[str, list[float]] = {key: [] for key in task.history_keys}
    last: dict[str, float] = {}
    if config.resume and state_path.exists():
        state = load_training_state(state_path, task.modules, optimizer)
        saved = state["extra"]
        found = {key: saved.get(key) for key in identity}
        if found != identity:
            raise ValueError(
                f"{state_path}: cannot resume: it was made for ({', '.join(identity)}) = "
                f"{tuple(found.values())}, this run has {tuple(identity.values())}; "
                f"use another --out or drop --resume"
            )
        start_epoch, step = state["epoch"], state["step"]
        generator.set_state(saved["generator"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        _restore_schedule(scheduler, saved.get("scheduler"), step, config.lr)
        history = {key: [float(v) for v in values] for key, values in saved["history"].items()}
        last = {key: float(value) for key, value in saved["last_metrics"].items()}
        logger.info("resuming %s from %s: %d of %d epochs done", task.activity, state_path, start_epoch, config.epochs)
    elif config.resume:
        logger.warning("resume requested but %s does not exist; starting from scratch", state_path)
    if config.init is not None and start_epoch == 0:
        initial, _ = load_model(config.init, device, expected_arch=config.arch, expected_input_shape=input_shape)
        task.model.load_state_dict(initial.state_dict())
        logger.info("initialised %s from %s", config.arch, config.init)

    writer = None
    if config.logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        Path(config.logdir).mkdir(parents=True, exist_ok=True)
        (Path(config.logdir) / f"{task.name}_config.json").write_text(json.dumps(config.model_dump(), indent=2))
        writer = SummaryWriter(config.logdir)

    autocast: Callable[[], contextlib.AbstractContextManager] = (
        (lambda: torch.autocast(device_type=device.type, dtype=autocast_dtype))
        if autocast_dtype is not None
        else contextlib.nullcontext
    )
    epochs_run = 0
    try:
        for epoch in range(start_epoch, config.epochs):
            task.modules.train()  # no BatchNorm/dropout: same function as eval, attacks included
            started = time.perf_counter()
            loss_sum, term_sums, batches = torch.zeros((), device=device), {}, 0
            lr = optimizer.param_groups[0]["lr"]
            description = f"{task.label} epoch {epoch + 1}/{config.epochs}"
            skip_seed_draw(generator)
            for batch in track(train_loader, description, unit="batches", disable=not config.progress, transient=True):
                lr = optimizer.param_groups[0]["lr"]  # the schedule's value for this step
                with autocast():
                    loss, terms = task.loss(batch, device)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(task.modules.parameters(), config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                batches += 1
                loss_sum += loss.detach().float()
                for key, value in terms.items():
                    term_sums[key] = term_sums.get(key, 0.0) + value.detach().float()
            train_loss = float(loss_sum / max(batches, 1))
            term_means = {key: float(value / max(batches, 1)) for key, value in term_sums.items()}
            epoch_seconds = time.perf_counter() - started

            task.modules.eval()
            with autocast():
                validation = task.validate(probe_batch, device)
            val_error = validation["val_label_error"]
            if not (math.isfinite(train_loss) and math.isfinite(val_error)):
                raise RuntimeError(
                    f"{task.activity} diverged at epoch {epoch + 1} (train loss {train_loss}, val error {val_error}); "
                    f"lower {type(config).__name__}.lr (now {config.lr})"
                )
            if task.warns_on_robust_overfitting:
                _warn_on_robust_overfitting(history, validation, epoch)
            for key in history:
                history[key].append(validation[key])
            last = {
                "epoch": float(epoch + 1),
                "step": float(step),
                "train_loss": train_loss,
                **term_means,
                **validation,
                "epoch_seconds": epoch_seconds,
            }
            if writer is not None:
                for key, value in last.items():
                    if key not in ("epoch", "step"):
                        writer.add_scalar(f"{task.name}/{key}", value, epoch + 1)
                writer.add_scalar(f"{task.name}/lr", lr, epoch + 1)  # of the epoch's last step
                writer.flush()

            # the training state first: resume reads only it, so a kill between the two writes is harmless
            save_training_state(
                state_path,
                task.modules,
                optimizer,
                epoch=epoch + 1,
                step=step,
                extra={
                    **identity,
                    "generator": generator.get_state(),
                    "history": history,
                    "last_metrics": last,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "scheduler": scheduler.state_dict(),
                },
            )
            save_checkpoint(
                out,
                task.model,
                config.arch,
                input_shape,
                extra={"epoch": epoch + 1, "metrics": last, **task.checkpoint_extra()},
            )
            epochs_run += 1
            logger.info(
                "epoch %d/%d  loss %.4f  %s  %.1fs",
                epoch + 1, config.epochs, train_loss, task.summary(last), epoch_seconds,
            )
    finally:
        if writer is not None:
            writer.close()
    return {**last, "epochs_run": float(epochs_run)}


def _restore_schedule(scheduler: LambdaLR, saved: dict | None, step: int, lr: float) -> None:
    """Continue the schedule at `step`. The saved state (absent in states written before the
    scheduler was kept) restores the scheduler's counters; the peak learning rate and the length
    come from this run's config, as they always did, so a resumed run may change them."""
    if saved:
        scheduler.load_state_dict(saved)
    scheduler.last_epoch = step
    scheduler.base_lrs = [lr for _ in scheduler.optimizer.param_groups]
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, value in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = value
    scheduler._last_lr = lrs  # what get_last_lr() reports


def _warn_on_robust_overfitting(history: dict[str, list[float]], validation: dict[str, float], epoch: int) -> None:
    """Warn when the PGD probe error jumps while the clean error keeps falling (FGSM-RS's failure)."""
    if not history["probe_pgd_error"]:
        return
    previous_probe, previous_val = history["probe_pgd_error"][-1], history["val_label_error"][-1]
    probe_error, val_error = validation["probe_pgd_error"], validation["val_label_error"]
    if probe_error > 1.5 * previous_probe + 0.01 and val_error <= previous_val:
        logger.warning(
            "epoch %d: PGD probe error jumped %.4f -> %.4f while clean error fell %.4f -> %.4f: "
            "catastrophic overfitting (a known failure of FGSM-RS); the checkpoint of an earlier "
            "epoch was more robust; try mode='pgd', a smaller eps or fewer epochs",
            epoch + 1, previous_probe, probe_error, previous_val, val_error,
        )
