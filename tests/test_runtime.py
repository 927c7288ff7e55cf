"""The ONNX runtime side: decoding probabilities into notes, loading (and refusing) model
files, choosing an execution provider, and finding models by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import mido
import numpy as np
import pytest

from backline.models import registry
from backline.models.errors import BacklineError
from backline.models.runtime import Generator, ModelLoadError, binarise, choose_providers
from backline.models.spec import METADATA_KEY

from .conftest import run_backline
from .fake_models import fixed_spec

N_TRACKS, N_PITCHES = 3, 48  # fixed_spec's layout


def empty(steps: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (N_TRACKS, steps, N_PITCHES)
    return np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)


def cells(array: np.ndarray) -> set[tuple[int, int]]:
    """The (step, pitch index) cells set in a [time, pitch] boolean array."""
    return {(int(t), int(p)) for t, p in zip(*np.nonzero(array))}


# --------------------------------------------------------------------------- binarise


def test_threshold_mode_exact():
    spec = fixed_spec()  # threshold 0.5, onset threshold 0.5, polyphonic tracks
    frames, onsets = empty(4)
    frames[0, 0, 10] = 0.5  # exactly at the threshold: on
    frames[0, 1, 10] = 0.49  # just under: off
    frames[0, 2, 10] = 0.9
    frames[1, 3, 20] = 0.7
    onsets[0, 0, 10] = 0.8  # onset where the frame sounds
    onsets[0, 1, 10] = 0.9  # onset where the frame does not sound: dropped
    onsets[0, 2, 10] = 0.2  # a held frame
    onsets[1, 3, 20] = 0.5
    onsets[2, 0, 0] = 1.0  # onset without a frame on the silent track: dropped
    out_f, out_o = binarise(frames, onsets, spec)
    assert out_f.dtype == bool and out_f.shape == frames.shape and out_o.shape == frames.shape
    assert cells(out_f[0]) == {(0, 10), (2, 10)}
    assert cells(out_f[1]) == {(3, 20)}
    assert cells(out_f[2]) == set()
    assert cells(out_o[0]) == {(0, 10)}
    assert cells(out_o[1]) == {(3, 20)}
    assert cells(out_o[2]) == set()
    # Onsets are always a subset of frames.
    assert not (out_o & ~out_f).any()


def test_threshold_argument_overrides_the_models():
    spec = fixed_spec()
    frames, onsets = empty(3)
    frames[0, :, 5] = [0.3, 0.6, 0.85]
    onsets[0, :, 5] = 0.9
    assert cells(binarise(frames, onsets, spec)[0][0]) == {(1, 5), (2, 5)}
    assert cells(binarise(frames, onsets, spec, threshold=0.8)[0][0]) == {(2, 5)}
    assert cells(binarise(frames, onsets, spec, threshold=0.25)[0][0]) == {(0, 5), (1, 5), (2, 5)}
    # The onset threshold is the model's, whatever the note threshold.
    onsets[0, :, 5] = 0.4
    assert not binarise(frames, onsets, spec, threshold=0.25)[1].any()


def test_polyphonic_track_keeps_every_cell_over_the_threshold():
    spec = fixed_spec(monophonic=False)
    frames, onsets = empty(2)
    frames[0, 0, [3, 7, 12, 30]] = [0.6, 0.5, 0.95, 0.2]
    frames[0, 1, [3, 7, 12, 30]] = [0.6, 0.5, 0.95, 0.2]
    onsets[0, 0, [3, 7, 12, 30]] = 0.9
    out_f, out_o = binarise(frames, onsets, spec)
    assert cells(out_f[0]) == {(0, 3), (0, 7), (0, 12), (1, 3), (1, 7), (1, 12)}
    assert cells(out_o[0]) == {(0, 3), (0, 7), (0, 12)}


def test_monophonic_track_reads_notes_between_onsets():
    spec = fixed_spec(monophonic=True)
    assert spec.tracks[0].monophonic and not spec.tracks[2].monophonic
    frames, onsets = empty(9)
    p = frames[0]
    q = onsets[0]
    p[0, [10, 11]] = [0.3, 0.4]  # sum 0.7 passes, no single cell does: the voice starts
    p[1, 11] = 0.6  # no onset: the same note goes on
    p[2, 11] = 0.6
    q[2, 11] = 0.6  # a confident onset: a new note starts
    p[3, [14, 11]] = [0.6, 0.1]  # the likeliest pitch flickers for one step, no onset
    p[4, 11] = 0.7  # ... so the note from step 2 holds pitch 11 (1.4 + 0.1 beats 0.6)
    p[5, [14, 15]] = [0.2, 0.1]  # sum 0.3: silence
    q[5, 14] = 0.9  # an onset where nothing sounds is dropped
    p[6, 14] = 0.6  # sounding again after silence: a new note
    p[7, [2, 40]] = [0.26, 0.25]  # sum 0.51, onset: one pitch, the likelier over its length
    q[7, 40] = 0.8
    p[8, 40] = 0.9  # ... which is 40 (0.25 + 0.9 beats 0.26)
    out_f, out_o = binarise(frames, onsets, spec)
    assert cells(out_f[0]) == {(0, 11), (1, 11), (2, 11), (3, 11), (4, 11), (6, 14), (7, 40), (8, 40)}
    assert cells(out_o[0]) == {(0, 11), (2, 11), (6, 14), (7, 40)}
    # At most one pitch at each step, and onsets only where it sounds.
    assert out_f[0].sum(axis=1).max() == 1
    assert not (out_o & ~out_f).any()


def test_monophonic_sum_under_the_threshold_is_silent_and_the_threshold_argument_applies():
    spec = fixed_spec(monophonic=True)
    frames, onsets = empty(2)
    frames[0, 0, [5, 6, 7]] = 0.15  # sum 0.45
    frames[0, 1, [5, 6, 7]] = [0.2, 0.3, 0.2]  # sum 0.7
    out_f, _ = binarise(frames, onsets, spec)
    assert cells(out_f[0]) == {(1, 6)}
    out_f, _ = binarise(frames, onsets, spec, threshold=0.4)
    # Both steps sound now, with no onset between them: one note, whose pitch is the
    # likeliest over both steps (pitch 6: 0.15 + 0.3 against 0.35 for 5 and 7).
    assert cells(out_f[0]) == {(0, 6), (1, 6)}


def test_monophonic_and_polyphonic_tracks_decode_differently():
    spec = fixed_spec(monophonic=True)  # tracks 0, 1 monophonic, track 2 polyphonic
    frames, onsets = empty(1)
    for k in range(N_TRACKS):
        frames[k, 0, [4, 9]] = [0.7, 0.8]
        onsets[k, 0, [4, 9]] = 0.9
    out_f, out_o = binarise(frames, onsets, spec)
    assert cells(out_f[0]) == cells(out_f[1]) == {(0, 9)}
    assert cells(out_f[2]) == {(0, 4), (0, 9)}
    assert cells(out_o[2]) == {(0, 4), (0, 9)}


@pytest.mark.parametrize("monophonic", [False, True])
def test_sample_mode_is_seeded(monophonic):
    spec = fixed_spec(monophonic=monophonic)
    steps = 256
    frames = np.full((N_TRACKS, steps, N_PITCHES), 0.5, dtype=np.float32)
    onsets = np.full_like(frames, 0.5)
    if monophonic:
        # One pitch at 0.5 per step (a rising line) on the monophonic tracks.
        frames[:2] = 0.0
        onsets[:2] = 0.0
        line = np.arange(steps) % N_PITCHES
        frames[:2, np.arange(steps), line] = 0.5
        onsets[:2, np.arange(steps), line] = 1.0  # every step a new note, one pitch each
    a = binarise(frames, onsets, spec, sample_seed=7)
    b = binarise(frames, onsets, spec, sample_seed=7)
    c = binarise(frames, onsets, spec, sample_seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0][0], c[0][0])
    assert not np.array_equal(a[0][2], c[0][2])
    # Sampling at p = 0.5 turns about half of the cells (or monophonic steps) on; it is
    # not thresholding, where 0.5 >= 0.5 would turn every one on.
    assert 0.4 < a[0][2].mean() < 0.6
    if monophonic:
        sounding = a[0][0].any(axis=1)
        assert 0.35 < sounding.mean() < 0.65
        assert a[0][0].sum(axis=1).max() == 1
        t, pitch = np.nonzero(a[0][0])
        assert np.array_equal(pitch, t % N_PITCHES)  # the one likely pitch, where it sounds


# --------------------------------------------------------------------------- loading


def assert_one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    assert isinstance(exc, BacklineError)
    return message


def identity_onnx(path, metadata: dict[str, str] | None = None):
    """A valid ONNX model (y = Identity(x)) with the given metadata_props."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        Generator(tmp_path / "nowhere.onnx", device="cpu")
    message = assert_one_line(info.value)
    assert "does not exist" in message and "backline models" in message


