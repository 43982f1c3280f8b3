"""The CUDA paths end to end, on a GPU when there is one (skipped without): perception training and
distillation with mixed precision (the shared loop, perception/loop.py), and an agent trained on the
fast backend on the GPU whose saved run then loads and evaluates on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_training_and_distillation_run_with_mixed_precision_on_cuda(tmp_path):
    from perception.checkpoint import load_model
    from perception.distill import DistillConfig, distill
    from perception.training import TrainConfig, train
    from tests.perception.test_distill import boxes

    train_set, val_set = boxes(256, seed=0), boxes(64, seed=1)
    common = dict(epochs=2, batch_size=32, pgd_steps=2, probe_steps=2, probe_size=32, seed=0, device="cuda",
                  logdir=None, progress=False)
    teacher = tmp_path / "teacher.safetensors"
    metrics = train(TrainConfig(arch="student", mode="fgsm_rs", eps=4 / 255, out=str(teacher), **common), train_set, val_set)
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    student = tmp_path / "student.safetensors"
    metrics = distill(DistillConfig(teacher=str(teacher), mode="robust", eps=4 / 255, out=str(student), **common),
                      train_set, val_set)
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    model, _ = load_model(student, device="cpu", expected_arch="student")
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_an_agent_trained_on_cuda_loads_and_evaluates_on_the_cpu(tmp_path):
    import yaml

    from agents.evaluate import evaluate_run
    from agents.runs import read_run_config
    from agents.train import TrainOptions, train
    from tests.agents import make_tiny

    tiny = make_tiny(tmp_path / "tiny")
    config = tmp_path / "imitate.yaml"
    settings = yaml.safe_load(tiny.config.read_text())
    settings["training"].update(imitation_iterations=1, imitation_steps=2)
    settings["policy"]["map_channels"] = 4  # PerceptionPolicy's feature-map reducers on the GPU too
    config.write_text(yaml.safe_dump(settings))
    result = train(TrainOptions(scenario=str(tiny.scenario), backend="fast", n_envs=8, timesteps=512, device="cuda",
                                logdir=tmp_path / "runs", config=config, progress_bar=False, name="on-cuda"))
    assert result.num_timesteps >= 512 and read_run_config(result.run_dir).device == "cuda"
    report, _ = evaluate_run(result.run_dir, episodes=4, device="cpu", backend="fast")
    assert report.episodes == 4 and math.isfinite(report.metrics["return"].mean)
