"""Bad input through the real command line: one line on stderr, `backline: error: ...`,
a non-zero exit, no traceback, and the output file neither created nor overwritten."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pytest

from .conftest import run_backline

KNOWN = b"the user's earlier accompaniment\n"


def write_notes(path: Path, notes: list[tuple[int, int, int]], channel: int = 0) -> Path:
    """A type 1 file with one track of (pitch, start tick, length in ticks) notes."""
    midi = mido.MidiFile(type=1, ticks_per_beat=480)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name="Tune"))
    events = []
    for pitch, start, length in notes:
        events.append((start, 1, mido.Message("note_on", channel=channel, note=pitch, velocity=80)))
        # At one tick note offs go first (a repeated note stays two notes), except the
        # note off of a zero-length note, which must follow its own note on.
        order = 2 if length == 0 else 0
        events.append((start + length, order, mido.Message("note_off", channel=channel, note=pitch)))
    events.sort(key=lambda e: (e[0], e[1]))
    last = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - last))
        last = tick
    midi.tracks.append(track)
    midi.save(str(path))
    return path


def good_melody(path: Path) -> Path:
    return write_notes(path, [(67 + d, i * 480, 480) for i, d in enumerate([0, 2, 4, 5, 7, 5, 4, 2])])


def corrupt_midi(folder: Path) -> list[str]:
    path = folder / "noise.mid"
    path.write_bytes(np.random.default_rng(1).bytes(1000))
    return [str(path)]


def damaged_midi(folder: Path) -> list[str]:
    """A real header, then a truncated track."""
    full = good_melody(folder / "full.mid").read_bytes()
    path = folder / "damaged.mid"
    path.write_bytes(full[: len(full) // 2])
    return [str(path)]


def empty_midi(folder: Path) -> list[str]:
    path = folder / "empty.mid"
    path.write_bytes(b"")
    return [str(path)]


def drums_only(folder: Path) -> list[str]:
    return [str(write_notes(folder / "drums.mid", [(36, i * 480, 240) for i in range(8)], channel=9))]


def zero_length_notes(folder: Path) -> list[str]:
    return [str(write_notes(folder / "zero.mid", [(60 + i, i * 480, 0) for i in range(8)]))]


def no_notes(folder: Path) -> list[str]:
    return [str(write_notes(folder / "silent.mid", []))]


def out_of_range(folder: Path) -> list[str]:
    return [str(write_notes(folder / "wide.mid", [(20, 0, 480), (110, 480, 480)]))]


def missing_melody(folder: Path) -> list[str]:
    return [str(folder / "not-there.mid")]


def melody_is_a_folder(folder: Path) -> list[str]:
    (folder / "folder.mid").mkdir()
    return [str(folder / "folder.mid")]


def missing_model(folder: Path) -> list[str]:
    return [str(good_melody(folder / "tune.mid")), "--model", "/nonexistent/x.onnx"]


def corrupt_model(folder: Path) -> list[str]:
    bad = folder / "bad.onnx"
    bad.write_bytes(np.random.default_rng(2).bytes(3000))
    return [str(good_melody(folder / "tune.mid")), "--model", str(bad)]


def unknown_model_name(folder: Path) -> list[str]:
    return [str(good_melody(folder / "tune.mid")), "--model", "no-such-model-name"]


def threshold_too_high(folder: Path) -> list[str]:
    return [str(good_melody(folder / "tune.mid")), "--threshold", "1.5"]


def threshold_zero(folder: Path) -> list[str]:
    return [str(good_melody(folder / "tune.mid")), "--threshold", "0"]


def unknown_track(folder: Path) -> list[str]:
    return [str(good_melody(folder / "tune.mid")), "--track", "Bassoon"]


CASES = {
    "corrupt MIDI": (corrupt_midi, "not a Standard MIDI File"),
    "damaged MIDI": (damaged_midi, "damaged MIDI file"),
    "empty MIDI": (empty_midi, "empty (0 bytes)"),
    "drums only": (drums_only, "only has drums"),
    "zero-length notes": (zero_length_notes, "zero-length notes"),
    "no notes": (no_notes, "contains no notes"),
    "melody out of range": (out_of_range, "spans 91 semitones"),
    "missing melody": (missing_melody, "does not exist"),
    "melody is a folder": (melody_is_a_folder, "is a folder"),
    "missing model": (missing_model, "/nonexistent/x.onnx does not exist"),
    "corrupt model": (corrupt_model, "not a loadable ONNX model"),
    "unknown model name": (unknown_model_name, "no model named 'no-such-model-name'"),
    "threshold 1.5": (threshold_too_high, "argument --threshold: '1.5' is not a number > 0 and < 1"),
    "threshold 0": (threshold_zero, "argument --threshold: '0' is not a number > 0 and < 1"),
    "unknown track": (unknown_track, "no track is named 'Bassoon'"),
}


def error_lines(stderr: str) -> list[str]:
    """stderr without the one line that names the model's execution provider."""
    return [line for line in stderr.splitlines() if not line.startswith("backline: model ")]


