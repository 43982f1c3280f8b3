"""Report a perception evaluation: key ratios, the target checklist, Markdown, the JSON file.

    run = evaluate_models(...)                                   # perception.evaluate
    write_report(run, "docs/PERCEPTION.md", command="python run.py perception eval ...")
    for check in check_targets(run): print(check.status, check.what)

`write_report` writes the results as Markdown tables between `<!-- eval:start -->` and
`<!-- eval:end -->` in docs/PERCEPTION.md (everything outside the markers is kept) and the raw
results as JSON next to it (`results_json`: the run, its ratios and checks, the command).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from perception.results import EvaluationRun, Latency, eps_label

START_MARKER = "<!-- eval:start -->"
END_MARKER = "<!-- eval:end -->"
REPORT_TITLE = "# Perception"


# --------------------------------------------------------------------------- ratios and targets


@dataclass(frozen=True)
class Speedup:
    """ONNX Runtime p50 at batch 1 of a reference model / the robust student's."""

    one_thread: float  # at Ratios.one_thread threads
    many_threads: float  # at Ratios.many_threads threads (the same number when only one count was measured)


@dataclass(frozen=True)
class Ratios:
    """The key ratios of a run; None where a role they need was not evaluated.

    Speed-ups and error percentages compare the robust student with each teacher; the PGD ratios
    are each role's key-attack error / its clean error on the attack subset.
    """

    one_thread: int  # the fewest threads measured
    many_threads: int  # the most threads measured
    teacher_speedup: Speedup | None = None
    robust_teacher_speedup: Speedup | None = None
    student_error_pct_of_teacher: float | None = None  # robust student's clean label error, % of the teacher's
    student_error_pct_of_robust_teacher: float | None = None
    teacher_pgd_ratio: float | None = None
    robust_teacher_pgd_ratio: float | None = None
    robust_student_pgd_ratio: float | None = None
    clean_student_pgd_ratio: float | None = None

    def to_json(self) -> dict[str, float]:
        """The ratios under the names of the file and the report (measured ones only)."""
        out: dict[str, float] = {}
        for label, speedup, error_pct in (
            ("teacher", self.teacher_speedup, self.student_error_pct_of_teacher),
            ("robust_teacher", self.robust_teacher_speedup, self.student_error_pct_of_robust_teacher),
        ):
            if speedup is None or error_pct is None:
                continue
            by_threads = {self.one_thread: speedup.one_thread, self.many_threads: speedup.many_threads}
            for threads in sorted(by_threads, key=str):  # in text order ("16" before "2"), as the file always had
                out[f"ort_p50_speedup_{label}_over_robust_student_{threads}t"] = by_threads[threads]
            out[f"robust_student_clean_error_pct_of_{label}"] = error_pct
        for role, value in (
            ("teacher", self.teacher_pgd_ratio),
            ("robust_teacher", self.robust_teacher_pgd_ratio),
            ("robust_student", self.robust_student_pgd_ratio),
            ("clean_student", self.clean_student_pgd_ratio),
        ):
            if value is not None:
                out[f"{role}_pgd_ratio"] = value
        return out


@dataclass(frozen=True)
class Check:
    """One line of the target checklist."""

    what: str
    value: float | None  # None: a role it needs was not evaluated
    unit: str  # appended to the value: "x", " ms", " %"
    target: str  # ">= 20x"
    status: str  # "PASS" | "MISS" | "n/a"


def _ort_p50(run: EvaluationRun, role: str, threads: int) -> float:
    return run.role(role).speed.latency["onnx", threads].p50_ms  # type: ignore[union-attr]


def key_ratios(run: EvaluationRun) -> Ratios:
    """Speed-ups and clean-error percentages of the robust student against each teacher, PGD ratios per role."""
    one, many = run.meta.threads[0], run.meta.threads[-1]
    student = run.role("robust_student")
    compared: dict[str, Any] = {}
    for role in ("teacher", "robust_teacher"):
        reference = run.role(role)
        if reference is None or student is None:
            continue
        compared[f"{role}_speedup"] = Speedup(
            one_thread=_ort_p50(run, role, one) / _ort_p50(run, "robust_student", one),
            many_threads=_ort_p50(run, role, many) / _ort_p50(run, "robust_student", many),
        )
        compared[f"student_error_pct_of_{role}"] = 100.0 * (
            student.clean_all.label_error / max(reference.clean_all.label_error, 1e-12)
        )
    pgd_ratios = {f"{role}_pgd_ratio": entry.pgd_ratio for role in
                  ("teacher", "robust_teacher", "robust_student", "clean_student")
                  if (entry := run.role(role)) is not None}
    return Ratios(one_thread=one, many_threads=many, **compared, **pgd_ratios)


