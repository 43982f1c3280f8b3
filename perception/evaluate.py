"""Evaluate perception models side by side: accuracy, robustness, speed and size, as a report.

    results = evaluate_models({"teacher": "runs/perception/teacher.safetensors", ...}, "data/perception/highway-mix")
    write_report(results, "docs/PERCEPTION.md", command="python run.py perception eval ...")

Everything runs on the held-out shards of the dataset (`perception.dataset.split_shards`: whole
episodes the models never trained on). For each model:

- accuracy: label error (masked MAE of the normalised label vector, the number perception is
  judged by) on ALL held-out frames, with `perception.labels.describe_errors`' breakdown in
  physical units;
- robustness, on a fixed subset of `attack_frames` held-out frames (a seeded choice, the same
  frames and the same random draws for every model), with the clean error on that very subset
  so that ratios compare like with like:
    PGD-k at each eps (ℓ∞, random start, step 2.5 * eps / k, maximising the label loss),
    uniform random sign noise of the same eps (x + eps * sign(U[-1, 1]), clamped to [0, 1]),
    the sensor corruptions of a scenario (highway-noisy: noise, blur, dimming, dropped frames);
- size: parameters and multiply-accumulates (`perception.models.count_flops`);
- speed on the CPU, preprocessing included (`perception.latency`): latency p50/p95 at batch 1
  for each thread count, eager PyTorch and ONNX Runtime; throughput at a large batch.

Corruptions are applied per RGB frame of each stacked observation (C = 3 * stack), the stack's
frames in order as one short stream (so a dropped frame repeats the previous corrupted frame of
the same observation), with a seeded generator: every model sees the same corrupted frames.

`write_report` writes the results as Markdown tables between `<!-- eval:start -->` and
`<!-- eval:end -->` in docs/PERCEPTION.md (everything outside the markers is kept) and the raw
results as JSON next to it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from envs.system import resolve_device, usable_cores
from perception.attacks import parse_eps, pgd
from perception.checkpoint import load_model
from perception.dataset import FrameDataset, split_shards
from perception.labels import describe_errors
from perception.latency import measure_latency, measure_throughput
from perception.models import PerceptionNet, count_flops, count_params, export_onnx

logger = logging.getLogger(__name__)

START_MARKER = "<!-- eval:start -->"
END_MARKER = "<!-- eval:end -->"
REPORT_TITLE = "# Perception"

# The roles the key ratios and targets are about; a model's name maps to a role when it matches
# one of these after lower-casing and turning "-" and spaces into "_" (or pass `roles`).
ROLES = ("teacher", "robust_teacher", "robust_student", "clean_student")


@dataclass(frozen=True)
class Targets:
    """What the perception stack is judged against (the report's checklist).

    The defaults are the targets of the issue "Perception".

    min_speedup:           teacher / robust student ONNX Runtime p50 at batch 1, one thread
    max_student_p50_ms:    robust student ONNX Runtime p50 at batch 1, one thread [ms]
    max_student_error_pct: robust student's clean label error as % of the teacher's (all held-out frames)
    max_robust_pgd_ratio:  robust student's PGD-`key_steps` error at `key_eps` / its clean error (attack subset)
    min_clean_pgd_ratio:   the clean student's ratio under the same attack must be at least this
    key_eps, key_steps:    the attack the ratios quote (also the budget of the noise column)
    """

    min_speedup: float = 20.0
    max_student_p50_ms: float = 0.2
    max_student_error_pct: float = 110.0
    max_robust_pgd_ratio: float = 1.5
    min_clean_pgd_ratio: float = 3.0
    key_eps: float = 4 / 255
    key_steps: int = 10


# --------------------------------------------------------------------------- helpers


def eps_label(eps: float) -> str:
    """4/255 for budgets that are whole pixel levels, else the number."""
    levels = eps * 255.0
    if abs(levels - round(levels)) < 1e-6:
        return f"{int(round(levels))}/255"
    return f"{eps:.4g}"


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, library versions, GPU (if any): what the speed numbers depend on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = usable_cores()
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "nproc": nproc,
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": load,
    }


def corrupt_observations(frames: np.ndarray, config, seed: int = 0) -> np.ndarray:
    """Apply a scenario's CorruptionConfig to stacked observations (N, 3 * stack, H, W) uint8.

    Each observation's RGB frames, in stack order, are one stream (a dropped frame repeats the
    previous corrupted frame of the same observation); one seeded generator for all of them.
    """
    from envs.corruptions import SensorCorruption

    if frames.ndim != 4 or frames.shape[1] % 3 != 0 or frames.dtype != np.uint8:
        raise ValueError(
            f"corrupt_observations expects uint8 stacked RGB observations (N, 3 * stack, H, W), "
            f"got {frames.dtype} {frames.shape}"
        )
    rng = np.random.default_rng(seed)
    corruption = SensorCorruption(config)
    out = np.empty_like(frames)
    stack = frames.shape[1] // 3
    for n in range(len(frames)):
        corruption.reset()
        for k in range(stack):
            frame = np.ascontiguousarray(frames[n, 3 * k : 3 * k + 3].transpose(1, 2, 0))  # (H, W, 3)
            out[n, 3 * k : 3 * k + 3] = corruption(frame, rng).transpose(2, 0, 1)
    return out


def _to_float(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(frames).to(device).float() / 255.0  # (B, C, H, W) in [0, 1]


def _predict(model: PerceptionNet, frames: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    """Label predictions (N, D) for uint8 frames (N, C, H, W)."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            parts.append(model(_to_float(frames[start : start + batch_size], device)).labels.float().cpu().numpy())
    return np.concatenate(parts)


