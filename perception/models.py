"""Perception CNNs: a ResNet-style teacher and a tiny student, both with attention pooling.

Both models read float camera frames in [0, 1] of shape (B, C, H, W) (SB3 divides uint8
observations by 255 before the features extractor; attacks also work in [0, 1] pixel space)
and return a `PerceptionOutput`:

    embedding (B, E)          features for the policy (E = ArchConfig.embed_dim)
    labels    (B, LABEL_DIM)  regression of the normalised label vector (perception.labels)
    attention (B, h, w)       spatial attention weights of the last feature map, each map sums to 1

Layout of both architectures (ArchConfig): a sequence of stages; every stage starts with a
stride-2 3x3 conv (downsampling by 2) followed by `blocks_per_stage[i]` residual blocks
(IMPALA-style: ReLU -> conv -> ReLU -> conv, plus the skip) and a ReLU. The last feature map goes
through `SpatialAttentionPool` (learned position embedding, K heads) -> Linear + ReLU (embedding)
-> Linear (labels).

Choices, and why:
- No normalisation layers (no BatchNorm, no GroupNorm): train and eval modes compute the same
  function, so adversarial attacks and distillation never depend on `model.train()/.eval()`,
  and the ONNX graph stays plain convs. He init and zero-initialised residual branches keep the
  signal's scale through the stack instead (PyTorch's default init made the output nearly
  constant and training stalled).
- The attention pool adds a learned position embedding: conv features are translation
  equivariant, so a plain attention-weighted average would lose *where* things are, which the
  labels (relative positions, lane occupancy) are about.
- Every activation is its own `nn.ReLU(inplace=False)` module, used once; no functional
  activations and no in-place ops: SHAP's DeepExplainer needs that.
- Only ops that export to ONNX opset 17 (conv, relu, add, softmax over a flattened dim, matmul).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from perception.labels import LABEL_DIM


@dataclass(frozen=True)
class ArchConfig:
    """One perception architecture.

    name:             registry key ("teacher", "student") and what checkpoints record
    widths:           output channels of each stage; each stage halves H and W (stride-2 conv)
    blocks_per_stage: residual blocks after each stage's downsampling conv (0 = plain conv net)
    embed_dim:        size of the embedding (the policy's features)
    attention_heads:  heads of the attention pool (each attends to one set of places)
    """

    name: str
    widths: tuple[int, ...]
    blocks_per_stage: tuple[int, ...]
    embed_dim: int
    attention_heads: int = 1

    def __post_init__(self) -> None:
        if not self.widths:
            raise ValueError(f"ArchConfig {self.name!r}: widths must not be empty")
        if len(self.widths) != len(self.blocks_per_stage):
            raise ValueError(
                f"ArchConfig {self.name!r}: widths has {len(self.widths)} stages but blocks_per_stage has "
                f"{len(self.blocks_per_stage)}; give one block count per stage"
            )
        if any(int(w) < 1 for w in self.widths) or any(int(b) < 0 for b in self.blocks_per_stage):
            raise ValueError(f"ArchConfig {self.name!r}: widths must be >= 1 and block counts >= 0")
        if self.embed_dim < 1:
            raise ValueError(f"ArchConfig {self.name!r}: embed_dim must be >= 1, got {self.embed_dim}")
        if self.attention_heads < 1:
            raise ValueError(f"ArchConfig {self.name!r}: attention_heads must be >= 1, got {self.attention_heads}")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "widths": list(self.widths),
            "blocks_per_stage": list(self.blocks_per_stage),
            "embed_dim": self.embed_dim,
            "attention_heads": self.attention_heads,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ArchConfig":
        return cls(
            name=str(data["name"]),
            widths=tuple(int(w) for w in data["widths"]),
            blocks_per_stage=tuple(int(b) for b in data["blocks_per_stage"]),
            embed_dim=int(data["embed_dim"]),
            attention_heads=int(data.get("attention_heads", 1)),
        )


# At 9x96x48 (MACs as counted by count_flops): teacher ~66 MMACs, ~1.45 M params, final map 6x3;
# student ~1.4 MMACs, ~16 k params, final map 12x6 (the attention map the overlays show).
# ONNX Runtime, batch 1, 1 CPU thread, on a busy 2-core dev machine: teacher p50 ~1.5 ms, student
# ~0.06 ms (~25x). The student runs near ONNX Runtime's per-call floor (~0.01 ms for an Identity graph),
# so the speed-up is set by the teacher's size, not by shrinking the student further.
TEACHER = ArchConfig(
    name="teacher", widths=(32, 48, 64, 128), blocks_per_stage=(0, 2, 3, 3), embed_dim=256, attention_heads=4
)
STUDENT = ArchConfig(name="student", widths=(8, 16, 32), blocks_per_stage=(0, 0, 0), embed_dim=64, attention_heads=2)
ARCHS: dict[str, ArchConfig] = {TEACHER.name: TEACHER, STUDENT.name: STUDENT}


class PerceptionOutput(NamedTuple):
    embedding: torch.Tensor  # (B, E)
    labels: torch.Tensor  # (B, LABEL_DIM)
    attention: torch.Tensor  # (B, h, w), sums to 1 over (h, w)


class SpatialAttentionPool(nn.Module):
    """Attention-weighted average of a feature map, with a learned position embedding.

    features (B, C, h, w) + position (C, h, w) -> 1x1 conv -> logits (B, K, h, w)
    -> softmax over the h*w positions, per head -> weights (B, K, h*w)
    -> for each head, sum over positions of weights * features -> pooled (B, K*C).

    Without the position embedding the pooled vector would be (nearly) translation invariant:
    conv features say *what* is there, the embedding lets the pool also say *where*, which the
    labels (relative positions, lane occupancy) need. K heads can attend to K places at once.
    `forward` returns (pooled (B, K*C), attention (B, h, w)), the attention being the mean of the
    heads' maps (each sums to 1 over h*w, so the mean does too). The last maps are kept, detached,
    in `last_attention` (B, h, w) and `last_attention_heads` (B, K, h, w) for overlays.
    """

    def __init__(self, channels: int, height: int, width: int, heads: int = 1) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"SpatialAttentionPool: heads must be >= 1, got {heads}")
        self.shape = (int(channels), int(height), int(width))  # (C, h, w)
        self.heads = int(heads)
        self.position = nn.Parameter(0.02 * torch.randn(1, channels, height, width))  # (1, C, h, w)
        self.logits = nn.Conv2d(channels, heads, kernel_size=1)
        self.softmax = nn.Softmax(dim=-1)
        self.last_attention: torch.Tensor | None = None
        self.last_attention_heads: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.heads * self.shape[0]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels, h, w = self.shape
        features = features + self.position  # (B, C, h, w)
        logits = self.logits(features)  # (B, K, h, w)
        # constant target shapes (not tensor.shape): each reshape exports as one ONNX node
        weights = self.softmax(logits.reshape(-1, self.heads, h * w))  # (B, K, h*w), softmax over positions
        values = features.reshape(-1, channels, h * w).transpose(1, 2)  # (B, h*w, C)
        pooled = torch.flatten(torch.matmul(weights, values), start_dim=1)  # (B, K*C)
        attention = weights.mean(dim=1).reshape(-1, h, w)  # (B, h, w)
        self.last_attention = attention.detach()
        self.last_attention_heads = weights.detach().reshape(-1, self.heads, h, w)
        return pooled, attention


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), channels and size unchanged (IMPALA-style, no norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, C, h, w)
        return x + self.conv2(self.relu2(self.conv1(self.relu1(x))))


class Stage(nn.Module):
    """Stride-2 3x3 conv (halves h and w), then residual blocks, then a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[ResidualBlock(out_channels) for _ in range(blocks)])
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, h, w) -> (B, Cout, ceil(h/2), ceil(w/2))
        return self.relu(self.blocks(self.down(x)))


