"""Export: the ONNX file agrees with PyTorch, describes itself, takes any batch size, and a
failed export never touches the file it was meant to replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backline.models.runtime import Generator
from backline.training.checkpoint import CheckpointError, load_checkpoint
from backline.training.export import PARITY_ATOL, ExportError, ParityReport, export


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, small_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "chorale-tiny.onnx"
    spec, report = export(tiny_checkpoint, path, melodies=small_data[1].frames[:8, 0])
    return path, spec, report


@pytest.fixture(scope="module")
def generator(exported):
    return Generator(exported[0], device="cpu")


def test_onnx_runtime_agrees_with_pytorch(exported):
    path, _, report = exported
    assert isinstance(report, ParityReport)
    assert report.ok(), str(report)
    assert report.max_abs_diff <= 1e-4
    assert PARITY_ATOL <= 1e-4
    assert report.n_windows == 8
    assert report.flipped_fraction == 0.0
    assert path.is_file()
    assert list(path.parent.glob("*.tmp")) == []


def test_the_file_describes_itself(exported, generator, tiny_checkpoint):
    path, returned_spec, _ = exported
    state = load_checkpoint(tiny_checkpoint)
    spec = generator.spec
    assert spec == returned_spec
    assert spec.name == "chorale-tiny"  # the file's stem
    assert spec.melody.name == "Soprano"
    assert [t.name for t in spec.tracks] == ["Alto", "Tenor", "Bass"]
    assert [t.program for t in spec.tracks] == [40, 41, 42]
    assert [t.channel for t in spec.tracks] == [1, 2, 3]
    assert spec.bars == 3 and spec.beats_per_bar == 4 and spec.steps_per_beat == 4
    assert spec.window_beats == 12
    assert spec.n_pitches == state["net_config"]["n_pitches"]
    assert spec.z_dim == state["net_config"]["z_dim"] == 8
    assert spec.lowest_pitch == state["data"]["lowest_pitch"]
    assert spec.key_normalised is True
    assert spec.melody_range == tuple(state["data"]["melody_range"])
    provenance = spec.provenance
    for key in ("epochs", "learning_rate", "update_ratio", "seed", "commit", "wall_time_s"):
        assert key in provenance, key
    assert provenance["epochs"] == 1
    assert provenance["learning_rate"] == state["train_config"]["lr"]
    assert provenance["update_ratio"] == 2
    assert provenance["seed"] == 3
    assert provenance["architecture"] == state["architecture"]
    assert provenance["wall_time_s"] == pytest.approx(state["wall_time_s"], abs=0.06)
    assert spec.metrics == {}  # no evaluate callback


def test_name_option_and_evaluate_callback(tiny_checkpoint, small_data, tmp_path):
    path = tmp_path / "file.onnx"
    seen = []

    def evaluate(runtime):
        seen.append(runtime.spec.name)
        return {"validation": {"QN": 0.5}}

    spec, _ = export(tiny_checkpoint, path, name="custom", melodies=small_data[1].frames[:4, 0],
                     evaluate=evaluate)
    assert seen == ["custom"]
    loaded = Generator(path, device="cpu").spec
    assert loaded.name == "custom" == spec.name
    assert loaded.metrics == {"validation": {"QN": 0.5}}
    assert (path.stat().st_mode & 0o777) == 0o644


def test_dynamic_batch(generator, small_data):
    spec = generator.spec
    melodies = small_data[1].frames[:5, 0].astype(np.float32)
    assert melodies.shape == (5, spec.window_steps, spec.n_pitches)
    z = generator.draw_z(11, 5)
    five = generator.run(melodies, z)
    one = generator.run(melodies[:1], z[:1])
    assert five.frames.shape == (5, spec.n_tracks, spec.window_steps, spec.n_pitches)
    assert one.frames.shape == (1, spec.n_tracks, spec.window_steps, spec.n_pitches)
    np.testing.assert_allclose(one.frames[0], five.frames[0], atol=1e-5)
    np.testing.assert_allclose(one.onsets[0], five.onsets[0], atol=1e-5)
    # And the last row, run alone, matches too (no batch statistics leak between rows).
    last = generator.run(melodies[4:], z[4:])
    np.testing.assert_allclose(last.frames[0], five.frames[4], atol=1e-5)
    for probs in (five.frames, five.onsets):
        assert probs.min() >= 0.0 and probs.max() <= 1.0


def test_seeds(generator):
    a, b, c = generator.draw_z(7, 3), generator.draw_z(7, 3), generator.draw_z(8, 3)
    assert a.shape == (3, generator.spec.z_dim) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # The noise changes the output.
    spec = generator.spec
    melody = np.zeros((1, spec.window_steps, spec.n_pitches), dtype=np.float32)
    assert not np.allclose(generator.run(melody, a[:1]).frames, generator.run(melody, c[:1]).frames)


KNOWN = b"a model that works: leave me alone\n"


def test_failed_export_leaves_the_existing_file_untouched(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(KNOWN)
    corrupt = tmp_path / "checkpoint.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(CheckpointError):
        export(corrupt, out)
    assert out.read_bytes() == KNOWN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "model.onnx"]


def test_export_failing_after_writing_leaves_the_existing_file_untouched(tiny_checkpoint, tmp_path, monkeypatch):
    """A parity failure happens after the ONNX file was written to its temporary path."""
    import backline.training.export as export_module

    out = tmp_path / "model.onnx"
    out.write_bytes(KNOWN)
    monkeypatch.setattr(export_module, "check_parity",
                        lambda *args, **kwargs: ParityReport(0.5, 0.1, 16))
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export(tiny_checkpoint, out)
    assert out.read_bytes() == KNOWN
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_export_failing_in_evaluate_leaves_no_file(tiny_checkpoint, tmp_path):
    out = tmp_path / "model.onnx"

    def evaluate(runtime):
        raise RuntimeError("evaluation crashed")

    with pytest.raises(RuntimeError, match="evaluation crashed"):
        export(tiny_checkpoint, out, evaluate=evaluate)
    assert list(tmp_path.iterdir()) == []


def test_the_onnx_model_computes_what_the_checkpoint_computes(tiny_checkpoint, generator, small_data):
    """The ONNX model computes what the checkpoint's generator computes."""
    from backline.training.export import ContractWrapper, load_generator

    state = load_checkpoint(tiny_checkpoint)
    spec = generator.spec
    wrapper = ContractWrapper(load_generator(state), spec).eval()
    melodies = small_data[0].frames[:3, 0].astype(np.float32)
    z = generator.draw_z(5, 3)
    with torch.no_grad():
        frames, onsets = wrapper(
            torch.from_numpy(melodies.reshape(3, spec.bars, spec.steps_per_bar, spec.n_pitches)),
            torch.from_numpy(z),
        )
    probs = generator.run(melodies, z)
    np.testing.assert_allclose(frames.numpy().reshape(probs.frames.shape), probs.frames, atol=1e-4)
    np.testing.assert_allclose(onsets.numpy().reshape(probs.onsets.shape), probs.onsets, atol=1e-4)


def test_model_card_is_written_from_the_metadata(tmp_path):
    from dataclasses import replace

    from backline.training.card import write_card

    from .fake_models import fixed_spec

    spec = replace(
        fixed_spec("cardtest"),
        provenance={"command": "backline train --out runs/x --seed 7", "seed": 7, "epochs": 30,
                    "wall_time_s": 1325.0, "machine": "x86_64 Linux, 2 cores", "commit": "abc1234",
                    "learning_rate": 0.001, "update_ratio": 5},
        metrics={"validation": {"QN": 0.96, "EB": 0.0}, "validation_real": {"QN": 0.98, "EB": 0.0},
                 "validation_windows": 411},
    )
    path = tmp_path / "cardtest.md"
    write_card(spec, path, "parity ok")
    text = path.read_text()
    assert "`backline train --out runs/x --seed 7`" in text
    assert "- seed: 7" in text
    assert "22 min 5 s on x86_64 Linux, 2 cores" in text
    assert "| QN | 0.960 | 0.980 | within 5 points | yes |" in text
    assert "| Held | 32 | 2 |" in text  # channels are shown 1-based, as a DAW shows them