def check_targets(run: EvaluationRun, ratios: Ratios | None = None) -> tuple[Check, ...]:
    """The checklist against `run.meta.targets`: speed-up, student latency, student error, both PGD ratios."""
    ratios = key_ratios(run) if ratios is None else ratios
    targets, one_thread = run.meta.targets, run.meta.threads[0]
    attack_name = run.meta.key_attack.name
    checks: list[Check] = []

    def check(what: str, value: float | None, passed, target: str, unit: str) -> None:
        status = "n/a" if value is None else ("PASS" if passed(value) else "MISS")
        checks.append(Check(what=what, value=value, unit=unit, target=target, status=status))

    # Speed is compared with the teacher architecture (both teachers share it); accuracy with the
    # teacher the student was distilled from, the robust one when it is there.
    has_teacher = run.role("teacher") is not None
    speedup = ratios.teacher_speedup if has_teacher else ratios.robust_teacher_speedup
    check(
        f"ONNX Runtime p50 speed-up, {'teacher' if has_teacher else 'robust teacher'} / robust student "
        f"(batch 1, {one_thread} thread)",
        None if speedup is None else speedup.one_thread, lambda v: v >= targets.min_speedup,
        f">= {targets.min_speedup:g}x", "x",
    )
    student_p50 = None if run.role("robust_student") is None else _ort_p50(run, "robust_student", one_thread)
    check(
        f"robust student ONNX Runtime p50 (batch 1, {one_thread} thread, preprocessing included)",
        student_p50, lambda v: v <= targets.max_student_p50_ms, f"<= {targets.max_student_p50_ms:g} ms", " ms",
    )
    has_robust_teacher = run.role("robust_teacher") is not None
    error_pct = ratios.student_error_pct_of_robust_teacher if has_robust_teacher else ratios.student_error_pct_of_teacher
    check(
        f"robust student clean label error, % of the {'robust teacher' if has_robust_teacher else 'teacher'}'s "
        "(all held-out frames)",
        error_pct, lambda v: v <= targets.max_student_error_pct, f"<= {targets.max_student_error_pct:g} %", " %",
    )
    check(
        f"robust student {attack_name} error / its clean error (attack subset)",
        ratios.robust_student_pgd_ratio, lambda v: v <= targets.max_robust_pgd_ratio,
        f"<= {targets.max_robust_pgd_ratio:g}x", "x",
    )
    check(
        f"clean student {attack_name} error / its clean error",
        ratios.clean_student_pgd_ratio, lambda v: v >= targets.min_clean_pgd_ratio,
        f">= {targets.min_clean_pgd_ratio:g}x", "x",
    )
    return tuple(checks)