def test_model_file_of_random_bytes(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError) as info:
        Generator(path, device="cpu")
    message = assert_one_line(info.value)
    assert "not a loadable ONNX model" in message and "backline export" in message


def test_empty_model_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError) as info:
        Generator(path, device="cpu")
    assert_one_line(info.value)


def test_model_folder_is_not_a_model(tmp_path):
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    with pytest.raises(ModelLoadError) as info:
        Generator(folder, device="cpu")
    assert_one_line(info.value)


def test_onnx_model_without_backline_metadata(tmp_path):
    path = identity_onnx(tmp_path / "plain.onnx")
    with pytest.raises(ModelLoadError) as info:
        Generator(path, device="cpu")
    message = assert_one_line(info.value)
    assert "not a Backline generator" in message and f"'{METADATA_KEY}'" in message


def test_onnx_model_with_wrong_schema_version(tmp_path):
    spec = json.loads(fixed_spec().to_json())
    spec["schema_version"] = 99
    path = identity_onnx(tmp_path / "future.onnx", {METADATA_KEY: json.dumps(spec)})
    with pytest.raises(ModelLoadError) as info:
        Generator(path, device="cpu")
    message = assert_one_line(info.value)
    assert "schema version 99" in message and str(path) in message


def test_onnx_model_with_unreadable_metadata(tmp_path):
    path = identity_onnx(tmp_path / "garbled.onnx", {METADATA_KEY: "{oops"})
    with pytest.raises(ModelLoadError, match="not valid JSON") as info:
        Generator(path, device="cpu")
    assert_one_line(info.value)