def _error_sums(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    return float(((pred.float() - target).abs() * mask).sum()), float(mask.sum())


def _subset_error(
    model: PerceptionNet,
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    perturb=None,
) -> float:
    """Label error over (x, target, mask) on the device, each batch optionally perturbed first."""
    error, weight = 0.0, 0.0
    for start in range(0, len(x), batch_size):
        part = slice(start, start + batch_size)
        xb, tb, mb = x[part], target[part], mask[part]
        if perturb is not None:
            xb = perturb(xb, tb, mb)
        with torch.no_grad():
            e, w = _error_sums(model(xb).labels, tb, mb)
        error, weight = error + e, weight + w
    return error / max(weight, 1.0)


def _speed(
    model: PerceptionNet,
    input_shape: tuple[int, int, int],
    thread_counts: list[int],
    latency_repeats: int,
    latency_warmup: int,
    throughput_batch: int,
    throughput_repeats: int,
    seed: int,
    on_step=lambda what: None,
) -> dict[str, Any]:
    """Latency at batch 1 for each thread count and backend, throughput at `throughput_batch` with the
    most threads; one ONNX export shared by all ORT measurements. on_step(what) is called after each."""
    speed: dict[str, Any] = {"latency": {"torch": {}, "onnx": {}}, "throughput": {}}
    with tempfile.TemporaryDirectory(prefix="clearlane-eval-") as folder:
        onnx_path = Path(folder) / "model.onnx"
        export_onnx(model, str(onnx_path))
        for backend in ("torch", "onnx"):
            for count in thread_counts:
                speed["latency"][backend][str(count)] = measure_latency(
                    model, input_shape, threads=count, backend=backend, batch=1,
                    repeats=latency_repeats, warmup=latency_warmup, onnx_path=onnx_path, seed=seed,
                )
                on_step(f"latency {backend} {count} thread(s)")
        for backend in ("onnx", "torch"):
            speed["throughput"][backend] = measure_throughput(
                model, input_shape, batch=throughput_batch, backend=backend, threads=thread_counts[-1],
                repeats=throughput_repeats, warmup=1, onnx_path=onnx_path, seed=seed,
            )
            on_step(f"throughput {backend} batch {throughput_batch}")
    return speed


def _resolve_roles(names: Iterable[str], roles: Mapping[str, str] | None) -> dict[str, str]:
    """role -> model name."""
    names = list(names)
    if roles is not None:
        unknown_roles = sorted(set(roles) - set(ROLES))
        if unknown_roles:
            raise ValueError(f"unknown roles {unknown_roles}; roles are {list(ROLES)}")
        missing = sorted(name for name in roles.values() if name not in names)
        if missing:
            raise ValueError(f"roles name models {missing} that are not among the evaluated models {names}")
        return dict(roles)
    found = {}
    for name in names:
        key = name.strip().lower().replace("-", "_").replace(" ", "_")
        if key in ROLES:
            found[key] = name
    return found


def _validate(
    models: Mapping[str, str | os.PathLike],
    eps_list: Iterable,
    attack_frames: int,
    pgd_steps: Iterable[int],
    threads: Iterable[int],
) -> tuple[list[float], list[int], list[int]]:
    if not models:
        raise ValueError("no models to evaluate; pass at least one name=path")
    for name, path in models.items():
        if not str(name).strip():
            raise ValueError(f"model names must not be empty (path {path})")
        if not Path(path).is_file():
            raise FileNotFoundError(f"perception checkpoint for {name!r} not found: {path}")
    eps_values = sorted({parse_eps(eps) for eps in eps_list})
    if not eps_values or any(eps <= 0 for eps in eps_values):
        raise ValueError(f"eps_list must hold budgets > 0, got {list(eps_list)}")
    if isinstance(attack_frames, bool) or int(attack_frames) != attack_frames or attack_frames < 1:
        raise ValueError(f"attack_frames must be a positive integer, got {attack_frames!r}")
    steps = [int(s) for s in pgd_steps]
    if not steps or any(s < 1 for s in steps):
        raise ValueError(f"pgd_steps must be positive integers, got {list(pgd_steps)}")
    thread_counts = [int(t) for t in threads]
    if not thread_counts or any(t < 1 for t in thread_counts):
        raise ValueError(f"threads must be positive integers, got {list(threads)}")
    return eps_values, sorted(set(steps)), sorted(set(thread_counts))


# --------------------------------------------------------------------------- evaluation


def evaluate_models(
    models: Mapping[str, str | os.PathLike],
    data_root: str | os.PathLike,
    eps_list: Iterable[float | str] = (1 / 255, 2 / 255, 4 / 255, 8 / 255),
    attack_frames: int = 256,
    pgd_steps: Iterable[int] = (10, 50),
    device: str = "auto",
    threads: Iterable[int] = (1, 2),
    latency_repeats: int = 300,
    latency_warmup: int = 30,
    throughput_batch: int = 256,
    throughput_repeats: int = 5,
    corruption_scenario: str = "highway-noisy",
    holdout_every: int = 5,
    batch_size: int = 256,
    attack_batch: int = 64,
    seed: int = 0,
    roles: Mapping[str, str] | None = None,
    targets: Targets = Targets(),
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model of `models` (name -> checkpoint path) on the held-out data of `data_root`.

    eps_list: ℓ∞ budgets in [0, 1] pixel units (numbers or "4/255"); pgd_steps: the PGD step counts;
    attack_frames: size of the fixed held-out subset the attacks, noise and corruptions run on;
    threads: CPU thread counts for the latency table (throughput uses the largest);
    roles: role -> model name for the ratios/targets (default: names that are roles, e.g.
    "teacher", "robust-student"); device: where the attacks run ("auto" = CUDA when present);
    speed is always measured on the CPU. Returns a JSON-serialisable dict (see write_report).
    """
    started = time.time()
    eps_values, steps_list, thread_counts = _validate(models, eps_list, attack_frames, pgd_steps, threads)
    role_names = _resolve_roles(models, roles)
    device = resolve_device(device)
    meta_machine = machine_info()

    from scenarios import load_scenario

    corruption_config = load_scenario(corruption_scenario).corruptions
    _, held_out = split_shards(data_root, holdout_every=holdout_every)
    data = FrameDataset(data_root, held_out)
    frames, targets_np, masks_np = data.frames, data.targets.astype(np.float32), data.masks.astype(np.float32)
    input_shape = tuple(int(n) for n in frames.shape[1:])  # (C, H, W)
    n_attack = min(int(attack_frames), len(frames))
    if n_attack < attack_frames:
        logger.warning("only %d held-out frames; attacking all of them instead of %d", len(frames), attack_frames)
    subset = np.sort(np.random.default_rng(seed).choice(len(frames), size=n_attack, replace=False))
    key_eps = min(eps_values, key=lambda eps: abs(eps - targets.key_eps))
    key_steps = targets.key_steps if targets.key_steps in steps_list else steps_list[0]

    logger.info("corrupting %d held-out observations with %s's sensor faults", len(frames), corruption_scenario)
    corrupted = corrupt_observations(frames, corruption_config, seed=seed)

    x_sub = _to_float(frames[subset], device)  # (n, C, H, W)
    t_sub = torch.from_numpy(targets_np[subset]).to(device)
    m_sub = torch.from_numpy(masks_np[subset]).to(device)
    noise_inputs = {}
    generator = torch.Generator().manual_seed(seed)
    for eps in eps_values:
        sign = torch.empty(x_sub.shape).uniform_(-1.0, 1.0, generator=generator).sign()  # on the CPU: same draws everywhere
        noise_inputs[eps_label(eps)] = (x_sub + eps * sign.to(device)).clamp(0.0, 1.0)

    # progress units: one per evaluation pass or speed measurement, `steps` per PGD-steps attack
    units_per_model = 3 + sum(steps_list) * len(eps_values) + 2 * len(thread_counts) + 2
    bar = tqdm(total=units_per_model * len(models), disable=not progress, desc="perception eval", unit="step")

    def step(description: str) -> None:
        bar.set_description(description)

    results_models: dict[str, Any] = {}
    with logging_redirect_tqdm(), bar:
        for name, path in models.items():
            model, metadata = load_model(path, device=device)
            if model.input_shape != input_shape:
                raise ValueError(
                    f"{name} ({path}) reads frames of shape {model.input_shape}, the dataset {data_root} holds "
                    f"{input_shape}; evaluate it on data recorded with the same camera"
                )
            model.eval()
            entry: dict[str, Any] = {
                "path": str(path),
                "arch": metadata["arch"],
                "arch_config": metadata["arch_config"].to_dict(),
                "train_config": metadata["extra"].get("train_config"),
                "params": count_params(model),
                "macs": count_flops(model, input_shape),
            }

            step(f"{name}: clean, all held-out")
            entry["clean_all"] = describe_errors(_predict(model, frames, device, batch_size), targets_np, masks_np)
            bar.update()
            step(f"{name}: corruptions, all held-out")
            corrupted_pred = _predict(model, corrupted, device, batch_size)
            entry["corrupted_all"] = describe_errors(corrupted_pred, targets_np, masks_np)
            bar.update()

            sub: dict[str, Any] = {"clean": _subset_error(model, x_sub, t_sub, m_sub, attack_batch)}
            sub["corruptions"] = float(
                describe_errors(corrupted_pred[subset], targets_np[subset], masks_np[subset])["label_error"]
            )
            sub["noise"] = {
                label: _subset_error(model, x, t_sub, m_sub, attack_batch) for label, x in noise_inputs.items()
            }
            bar.update()
            sub["pgd"] = {}
            for steps in steps_list:
                sub["pgd"][str(steps)] = {}
                for eps in eps_values:
                    label = eps_label(eps)
                    step(f"{name}: PGD-{steps} @ {label}")
                    alpha = 2.5 * eps / steps

                    def attack(xb, tb, mb, eps=eps, alpha=alpha, steps=steps):
                        return pgd(model, xb, tb, mb, eps=eps, alpha=alpha, steps=steps, random_start=True)

                    # the same random starts for every model, without touching the caller's RNG state
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        torch.manual_seed(seed)
                        sub["pgd"][str(steps)][label] = _subset_error(
                            model, x_sub, t_sub, m_sub, attack_batch, attack
                        )
                    bar.update(steps)  # progress in attack steps: PGD dominates the time
            entry["subset"] = sub
            entry["pgd_ratio"] = sub["pgd"][str(key_steps)][eps_label(key_eps)] / max(sub["clean"], 1e-12)

            step(f"{name}: CPU latency and throughput")
            cpu_model = model if device.type == "cpu" else load_model(path, device="cpu")[0]
            speed = _speed(
                cpu_model, input_shape, thread_counts, latency_repeats, latency_warmup, throughput_batch,
                throughput_repeats, seed, on_step=lambda what: bar.update(),
            )
            entry["speed"] = speed
            results_models[name] = entry
            logger.info(
                "%s: clean %.4f, PGD-%d @ %s %.4f, ORT p50 %.3f ms",
                name, entry["clean_all"]["label_error"], key_steps, eps_label(key_eps),
                sub["pgd"][str(key_steps)][eps_label(key_eps)], speed["latency"]["onnx"][str(thread_counts[0])]["p50_ms"],
            )

    results: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": round(time.time() - started, 1),
            "machine": meta_machine,
            "device": str(device),
            "data_root": str(data_root),
            "held_out_shards": [int(i) for i in held_out],
            "held_out_frames": int(len(frames)),
            "input_shape": list(input_shape),
            "attack_frames": int(n_attack),
            "attack_subset_seed": int(seed),
            "eps": [eps_label(eps) for eps in eps_values],
            "pgd_steps": steps_list,
            "pgd_alpha": "2.5 * eps / steps",
            "threads": thread_counts,
            "latency_repeats": int(latency_repeats),
            "latency_warmup": int(latency_warmup),
            "throughput_batch": int(throughput_batch),
            "throughput_threads": thread_counts[-1],
            "corruption_scenario": corruption_scenario,
            "corruptions": {
                key: float(getattr(corruption_config, key))
                for key in ("gaussian_noise_std", "blur_sigma_px", "brightness_shift", "frame_drop_prob")
            },
            "key_eps": eps_label(key_eps),
            "key_steps": int(key_steps),
            "roles": role_names,
            "targets": asdict(targets),
        },
        "models": results_models,
    }
    results["ratios"], results["targets"] = _ratios_and_targets(results, role_names, targets)
    return results


def _ratios_and_targets(results: dict, roles: Mapping[str, str], targets: Targets) -> tuple[dict, list[dict]]:
    models, meta = results["models"], results["meta"]
    one_thread = str(meta["threads"][0])
    many_threads = str(meta["threads"][-1])
    key = (str(meta["key_steps"]), meta["key_eps"])
    attack_name = f"PGD-{key[0]} @ {key[1]}"

    def get(role: str) -> dict | None:
        name = roles.get(role)
        return models.get(name) if name is not None else None

    teacher, robust_teacher = get("teacher"), get("robust_teacher")
    student = get("robust_student")
    ratios: dict[str, float] = {}

    def ort_p50(entry: dict, threads: str) -> float:
        return entry["speed"]["latency"]["onnx"][threads]["p50_ms"]

    for label, reference in (("teacher", teacher), ("robust_teacher", robust_teacher)):
        if reference is None or student is None:
            continue
        for threads in sorted({one_thread, many_threads}):
            ratios[f"ort_p50_speedup_{label}_over_robust_student_{threads}t"] = ort_p50(reference, threads) / ort_p50(
                student, threads
            )
        ratios[f"robust_student_clean_error_pct_of_{label}"] = 100.0 * (
            student["clean_all"]["label_error"] / max(reference["clean_all"]["label_error"], 1e-12)
        )
    for role in ROLES:
        entry = get(role)
        if entry is not None:
            ratios[f"{role}_pgd_ratio"] = entry["pgd_ratio"]

    checks: list[dict] = []

    def check(what: str, value: float | None, ok: bool | None, target: str, unit: str = "") -> None:
        status = "n/a" if ok is None else ("PASS" if ok else "MISS")
        checks.append({"what": what, "value": value, "unit": unit, "target": target, "status": status})

    # Speed is compared with the teacher architecture (both teachers share it); accuracy with the
    # teacher the student was distilled from, the robust one when it is there.
    reference_label = "teacher" if teacher is not None else "robust_teacher"
    speedup = ratios.get(f"ort_p50_speedup_{reference_label}_over_robust_student_{one_thread}t")
    check(
        f"ONNX Runtime p50 speed-up, {reference_label.replace('_', ' ')} / robust student (batch 1, {one_thread} thread)",
        speedup, None if speedup is None else speedup >= targets.min_speedup, f">= {targets.min_speedup:g}x", "x",
    )
    student_p50 = None if student is None else ort_p50(student, one_thread)
    check(
        f"robust student ONNX Runtime p50 (batch 1, {one_thread} thread, preprocessing included)",
        student_p50, None if student_p50 is None else student_p50 <= targets.max_student_p50_ms,
        f"<= {targets.max_student_p50_ms:g} ms", " ms",
    )
    source_label = "robust_teacher" if robust_teacher is not None else "teacher"
    error_pct = ratios.get(f"robust_student_clean_error_pct_of_{source_label}")
    check(
        f"robust student clean label error, % of the {source_label.replace('_', ' ')}'s (all held-out frames)",
        error_pct, None if error_pct is None else error_pct <= targets.max_student_error_pct,
        f"<= {targets.max_student_error_pct:g} %", " %",
    )
    robust_ratio = ratios.get("robust_student_pgd_ratio")
    check(
        f"robust student {attack_name} error / its clean error (attack subset)",
        robust_ratio, None if robust_ratio is None else robust_ratio <= targets.max_robust_pgd_ratio,
        f"<= {targets.max_robust_pgd_ratio:g}x", "x",
    )
    clean_ratio = ratios.get("clean_student_pgd_ratio")
    check(
        f"clean student {attack_name} error / its clean error",
        clean_ratio, None if clean_ratio is None else clean_ratio >= targets.min_clean_pgd_ratio,
        f">= {targets.min_clean_pgd_ratio:g}x", "x",
    )
    return ratios, checks


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _ms(entry: dict) -> str:
    return f"{entry['p50_ms']:.3f} / {entry['p95_ms']:.3f}"


def render_section(results: dict, command: str, json_name: str = "perception_eval.json") -> str:
    """The Markdown between the markers (markers excluded)."""
    meta, models = results["meta"], results["models"]
    machine = meta["machine"]
    eps_labels, steps_list = meta["eps"], meta["pgd_steps"]
    key_label, key_steps = meta["key_eps"], str(meta["key_steps"])
    lines = [
        "## Evaluation: accuracy, robustness, speed",
        "",
        "```",
        command,
        "```",
        "",
        f"Run on {meta['date']}, took {_duration(meta['seconds'])}. Machine: `nproc` = {machine['nproc']}, "
        f"CPU {machine['cpu']}, GPU {machine['gpu'] or 'none'}; Python {machine['python']}, torch {machine['torch']}, "
        f"onnxruntime {machine['onnxruntime']}; load average at start {machine['load_average_at_start']}. "
        f"Attacks ran on `{meta['device']}`; speed is always measured on the CPU.",
        "",
        f"Data: `{meta['data_root']}`, held-out shards {meta['held_out_shards']} (whole episodes no model trained on), "
        f"{meta['held_out_frames']} frames of shape {tuple(meta['input_shape'])}. Attacks, noise and corruptions run on "
        f"a fixed subset of {meta['attack_frames']} of them (seeded choice, seed {meta['attack_subset_seed']}; the same "
        f"frames and random draws for every model).",
        "",
        "### Targets",
        "",
    ]
    for item in results["targets"]:
        value = "not measured (model role missing)" if item["value"] is None else f"{item['value']:.3g}{item['unit']}"
        lines.append(f"- **{item['status']}** {item['what']}: {value} (target {item['target']})")
    lines += ["", "### Robustness", ""]
    lines.append(
        "Label error (masked mean absolute error of the normalised label vector; lower is better) on the attack subset. "
        f"PGD-k: ℓ∞, random start, step 2.5 ε / k, maximising the label loss. Noise: x + ε · sign(U[-1, 1]) at "
        f"ε = {key_label}. Corruptions: {meta['corruption_scenario']}'s sensor faults "
        + ", ".join(f"{k} = {v:g}" for k, v in meta["corruptions"].items())
        + f", per RGB frame. Ratio: PGD-{key_steps} @ {key_label} / clean."
    )
    lines.append("")
    header = ["model", "clean"]
    for steps in steps_list:
        header += [f"PGD-{steps} {label}" for label in eps_labels]
    header += [f"noise {key_label}", "corruptions", "ratio"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| --- |" + " ---: |" * (len(header) - 1))
    for name, entry in models.items():
        sub = entry["subset"]
        row = [name, _fmt(sub["clean"])]
        for steps in steps_list:
            row += [_fmt(sub["pgd"][str(steps)][label]) for label in eps_labels]
        row += [_fmt(sub["noise"][key_label]), _fmt(sub["corruptions"]), f"{entry['pgd_ratio']:.2f}x"]
        lines.append("| " + " | ".join(row) + " |")

    lines += ["", "### Accuracy breakdown (all held-out frames)", ""]
    lines.append(
        "From `perception.labels.describe_errors`: error rates at a 0.5 threshold (presence of the 8 nearest "
        "neighbours, lane occupancy), mean absolute errors in physical units over present neighbours; "
        "the last column is the label error on the same frames with the sensor corruptions."
    )
    lines.append("")
    header = [
        "model", "label error", "presence err %", "occupancy err %", "position MAE m", "velocity MAE m/s",
        "ego lane err %", "ego speed MAE m/s", "label error, corrupted",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| --- |" + " ---: |" * (len(header) - 1))
    for name, entry in models.items():
        clean = entry["clean_all"]
        lines.append(
            "| " + " | ".join([
                name, _fmt(clean["label_error"]), f"{100 * clean['presence_error_rate']:.2f}",
                f"{100 * clean['occupancy_error_rate']:.2f}", f"{clean['position_mae_m']:.2f}",
                f"{clean['velocity_mae_mps']:.2f}", f"{100 * clean['ego_lane_error_rate']:.2f}",
                f"{clean['ego_speed_mae_mps']:.2f}", _fmt(entry["corrupted_all"]["label_error"]),
            ]) + " |"
        )

    threads = [str(t) for t in meta["threads"]]
    lines += ["", "### Speed and size (CPU)", ""]
    lines.append(
        "Latency p50 / p95 in ms of one call at batch 1, preprocessing included (uint8 frames -> float / 255 -> model); "
        f"{meta['latency_repeats']} timed calls after {meta['latency_warmup']} warm-up calls. Eager PyTorch under "
        "`torch.inference_mode`; ONNX Runtime with intra-op threads as listed, 1 inter-op thread, sequential. "
        f"Throughput in frames/s at batch {meta['throughput_batch']} with {meta['throughput_threads']} thread(s). "
        "MMACs: multiply-accumulates of conv and linear layers per frame."
    )
    lines.append("")
    header = ["model", "params", "MMACs"]
    header += [f"torch {t}T p50/p95" for t in threads] + [f"ORT {t}T p50/p95" for t in threads]
    header += ["ORT frames/s", "torch frames/s"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| --- |" + " ---: |" * (len(header) - 1))
    for name, entry in models.items():
        latency = entry["speed"]["latency"]
        row = [name, f"{entry['params']:,}", f"{entry['macs'] / 1e6:.2f}"]
        row += [_ms(latency["torch"][t]) for t in threads] + [_ms(latency["onnx"][t]) for t in threads]
        row += [f"{entry['speed']['throughput']['onnx']:,.0f}", f"{entry['speed']['throughput']['torch']:,.0f}"]
        lines.append("| " + " | ".join(row) + " |")

    if results["ratios"]:
        lines += ["", "### Key ratios", ""]
        for key, value in results["ratios"].items():
            lines.append(f"- `{key}`: {value:.3g}")
    lines += ["", f"Raw numbers: `{json_name}`."]
    return "\n".join(lines)


def write_report(
    results: dict,
    path: str | os.PathLike = "docs/PERCEPTION.md",
    command: str = "",
    json_path: str | os.PathLike | None = None,
) -> Path:
    """Write the evaluation section between the markers of `path` (created with a title if missing;
    text outside the markers is kept) and the raw results as JSON (default: perception_eval.json next to it)."""
    from envs.files import atomic_write

    path = Path(path)
    json_path = Path(json_path) if json_path is not None else path.with_name("perception_eval.json")
    try:
        json_name = os.path.relpath(json_path, path.parent)
    except ValueError:  # another drive (Windows)
        json_name = str(json_path)
    section = f"{START_MARKER}\n{render_section(results, command, json_name)}\n{END_MARKER}"
    if path.exists():
        text = path.read_text()
        start, end = text.find(START_MARKER), text.find(END_MARKER)
        if start >= 0 and end > start:
            text = text[:start] + section + text[end + len(END_MARKER) :]
        elif start >= 0 or end >= 0:
            raise ValueError(
                f"{path} has only one of the markers {START_MARKER} / {END_MARKER} (or them out of order); "
                f"fix the file so that the evaluation section can be replaced"
            )
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = f"{REPORT_TITLE}\n\n{section}\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    payload = dict(results, command=command)
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2) + "\n"))
    return path