# --------------------------------------------------------------------------- Markdown


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _ms(latency: Latency) -> str:
    return f"{latency.p50_ms:.3f} / {latency.p95_ms:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_section(run: EvaluationRun, command: str, json_name: str = "perception_eval.json") -> str:
    """The Markdown between the markers (markers excluded)."""
    meta, machine = run.meta, run.meta.machine
    key_label, key_steps = eps_label(meta.key_attack.eps), meta.key_attack.steps
    load = None if machine.load_average_at_start is None else list(machine.load_average_at_start)
    ratios = key_ratios(run)
    lines = [
        "## Evaluation: accuracy, robustness, speed",
        "",
        "```",
        command,
        "```",
        "",
        f"Run on {meta.date}, took {_duration(meta.seconds)}. Machine: `nproc` = {machine.nproc}, "
        f"CPU {machine.cpu}, GPU {machine.gpu or 'none'}; Python {machine.python}, torch {machine.torch}, "
        f"onnxruntime {machine.onnxruntime}; load average at start {load}. "
        f"Attacks ran on `{meta.device}`; speed is always measured on the CPU.",
        "",
        f"Data: `{meta.data_root}`, held-out shards {list(meta.held_out_shards)} (whole episodes no model trained on), "
        f"{meta.held_out_frames} frames of shape {tuple(meta.input_shape)}. Attacks, noise and corruptions run on "
        f"a fixed subset of {meta.attack_frames} of them (seeded choice, seed {meta.attack_subset_seed}; the same "
        f"frames and random draws for every model).",
        "",
        "### Targets",
        "",
    ]
    for item in check_targets(run, ratios):
        value = "not measured (model role missing)" if item.value is None else f"{item.value:.3g}{item.unit}"
        lines.append(f"- **{item.status}** {item.what}: {value} (target {item.target})")
    lines += ["", "### Robustness", ""]
    lines.append(
        "Label error (masked mean absolute error of the normalised label vector; lower is better) on the attack subset. "
        f"PGD-k: ℓ∞, random start, step 2.5 ε / k, maximising the label loss. Noise: x + ε · sign(U[-1, 1]) at "
        f"ε = {key_label}. Corruptions: {meta.corruption_scenario}'s sensor faults "
        + ", ".join(f"{k} = {v:g}" for k, v in meta.corruptions.items())
        + f", per RGB frame. Ratio: PGD-{key_steps} @ {key_label} / clean."
    )
    lines.append("")
    attacks = meta.attacks
    header = ["model", "clean"] + [f"PGD-{attack.steps} {eps_label(attack.eps)}" for attack in attacks]
    header += [f"noise {key_label}", "corruptions", "ratio"]
    lines += _table(header, [
        [name, _fmt(entry.subset.clean)] + [_fmt(entry.subset.pgd[attack]) for attack in attacks]
        + [_fmt(entry.subset.noise[meta.key_attack.eps]), _fmt(entry.subset.corruptions), f"{entry.pgd_ratio:.2f}x"]
        for name, entry in run.models.items()
    ])

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
    lines += _table(header, [
        [
            name, _fmt(entry.clean_all.label_error), f"{100 * entry.clean_all.presence_error_rate:.2f}",
            f"{100 * entry.clean_all.occupancy_error_rate:.2f}", f"{entry.clean_all.position_mae_m:.2f}",
            f"{entry.clean_all.velocity_mae_mps:.2f}", f"{100 * entry.clean_all.ego_lane_error_rate:.2f}",
            f"{entry.clean_all.ego_speed_mae_mps:.2f}", _fmt(entry.corrupted_all.label_error),
        ]
        for name, entry in run.models.items()
    ])

    lines += ["", "### Speed and size (CPU)", ""]
    lines.append(
        "Latency p50 / p95 in ms of one call at batch 1, preprocessing included (uint8 frames -> float / 255 -> model); "
        f"{meta.latency_repeats} timed calls after {meta.latency_warmup} warm-up calls. Eager PyTorch under "
        "`torch.inference_mode`; ONNX Runtime with intra-op threads as listed, 1 inter-op thread, sequential. "
        f"Throughput in frames/s at batch {meta.throughput_batch} with {meta.throughput_threads} thread(s). "
        "MMACs: multiply-accumulates of conv and linear layers per frame."
    )
    lines.append("")
    header = ["model", "params", "MMACs"]
    header += [f"torch {t}T p50/p95" for t in meta.threads] + [f"ORT {t}T p50/p95" for t in meta.threads]
    header += ["ORT frames/s", "torch frames/s"]
    lines += _table(header, [
        [name, f"{entry.params:,}", f"{entry.macs / 1e6:.2f}"]
        + [_ms(entry.speed.latency[backend, t]) for backend in ("torch", "onnx") for t in meta.threads]
        + [f"{entry.speed.throughput['onnx']:,.0f}", f"{entry.speed.throughput['torch']:,.0f}"]
        for name, entry in run.models.items()
    ])

    named = ratios.to_json()
    if named:
        lines += ["", "### Key ratios", ""]
        lines += [f"- `{key}`: {value:.3g}" for key, value in named.items()]
    lines += ["", f"Raw numbers: `{json_name}`."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def results_json(run: EvaluationRun, command: str = "") -> dict[str, Any]:
    """The JSON file's content: the run, its key ratios and target checks, and the command that made it."""
    ratios = key_ratios(run)
    return {
        **run.to_json(),
        "ratios": ratios.to_json(),
        "targets": [asdict(check) for check in check_targets(run, ratios)],
        "command": command,
    }


def write_report(
    run: EvaluationRun,
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
    section = f"{START_MARKER}\n{render_section(run, command, json_name)}\n{END_MARKER}"
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
    payload = results_json(run, command)
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2) + "\n"))
    return path