def test_valid_metadata_on_a_graph_of_the_wrong_shape(tmp_path):
    path = identity_onnx(tmp_path / "identity.onnx", {METADATA_KEY: fixed_spec().to_json()})
    with pytest.raises(ModelLoadError, match="do not match its metadata") as info:
        Generator(path, device="cpu")
    assert_one_line(info.value)


# --------------------------------------------------------------------------- providers


def test_cpu_device_means_the_cpu_provider():
    assert choose_providers("cpu") == ["CPUExecutionProvider"]


def test_auto_is_cpu_only_without_a_gpu():
    from backline.models.runtime import _gpu_driver_present

    if _gpu_driver_present():
        pytest.skip("this machine has an NVIDIA driver")
    assert choose_providers("auto") == ["CPUExecutionProvider"]


def test_auto_device_is_quiet_on_stderr(tiny_model):
    """Loading on 'auto' must not let ONNX Runtime print its CUDA errors on a CPU machine."""
    code = (
        "from backline.models.runtime import Generator\n"
        f"g = Generator({str(tiny_model)!r}, device='auto')\n"
        "print(g.provider)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ExecutionProvider")
    for text in ("onnxruntime", "[E:", "Failed to load", "[W:"):
        assert text not in result.stderr, result.stderr


def test_the_provider_is_logged_once(tiny_model, tmp_path):
    melody = tmp_path / "tune.mid"
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    for pitch in (67, 69, 71, 72):
        track.append(mido.Message("note_on", note=pitch, velocity=80, time=0))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=480))
    midi.tracks.append(track)
    midi.save(str(melody))
    out = tmp_path / "out.mid"
    result = run_backline("accompany", melody, "-o", out, "--model", tiny_model)
    assert result.returncode == 0, result.stderr
    from backline.models.runtime import _gpu_driver_present

    if not _gpu_driver_present():
        assert result.stderr.count("runs on CPUExecutionProvider") == 1, result.stderr
    assert result.stderr.count(" runs on ") == 1, result.stderr
    assert "tiny" in result.stderr
    assert "Traceback" not in result.stderr
    # -q silences it.
    quiet = run_backline("-q", "accompany", melody, "-o", out, "--model", tiny_model)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


