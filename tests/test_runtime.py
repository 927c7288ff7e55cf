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
from backline.models.runtime import Generator, ModelLoadError, choose_providers
from backline.models.thresholds import binarise
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
    from backline.models.providers import gpu_driver_present as _gpu_driver_present

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
    from backline.models.providers import gpu_driver_present as _gpu_driver_present

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


# --------------------------------------------------------------------------- I/O binding


def random_windows(spec, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    melodies = (rng.random((batch, spec.window_steps, spec.n_pitches)) < 0.05).astype(np.float32)
    return melodies, rng.standard_normal((batch, spec.z_dim)).astype(np.float32)


def plain_run(generator: Generator, melodies: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model through plain session.run, in Generator.run's output layout."""
    spec = generator.spec
    shaped = melodies.reshape(-1, spec.bars, spec.steps_per_bar, spec.n_pitches)
    frames, onsets = generator.session.run(["accompaniment", "onsets"], {"melody": shaped, "z": z})
    shape = (melodies.shape[0], spec.n_tracks, spec.window_steps, spec.n_pitches)
    return frames.reshape(shape), onsets.reshape(shape)


def test_cpu_runs_through_io_binding_with_buffers_per_batch_size(tiny_model):
    from backline.models.session import BoundRunner

    generator = Generator(tiny_model, device="cpu")
    runner = generator._execution.runner
    assert isinstance(runner, BoundRunner) and runner.device == "cpu"
    for batch, seed in ((1, 0), (3, 1), (1, 2)):
        melodies, z = random_windows(generator.spec, batch, seed)
        probs = generator.run(melodies, z)
        frames, onsets = plain_run(generator, melodies, z)
        # The same session, the same inputs: bound buffers must give exactly session.run's answer.
        assert np.array_equal(probs.frames, frames) and np.array_equal(probs.onsets, onsets)
    assert runner.cached_batches() == [3, 1]  # one set of buffers per batch size, most recent last


def test_buffers_are_evicted_least_recently_used_first(tiny_model):
    from backline.models.session import MAX_CACHED_BATCHES

    generator = Generator(tiny_model, device="cpu", announce=False)
    sizes = list(range(1, MAX_CACHED_BATCHES + 3))
    for batch in sizes:
        melodies, z = random_windows(generator.spec, batch, batch)
        assert np.array_equal(generator.run(melodies, z).frames, plain_run(generator, melodies, z)[0])
    assert generator._execution.runner.cached_batches() == sizes[-MAX_CACHED_BATCHES:]


def test_returned_probabilities_are_not_overwritten_by_the_next_call(tiny_model):
    generator = Generator(tiny_model, device="cpu", announce=False)
    first_inputs = random_windows(generator.spec, 2, 10)
    first = generator.run(*first_inputs)
    kept = first.frames.copy(), first.onsets.copy()
    second = generator.run(*random_windows(generator.spec, 2, 11))  # same batch size: same buffers
    assert not np.array_equal(second.frames, kept[0])
    assert np.array_equal(first.frames, kept[0]) and np.array_equal(first.onsets, kept[1])


def test_concurrent_calls_on_one_generator_each_get_their_own_answer():
    """Two threads share one generator's bound buffers (the same batch size) while a third
    runs another generator: every answer must be the one for its own inputs. The shipped
    model is slow enough for calls to overlap (without the lock, many answers are wrong)."""
    import threading

    shared = registry.load("bach", device="cpu")
    other = registry.load("bach", device="cpu")
    cases = [random_windows(shared.spec, 2, seed) for seed in range(4)]
    expected = [plain_run(shared, *case) for case in cases]
    wrong: list[str] = []

    def hammer(generator: Generator, offset: int) -> None:
        for i in range(60):
            k = (i + offset) % len(cases)
            probs = generator.run(*cases[k])
            if not (np.array_equal(probs.frames, expected[k][0]) and np.array_equal(probs.onsets, expected[k][1])):
                wrong.append(f"call {i} of thread {offset} got another call's answer")

    threads = [threading.Thread(target=hammer, args=(g, o)) for g, o in ((shared, 0), (shared, 1), (other, 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []


# --------------------------------------------------------------------------- CUDA graph machinery on the CPU


def fixed_batch_opener(model_path):
    """Fixed-batch CPU sessions: the graph runner's path with everything but the CUDA
    provider's enable_cuda_graph, which needs a GPU."""
    from backline.models.providers import CPU, open_session

    data = model_path.read_bytes()
    opened: list[int] = []

    def open_fixed(size: int):
        opened.append(size)
        return open_session(data, [CPU], fixed_batch=size)

    return open_fixed, opened


def test_a_fixed_batch_session_has_static_shapes(tiny_model):
    from backline.models.providers import CPU, open_session

    session = open_session(tiny_model.read_bytes(), [CPU], fixed_batch=4)
    assert [i.shape[0] for i in session.get_inputs()] == [4, 4]
    assert [o.shape[0] for o in session.get_outputs()] == [4, 4]
    assert all(isinstance(d, int) for o in session.get_outputs() for d in o.shape)


def test_graph_runner_pads_a_batch_to_the_next_graph_size(tiny_model):
    from backline.models.execution import io_shapes
    from backline.models.session import GraphRunner

    generator = Generator(tiny_model, device="cpu", announce=False)
    spec = generator.spec
    open_fixed, opened = fixed_batch_opener(tiny_model)
    graphs = GraphRunner(open_fixed, *io_shapes(spec), device="cpu", sizes=(1, 4, 8), name="tiny")
    assert [graphs.size_for(b) for b in (1, 2, 4, 5, 8, 9)] == [1, 4, 4, 8, 8, None]
    for batch in (3, 2, 1):
        melodies, z = random_windows(spec, batch, batch)
        shaped = melodies.reshape(batch, spec.bars, spec.steps_per_bar, spec.n_pitches)
        frames, onsets = graphs.run({"melody": shaped, "z": z})
        want = plain_run(generator, melodies, z)
        assert frames.shape[0] == batch
        np.testing.assert_allclose(frames.reshape(want[0].shape), want[0], atol=1e-6)
        np.testing.assert_allclose(onsets.reshape(want[1].shape), want[1], atol=1e-6)
    assert opened == [4, 1] and graphs.captured_sizes() == [1, 4]  # batches 3 and 2 share the size-4 graph
    too_big = random_windows(spec, 9, 0)[0].reshape(9, spec.bars, spec.steps_per_bar, spec.n_pitches)
    assert graphs.run({"melody": too_big, "z": np.zeros((9, spec.z_dim), np.float32)}) is None


def test_graphs_that_cannot_start_fall_back_with_one_log_line(tiny_model, caplog):
    from backline.models.execution import io_shapes
    from backline.models.session import BoundRunner, Execution, GraphRunner

    generator = Generator(tiny_model, device="cpu", announce=False)
    spec = generator.spec

    def cannot_capture(size: int):
        raise RuntimeError("This session cannot use the graph capture feature as requested\nsecond line")

    graphs = GraphRunner(cannot_capture, *io_shapes(spec), device="cpu", name="tiny")
    execution = Execution(generator.session, BoundRunner(generator.session, *io_shapes(spec)), graphs=graphs)
    melodies, z = random_windows(spec, 2, 5)
    shaped = melodies.reshape(2, spec.bars, spec.steps_per_bar, spec.n_pitches)
    with caplog.at_level("INFO", logger="backline.models"):
        frames, _ = execution.run({"melody": shaped, "z": z})
        execution.run({"melody": shaped, "z": z})
    assert np.array_equal(frames.reshape(-1, spec.n_tracks, spec.window_steps, spec.n_pitches),
                          plain_run(generator, melodies, z)[0])
    lines = [r.getMessage() for r in caplog.records if "CUDA graphs" in r.getMessage()]
    assert lines == ["tiny: CUDA graphs turned off (This session cannot use the graph capture feature "
                     "as requested); running without them"]
    assert not graphs.active and "CUDA graphs" not in execution.label


def test_execution_runs_batches_over_the_limit_in_chunks(tiny_model):
    from backline.models.execution import io_shapes
    from backline.models.session import BoundRunner, Execution

    generator = Generator(tiny_model, device="cpu", announce=False)
    spec = generator.spec
    runner = BoundRunner(generator.session, *io_shapes(spec))
    execution = Execution(generator.session, runner, max_batch=4)
    melodies, z = random_windows(spec, 10, 3)
    frames, onsets = execution.run({"melody": melodies.reshape(10, spec.bars, spec.steps_per_bar, spec.n_pitches),
                                    "z": z})
    want = plain_run(generator, melodies, z)
    np.testing.assert_allclose(frames.reshape(want[0].shape), want[0], atol=1e-6)
    np.testing.assert_allclose(onsets.reshape(want[1].shape), want[1], atol=1e-6)
    assert runner.cached_batches() == [4, 2]


def test_the_label_names_what_runs_on_a_gpu():
    """The label users see (serve's banner, /backline/pong) from an execution's state."""
    from types import SimpleNamespace

    from backline.models.session import Execution

    def label(provider: str, device: str, graphs_active: bool | None, fp16: bool) -> str:
        session = SimpleNamespace(get_providers=lambda: [provider, "CPUExecutionProvider"])
        graphs = None if graphs_active is None else SimpleNamespace(active=graphs_active)
        return Execution(session, SimpleNamespace(device=device), graphs=graphs, fp16=fp16).label

    assert label("CPUExecutionProvider", "cpu", None, False) == "CPUExecutionProvider"
    assert label("CPUExecutionProvider", "cpu", None, True) == "CPUExecutionProvider (fp16)"
    assert label("CUDAExecutionProvider", "cuda", True, False) == "CUDAExecutionProvider (I/O binding, CUDA graphs)"
    assert label("CUDAExecutionProvider", "cuda", False, True) == "CUDAExecutionProvider (I/O binding, fp16)"
    assert label("TensorrtExecutionProvider", "cuda", None, True) == "TensorrtExecutionProvider (I/O binding, fp16)"


# --------------------------------------------------------------------------- devices and precision


def test_device_strings():
    from backline.models.providers import Device, DeviceError

    assert Device.parse("cuda") == Device("cuda", "fp32")
    assert Device.parse("TensorRT:FP16") == Device("tensorrt", "fp16")
    assert str(Device.parse("cuda:fp16")) == "cuda:fp16" and str(Device.parse("cpu:fp32")) == "cpu"
    for bad in ("gpu", "cuda:fp8", ""):
        with pytest.raises(DeviceError) as info:
            Device.parse(bad)
        assert "cuda:fp16" in assert_one_line(info.value)


@pytest.mark.parametrize("device", ["cuda", "tensorrt:fp16", "cuda:fp16"])
def test_gpu_devices_without_a_gpu_fall_back_quietly(tiny_model, device):
    """On a machine without a GPU a GPU device still loads, on the CPU in fp32, with log
    lines that say why and no error output from ONNX Runtime."""
    from backline.models.providers import gpu_driver_present

    if gpu_driver_present():
        pytest.skip("this machine has an NVIDIA driver")
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='backline: %(message)s', stream=sys.stderr)\n"
        "from backline.models.runtime import Generator\n"
        f"print(Generator({str(tiny_model)!r}, device={device!r}).provider)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "CPUExecutionProvider\n"
    assert "running on CPUExecutionProvider" in result.stderr
    for text in ("EP Error", "[E:", "Failed to load", "[W:", "Traceback"):
        assert text not in result.stderr + result.stdout, result.stderr
    assert result.stderr.count("runs on CPUExecutionProvider") == 1


def test_probe_windows_are_the_example_melodies_as_accompany_cuts_them(tiny_model):
    from backline.models.melody import prepare
    from backline.models.midi import pick_melody_track, read_midi
    from backline.models.precision import EXAMPLES, probe_windows

    spec = Generator(tiny_model, device="cpu", announce=False).spec
    expected = [w for path in sorted(EXAMPLES.glob("*.mid"))
                for w in prepare(spec, pick_melody_track(read_midi(path), None).notes).windows]
    assert len(expected) >= 3
    windows = probe_windows(spec, len(expected) + 2)
    assert windows.shape == (len(expected) + 2, spec.window_steps, spec.n_pitches) and windows.dtype == np.float32
    assert all(np.array_equal(windows[i], expected[i]) for i in range(len(expected)))
    assert np.array_equal(windows[len(expected)], expected[0])  # then round again
    assert windows.sum() > 0


def test_fp16_agreement_is_measured_against_fp32(tiny_model):
    from backline.models.precision import PROBE_WINDOWS
    from backline.models.agreement import measure_agreement

    agreement = measure_agreement(str(tiny_model), "cpu:fp16")
    assert agreement.n_windows == PROBE_WINDOWS
    # fp16 really ran (it differs from fp32 at all) and stays close to it.
    assert 0 < agreement.max_abs_diff < 0.05
    assert 0 <= agreement.flipped_fraction < 0.01
    fp32 = measure_agreement(str(tiny_model), "cpu")
    assert fp32.max_abs_diff == 0 and fp32.flipped_fraction == 0 and fp32.ok()


def test_fp16_that_changes_notes_is_refused_for_fp32(tiny_model, caplog, monkeypatch):
    from backline.models import precision
    from backline.models.agreement import measure_agreement

    accepted = Generator(tiny_model, device="cpu:fp16", announce=False)
    agreement = measure_agreement(str(tiny_model), "cpu:fp16")
    assert accepted.provider == ("CPUExecutionProvider (fp16)" if agreement.ok() else "CPUExecutionProvider")
    # The same check with no flips allowed and a difference required: fp16 is refused.
    monkeypatch.setattr(precision, "MAX_FLIPPED", -1.0)
    with caplog.at_level("INFO", logger="backline.models"):
        refused = Generator(tiny_model, device="cpu:fp16", announce=False)
    assert refused.provider == "CPUExecutionProvider"
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("tiny: CPUExecutionProvider (fp16) refused: ")
    assert lines[0].endswith("; running cpu instead")
    melodies, z = random_windows(refused.spec, 2, 0)
    assert np.array_equal(refused.run(melodies, z).frames, plain_run(refused, melodies, z)[0])


def test_fp16_without_its_converter_is_a_one_line_error(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    with pytest.raises(ModelLoadError) as info:
        Generator(tiny_model, device="cpu:fp16")
    message = assert_one_line(info.value)
    assert "pip install onnxconverter-common" in message and "fp32" in message


def test_device_and_precision_arguments_make_one_device_string():
    from backline.bridge.cli import build_parser

    parser = build_parser()
    for argv, device in ((["serve"], "auto"), (["serve", "--device", "cuda:fp16"], "cuda:fp16"),
                         (["serve", "--precision", "fp16", "--device", "tensorrt"], "tensorrt:fp16"),
                         (["bench", "--device", "cuda", "--precision", "fp16"], "cuda:fp16"),
                         (["accompany", "m.mid", "-o", "o.mid", "--device", "cuda:fp16", "--precision", "fp32"], "cuda")):
        assert parser.parse_args(argv).device == device, argv
    result = run_backline("serve", "--device", "gpu")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["backline: error: unknown device 'gpu'; use one of auto, cpu, cuda, "
                                          "tensorrt, optionally with a precision, e.g. cuda:fp16 "
                                          "(see: backline serve --help)"]
