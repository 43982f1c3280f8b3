"""Distil a (robust) teacher into the small student: soft labels, features, attention, robustness.

    metrics = distill(DistillConfig(teacher="runs/perception/teacher.safetensors"), train_set, val_set)

Datasets yield `(frames (C, H, W) uint8, target (D,) float32, mask (D,) float32)`, as for
perception.training; frames become floats in [0, 1] on the device.

The teacher only ever sees clean frames, so its outputs (labels, embedding, attention) are computed
once for the whole training set at the start (batched, no grad) and kept in memory; each optimizer
step then costs only the student's forward/backward passes (plus the attack's, in mode "robust").

What each optimizer step minimises, per input x' (S = student, T = teacher, x = the clean frame):

    D(x') = soft_weight      * MSE(S(x').labels, T(x).labels)            soft targets, all D entries
          + label_weight     * label_loss(S(x').labels, y, mask)          ground truth (masked MSE)
          + feature_weight   * MSE(P S(x').embedding, T(x).embedding / r) feature matching (FitNets)
          + attention_weight * KL(A_T(x) || S(x').attention)              attention transfer

    P:   a learned linear projection student embedding (E_s) -> teacher embedding (E_t). It exists
         only during distillation and is not saved into the student checkpoint (it is kept in the
         training state so that a resumed run continues with it).
    r:   the RMS of the teacher's embedding over the training set, so that feature_weight does not
         depend on the teacher's activation scale.
    A_T: the teacher's attention map (B, h_t, w_t) resized bilinearly to the student's (h_s, w_s)
         and renormalised to sum 1 (the teacher downsamples more, so its map is usually coarser).

    mode "clean":   loss = D(x)
    mode "robust":  loss = (1 - robust_weight) * D(x) + robust_weight * D(x_adv)           (RSLAD)
                    x_adv = PGD-`pgd_steps` with random start in the ℓ∞ ball of radius eps,
                    crafted against the STUDENT: it maximises MSE(S(x_adv).labels, T(x).labels),
                    the student's distance to the teacher's clean soft labels. The student learns
                    to give the teacher's *clean* outputs on adversarial inputs (ARD, Goldblum et
                    al. 2020; RSLAD's robust soft labels, Zi et al. 2021): the robust teacher's
                    clean predictions are the targets, never its predictions on x_adv.

Every epoch: the student's validation label error (masked MAE vs ground truth), its gap to the
teacher (mean |S(x).labels - T(x).labels| over all entries), a PGD probe on a fixed validation batch
(`probe_gap_pgd`: the same gap under PGD-`probe_steps` at `probe_eps` against the student;
`probe_pgd_error`: label error under PGD on the ground-truth loss, comparable to
perception.training's probe), TensorBoard scalars under `distill/`, a student checkpoint (`out`,
safetensors, arch "student") and a training state next to it (`<out stem>.state.pt`) from which
`resume=True` continues.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from envs.system import resolve_device
from perception.attacks import pgd
from perception.checkpoint import (
    load_model,
    load_training_state,
    save_checkpoint,
    save_training_state,
    training_state_path,
)
from perception.models import ARCHS, PerceptionNet, build_model, label_loss
from perception.training import _first_sample, _to_device, cosine_lr, evaluate

logger = logging.getLogger(__name__)

MODES = ("robust", "clean")


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (stored in every checkpoint it writes)."""

    teacher: str = "runs/perception/teacher.safetensors"
    """checkpoint of the (robust) teacher; its input shape must match the data"""
    arch: str = "student"
    """architecture of the student, see perception.models.ARCHS"""
    mode: str = "robust"
    """"robust" (clean + adversarial terms, RSLAD-style) | "clean" (clean term only)"""
    epochs: int = 20
    """total epochs; with resume=True, the run continues until this many are done"""
    batch_size: int = 64
    lr: float = 2e-3
    """peak learning rate of AdamW (student and projection); cosine-annealed to 0"""
    weight_decay: float = 1e-4
    soft_weight: float = 1.0
    """weight of the soft-target term: MSE between student and teacher labels (all entries)"""
    label_weight: float = 0.25
    """weight of the ground-truth term: masked MSE between student labels and the targets"""
    feature_weight: float = 0.1
    """weight of feature matching: MSE of the projected student embedding vs the teacher's (RMS-scaled)"""
    attention_weight: float = 0.1
    """weight of attention transfer: KL(teacher attention resized || student attention)"""
    eps: float = 4 / 255
    """ℓ∞ budget of the training attack in [0, 1] pixel units (mode "robust"); also the probe default"""
    pgd_steps: int = 3
    """steps of the training attack (PGD with random start against the student)"""
    pgd_alpha: float | None = None
    """step size of the training attack; None = 2.5 * eps / pgd_steps"""
    robust_weight: float = 5 / 6
    """mode "robust": share of the adversarial term, loss = (1 - w) D(x) + w D(x_adv) (RSLAD: 5/6)"""
    probe_eps: float | None = None
    """ℓ∞ budget of the per-epoch PGD probe; None = eps"""
    probe_steps: int = 5
    probe_size: int = 128
    """validation samples in the fixed probe batch"""
    teacher_batch_size: int = 256
    """batch size of the one-off teacher pass that caches its outputs"""
    max_grad_norm: float | None = 5.0
    """clip the gradient norm to this (None = no clipping)"""
    init: str | None = None
    """start the student from this checkpoint's weights (e.g. a clean-trained student)"""
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when available) | "cpu" | "cuda" | "cuda:N" """
    logdir: str | None = "runs/perception/distill"
    """TensorBoard folder (None = no TensorBoard)"""
    out: str = "runs/perception/student.safetensors"
    """student checkpoint path; the training state is written next to it as <stem>.state.pt"""
    resume: bool = False
    """continue from the training state next to `out` when there is one"""
    num_workers: int = 0
    """DataLoader worker processes"""
    progress: bool = True
    """show tqdm progress bars"""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"DistillConfig.arch: unknown architecture {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.mode not in MODES:
            raise ValueError(f"DistillConfig.mode: unknown mode {self.mode!r}; choose one of {list(MODES)}")
        for name in ("epochs", "batch_size", "probe_size", "teacher_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DistillConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("probe_steps", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"DistillConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.mode == "robust" and self.pgd_steps < 1:
            raise ValueError(f"DistillConfig.pgd_steps must be >= 1 for mode 'robust', got {self.pgd_steps}")
        if not self.lr > 0:
            raise ValueError(f"DistillConfig.lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "soft_weight", "label_weight", "feature_weight", "attention_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"DistillConfig.{name} must be a finite number >= 0, got {value}")
        if self.soft_weight + self.label_weight + self.feature_weight + self.attention_weight == 0:
            raise ValueError("DistillConfig: all loss weights are 0; nothing to learn")
        if not 0.0 <= self.robust_weight <= 1.0:
            raise ValueError(f"DistillConfig.robust_weight must be in [0, 1], got {self.robust_weight}")
        for name in ("eps", "probe_eps"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"DistillConfig.{name} must be in [0, 1] (pixel units; 4/255 for 4 levels), got {value}"
                )
        for name in ("pgd_alpha", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"DistillConfig.{name} must be > 0 or None, got {value}")

    @property
    def train_alpha(self) -> float:
        return self.pgd_alpha if self.pgd_alpha is not None else 2.5 * self.eps / max(self.pgd_steps, 1)

    @property
    def probe_budget(self) -> float:
        return self.eps if self.probe_eps is None else self.probe_eps


# --------------------------------------------------------------------------- teacher cache


class TeacherCache(Dataset):
    """A dataset with the teacher's clean outputs attached to every sample.

    Items: (frames uint8 (C, H, W), target (D,), mask (D,), teacher labels (D,),
    teacher embedding (E_t,), teacher attention (h_t, w_t)).
    """

    def __init__(self, data: Dataset, labels: torch.Tensor, embedding: torch.Tensor, attention: torch.Tensor) -> None:
        if not len(data) == len(labels) == len(embedding) == len(attention):  # type: ignore[arg-type]
            raise ValueError("TeacherCache: the dataset and the teacher outputs differ in length")
        self.data = data
        self.labels = labels  # (N, D)
        self.embedding = embedding  # (N, E_t)
        self.attention = attention  # (N, h_t, w_t)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        frames, target, mask = self.data[index]
        return frames, target, mask, self.labels[index], self.embedding[index], self.attention[index]


@torch.no_grad()
def teacher_outputs(
    teacher: PerceptionNet,
    data: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's clean outputs for every sample of `data`, in order, on the CPU:
    labels (N, D), embedding (N, E_t), attention (N, h_t, w_t), float32."""
    device = torch.device(device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    labels, embedding, attention = [], [], []
    for batch in tqdm(loader, desc="teacher outputs", disable=not progress, leave=False):
        x, _, _ = _to_device(batch, device)  # (B, C, H, W) in [0, 1]
        out = teacher(x)
        labels.append(out.labels.float().cpu())
        embedding.append(out.embedding.float().cpu())
        attention.append(out.attention.float().cpu())
    return torch.cat(labels), torch.cat(embedding), torch.cat(attention)


# --------------------------------------------------------------------------- losses


def resize_attention(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) attention maps -> (B, *size), bilinear, each map renormalised to sum 1."""
    if tuple(attention.shape[1:]) != tuple(size):
        attention = F.interpolate(attention[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    attention = attention.clamp_min(0.0)
    return attention / attention.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of (B, h, w) maps that each sum to 1, averaged over the batch -> scalar."""
    s = student.flatten(1).clamp_min(1e-8)
    t = teacher.flatten(1)
    return (t * (t.clamp_min(1e-8).log() - s.log())).sum(dim=1).mean()


def soft_label_loss(pred: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between student and teacher labels over every entry (B, D) x2 -> scalar.

    Signature of a perception.attacks loss function, so PGD can maximise it; `mask` is ignored:
    the teacher has an output for every entry, defined or not.
    """
    return F.mse_loss(pred.float(), teacher.float())


def distill_terms(
    student_out,
    teacher_labels: torch.Tensor,
    teacher_embedding: torch.Tensor,
    teacher_attention: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    projection: nn.Module,
) -> dict[str, torch.Tensor]:
    """The four distillation terms of one batch (unweighted scalars), see the module docstring.

    student_out: PerceptionOutput of the student; teacher_embedding already divided by its RMS;
    teacher_attention already resized to the student's map size.
    """
    return {
        "soft": soft_label_loss(student_out.labels, teacher_labels),
        "label": label_loss(student_out.labels, target, mask),
        "feature": F.mse_loss(projection(student_out.embedding), teacher_embedding),
        "attention": attention_kl(student_out.attention, teacher_attention),
    }


def _weighted(terms: dict[str, torch.Tensor], config: DistillConfig) -> torch.Tensor:
    return (
        config.soft_weight * terms["soft"]
        + config.label_weight * terms["label"]
        + config.feature_weight * terms["feature"]
        + config.attention_weight * terms["attention"]
    )


@torch.no_grad()
def teacher_gap(
    student: PerceptionNet, data: Dataset, teacher_labels: torch.Tensor, device, batch_size: int = 256
) -> float:
    """Mean |student labels - teacher labels| over all entries of `data` (teacher_labels (N, D), in order)."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    total, count, start = 0.0, 0, 0
    for batch in loader:
        x, _, _ = _to_device(batch, device)
        pred = student(x).labels.float().cpu()  # (B, D)
        reference = teacher_labels[start : start + len(pred)]
        total += float((pred - reference).abs().sum())
        count += pred.numel()
        start += len(pred)
    return total / max(count, 1)


def pgd_teacher_gap(
    student: PerceptionNet,
    x: torch.Tensor,
    teacher_labels: torch.Tensor,
    eps: float,
    steps: int,
    alpha: float | None = None,
) -> float:
    """Mean |S(x_adv) - T(x)| over all label entries, x_adv = PGD-`steps` against the student on the
    soft-label distance. x (B, C, H, W) in [0, 1]; teacher_labels (B, D) on x's device."""
    if eps > 0 and steps > 0:
        step_size = alpha if alpha is not None else 2.5 * eps / steps
        mask = torch.ones_like(teacher_labels)
        x = pgd(student, x, teacher_labels, mask, eps=eps, alpha=step_size, steps=steps, loss_fn=soft_label_loss)
    with torch.no_grad():
        return float((student(x).labels.float() - teacher_labels.float()).abs().mean())


# --------------------------------------------------------------------------- the run


def distill(config: DistillConfig, train_set: Dataset, val_set: Dataset) -> dict[str, float]:
    """Distil config.teacher into a student (or resume); returns the metrics of the last epoch.

    Returned keys: epoch (epochs completed), step, epochs_run (this call), train_loss, loss_soft,
    loss_label, loss_feature, loss_attention (clean-input terms, epoch means), val_label_error,
    val_teacher_gap, probe_gap_pgd, probe_pgd_error, teacher_val_label_error, epoch_seconds.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    frames, _, _ = _first_sample(train_set)
    input_shape = tuple(int(n) for n in frames.shape)  # (C, H, W)
    val_frames, _, _ = _first_sample(val_set)
    if tuple(val_frames.shape) != input_shape:
        raise ValueError(f"validation frames have shape {tuple(val_frames.shape)}, training frames {input_shape}")
    teacher, teacher_meta = load_model(config.teacher, device)
    if teacher.input_shape != input_shape:
        raise ValueError(
            f"teacher {config.teacher} reads frames of shape (C, H, W) = {teacher.input_shape}, the dataset has "
            f"{input_shape}; distil with data collected with the teacher's camera settings"
        )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)

    student = build_model(config.arch, *input_shape).to(device)
    projection = nn.Linear(student.embed_dim, teacher.embed_dim).to(device)  # training only
    modules = nn.ModuleDict({"student": student, "projection": projection})
    optimizer = torch.optim.AdamW(modules.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    generator = torch.Generator().manual_seed(config.seed)  # data order; part of the training state
    # the teacher's clean outputs, once: (N, D), (N, E_t), (N, h_t, w_t) on the CPU
    teacher.eval()
    t_labels, t_embedding, t_attention = teacher_outputs(
        teacher, train_set, device, config.teacher_batch_size, config.progress
    )
    val_t_labels, _, _ = teacher_outputs(teacher, val_set, device, config.teacher_batch_size, config.progress)
    feature_scale = float(t_embedding.pow(2).mean().sqrt().clamp_min(1e-6))  # RMS of the teacher embedding
    teacher_val_error = evaluate(teacher, val_set, device, batch_size=config.teacher_batch_size)
    del teacher  # not needed any more: everything below uses the cache
    student_map = tuple(student.feature_shape[1:])  # (h_s, w_s)

    train_loader = DataLoader(
        TeacherCache(train_set, t_labels, t_embedding / feature_scale, t_attention),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) > config.batch_size,  # type: ignore[arg-type]
        generator=generator,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    probe_count = min(config.probe_size, len(val_set))  # type: ignore[arg-type]
    probe_batch = next(iter(DataLoader(Subset(val_set, range(probe_count)), batch_size=probe_count)))
    probe_x, _, _ = _to_device(probe_batch, device)  # (P, C, H, W) in [0, 1]
    probe_t_labels = val_t_labels[:probe_count].to(device)  # (P, D)
    total_steps = config.epochs * len(train_loader)

    out = Path(config.out)
    state_path = training_state_path(out)
    start_epoch, step = 0, 0
    history: dict[str, list[float]] = {"val_teacher_gap": [], "probe_gap_pgd": []}
    last: dict[str, float] = {}
    if config.resume and state_path.exists():
        resume_state = load_training_state(state_path, modules, optimizer)
        saved = resume_state["extra"]
        found = (saved.get("arch"), tuple(saved.get("input_shape", ())), saved.get("teacher"), saved.get("mode"))
        wanted = (config.arch, input_shape, str(config.teacher), config.mode)
        if found != wanted:
            raise ValueError(
                f"{state_path}: cannot resume: it was made for (arch, input shape, teacher, mode) = {found}, "
                f"this run has {wanted}; use another --out or drop --resume"
            )
        start_epoch, step = resume_state["epoch"], resume_state["step"]
        generator.set_state(saved["generator"])
        history = {key: [float(v) for v in values] for key, values in saved["history"].items()}
        last = {key: float(value) for key, value in saved["last_metrics"].items()}
        logger.info("resuming distillation from %s: %d of %d epochs done", state_path, start_epoch, config.epochs)
    elif config.resume:
        logger.warning("resume requested but %s does not exist; distilling from scratch", state_path)
    if config.init is not None and start_epoch == 0:
        initial, _ = load_model(config.init, device, expected_arch=config.arch, expected_input_shape=input_shape)
        student.load_state_dict(initial.state_dict())
        logger.info("initialised the student from %s", config.init)

    writer = None
    if config.logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        Path(config.logdir).mkdir(parents=True, exist_ok=True)
        (Path(config.logdir) / "distill_config.json").write_text(json.dumps(asdict(config), indent=2))
        writer = SummaryWriter(config.logdir)

    epochs_run = 0
    for epoch in range(start_epoch, config.epochs):
        modules.train()  # no BatchNorm/dropout: same function as eval, attacks included
        started = time.perf_counter()
        sums = {key: torch.zeros((), device=device) for key in ("loss", "soft", "label", "feature", "attention")}
        batches = 0
        description = f"distill {config.mode} epoch {epoch + 1}/{config.epochs}"
        bar = tqdm(train_loader, desc=description, disable=not config.progress, leave=False)
        for frames, target, mask, tl, te, ta in bar:
            x, target, mask = _to_device((frames, target, mask), device)  # (B, C, H, W) in [0, 1]; (B, D) x2
            tl, te = tl.to(device), te.to(device)  # (B, D), (B, E_t)
            ta = resize_attention(ta.to(device), student_map)  # (B, h_s, w_s)
            lr = cosine_lr(config.lr, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr

            terms = distill_terms(student(x), tl, te, ta, target, mask, projection)
            loss = _weighted(terms, config)
            if config.mode == "robust":
                # PGD against the student, away from the teacher's clean soft labels
                x_adv = pgd(
                    student, x, tl, torch.ones_like(tl), eps=config.eps, alpha=config.train_alpha,
                    steps=config.pgd_steps, loss_fn=soft_label_loss,
                )
                adv_terms = distill_terms(student(x_adv), tl, te, ta, target, mask, projection)
                loss = (1.0 - config.robust_weight) * loss + config.robust_weight * _weighted(adv_terms, config)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(modules.parameters(), config.max_grad_norm)
            optimizer.step()
            step += 1
            batches += 1
            sums["loss"] += loss.detach()
            for key, value in terms.items():
                sums[key] += value.detach()
            if config.progress and batches % 20 == 0:
                bar.set_postfix(loss=f"{float(sums['loss']) / batches:.4f}", lr=f"{lr:.2e}")
        means = {key: float(value / max(batches, 1)) for key, value in sums.items()}
        epoch_seconds = time.perf_counter() - started

        modules.eval()
        val_error = evaluate(student, val_set, device)
        val_gap = teacher_gap(student, val_set, val_t_labels, device)
        probe_gap = pgd_teacher_gap(student, probe_x, probe_t_labels, config.probe_budget, config.probe_steps)
        probe_error = evaluate(student, [probe_batch], device, eps=config.probe_budget, steps=config.probe_steps)
        if not (math.isfinite(means["loss"]) and math.isfinite(val_error)):
            raise RuntimeError(
                f"distillation diverged at epoch {epoch + 1} (loss {means['loss']}, val error {val_error}); "
                f"lower DistillConfig.lr (now {config.lr})"
            )
        history["val_teacher_gap"].append(val_gap)
        history["probe_gap_pgd"].append(probe_gap)
        last = {
            "epoch": float(epoch + 1),
            "step": float(step),
            "train_loss": means["loss"],
            **{f"loss_{key}": means[key] for key in ("soft", "label", "feature", "attention")},
            "val_label_error": val_error,
            "val_teacher_gap": val_gap,
            "probe_gap_pgd": probe_gap,
            "probe_pgd_error": probe_error,
            "teacher_val_label_error": teacher_val_error,
            "epoch_seconds": epoch_seconds,
        }
        if writer is not None:
            for key, value in last.items():
                if key not in ("epoch", "step"):
                    writer.add_scalar(f"distill/{key}", value, epoch + 1)
            writer.add_scalar("distill/lr", optimizer.param_groups[0]["lr"], epoch + 1)
            writer.flush()

        # the training state first: resume reads only it, so a kill between the two writes is harmless
        save_training_state(
            state_path,
            modules,
            optimizer,
            epoch=epoch + 1,
            step=step,
            extra={
                "arch": config.arch,
                "input_shape": list(input_shape),
                "teacher": str(config.teacher),
                "mode": config.mode,
                "generator": generator.get_state(),
                "history": history,
                "last_metrics": last,
            },
        )
        save_checkpoint(
            out,
            student,
            config.arch,
            input_shape,
            extra={
                "epoch": epoch + 1,
                "metrics": last,
                "distill_config": asdict(config),
                "teacher": str(config.teacher),
                "teacher_arch": teacher_meta["arch"],
                "teacher_extra": {key: teacher_meta["extra"].get(key) for key in ("epoch", "metrics")},
            },
        )
        epochs_run += 1
        logger.info(
            "epoch %d/%d  loss %.4f  val error %.4f (teacher %.4f)  teacher gap %.4f  PGD-%d@%.4f gap %.4f  %.1fs",
            epoch + 1, config.epochs, means["loss"], val_error, teacher_val_error, val_gap,
            config.probe_steps, config.probe_budget, probe_gap, epoch_seconds,
        )

    if writer is not None:
        writer.close()
    return {**last, "epochs_run": float(epochs_run)}
