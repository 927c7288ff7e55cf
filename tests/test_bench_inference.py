"""The inference figures (bridge/bench/inference.py): their structure, and that PyTorch
and ONNX Runtime really run the same generator. No timing thresholds (DESIGN.md §7)."""

from __future__ import annotations

import json
import math
import sys

import pytest

from backline.bridge.bench import inference as bench_inference
from backline.models.runtime import Generator

from .fake_models import write_fixed_model


def percentiles_ok(figures: dict) -> bool:
    return set(figures) == {"p50", "p99"} and 0 < figures["p50"] <= figures["p99"] and math.isfinite(figures["p99"])


def test_ort_and_torch_on_the_same_generator(tiny_model):
    result = bench_inference.compare_ort_torch(str(tiny_model), "cpu", batches=(1, 3), runs=5)
    assert result["available"] is True
    assert result["model"] == "tiny" and result["provider"] == "CPUExecutionProvider"
    assert result["torch_device"] == "cpu" and result["threads"] >= 1 and result["runs"] == 5
    # The rebuilt PyTorch generator computes what the ONNX file computes.
    assert result["max_abs_diff"] < 1e-4
    assert [row["batch"] for row in result["batches"]] == [1, 3]
    for row in result["batches"]:
        assert percentiles_ok(row["onnxruntime_ms"]) and percentiles_ok(row["torch_ms"])
        for key in ("p50", "p99"):
            assert row["ratio_torch_over_onnxruntime"][key] == pytest.approx(
                row["torch_ms"][key] / row["onnxruntime_ms"][key])
    json.dumps(result)  # the lead's --json writes it as it is
    lines = bench_inference.format_comparison(result)
    assert f"{result['threads']} intra-op threads each" in lines[0]
    assert "max |diff|" in lines[1]
    assert len([line for line in lines if line.strip().split(" ")[0] in ("1", "3")]) == 2


def test_the_rebuild_takes_every_weight_from_the_onnx_file(tiny_checkpoint, tiny_model):
    """Against the checkpoint the ONNX file was exported from: the same generator with
    its batch norms folded away gives the same probabilities."""
    import numpy as np
    import torch

    from backline.training.checkpoint import load_checkpoint
    from backline.training.export import load_generator

    spec = Generator(tiny_model, device="cpu", announce=False).spec
    rebuilt = bench_inference.rebuild_torch_generator(tiny_model, spec)
    original = load_generator(load_checkpoint(tiny_checkpoint))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in rebuilt.modules())
    assert rebuilt.config.widths == original.config.widths
    rng = np.random.default_rng(4)
    melody = torch.from_numpy((rng.random((3, spec.window_steps, spec.n_pitches)) < 0.05).astype(np.float32))
    z = torch.from_numpy(rng.standard_normal((3, spec.z_dim)).astype(np.float32))
    with torch.no_grad():
        for a, b in zip(rebuilt(melody, z), original(melody, z)):
            assert float((a - b).abs().max()) < 1e-4


def test_a_model_not_built_by_training_networks_is_refused(tmp_path):
    path = tmp_path / "fixed.onnx"
    spec = write_fixed_model(path)
    with pytest.raises(bench_inference.RebuildError, match="not a generator of training/networks"):
        bench_inference.rebuild_torch_generator(path, spec)


def test_a_musegan_model_is_rebuilt_as_the_same_network():
    """The shipped pop model (MuseGAN, drums masked): PyTorch rebuilt from its ONNX weights
    gives ONNX Runtime's probabilities."""
    result = bench_inference.compare_ort_torch("pop", "cpu", batches=(1,), runs=2)
    assert result["available"] and result["max_abs_diff"] < 1e-4


def test_without_torch_the_comparison_says_why(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    result = bench_inference.compare_ort_torch(str(tiny_model), "cpu", runs=1)
    assert result == {"available": False, "reason": "torch is not installed; run: pip install -e '.[train]'"}
    assert bench_inference.format_comparison(result) == [
        "ONNX Runtime vs PyTorch: not available (torch is not installed; run: pip install -e '.[train]')"]


def test_binding_and_precision_figures(tiny_model):
    binding = bench_inference.compare_binding(str(tiny_model), "cpu", batches=(2,), runs=5)
    row = binding["batches"][0]
    assert row["batch"] == 2
    assert all(percentiles_ok(row[k]) for k in ("session.run_ms", "io_binding_ms", "Generator.run_ms"))
    assert row["paired_ratio_plain_over_binding_p50"] > 0 and 0 <= row["binding_faster_share"] <= 1
    assert len(bench_inference.format_binding(binding)) == 4
    precision = bench_inference.precision_agreement(str(tiny_model), "cpu:fp16")
    assert precision["available"] is True and precision["windows"] == 16
    assert 0 < precision["max_abs_diff"] < 0.05
    assert precision["accepted"] == (precision["flipped_fraction"] <= precision["allowed_flipped_fraction"])
    line = bench_inference.format_precision(precision)[0]
    assert line.startswith("cpu:fp16 vs fp32 on the CPU, 16 windows") and "max |diff|" in line


def test_the_command_prints_all_three_parts(tiny_model, tmp_path):
    import subprocess

    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "backline.bridge.bench.inference", "--model", str(tiny_model), "--runs", "3",
         "--batches", "1", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ONNX Runtime vs PyTorch eager: model tiny")
    assert "I/O binding vs session.run" in result.stdout and "cpu:fp16 vs fp32 on the CPU" in result.stdout
    saved = json.loads(out.read_text())
    assert set(saved) == {"torch", "binding", "precision"} and saved["torch"]["available"] is True
