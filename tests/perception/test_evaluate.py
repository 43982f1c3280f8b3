"""Perception evaluation: attacks hurt at least as much as nothing, the report section is replaced in place."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.checkpoint import save_checkpoint
from perception.dataset import Manifest, save_manifest, save_shard
from perception.evaluate import corrupt_observations, evaluate_models
from perception.labels import LABEL_DIM
from perception.latency import measure_latency, measure_throughput
from perception.models import STUDENT, ArchConfig, PerceptionNet
from perception.report import END_MARKER, START_MARKER, Ratios, Speedup, check_targets, key_ratios, render_section, write_report
from perception.results import Attack, EvaluationRun, LabelErrors, eps_label, read_results
from scenarios import CorruptionConfig


SHAPE = (9, 32, 16)  # (C, H, W): 3 stacked RGB frames
EPS = (4 / 255, 16 / 255)
TINY_TEACHER = ArchConfig(name="teacher", widths=(8, 16), blocks_per_stage=(1, 1), embed_dim=16, attention_heads=2)


def _shard(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frames = rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
    frames[:, :, 8:16, 4:12] = 200  # a "car"
    targets = rng.uniform(-1, 1, size=(n, LABEL_DIM)).astype(np.float32)
    masks = (rng.random((n, LABEL_DIM)) < 0.8).astype(np.float32)
    return frames, targets, masks


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    manifest = Manifest(
        scenarios=["highway"], camera="bev", frames_requested=18, seed=0, policies=["random"],
        observation_shape=list(SHAPE),
    )
    for index in range(3):
        save_shard(data / f"shard-{index:05d}.npz", *_shard(rng, 6))
        manifest.shards.append({"index": index, "file": f"shard-{index:05d}.npz", "frames": 6, "episodes": 1})
    save_manifest(data, manifest)
    models = {}
    for name, arch, seed in (("teacher", TINY_TEACHER, 0), ("robust-student", STUDENT, 1), ("clean-student", STUDENT, 2)):
        torch.manual_seed(seed)
        model = PerceptionNet(arch, *SHAPE)
        if arch is TINY_TEACHER:  # non-zero residual branches: a less linear model
            for module in model.modules():
                if hasattr(module, "conv2"):
                    torch.nn.init.normal_(module.conv2.weight, std=0.05)
        models[name] = save_checkpoint(root / f"{name}.safetensors", model)
    return root, data, models


@pytest.fixture(scope="module")
def results(workspace):
    _, data, models = workspace
    return evaluate_models(
        models, data, eps_list=EPS, attack_frames=4, pgd_steps=(2,), device="cpu", threads=(1,),
        latency_repeats=3, latency_warmup=1, throughput_batch=4, throughput_repeats=1, holdout_every=3,
        progress=False,
    )


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def test_results_hold_every_measurement(results) -> None:
    meta = results.meta
    assert meta.held_out_shards == (2,) and meta.held_out_frames == 6 and meta.attack_frames == 4
    assert meta.roles == {"teacher": "teacher", "robust_student": "robust-student", "clean_student": "clean-student"}
    assert meta.eps == EPS and [eps_label(eps) for eps in meta.eps] == ["4/255", "16/255"]
    assert meta.key_attack == Attack(steps=2, eps=4 / 255)  # the step count falls back to the only one run
    assert set(results.models) == {"teacher", "robust-student", "clean-student"}
    for name, entry in results.models.items():
        assert entry.params > 0 and entry.macs > 0
        assert isinstance(entry.clean_all, LabelErrors) and entry.corrupted_all.label_error > 0
        sub = entry.subset
        assert set(sub.pgd) == {Attack(2, eps) for eps in EPS} and set(sub.noise) == set(EPS)
        for eps in EPS:
            # PGD maximises the loss from the clean error on the very same frames
            assert sub.pgd[Attack(2, eps)] >= sub.clean, (name, eps, sub)
        assert sub.pgd[Attack(2, 16 / 255)] > sub.clean
        assert entry.pgd_ratio == sub.pgd[meta.key_attack] / sub.clean
        for backend in ("torch", "onnx"):
            latency = entry.speed.latency[backend, 1]
            assert 0 < latency.p50_ms <= latency.p95_ms and latency.backend == backend and latency.threads == 1
            assert entry.speed.throughput[backend] > 0
        assert all(math.isfinite(value) for value in _numbers(entry.to_json()))
    ratios = key_ratios(results)
    assert ratios.teacher_speedup.one_thread > 0 and ratios.robust_teacher_speedup is None
    assert ratios.robust_student_pgd_ratio >= 1.0
    checks = check_targets(results)
    assert [item.status in ("PASS", "MISS") for item in checks] == [True] * 5  # speed-up, student p50, error %, robust ratio, clean ratio
    json.dumps(results.to_json())  # serialisable


def test_the_same_frames_and_draws_give_the_same_numbers(workspace, results) -> None:
    _, data, models = workspace
    again = evaluate_models(
        {"teacher": models["teacher"]}, data, eps_list=EPS, attack_frames=4, pgd_steps=(2,), device="cpu",
        threads=(1,), latency_repeats=2, latency_warmup=0, throughput_batch=2, throughput_repeats=1,
        holdout_every=3, progress=False,
    )
    assert again.models["teacher"].subset == results.models["teacher"].subset
    assert again.meta.roles == {"teacher": "teacher"}
    assert {item.status for item in check_targets(again)} == {"n/a"}


def test_report_section_is_created_then_replaced(tmp_path, results) -> None:
    path = tmp_path / "docs" / "PERCEPTION.md"
    write_report(results, path, command="python run.py perception eval --models ...")
    text = path.read_text()
    assert text.startswith("# Perception") and text.count(START_MARKER) == 1 and text.count(END_MARKER) == 1
    assert "PGD-2 16/255" in text and "| teacher |" in text and "python run.py perception eval" in text
    stored = json.loads((path.parent / "perception_eval.json").read_text())
    assert stored["models"]["teacher"]["subset"] == results.models["teacher"].subset.to_json()
    assert read_results(path.parent / "perception_eval.json") == results

    path.write_text("# Perception\n\nIntro written by hand.\n\n" + text.split("\n", 2)[2] + "\n## Later section\n\nkept\n")
    write_report(results, path, command="second run")
    text = path.read_text()
    assert text.count(START_MARKER) == 1 and text.count(END_MARKER) == 1 and text.count("## Evaluation") == 1
    assert "Intro written by hand." in text and text.rstrip().endswith("kept")
    assert "second run" in text and "perception eval --models" not in text


def test_report_refuses_a_file_with_one_marker(tmp_path, results) -> None:
    path = tmp_path / "PERCEPTION.md"
    path.write_text(f"# Perception\n\n{START_MARKER}\nno end\n")
    with pytest.raises(ValueError, match="markers"):
        write_report(results, path)


def test_corruptions_treat_the_stack_as_a_stream() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(2, *SHAPE), dtype=np.uint8)
    dropped = corrupt_observations(frames, CorruptionConfig(gaussian_noise_std=0.1, frame_drop_prob=1.0), seed=0)
    for n in range(2):  # the first frame is corrupted, every later one repeats it (a frozen camera)
        assert not np.array_equal(dropped[n, :3], frames[n, :3])
        assert np.array_equal(dropped[n, 3:6], dropped[n, :3]) and np.array_equal(dropped[n, 6:9], dropped[n, :3])
    assert not np.array_equal(dropped[0, :3], dropped[1, :3])
    noisy = CorruptionConfig(gaussian_noise_std=0.05, brightness_shift=-0.1)
    assert np.array_equal(corrupt_observations(frames, noisy, seed=3), corrupt_observations(frames, noisy, seed=3))
    assert corrupt_observations(frames, noisy, seed=3).mean() < frames.mean()  # dimmed


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_latency_and_throughput_are_positive(backend) -> None:
    model = PerceptionNet(STUDENT, *SHAPE)
    threads = torch.get_num_threads()
    latency = measure_latency(model, SHAPE, threads=1, backend=backend, repeats=5, warmup=1)
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] and latency["backend"] == backend
    assert measure_throughput(model, SHAPE, batch=4, backend=backend, threads=1, repeats=2) > 0
    assert torch.get_num_threads() == threads  # restored


def test_latency_rejects_bad_settings() -> None:
    model = PerceptionNet(STUDENT, *SHAPE)
    with pytest.raises(ValueError, match="backend"):
        measure_latency(model, backend="tensorrt")
    with pytest.raises(ValueError, match="threads"):
        measure_latency(model, threads=0)


def test_training_step_seconds_times_every_mode():
    from perception.latency import training_step_seconds

    seconds = training_step_seconds("student", SHAPE, modes=("clean", "fgsm_rs", "pgd"), batch=4, steps=2, warmup=1)
    assert set(seconds) == {"clean", "fgsm_rs", "pgd"}
    assert all(math.isfinite(value) and value > 0 for value in seconds.values())


def test_eval_command_line_writes_the_report(workspace, tmp_path):
    """The CLI end to end, in a subprocess: flags reach evaluate_models and the report is written."""
    import subprocess
    import sys
    from pathlib import Path

    _, data, models = workspace
    out = tmp_path / "PERCEPTION.md"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(root / "run.py"), "--threads", "1", "perception", "eval",
         "--models", *(f"{name}={path}" for name, path in models.items()),
         "--data", str(data), "--attack-frames", "2", "--eps", "4/255", "--pgd-steps", "1",
         "--latency-threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert START_MARKER in out.read_text() and (tmp_path / "perception_eval.json").is_file()


# --------------------------------------------------------------------------- regression: numbers recorded before the refactor

# Recorded at commit bb0926f before the refactor (issue 22, typed results): `evaluate_models` on the tiny
# data and models of `workspace` (CPU, seed 0, the `results` fixture's settings), printed to 7 significant
# digits. Timings are left out: they vary from run to run.
RECORDED = {
    "teacher/clean_all/label_error": 0.5415332,
    "teacher/clean_all/presence_error_rate": 0.2291667,
    "teacher/clean_all/occupancy_error_rate": 0.3888889,
    "teacher/clean_all/position_mae_m": 17.39575,
    "teacher/clean_all/velocity_mae_mps": 5.171998,
    "teacher/clean_all/ego_lane_error_rate": 0.8333333,
    "teacher/clean_all/ego_speed_mae_mps": 16.18563,
    "teacher/corrupted_all/label_error": 0.533846,
    "teacher/corrupted_all/presence_error_rate": 0.2291667,
    "teacher/corrupted_all/occupancy_error_rate": 0.3888889,
    "teacher/corrupted_all/position_mae_m": 16.96024,
    "teacher/corrupted_all/velocity_mae_mps": 5.167984,
    "teacher/corrupted_all/ego_lane_error_rate": 1,
    "teacher/corrupted_all/ego_speed_mae_mps": 15.7366,
    "teacher/subset/clean": 0.5416671,
    "teacher/subset/corruptions": 0.5347319,
    "teacher/subset/noise/4/255": 0.5414738,
    "teacher/subset/noise/16/255": 0.5406159,
    "teacher/subset/pgd/2/4/255": 0.5559409,
    "teacher/subset/pgd/2/16/255": 0.6018765,
    "teacher/pgd_ratio": 1.026352,
    "teacher/params": 9522,
    "teacher/macs": 417024,
    "robust-student/clean_all/label_error": 0.5526549,
    "robust-student/clean_all/presence_error_rate": 0.2291667,
    "robust-student/clean_all/occupancy_error_rate": 0.3888889,
    "robust-student/clean_all/position_mae_m": 18.18252,
    "robust-student/clean_all/velocity_mae_mps": 5.47413,
    "robust-student/clean_all/ego_lane_error_rate": 0.8333333,
    "robust-student/clean_all/ego_speed_mae_mps": 16.28042,
    "robust-student/corrupted_all/label_error": 0.5377632,
    "robust-student/corrupted_all/presence_error_rate": 0.2291667,
    "robust-student/corrupted_all/occupancy_error_rate": 0.3888889,
    "robust-student/corrupted_all/position_mae_m": 17.28016,
    "robust-student/corrupted_all/velocity_mae_mps": 5.342833,
    "robust-student/corrupted_all/ego_lane_error_rate": 1,
    "robust-student/corrupted_all/ego_speed_mae_mps": 16.16574,
    "robust-student/subset/clean": 0.5669448,
    "robust-student/subset/corruptions": 0.5501928,
    "robust-student/subset/noise/4/255": 0.5672698,
    "robust-student/subset/noise/16/255": 0.5664777,
    "robust-student/subset/pgd/2/4/255": 0.6068351,
    "robust-student/subset/pgd/2/16/255": 0.7461947,
    "robust-student/pgd_ratio": 1.07036,
    "robust-student/params": 14066,
    "robust-student/macs": 164352,
    "clean-student/clean_all/label_error": 0.8633791,
    "clean-student/clean_all/presence_error_rate": 0.4375,
    "clean-student/clean_all/occupancy_error_rate": 0.3888889,
    "clean-student/clean_all/position_mae_m": 28.61269,
    "clean-student/clean_all/velocity_mae_mps": 8.782691,
    "clean-student/clean_all/ego_lane_error_rate": 1,
    "clean-student/clean_all/ego_speed_mae_mps": 13.885,
    "clean-student/corrupted_all/label_error": 0.7062706,
    "clean-student/corrupted_all/presence_error_rate": 0.4375,
    "clean-student/corrupted_all/occupancy_error_rate": 0.3888889,
    "clean-student/corrupted_all/position_mae_m": 22.03419,
    "clean-student/corrupted_all/velocity_mae_mps": 7.214535,
    "clean-student/corrupted_all/ego_lane_error_rate": 1,
    "clean-student/corrupted_all/ego_speed_mae_mps": 15.10644,
    "clean-student/subset/clean": 0.8337992,
    "clean-student/subset/corruptions": 0.6851069,
    "clean-student/subset/noise/4/255": 0.8329053,
    "clean-student/subset/noise/16/255": 0.8364513,
    "clean-student/subset/pgd/2/4/255": 0.9462147,
    "clean-student/subset/pgd/2/16/255": 1.286393,
    "clean-student/pgd_ratio": 1.134823,
    "clean-student/params": 14066,
    "clean-student/macs": 164352,
    "ratios/robust_student_clean_error_pct_of_teacher": 102.0537,
    "ratios/teacher_pgd_ratio": 1.026352,
    "ratios/robust_student_pgd_ratio": 1.07036,
    "ratios/clean_student_pgd_ratio": 1.134823,
}


def _flat_numbers(run: EvaluationRun) -> dict[str, float]:
    """The measured numbers of `run` under the names of RECORDED."""
    out: dict[str, float] = {}
    for name, entry in run.models.items():
        for group in ("clean_all", "corrupted_all"):
            for key, value in asdict(getattr(entry, group)).items():
                out[f"{name}/{group}/{key}"] = value
        sub = entry.subset
        out[f"{name}/subset/clean"] = sub.clean
        out[f"{name}/subset/corruptions"] = sub.corruptions
        for eps, value in sub.noise.items():
            out[f"{name}/subset/noise/{eps_label(eps)}"] = value
        for attack, value in sub.pgd.items():
            out[f"{name}/subset/pgd/{attack.steps}/{eps_label(attack.eps)}"] = value
        out[f"{name}/pgd_ratio"] = entry.pgd_ratio
        out[f"{name}/params"] = entry.params
        out[f"{name}/macs"] = entry.macs
    ratios = key_ratios(run)
    out["ratios/robust_student_clean_error_pct_of_teacher"] = ratios.student_error_pct_of_teacher
    for role in ("teacher", "robust_student", "clean_student"):
        out[f"ratios/{role}_pgd_ratio"] = getattr(ratios, f"{role}_pgd_ratio")
    return out


def test_numbers_match_those_recorded_before_the_refactor(results) -> None:
    measured = _flat_numbers(results)
    assert set(measured) == set(RECORDED)
    for key, value in RECORDED.items():
        assert measured[key] == pytest.approx(value, rel=2e-6, abs=1e-9), key


DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[2]

# sha256 of the golden sections in data/*.md (without the final newline), recorded at commit bb0926f
# before the refactor by `render_section` on the hand-written results data/*.json: a regenerated golden
# file cannot pass silently.
GOLDEN_SHA256 = {
    "eval_all_roles": "23299c8261e9d8bcff839dbbc44d11cbff7a6c8420d01923f7165bd56e035886",
    "eval_one_role": "39d5db116cd7d891060e245e146e0d7e93b56e84600e1fe03c911beade0632b2",
}


def _section(data: dict, command: str, json_name: str) -> str:
    return render_section(EvaluationRun.from_json(data), command, json_name=json_name)


@pytest.mark.parametrize("name", sorted(GOLDEN_SHA256))
def test_rendered_section_matches_the_golden_file(name) -> None:
    golden = (DATA / f"{name}.md").read_text()[:-1]
    assert hashlib.sha256(golden.encode()).hexdigest() == GOLDEN_SHA256[name]
    data = json.loads((DATA / f"{name}.json").read_text())
    assert _section(data, "python run.py perception eval --models hand-written", "../hand.json") == golden


def test_the_shipped_results_render_the_shipped_report() -> None:
    data = json.loads((ROOT / "docs" / "perception_eval.json").read_text())
    text = (ROOT / "docs" / "PERCEPTION.md").read_text()
    shipped = text[text.index(START_MARKER) + len(START_MARKER) + 1 : text.index(END_MARKER) - 1]
    assert _section(data, data["command"], "perception_eval.json") == shipped


# --------------------------------------------------------------------------- typed results: JSON round trip, ratios


@pytest.mark.parametrize("path", [DATA / "eval_all_roles.json", DATA / "eval_one_role.json", ROOT / "docs" / "perception_eval.json"])
def test_json_round_trip_keeps_the_file_format(path) -> None:
    data = json.loads(path.read_text())
    run = EvaluationRun.from_json(data)
    assert run.to_json() == {"meta": data["meta"], "models": data["models"]}
    assert EvaluationRun.from_json(json.loads(json.dumps(run.to_json()))) == run
    if "ratios" in data:  # a file written by write_report: its derived parts are recomputed exactly
        assert key_ratios(run).to_json() == data["ratios"]
        assert [asdict(check) for check in check_targets(run)] == data["targets"]


def test_results_from_json_name_what_is_wrong(tmp_path) -> None:
    data = json.loads((DATA / "eval_one_role.json").read_text())
    del data["models"]["teacher"]["subset"]["noise"]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"models\.teacher\.subset: missing keys \['noise'\]"):
        read_results(path)


def test_ratios_are_named_fields() -> None:
    run = EvaluationRun.from_json(json.loads((DATA / "eval_all_roles.json").read_text()))
    ratios = key_ratios(run)
    assert (ratios.one_thread, ratios.many_threads) == (2, 16)
    onnx = {name: {t: entry.speed.latency["onnx", t].p50_ms for t in (2, 16)} for name, entry in run.models.items()}
    assert ratios.teacher_speedup == Speedup(
        one_thread=onnx["teacher"][2] / onnx["robust-student"][2], many_threads=onnx["teacher"][16] / onnx["robust-student"][16]
    )
    assert ratios.student_error_pct_of_robust_teacher == pytest.approx(
        100 * run.models["robust-student"].clean_all.label_error / run.models["robust-teacher"].clean_all.label_error
    )
    assert ratios.clean_student_pgd_ratio == run.models["clean-student"].pgd_ratio
    assert list(ratios.to_json())[:3] == [  # the file's names, thread counts in text order as always
        "ort_p50_speedup_teacher_over_robust_student_16t", "ort_p50_speedup_teacher_over_robust_student_2t",
        "robust_student_clean_error_pct_of_teacher",
    ]

    one_role = EvaluationRun.from_json(json.loads((DATA / "eval_one_role.json").read_text()))
    only_teacher = key_ratios(one_role)
    assert only_teacher == Ratios(one_thread=1, many_threads=1, teacher_pgd_ratio=one_role.models["teacher"].pgd_ratio)
    assert only_teacher.to_json() == {"teacher_pgd_ratio": one_role.models["teacher"].pgd_ratio}
    assert [check.status for check in check_targets(one_role)] == ["n/a"] * 5
