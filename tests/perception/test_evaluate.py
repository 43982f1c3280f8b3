"""Perception evaluation: attacks hurt at least as much as nothing, the report section is replaced in place."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from perception.checkpoint import save_checkpoint
from perception.dataset import Manifest, save_manifest, save_shard
from perception.evaluate import END_MARKER, START_MARKER, corrupt_observations, eps_label, evaluate_models, write_report
from perception.labels import LABEL_DIM
from perception.latency import measure_latency, measure_throughput
from perception.models import STUDENT, ArchConfig, PerceptionNet
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
    meta = results["meta"]
    assert meta["held_out_shards"] == [2] and meta["held_out_frames"] == 6 and meta["attack_frames"] == 4
    assert meta["roles"] == {"teacher": "teacher", "robust_student": "robust-student", "clean_student": "clean-student"}
    labels = [eps_label(eps) for eps in EPS]
    assert meta["eps"] == labels == ["4/255", "16/255"]
    assert set(results["models"]) == {"teacher", "robust-student", "clean-student"}
    for name, entry in results["models"].items():
        assert entry["params"] > 0 and entry["macs"] > 0
        assert {"label_error", "position_mae_m", "velocity_mae_mps", "presence_error_rate"} <= set(entry["clean_all"])
        assert entry["corrupted_all"]["label_error"] > 0
        sub = entry["subset"]
        assert set(sub["pgd"]) == {"2"} and set(sub["pgd"]["2"]) == set(labels)
        assert set(sub["noise"]) == set(labels)
        for label in labels:
            # PGD maximises the loss from the clean error on the very same frames
            assert sub["pgd"]["2"][label] >= sub["clean"], (name, label, sub)
        assert sub["pgd"]["2"]["16/255"] > sub["clean"]
        for backend in ("torch", "onnx"):
            latency = entry["speed"]["latency"][backend]["1"]
            assert 0 < latency["p50_ms"] <= latency["p95_ms"]
            assert entry["speed"]["throughput"][backend] > 0
        assert all(math.isfinite(value) for value in _numbers(entry))
    ratios = results["ratios"]
    assert ratios["ort_p50_speedup_teacher_over_robust_student_1t"] > 0
    assert ratios["robust_student_pgd_ratio"] >= 1.0
    assert [item["status"] in ("PASS", "MISS") for item in results["targets"]] == [True] * 5  # speed-up, student p50, error %, robust ratio, clean ratio
    json.dumps(results)  # serialisable


def test_the_same_frames_and_draws_give_the_same_numbers(workspace, results) -> None:
    _, data, models = workspace
    again = evaluate_models(
        {"teacher": models["teacher"]}, data, eps_list=EPS, attack_frames=4, pgd_steps=(2,), device="cpu",
        threads=(1,), latency_repeats=2, latency_warmup=0, throughput_batch=2, throughput_repeats=1,
        holdout_every=3, progress=False,
    )
    assert again["models"]["teacher"]["subset"] == results["models"]["teacher"]["subset"]
    assert again["meta"]["roles"] == {"teacher": "teacher"}
    assert {item["status"] for item in again["targets"]} == {"n/a"}


def test_report_section_is_created_then_replaced(tmp_path, results) -> None:
    path = tmp_path / "docs" / "PERCEPTION.md"
    write_report(results, path, command="python run.py perception eval --models ...")
    text = path.read_text()
    assert text.startswith("# Perception") and text.count(START_MARKER) == 1 and text.count(END_MARKER) == 1
    assert "PGD-2 16/255" in text and "| teacher |" in text and "python run.py perception eval" in text
    stored = json.loads((path.parent / "perception_eval.json").read_text())
    assert stored["models"]["teacher"]["subset"] == results["models"]["teacher"]["subset"]

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
