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
          + map_weight       * MSE(S(x').map / m, T(x).map / m)          feature-map matching

    P:   a learned linear projection student embedding (E_s) -> teacher embedding (E_t). It exists
         only during distillation and is not saved into the student checkpoint (it is kept in the
         training state so that a resumed run continues with it).
    r:   the RMS of the teacher's embedding over the training set, so that feature_weight does not
         depend on the teacher's activation scale.
    A_T: the teacher's attention map (B, h_t, w_t) resized bilinearly to the student's (h_s, w_s)
         and renormalised to sum 1 (the teacher downsamples more, so its map is usually coarser).
    map: the last feature map (B, C', h, w) that the driving policy's actor reads
         (agents.policy.PerceptionPolicy); matched only with map_weight > 0, which needs a teacher
         whose map has the student's shape: in practice the shipped student as its own teacher
         (self-distillation). m: the RMS of the teacher's map over the training set. With equal
         embedding sizes P starts as I / r, so that self-distillation starts with every matching term 0.

    mode "clean":   loss = D(x)
    mode "robust":  loss = (1 - robust_weight) * D(x) + robust_weight * D(x_adv)           (RSLAD)
                    x_adv = PGD-`pgd_steps` with random start in the ℓ∞ ball of radius eps,
                    crafted against the STUDENT: it maximises MSE(S(x_adv).labels, T(x).labels),
                    the student's distance to the teacher's clean soft labels. The student learns
                    to give the teacher's *clean* outputs on adversarial inputs (ARD, Goldblum et
                    al. 2020; RSLAD's robust soft labels, Zi et al. 2021): the robust teacher's
                    clean predictions are the targets, never its predictions on x_adv.
                    attack_target "features": x_adv maximises the whole weighted D(x') instead,
                    embedding and feature map included, so the features a policy reads are held,
                    not only the labels (docs/ROBUSTNESS.md: the label-robust student's features
                    still let a 3/255 attack flip a driving agent's decisions).

Every epoch: the student's validation label error (masked MAE vs ground truth), its gap to the
teacher (mean |S(x).labels - T(x).labels| over all entries), a PGD probe on a fixed validation batch
(`probe_gap_pgd`: the same gap under PGD-`probe_steps` at `probe_eps` against the student;
`probe_pgd_error`: label error under PGD on the ground-truth loss, comparable to
perception.training's probe), TensorBoard scalars under `distill/`, a student checkpoint (`out`,
safetensors, arch "student") and a training state next to it (`<out stem>.state.pt`) from which
`resume=True` continues. The loop itself (resume, TensorBoard, schedule, mixed precision on CUDA,
checkpoints, divergence check) is perception.loop's, shared with training; this module supplies
the teacher cache, the loss step and the validation.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import StrictStr, ValidationInfo, field_validator, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from envs.progress import track
from perception.attacks import ascend, pgd
from perception.checkpoint import load_model
from perception.loop import (
    AtLeastOne,
    Budget,
    LoopConfig,
    PathText,
    Positive,
    Task,
    Weight,
    evaluate,
    run,
    skip_seed_draw,
    to_device,
)
from perception.models import PerceptionNet, build_model, label_loss

Mode = Literal["robust", "clean"]
MODES: tuple[str, ...] = typing.get_args(Mode)
AttackTarget = Literal["labels", "features"]
ATTACK_TARGETS: tuple[str, ...] = typing.get_args(AttackTarget)


class DistillConfig(LoopConfig):
    """Everything a distillation run depends on (stored in every checkpoint it writes).

    The shared settings (epochs, lr, eps, pgd_steps, probe, device, amp, out, resume, ...) are
    perception.loop.LoopConfig's; the defaults below are distillation's own.
    """

    teacher: PathText = "runs/perception/robust-teacher.safetensors"
    """checkpoint of the (robust) teacher; its input shape must match the data"""
    arch: StrictStr = "student"
    """architecture of the student, see perception.models.ARCHS"""
    mode: Mode = "robust"
    """"robust" (clean + adversarial terms, RSLAD-style) | "clean" (clean term only)"""
    lr: Positive = 2e-3
    """peak learning rate of AdamW (student and projection); cosine-annealed to 0"""
    soft_weight: Weight = 1.0
    """weight of the soft-target term: MSE between student and teacher labels (all entries)"""
    label_weight: Weight = 0.25
    """weight of the ground-truth term: masked MSE between student labels and the targets"""
    feature_weight: Weight = 0.1
    """weight of feature matching: MSE of the projected student embedding vs the teacher's (RMS-scaled)"""
    attention_weight: Weight = 0.1
    """weight of attention transfer: KL(teacher attention resized || student attention)"""
    map_weight: Weight = 0.0
    """weight of feature-map matching: MSE of the student's last feature map vs the teacher's (RMS-scaled);
    > 0 needs a teacher whose map has the student's shape"""
    attack_target: AttackTarget = "labels"
    """mode "robust": what the training PGD pushes away from the teacher: "labels" (the soft labels, RSLAD)
    or "features" (the whole weighted loss: labels, embedding, attention and feature map)"""
    robust_weight: Budget = 5 / 6
    """mode "robust": share of the adversarial term, loss = (1 - w) D(x) + w D(x_adv) (RSLAD: 5/6), in [0, 1]"""
    teacher_batch_size: AtLeastOne = 256
    """batch size of the one-off teacher pass that caches its outputs"""
    logdir: PathText | None = "runs/perception/distill"
    """TensorBoard folder (None = no TensorBoard)"""
    out: PathText = "runs/perception/student.safetensors"
    """student checkpoint path; the training state is written next to it as <stem>.state.pt"""

    @field_validator("pgd_steps")
    @classmethod
    def _attack_has_steps(cls, steps: int, info: ValidationInfo) -> int:
        if info.data.get("mode") == "robust" and steps < 1:
            raise ValueError(f"must be >= 1 for mode 'robust', got {steps}")
        return steps

    @model_validator(mode="after")
    def _something_to_learn(self) -> DistillConfig:
        weights = (self.soft_weight, self.label_weight, self.feature_weight, self.attention_weight, self.map_weight)
        if sum(weights) == 0:
            raise ValueError("all loss weights are 0; nothing to learn")
        return self


# --------------------------------------------------------------------------- teacher cache


class TeacherCache(Dataset):
    """A dataset with the teacher's clean outputs attached to every sample.

    Items: (frames uint8 (C, H, W), target (D,), mask (D,), teacher labels (D,),
    teacher embedding (E_t,), teacher attention (h_t, w_t), teacher feature map (C', h, w) or (0,)).
    """

    def __init__(self, data: Dataset, labels: torch.Tensor, embedding: torch.Tensor, attention: torch.Tensor,
                 feature_map: torch.Tensor | None = None) -> None:
        if feature_map is None:
            feature_map = torch.zeros(len(labels), 0)  # (N, 0): no map to match
        if not len(data) == len(labels) == len(embedding) == len(attention) == len(feature_map):  # type: ignore[arg-type]
            raise ValueError("TeacherCache: the dataset and the teacher outputs differ in length")
        self.data = data
        self.labels = labels  # (N, D)
        self.embedding = embedding  # (N, E_t)
        self.attention = attention  # (N, h_t, w_t)
        self.feature_map = feature_map  # (N, C', h, w) or (N, 0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        frames, target, mask = self.data[index]
        return (frames, target, mask, self.labels[index], self.embedding[index], self.attention[index],
                self.feature_map[index])


@torch.no_grad()
def teacher_outputs(
    teacher: PerceptionNet,
    data: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = False,
    with_map: bool = False,
) -> tuple[torch.Tensor, ...]:
    """The teacher's clean outputs for every sample of `data`, in order, on the CPU:
    labels (N, D), embedding (N, E_t), attention (N, h_t, w_t), float32, and with `with_map` its
    last feature map (N, C', h, w) as well."""
    device = torch.device(device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    labels, embedding, attention, maps = [], [], [], []
    skip_seed_draw()  # keeps the global RNG where the earlier progress bar left it
    for batch in track(loader, "teacher outputs", unit="batches", disable=not progress, transient=True):
        x, _, _ = to_device(batch, device)  # (B, C, H, W) in [0, 1]
        out, feature_map = teacher.forward_with_map(x)
        labels.append(out.labels.float().cpu())
        embedding.append(out.embedding.float().cpu())
        attention.append(out.attention.float().cpu())
        if with_map:
            maps.append(feature_map.float().cpu())
    outputs = (torch.cat(labels), torch.cat(embedding), torch.cat(attention))
    return (*outputs, torch.cat(maps)) if with_map else outputs


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
    student_map: torch.Tensor | None = None,
    teacher_map: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The distillation terms of one batch (unweighted scalars), see the module docstring.

    student_out: PerceptionOutput of the student; teacher_embedding already divided by its RMS;
    teacher_attention already resized to the student's map size. The "map" term is there when
    both maps (B, C', h, w) are given, teacher_map already divided by its RMS.
    """
    terms = {
        "soft": soft_label_loss(student_out.labels, teacher_labels),
        "label": label_loss(student_out.labels, target, mask),
        "feature": F.mse_loss(projection(student_out.embedding), teacher_embedding),
        "attention": attention_kl(student_out.attention, teacher_attention),
    }
    if student_map is not None and teacher_map is not None:
        terms["map"] = F.mse_loss(student_map.float(), teacher_map.float())
    return terms


def _weighted(terms: dict[str, torch.Tensor], config: DistillConfig) -> torch.Tensor:
    total = (
        config.soft_weight * terms["soft"]
        + config.label_weight * terms["label"]
        + config.feature_weight * terms["feature"]
        + config.attention_weight * terms["attention"]
    )
    return total + config.map_weight * terms["map"] if "map" in terms else total


@torch.no_grad()
def teacher_gap(
    student: PerceptionNet, data: Dataset, teacher_labels: torch.Tensor, device, batch_size: int = 256
) -> float:
    """Mean |student labels - teacher labels| over all entries of `data` (teacher_labels (N, D), in order)."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    total, count, start = 0.0, 0, 0
    for batch in loader:
        x, _, _ = to_device(batch, device)
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


class _Distillation(Task):
    """perception.loop's task for distillation: the student and the projection P, the teacher's
    cached outputs, `distill_terms` on clean (and, in mode "robust", adversarial) inputs."""

    name, activity, history_keys = "distill", "distillation", ("val_teacher_gap", "probe_gap_pgd")

    def __init__(self, config: DistillConfig) -> None:
        self.config = config

    @property
    def label(self) -> str:
        return f"distill {self.config.mode}"

    def build(self, input_shape: tuple[int, int, int], device: torch.device) -> None:
        config = self.config
        teacher, self.teacher_meta = load_model(config.teacher, device)
        if teacher.input_shape != input_shape:
            raise ValueError(
                f"teacher {config.teacher} reads frames of shape (C, H, W) = {teacher.input_shape}, the dataset has "
                f"{input_shape}; distil with data collected with the teacher's camera settings"
            )
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher = teacher
        self.model = build_model(config.arch, *input_shape).to(device)
        if config.map_weight > 0 and teacher.feature_shape != self.model.feature_shape:
            raise ValueError(
                f"map_weight {config.map_weight} matches feature maps, but the teacher's map {teacher.feature_shape} "
                f"differs from the student's {self.model.feature_shape}; use a teacher of the student's arch"
            )
        self.projection = nn.Linear(self.model.embed_dim, teacher.embed_dim).to(device)  # training only
        self.modules = nn.ModuleDict({"student": self.model, "projection": self.projection})
        self.device = device

    def prepare(self, train_set: Dataset, val_set: Dataset) -> Dataset:
        """The teacher's clean outputs, once: (N, D), (N, E_t), (N, h_t, w_t) on the CPU."""
        config, teacher, device = self.config, self.teacher, self.device
        teacher.eval()
        labels, embedding, attention, *feature_map = teacher_outputs(
            teacher, train_set, device, config.teacher_batch_size, config.progress, with_map=config.map_weight > 0
        )
        self.val_set = val_set
        self.val_teacher_labels, _, _ = teacher_outputs(
            teacher, val_set, device, config.teacher_batch_size, config.progress
        )
        feature_scale = float(embedding.pow(2).mean().sqrt().clamp_min(1e-6))  # RMS of the teacher embedding
        if self.model.embed_dim == teacher.embed_dim:  # self-distillation: P starts at "the same embedding"
            with torch.no_grad():
                self.projection.weight.copy_(torch.eye(teacher.embed_dim) / feature_scale)
                self.projection.bias.zero_()
        self.teacher_val_error = evaluate(teacher, val_set, device, batch_size=config.teacher_batch_size)
        del self.teacher  # not needed any more: everything below uses the cache
        self.student_map = tuple(self.model.feature_shape[1:])  # (h_s, w_s)
        maps, self.map_scale = None, 1.0
        if feature_map:  # (N, C', h, w), scaled by its RMS as the embedding is (the student's map too, in `loss`)
            self.map_scale = float(feature_map[0].pow(2).mean().sqrt().clamp_min(1e-6))
            maps = feature_map[0] / self.map_scale
        return TeacherCache(train_set, labels, embedding / feature_scale, attention, maps)

    def loss(self, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config = self.config
        frames, target, mask, tl, te, ta, tm = batch
        x, target, mask = to_device((frames, target, mask), device)  # (B, C, H, W) in [0, 1]; (B, D) x2
        tl, te = tl.to(device), te.to(device)  # (B, D), (B, E_t)
        ta = resize_attention(ta.to(device), self.student_map)  # (B, h_s, w_s)
        tm = tm.to(device) if tm.dim() > 2 else None  # (B, C', h, w), or no map to match

        def objective(inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            out, student_map = self.model.forward_with_map(inputs)
            terms = distill_terms(out, tl, te, ta, target, mask, self.projection, student_map / self.map_scale, tm)
            return _weighted(terms, config), terms

        loss, terms = objective(x)
        if config.mode == "robust":
            if config.attack_target == "features":  # away from all the teacher's clean outputs
                x_adv = ascend(lambda inputs: objective(inputs)[0], x, config.eps, config.pgd_steps, config.train_alpha)
            else:  # away from the teacher's clean soft labels
                x_adv = pgd(
                    self.model, x, tl, torch.ones_like(tl), eps=config.eps, alpha=config.train_alpha,
                    steps=config.pgd_steps, loss_fn=soft_label_loss,
                )
            loss = (1.0 - config.robust_weight) * loss + config.robust_weight * objective(x_adv)[0]
        return loss, {f"loss_{key}": value for key, value in terms.items()}

    def validate(self, probe_batch, device: torch.device) -> dict[str, float]:
        config, student = self.config, self.model
        probe_x, _, _ = to_device(probe_batch, device)  # (P, C, H, W) in [0, 1]
        probe_t_labels = self.val_teacher_labels[: len(probe_x)].to(device)  # (P, D)
        val_error = evaluate(student, self.val_set, device)
        val_gap = teacher_gap(student, self.val_set, self.val_teacher_labels, device)
        probe_gap = pgd_teacher_gap(student, probe_x, probe_t_labels, config.probe_budget, config.probe_steps)
        probe_error = evaluate(student, [probe_batch], device, eps=config.probe_budget, steps=config.probe_steps)
        return {
            "val_label_error": val_error,
            "val_teacher_gap": val_gap,
            "probe_gap_pgd": probe_gap,
            "probe_pgd_error": probe_error,
            "teacher_val_label_error": self.teacher_val_error,
        }

    def identity(self, input_shape: tuple[int, int, int]) -> dict[str, Any]:
        config = self.config
        return {"arch": config.arch, "input_shape": list(input_shape), "teacher": str(config.teacher), "mode": config.mode}

    def checkpoint_extra(self) -> dict[str, Any]:
        meta = self.teacher_meta
        return {
            "distill_config": self.config.model_dump(),
            "teacher": str(self.config.teacher),
            "teacher_arch": meta["arch"],
            "teacher_extra": {key: meta["extra"].get(key) for key in ("epoch", "metrics")},
        }

    def summary(self, metrics: dict[str, float]) -> str:
        config = self.config
        return (
            f"val error {metrics['val_label_error']:.4f} (teacher {metrics['teacher_val_label_error']:.4f})  "
            f"teacher gap {metrics['val_teacher_gap']:.4f}  PGD-{config.probe_steps}@{config.probe_budget:.4f} "
            f"gap {metrics['probe_gap_pgd']:.4f}"
        )


def distill(config: DistillConfig, train_set: Dataset, val_set: Dataset) -> dict[str, float]:
    """Distil config.teacher into a student (or resume); returns the metrics of the last epoch.

    Returned keys: epoch (epochs completed), step, epochs_run (this call), train_loss, loss_soft,
    loss_label, loss_feature, loss_attention (clean-input terms, epoch means), val_label_error,
    val_teacher_gap, probe_gap_pgd, probe_pgd_error, teacher_val_label_error, epoch_seconds.
    """
    return run(config, _Distillation(config), train_set, val_set)