# --------------------------------------------------------------------------- registry


@pytest.fixture
def models_dir(tiny_model, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_model, folder / "tiny.onnx")
    (folder / "tiny.md").write_text("# tiny\n")
    monkeypatch.setenv("BACKLINE_MODELS", str(folder))
    return folder


def test_resolve_finds_a_model_by_name(models_dir):
    assert registry.resolve("tiny") == models_dir / "tiny.onnx"
    assert registry.search_dirs()[0] == models_dir
    generator = registry.load("tiny", device="cpu")
    assert generator.spec.name == "tiny"


def test_resolve_takes_a_path_as_it_is(models_dir):
    path = models_dir / "tiny.onnx"
    assert registry.resolve(str(path)) == path
    with pytest.raises(ModelLoadError, match="does not exist"):
        registry.resolve(str(models_dir / "other.onnx"))


def test_first_folder_wins(models_dir, tmp_path, monkeypatch):
    second = tmp_path / "second"
    second.mkdir()
    shutil.copy(models_dir / "tiny.onnx", second / "tiny.onnx")
    monkeypatch.setenv("BACKLINE_MODELS", f"{second}{__import__('os').pathsep}{models_dir}")
    assert registry.resolve("tiny") == second / "tiny.onnx"


def test_unknown_name_lists_the_installed_models(models_dir):
    with pytest.raises(ModelLoadError) as info:
        registry.resolve("mozart")
    message = assert_one_line(info.value)
    assert "no model named 'mozart'" in message
    assert "tiny" in message
    assert "backline models" in message


def test_list_models_reports_a_broken_file_without_crashing(models_dir):
    (models_dir / "broken.onnx").write_bytes(b"this is not onnx")
    entries = {e.path.name: e for e in registry.list_models() if e.path.parent == models_dir}
    assert set(entries) == {"broken.onnx", "tiny.onnx"}
    good, bad = entries["tiny.onnx"], entries["broken.onnx"]
    assert good.error is None and good.spec is not None and good.spec.name == "tiny"
    assert good.card == models_dir / "tiny.md"
    assert bad.spec is None and bad.card is None
    assert bad.error and "not a loadable ONNX model" in bad.error


def test_models_command_lists_good_and_broken_models(models_dir):
    (models_dir / "broken.onnx").write_bytes(b"this is not onnx")
    result = run_backline("models", env={"BACKLINE_MODELS": str(models_dir)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tiny = [line for line in lines if line.startswith("tiny ")]
    broken = [line for line in lines if line.startswith("broken ")]
    assert len(tiny) == 1 and "BROKEN" not in tiny[0] and "Alto, Tenor, Bass" in tiny[0]
    assert len(broken) == 1 and "BROKEN" in broken[0]
    assert "Traceback" not in result.stderr
    verbose = run_backline("models", "-v", env={"BACKLINE_MODELS": str(models_dir)})
    assert verbose.returncode == 0, verbose.stderr
    assert f"card: {models_dir / 'tiny.md'}" in verbose.stdout
    assert "epochs: 1" in verbose.stdout
