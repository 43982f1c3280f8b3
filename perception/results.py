"""Typed results of `run.py perception eval`, and their JSON form (docs/perception_eval.json).

    run = evaluate_models({...}, "data/perception/highway-mix")    # perception.evaluate: measures
    write_report(run, "docs/PERCEPTION.md", command=...)          # perception.report: ratios, targets, Markdown
    run = read_results("docs/perception_eval.json")               # back from the file

Everything is a frozen dataclass; attacks are keyed by `Attack(steps, eps)` and budgets by their
float value. Only `to_json` / `from_json` know the file's shape, which is the one the shipped file
has always had: step counts and budgets as text keys ("10", "4/255"), the report's ratios and
target checks next to "meta" and "models" (written by `perception.report`; derived, so
`from_json` does not read them back).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from perception.attacks import parse_eps

# The roles the key ratios and targets are about; a model's name maps to a role when it matches
# one of these after lower-casing and turning "-" and spaces into "_" (or pass `roles`).
ROLES = ("teacher", "robust_teacher", "robust_student", "clean_student")
PGD_ALPHA = "2.5 * eps / steps"  # the PGD step size of every attack


def eps_label(eps: float) -> str:
    """4/255 for budgets that are whole pixel levels, else the number."""
    levels = eps * 255.0
    if abs(levels - round(levels)) < 1e-6:
        return f"{int(round(levels))}/255"
    return f"{eps:.4g}"


def _check_keys(cls, data: Mapping[str, Any], where: str, ignore: tuple[str, ...] = ()) -> None:
    """Refuse a JSON object whose keys are not exactly the dataclass' fields (plus `ignore`)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    names = {field.name for field in fields(cls)}
    missing, unknown = sorted(names - set(data)), sorted(set(data) - names - set(ignore))
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown} (expected {sorted(names)})")


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


@dataclass(frozen=True, order=True)
class Attack:
    """ℓ∞ PGD with `steps` steps at budget `eps` [0, 1 pixel units], random start, step 2.5 * eps / steps."""

    steps: int
    eps: float

    @property
    def name(self) -> str:
        return f"PGD-{self.steps} @ {eps_label(self.eps)}"


@dataclass(frozen=True)
class LabelErrors:
    """`perception.labels.describe_errors` over a set of frames: the label error and its physical breakdown."""

    label_error: float  # masked MAE of the normalised label vector
    presence_error_rate: float  # [0, 1]
    occupancy_error_rate: float  # [0, 1]
    position_mae_m: float  # [m]
    velocity_mae_mps: float  # [m/s]
    ego_lane_error_rate: float  # [0, 1]
    ego_speed_mae_mps: float  # [m/s]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "errors") -> LabelErrors:
        _check_keys(cls, data, where)
        return cls(**{key: float(value) for key, value in data.items()})


@dataclass(frozen=True)
class SubsetErrors:
    """Label errors on the fixed attack subset: clean, under sensor corruptions, sign noise and PGD."""

    clean: float
    corruptions: float
    noise: Mapping[float, float]  # eps -> error under x + eps * sign(U[-1, 1])
    pgd: Mapping[Attack, float]  # attack -> error

    def to_json(self) -> dict[str, Any]:
        pgd: dict[str, dict[str, float]] = {}
        for attack, error in self.pgd.items():
            pgd.setdefault(str(attack.steps), {})[eps_label(attack.eps)] = error
        noise = {eps_label(eps): error for eps, error in self.noise.items()}
        return {"clean": self.clean, "corruptions": self.corruptions, "noise": noise, "pgd": pgd}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "subset") -> SubsetErrors:
        _check_keys(cls, data, where)
        pgd = {
            Attack(int(steps), parse_eps(label)): float(error)
            for steps, by_eps in data["pgd"].items()
            for label, error in by_eps.items()
        }
        noise = {parse_eps(label): float(error) for label, error in data["noise"].items()}
        return cls(clean=float(data["clean"]), corruptions=float(data["corruptions"]), noise=noise, pgd=pgd)


