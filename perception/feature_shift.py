"""How far an ℓ∞ attack moves what a driving policy reads from a student: its embedding, its labels and
its last feature map (the three parts of `PerceptionExtractor`'s features with `include_map`).

    python -m perception.feature_shift --data DATASET --models shipped=perception/weights/student.safetensors other=X

Label robustness (docs/PERCEPTION.md) is measured on the labels alone; a policy also reads the
embedding and the feature map, which no label loss holds in place. Per model and budget: PGD-`steps`
(random start, step 2.5 eps / steps, best iterate per frame) maximises the summed squared relative
shift of embedding and map, ||e(x') - e(x)||² / ||e(x)||² + ||m(x') - m(x)||² / ||m(x)||², on the
same held-out frames for every model; reported are the mean relative shifts of each part (ratios of
ℓ2 norms per frame) and the mean |Δ| of the labels.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from perception.attacks import ascend, parse_eps
from perception.checkpoint import load_model
from perception.dataset import FrameDataset, split_shards
from perception.models import PerceptionNet


@dataclass(frozen=True)
class FeatureShift:
    eps: float  # [0, 1] pixel units
    embedding: float  # mean ||Δe|| / ||e||
    feature_map: float  # mean ||Δm|| / ||m||
    labels: float  # mean |Δ label| over all entries


def _relative(change: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) ||change|| / ||reference|| per row of (B, ...) tensors."""
    return change.flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1).clamp_min(1e-9)


def feature_shift(model: PerceptionNet, frames: torch.Tensor, eps: float, steps: int = 10) -> FeatureShift:
    """frames (B, C, H, W) float in [0, 1]; the attack described in the module docstring."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        clean, clean_map = model.forward_with_map(frames)

    def shift(attacked: torch.Tensor) -> torch.Tensor:  # (B,) squared relative shifts
        out, feature_map = model.forward_with_map(attacked)
        return _relative(out.embedding - clean.embedding, clean.embedding) ** 2 \
            + _relative(feature_map - clean_map, clean_map) ** 2

    attacked = ascend(shift, frames, eps, steps, 2.5 * eps / steps, keep_best=True)
    with torch.no_grad():
        out, feature_map = model.forward_with_map(attacked)
    return FeatureShift(
        eps=eps,
        embedding=float(_relative(out.embedding - clean.embedding, clean.embedding).mean()),
        feature_map=float(_relative(feature_map - clean_map, clean_map).mean()),
        labels=float((out.labels - clean.labels).abs().mean()),
    )


def held_out_frames(data: str | Path, count: int) -> torch.Tensor:
    """`count` held-out frames spread evenly over the held-out shards: (count, C, H, W) in [0, 1]."""
    _, held_out = split_shards(data)
    frames = FrameDataset(data, held_out)
    chosen = Subset(frames, range(0, len(frames), max(1, len(frames) // count))[:count])
    return next(iter(DataLoader(chosen, batch_size=count)))[0].float() / 255


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perception.feature_shift", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (its held-out shards are used)")
    parser.add_argument("--models", nargs="+", required=True, help="name=checkpoint.safetensors ...")
    parser.add_argument("--eps", nargs="+", default=["1/255", "3/255", "8/255"], help="ℓ∞ budgets, e.g. 3/255")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--frames", type=int, default=512, help="held-out frames")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.models) or args.steps < 1 or args.frames < 1:
        parser.error("--models takes name=checkpoint pairs; --steps and --frames must be positive")
    try:
        budgets = [parse_eps(text) for text in args.eps]
        models = {name: load_model(path, "cpu")[0] for name, path in (item.split("=", 1) for item in args.models)}
        frames = held_out_frames(args.data, args.frames)
    except (OSError, ValueError) as error:  # a missing dataset or checkpoint, a bad budget: one line
        parser.error(str(error))
    print(f"{'model':<12} {'eps':>6} {'embedding':>10} {'map':>8} {'labels':>8}   ({len(frames)} frames, PGD-{args.steps})")
    for name, model in models.items():
        for text, eps in zip(args.eps, budgets):
            torch.manual_seed(0)  # the same random starts for every model
            result = feature_shift(model, frames, eps, args.steps)
            print(f"{name:<12} {text:>6} {result.embedding:>10.3f} {result.feature_map:>8.3f} {result.labels:>8.4f}")


if __name__ == "__main__":
    main()
