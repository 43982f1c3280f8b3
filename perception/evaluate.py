"""Measure perception models side by side: accuracy, robustness, speed and size.

    run = evaluate_models({"teacher": "runs/perception/teacher.safetensors", ...}, "data/perception/highway-mix")
    write_report(run, "docs/PERCEPTION.md", command="python run.py perception eval ...")  # perception.report

`evaluate_models` returns a `perception.results.EvaluationRun` (frozen dataclasses); the ratios,
the target checks and the Markdown report are `perception.report`'s.

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
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from envs.progress import progress_bar
from envs.system import resolve_device, usable_cores
from perception.attacks import parse_eps, pgd
from perception.checkpoint import load_model
from perception.dataset import FrameDataset, split_shards
from perception.labels import describe_errors
from perception.latency import measure_latency, measure_throughput
from perception.models import PerceptionNet, count_flops, count_params, export_onnx
from perception.results import (
    ROLES, Attack, EvaluationRun, LabelErrors, Latency, Machine, ModelResults, RunInfo, Speed, SubsetErrors, Targets,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def machine_info() -> Machine:
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
        load = tuple(round(value, 2) for value in os.getloadavg())
    except (AttributeError, OSError):
        load = None
    return Machine(
        nproc=nproc,
        cpu=cpu,
        python=platform.python_version(),
        torch=torch.__version__,
        onnxruntime=ort_version,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        load_average_at_start=load,
    )


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
) -> Speed:
    """Latency at batch 1 for each thread count and backend, throughput at `throughput_batch` with the
    most threads; one ONNX export shared by all ORT measurements. on_step(what) is called after each."""
    latency: dict[tuple[str, int], Latency] = {}
    throughput: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="clearlane-eval-") as folder:
        onnx_path = Path(folder) / "model.onnx"
        export_onnx(model, str(onnx_path))
        for backend in ("torch", "onnx"):
            for count in thread_counts:
                latency[backend, count] = Latency(**measure_latency(
                    model, input_shape, threads=count, backend=backend, batch=1,
                    repeats=latency_repeats, warmup=latency_warmup, onnx_path=onnx_path, seed=seed,
                ))
                on_step(f"latency {backend} {count} thread(s)")
        for backend in ("onnx", "torch"):
            throughput[backend] = measure_throughput(
                model, input_shape, batch=throughput_batch, backend=backend, threads=thread_counts[-1],
                repeats=throughput_repeats, warmup=1, onnx_path=onnx_path, seed=seed,
            )
            on_step(f"throughput {backend} batch {throughput_batch}")
    return Speed(latency=latency, throughput=throughput)


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
) -> EvaluationRun:
    """Evaluate every model of `models` (name -> checkpoint path) on the held-out data of `data_root`.

    eps_list: ℓ∞ budgets in [0, 1] pixel units (numbers or "4/255"); pgd_steps: the PGD step counts;
    attack_frames: size of the fixed held-out subset the attacks, noise and corruptions run on;
    threads: CPU thread counts for the latency table (throughput uses the largest);
    roles: role -> model name for the ratios/targets (default: names that are roles, e.g.
    "teacher", "robust-student"); device: where the attacks run ("auto" = CUDA when present);
    speed is always measured on the CPU. Returns the typed results (see perception.report.write_report).
    """
    started = time.time()
    eps_values, steps_list, thread_counts = _validate(models, eps_list, attack_frames, pgd_steps, threads)
    role_names = _resolve_roles(models, roles)
    device = resolve_device(device)
    machine = machine_info()

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
    key_attack = Attack(
        steps=targets.key_steps if targets.key_steps in steps_list else steps_list[0],
        eps=min(eps_values, key=lambda eps: abs(eps - targets.key_eps)),
    )
    attacks = [Attack(steps, eps) for steps in steps_list for eps in eps_values]

    logger.info("corrupting %d held-out observations with %s's sensor faults", len(frames), corruption_scenario)
    corrupted = corrupt_observations(frames, corruption_config, seed=seed)

    x_sub = _to_float(frames[subset], device)  # (n, C, H, W)
    t_sub = torch.from_numpy(targets_np[subset]).to(device)
    m_sub = torch.from_numpy(masks_np[subset]).to(device)
    noise_inputs: dict[float, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    for eps in eps_values:
        sign = torch.empty(x_sub.shape).uniform_(-1.0, 1.0, generator=generator).sign()  # on the CPU: same draws everywhere
        noise_inputs[eps] = (x_sub + eps * sign.to(device)).clamp(0.0, 1.0)

    # progress units: one per evaluation pass or speed measurement, `steps` per PGD-steps attack
    units_per_model = 3 + sum(steps_list) * len(eps_values) + 2 * len(thread_counts) + 2
    results: dict[str, ModelResults] = {}
    with progress_bar(units_per_model * len(models), "perception eval", unit="steps", disable=not progress) as bar:
        for name, path in models.items():
            model, metadata = load_model(path, device=device)
            if model.input_shape != input_shape:
                raise ValueError(
                    f"{name} ({path}) reads frames of shape {model.input_shape}, the dataset {data_root} holds "
                    f"{input_shape}; evaluate it on data recorded with the same camera"
                )
            model.eval()

            bar.describe(f"{name}: clean and corrupted")
            clean_all = LabelErrors(**describe_errors(_predict(model, frames, device, batch_size), targets_np, masks_np))
            bar.advance()
            corrupted_pred = _predict(model, corrupted, device, batch_size)
            corrupted_all = LabelErrors(**describe_errors(corrupted_pred, targets_np, masks_np))
            bar.advance()

            clean = _subset_error(model, x_sub, t_sub, m_sub, attack_batch)
            corruptions = float(
                describe_errors(corrupted_pred[subset], targets_np[subset], masks_np[subset])["label_error"]
            )
            noise = {eps: _subset_error(model, x, t_sub, m_sub, attack_batch) for eps, x in noise_inputs.items()}
            bar.advance()
            pgd_errors: dict[Attack, float] = {}
            for attack in attacks:
                bar.describe(f"{name}: {attack.name}")

                def perturb(xb, tb, mb, attack=attack):
                    return pgd(
                        model, xb, tb, mb, eps=attack.eps, alpha=2.5 * attack.eps / attack.steps, steps=attack.steps,
                        random_start=True,
                    )

                # the same random starts for every model, without touching the caller's RNG state
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    pgd_errors[attack] = _subset_error(model, x_sub, t_sub, m_sub, attack_batch, perturb)
                bar.advance(attack.steps)  # progress in attack steps: PGD dominates the time

            bar.describe(f"{name}: CPU latency")
            cpu_model = model if device.type == "cpu" else load_model(path, device="cpu")[0]
            speed = _speed(
                cpu_model, input_shape, thread_counts, latency_repeats, latency_warmup, throughput_batch,
                throughput_repeats, seed, on_step=lambda what: bar.advance(),
            )
            results[name] = ModelResults(
                path=str(path),
                arch=metadata["arch"],
                arch_config=metadata["arch_config"].to_dict(),
                train_config=metadata["extra"].get("train_config"),
                params=count_params(model),
                macs=count_flops(model, input_shape),
                clean_all=clean_all,
                corrupted_all=corrupted_all,
                subset=SubsetErrors(clean=clean, corruptions=corruptions, noise=noise, pgd=pgd_errors),
                pgd_ratio=pgd_errors[key_attack] / max(clean, 1e-12),
                speed=speed,
            )
            logger.info(
                "%s: clean %.4f, %s %.4f, ORT p50 %.3f ms",
                name, clean_all.label_error, key_attack.name, pgd_errors[key_attack],
                speed.latency["onnx", thread_counts[0]].p50_ms,
            )

    meta = RunInfo(
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        seconds=round(time.time() - started, 1),
        machine=machine,
        device=str(device),
        data_root=str(data_root),
        held_out_shards=tuple(int(i) for i in held_out),
        held_out_frames=int(len(frames)),
        input_shape=input_shape,
        attack_frames=int(n_attack),
        attack_subset_seed=int(seed),
        eps=tuple(eps_values),
        pgd_steps=tuple(steps_list),
        threads=tuple(thread_counts),
        latency_repeats=int(latency_repeats),
        latency_warmup=int(latency_warmup),
        throughput_batch=int(throughput_batch),
        throughput_threads=thread_counts[-1],
        corruption_scenario=corruption_scenario,
        corruptions={
            key: float(getattr(corruption_config, key))
            for key in ("gaussian_noise_std", "blur_sigma_px", "brightness_shift", "frame_drop_prob")
        },
        key_attack=key_attack,
        roles=role_names,
        targets=targets,
    )
    return EvaluationRun(meta=meta, models=results)