@dataclass(frozen=True)
class Latency:
    """`perception.latency.measure_latency`: one call at `batch`, preprocessing included [ms]."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    backend: str  # "torch" | "onnx"
    threads: int
    batch: int
    repeats: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "latency") -> Latency:
        _check_keys(cls, data, where)
        return cls(**data)


@dataclass(frozen=True)
class Speed:
    """CPU speed: latency per (backend, threads) at batch 1, throughput per backend [frames/s]."""

    latency: Mapping[tuple[str, int], Latency]
    throughput: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        latency: dict[str, dict[str, Any]] = {"torch": {}, "onnx": {}}
        for (backend, threads), measured in self.latency.items():
            latency.setdefault(backend, {})[str(threads)] = asdict(measured)
        return {"latency": latency, "throughput": dict(self.throughput)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "speed") -> Speed:
        _check_keys(cls, data, where)
        latency = {
            (backend, int(threads)): Latency.from_json(measured, f"{where}.latency.{backend}.{threads}")
            for backend, by_threads in data["latency"].items()
            for threads, measured in by_threads.items()
        }
        return cls(latency=latency, throughput={key: float(value) for key, value in data["throughput"].items()})


@dataclass(frozen=True)
class ModelResults:
    """Everything measured for one model."""

    path: str
    arch: str
    arch_config: Mapping[str, Any]
    train_config: Mapping[str, Any] | None  # from the checkpoint's metadata, when it has one
    params: int
    macs: int  # multiply-accumulates per frame
    clean_all: LabelErrors  # all held-out frames
    corrupted_all: LabelErrors  # all held-out frames, with the sensor corruptions
    subset: SubsetErrors  # the attack subset
    pgd_ratio: float  # the key attack's error / the clean error, both on the attack subset
    speed: Speed

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "arch": self.arch, "arch_config": self.arch_config, "train_config": self.train_config,
            "params": self.params, "macs": self.macs,
            "clean_all": asdict(self.clean_all), "corrupted_all": asdict(self.corrupted_all),
            "subset": self.subset.to_json(), "pgd_ratio": self.pgd_ratio, "speed": self.speed.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "model") -> ModelResults:
        _check_keys(cls, data, where)
        return cls(
            path=data["path"], arch=data["arch"], arch_config=data["arch_config"], train_config=data["train_config"],
            params=int(data["params"]), macs=int(data["macs"]),
            clean_all=LabelErrors.from_json(data["clean_all"], f"{where}.clean_all"),
            corrupted_all=LabelErrors.from_json(data["corrupted_all"], f"{where}.corrupted_all"),
            subset=SubsetErrors.from_json(data["subset"], f"{where}.subset"),
            pgd_ratio=float(data["pgd_ratio"]),
            speed=Speed.from_json(data["speed"], f"{where}.speed"),
        )


@dataclass(frozen=True)
class Machine:
    """What the speed numbers depend on."""

    nproc: int
    cpu: str
    python: str
    torch: str
    onnxruntime: str | None
    gpu: str | None
    load_average_at_start: tuple[float, ...] | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.load_average_at_start is not None:
            data["load_average_at_start"] = list(self.load_average_at_start)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "meta.machine") -> Machine:
        _check_keys(cls, data, where)
        load = data["load_average_at_start"]
        return cls(**dict(data, load_average_at_start=None if load is None else tuple(load)))


@dataclass(frozen=True)
class RunInfo:
    """How, where and on what the models were evaluated (the file's "meta")."""

    date: str  # "2026-11-22 17:52 UTC"
    seconds: float  # the whole evaluation
    machine: Machine
    device: str  # where the attacks ran
    data_root: str
    held_out_shards: tuple[int, ...]
    held_out_frames: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    attack_frames: int  # size of the attack subset
    attack_subset_seed: int
    eps: tuple[float, ...]  # PGD and noise budgets, ascending
    pgd_steps: tuple[int, ...]  # ascending
    threads: tuple[int, ...]  # CPU thread counts of the latency table, ascending
    latency_repeats: int
    latency_warmup: int
    throughput_batch: int
    throughput_threads: int
    corruption_scenario: str
    corruptions: Mapping[str, float]  # the scenario's CorruptionConfig values
    key_attack: Attack  # the attack the ratios quote; its eps is also the noise column's
    roles: Mapping[str, str]  # role -> model name
    targets: Targets

    @property
    def attacks(self) -> list[Attack]:
        """Every PGD attack that was run, by steps then eps."""
        return [Attack(steps, eps) for steps in self.pgd_steps for eps in self.eps]

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date, "seconds": self.seconds, "machine": self.machine.to_json(), "device": self.device,
            "data_root": self.data_root, "held_out_shards": list(self.held_out_shards),
            "held_out_frames": self.held_out_frames, "input_shape": list(self.input_shape),
            "attack_frames": self.attack_frames, "attack_subset_seed": self.attack_subset_seed,
            "eps": [eps_label(eps) for eps in self.eps], "pgd_steps": list(self.pgd_steps), "pgd_alpha": PGD_ALPHA,
            "threads": list(self.threads), "latency_repeats": self.latency_repeats,
            "latency_warmup": self.latency_warmup, "throughput_batch": self.throughput_batch,
            "throughput_threads": self.throughput_threads, "corruption_scenario": self.corruption_scenario,
            "corruptions": dict(self.corruptions), "key_eps": eps_label(self.key_attack.eps),
            "key_steps": self.key_attack.steps, "roles": dict(self.roles), "targets": asdict(self.targets),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "meta") -> RunInfo:
        names = {field.name for field in fields(cls)} - {"key_attack"} | {"key_eps", "key_steps", "pgd_alpha"}
        missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown} (expected {sorted(names)})")
        _check_keys(Targets, data["targets"], f"{where}.targets")
        return cls(
            date=data["date"], seconds=float(data["seconds"]), machine=Machine.from_json(data["machine"]),
            device=data["device"], data_root=data["data_root"],
            held_out_shards=tuple(int(i) for i in data["held_out_shards"]),
            held_out_frames=int(data["held_out_frames"]), input_shape=tuple(int(n) for n in data["input_shape"]),
            attack_frames=int(data["attack_frames"]), attack_subset_seed=int(data["attack_subset_seed"]),
            eps=tuple(parse_eps(label) for label in data["eps"]), pgd_steps=tuple(int(s) for s in data["pgd_steps"]),
            threads=tuple(int(t) for t in data["threads"]), latency_repeats=int(data["latency_repeats"]),
            latency_warmup=int(data["latency_warmup"]), throughput_batch=int(data["throughput_batch"]),
            throughput_threads=int(data["throughput_threads"]), corruption_scenario=data["corruption_scenario"],
            corruptions={key: float(value) for key, value in data["corruptions"].items()},
            key_attack=Attack(int(data["key_steps"]), parse_eps(data["key_eps"])),
            roles=dict(data["roles"]), targets=Targets(**data["targets"]),
        )


