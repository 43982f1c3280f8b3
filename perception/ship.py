"""Ship a trained student: copy it into `perception/weights/` with its ONNX export and a card.

The shipped student is what `train` uses out of the box, so it must be small, load without
running pickled code (safetensors), and say how it was made: the card records the data, the
attack budget, its metrics and the commands that regenerate it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from envs.files import atomic_write
from perception.checkpoint import DIGEST_KEY, load_model, save_checkpoint, verify_checkpoint
from perception.dataset import load_manifest
from perception.export import export
from perception.models import count_flops, count_params
from perception.report import check_targets
from perception.results import read_results

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MAX_SHIPPED_BYTES = 5 * 1024 * 1024  # "a few MB at most"


def ship(
    model_path: str | Path,
    data: str | Path,
    out_dir: str | Path = WEIGHTS_DIR,
    eval_json: str | Path | None = None,
) -> Path:
    """Copy `model_path` to `out_dir/student.safetensors` (+ .onnx, + .json card); returns the card's path."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    model, metadata = load_model(model_path)  # refuses anything that is not a valid checkpoint
    if metadata.get("arch") != "student":
        raise ValueError(f"{model_path} is a {metadata.get('arch')!r} checkpoint; only a student is shipped")
    size = model_path.stat().st_size
    if size > MAX_SHIPPED_BYTES:
        raise ValueError(f"{model_path} is {size / 1e6:.1f} MB; shipped weights stay under {MAX_SHIPPED_BYTES / 1e6:.0f} MB")

    weights = out_dir / "student.safetensors"
    # re-saved, not copied: the same tensors and metadata, with the digest of its tensors (a file saved
    # before digests existed gets one), which every load checks
    save_checkpoint(weights, model, extra=metadata.get("extra", {}))
    size = weights.stat().st_size
    onnx_path, onnx_diff = export(weights, out_dir / "student.onnx")
    input_shape = tuple(metadata["input_shape"])
    manifest = load_manifest(Path(data))
    card = {
        "model": "robust distilled student (clearlane perception)",
        "file": weights.name,
        "onnx": onnx_path.name,
        "onnx_max_abs_diff": onnx_diff,
        "input": {"shape_chw": list(input_shape), "dtype": "uint8 frames, divided by 255 inside SB3 / onboard"},
        "params": count_params(model),
        "macs": count_flops(model, input_shape),
        "bytes": size,
        "tensors_sha256": verify_checkpoint(weights)[DIGEST_KEY],  # also in the file's metadata; checked on every load
        "data": {
            "path": str(data),
            "scenarios": manifest.scenarios,
            "camera": manifest.camera,
            "frames": manifest.frames,
            "seed": manifest.seed,
            "policies": manifest.policies,
        },
        "training": metadata.get("extra", {}),
        "teacher_training": _teacher_config(metadata),
        "evaluation": _student_rows(eval_json),
        "how_to_rebuild": "docs/PERCEPTION.md, section 'How the shipped student was made' (every command)",
    }
    card_path = out_dir / "student.json"
    atomic_write(card_path, lambda tmp: tmp.write_text(json.dumps(card, indent=2, default=str) + "\n"))
    return card_path


def _teacher_config(metadata: dict) -> dict:
    """How the teacher the student was distilled from was trained (when its checkpoint is at hand)."""
    teacher = metadata.get("extra", {}).get("distill_config", {}).get("teacher")
    if not teacher or not Path(teacher).is_file():
        return {}
    from perception.checkpoint import read_metadata

    return read_metadata(teacher).get("extra", {})


def _student_rows(eval_json: str | Path | None) -> dict:
    """The robust student's entry and the target checklist of `perception eval`, when available."""
    if eval_json is None or not Path(eval_json).is_file():
        return {}
    run = read_results(eval_json)
    student = run.role("robust_student")
    return {
        "robust_student": {} if student is None else student.to_json(),
        "targets": [asdict(check) for check in check_targets(run)],
        "date": run.meta.date,
    }