@pytest.mark.parametrize("existing_output", [False, True], ids=["no output yet", "output exists"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_touches_no_output(case, existing_output, tiny_model, tmp_path):
    make, expected = CASES[case]
    args = make(tmp_path)
    if "--model" not in args:
        args += ["--model", str(tiny_model)]
    out = tmp_path / "out" / "accompanied.mid"
    out.parent.mkdir()
    if existing_output:
        out.write_bytes(KNOWN)
    result = run_backline("accompany", args[0], "-o", out, *args[1:])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("backline: error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert result.stdout == ""
    if existing_output:
        assert out.read_bytes() == KNOWN
    else:
        assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == ([out.name] if existing_output else [])


def test_midi_problems_are_found_before_the_model_loads(tmp_path):
    """A bad melody is reported even when the model is broken too: the MIDI file is
    read first, so the user fixes the input they are looking at."""
    args = corrupt_midi(tmp_path)
    result = run_backline("accompany", args[0], "-o", tmp_path / "o.mid", "--model", "/nonexistent/x.onnx")
    assert result.returncode != 0
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert "not a Standard MIDI File" in result.stderr
    assert "backline: model " not in result.stderr


@pytest.mark.parametrize("target", ["missing folder", "a folder"])
def test_unwritable_output_is_one_line(target, tiny_model, tmp_path):
    melody = good_melody(tmp_path / "tune.mid")
    if target == "missing folder":
        out = tmp_path / "no" / "such" / "folder" / "out.mid"
    else:
        out = tmp_path / "outdir"
        out.mkdir()
    result = run_backline("accompany", melody, "-o", out, "--model", tiny_model)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    wanted = "backline: error: cannot write" if target == "missing folder" else "backline: error: argument -o/--output"
    assert len(lines) == 1 and lines[0].startswith(wanted), result.stderr
    if target == "a folder":
        assert out.is_dir() and list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["outdir", "tune.mid"] if target == "a folder" else ["tune.mid"]
    )


def test_good_input_still_works(tiny_model, tmp_path):
    """The control: the same helpers make a file that is accompanied."""
    melody = good_melody(tmp_path / "tune.mid")
    out = tmp_path / "out.mid"
    out.write_bytes(KNOWN)
    result = run_backline("accompany", melody, "-o", out, "--model", tiny_model)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() != KNOWN and out.read_bytes().startswith(b"MThd")


def test_a_very_low_melody_gives_no_notes_outside_midi(tmp_path):
    """Regression: a melody moved up by several octaves into the model's range moves the
    accompaniment back down by as much, below MIDI pitch 0; writing such notes crashed
    with mido's 'data byte must be in range 0..127'. Now every part is moved by octaves
    into its instrument's range (models/voicing.py), so they come back playable."""
    from backline.models.midi import read_midi

    from .fake_models import write_fixed_model

    model = tmp_path / "fixed.onnx"
    write_fixed_model(model)  # plays pitches 48 and 55; melody range 60..80
    melody = write_notes(tmp_path / "low.mid", [(10 + i % 3, i * 480, 480) for i in range(8)])
    out = tmp_path / "out.mid"
    result = run_backline("accompany", melody, "-o", out, "--model", model)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    score = read_midi(out)
    assert [n.pitch for n in score.tracks[0].notes] == [10, 11, 12, 10, 11, 12, 10, 11]
    # Moved up 60 semitones, 48 and 55 come back as -12 and -5; the decoder folds them by
    # octaves into the instruments' ranges (programs 32 and 48 here).
    from backline.models.instruments import playable_range

    accompaniment = score.tracks[1:]
    assert accompaniment and all(t.notes for t in accompaniment)
    for track in accompaniment:
        low, high = playable_range(track.program)
        assert all(low <= n.pitch <= high for n in track.notes), (track.name, [n.pitch for n in track.notes])