@dataclass(frozen=True)
class EvaluationRun:
    """One `perception eval`: the settings and machine, and every model's results (in the order evaluated)."""

    meta: RunInfo
    models: Mapping[str, ModelResults]

    def role(self, role: str) -> ModelResults | None:
        """The results of the model playing `role` (one of ROLES), if one does."""
        name = self.meta.roles.get(role)
        return self.models.get(name) if name is not None else None

    def to_json(self) -> dict[str, Any]:
        """The file's "meta" and "models" (`perception.report.results_json` adds ratios, targets, command)."""
        return {"meta": self.meta.to_json(), "models": {name: entry.to_json() for name, entry in self.models.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationRun:
        """From the file's content; its derived "ratios", "targets" and "command" are not read."""
        _check_keys(cls, data, "evaluation results", ignore=("ratios", "targets", "command"))
        models = {name: ModelResults.from_json(entry, f"models.{name}") for name, entry in data["models"].items()}
        return cls(meta=RunInfo.from_json(data["meta"]), models=models)


def read_results(path: str | os.PathLike) -> EvaluationRun:
    """An evaluation written by `perception.report.write_report` (e.g. docs/perception_eval.json)."""
    path = Path(path)
    try:
        return EvaluationRun.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a perception evaluation written by `run.py perception eval`: {error}") from error