class PerceptionNet(nn.Module):
    """Camera frames (B, C, H, W) in [0, 1] -> PerceptionOutput (embedding, labels, attention)."""

    def __init__(self, arch: ArchConfig, in_channels: int, height: int, width: int, label_dim: int = LABEL_DIM) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("height", height), ("width", width)):
            if int(value) < 1:
                raise ValueError(f"PerceptionNet: {name} must be >= 1, got {value}")
        self.arch = arch
        self.input_shape = (int(in_channels), int(height), int(width))  # (C, H, W)
        self.label_dim = int(label_dim)
        stages, channels = [], int(in_channels)
        for out_channels, blocks in zip(arch.widths, arch.blocks_per_stage):
            stages.append(Stage(channels, out_channels, blocks))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        h, w = int(height), int(width)
        for _ in arch.widths:  # each stage: k=3, s=2, p=1 -> ceil(n / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        self.feature_shape = (channels, h, w)  # (C', h, w) of the last feature map
        self.pool = SpatialAttentionPool(channels, h, w, heads=arch.attention_heads)
        self.embed = nn.Linear(self.pool.out_features, arch.embed_dim)
        self.embed_relu = nn.ReLU(inplace=False)
        self.head = nn.Linear(arch.embed_dim, self.label_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """He (fan-in, ReLU) init so that activations keep their scale through the stack without
        normalisation layers; each residual branch starts at zero (the block is the identity), as
        in Goyal et al. / Fixup. (PyTorch's default init shrinks the signal ~3x per layer here.)"""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                nn.init.zeros_(module.conv2.weight)
        nn.init.xavier_normal_(self.head.weight)  # linear output

    @property
    def embed_dim(self) -> int:
        return self.arch.embed_dim

    def forward(self, x: torch.Tensor) -> PerceptionOutput:
        return self.forward_with_map(x)[0]

    def forward_with_map(self, x: torch.Tensor) -> tuple[PerceptionOutput, torch.Tensor]:
        """As `forward`, plus the last feature map (B, C', h, w) that the attention pool reads.

        The policy can read the map too (`PerceptionExtractor(include_map=True)`): the pool's K heads
        summarise K places, the map keeps every place (docs/BENCHMARKS.md, "Session 8")."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"PerceptionNet expects frames of shape (B, {', '.join(map(str, self.input_shape))}) "
                f"float in [0, 1], got {tuple(x.shape)}"
            )
        features = self.stages(x)  # (B, C', h, w)
        pooled, attention = self.pool(features)  # (B, K*C'), (B, h, w)
        embedding = self.embed_relu(self.embed(pooled))  # (B, E)
        labels = self.head(embedding)  # (B, LABEL_DIM)
        return PerceptionOutput(embedding, labels, attention), features


def build_model(arch_name: str | ArchConfig, in_channels: int, height: int, width: int) -> PerceptionNet:
    """PerceptionNet for a registered architecture name ("teacher", "student") or an ArchConfig."""
    if isinstance(arch_name, ArchConfig):
        return PerceptionNet(arch_name, in_channels, height, width)
    if arch_name not in ARCHS:
        raise ValueError(f"unknown perception architecture {arch_name!r}; choose one of {sorted(ARCHS)}")
    return PerceptionNet(ARCHS[arch_name], in_channels, height, width)


def label_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean squared error over the defined label entries: (B, D) x3 -> scalar.

    The one loss that training minimises and attacks maximise.
    """
    squared = (pred.float() - target.float()) ** 2 * mask.float()
    return squared.sum() / mask.float().sum().clamp_min(1.0)


def label_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean absolute error (the `label_error` of perception.labels.describe_errors) -> scalar."""
    absolute = (pred.float() - target.float()).abs() * mask.float()
    return absolute.sum() / mask.float().sum().clamp_min(1.0)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one sample of shape (C, H, W).

    Measured with forward hooks on a zero input; element-wise ops, softmax and the attention
    weighted sum (C' * h * w MACs) are not counted.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


class _TupleOutput(nn.Module):
    """PerceptionNet with a plain tuple output, for export."""

    def __init__(self, model: PerceptionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out.embedding, out.labels, out.attention


ONNX_INPUT = "frames"
ONNX_OUTPUTS = ("embedding", "labels", "attention")


def export_onnx(model: PerceptionNet, path: str | Path, opset: int = 17) -> None:
    """Write `model` as ONNX (dynamic batch): input "frames" (B, C, H, W) float in [0, 1];
    outputs "embedding" (B, E), "labels" (B, D), "attention" (B, h, w)."""
    import warnings

    from envs.files import atomic_write

    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    example = torch.zeros((1, *model.input_shape), device=parameter.device)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(
                _TupleOutput(model),
                (example,),
                str(tmp),
                input_names=[ONNX_INPUT],
                output_names=list(ONNX_OUTPUTS),
                dynamic_axes={name: {0: "batch"} for name in (ONNX_INPUT, *ONNX_OUTPUTS)},
                opset_version=opset,
                dynamo=False,
            )

    try:
        atomic_write(path, write)
    finally:
        model.train(was_training)
