"""Melodies the models were not trained for get a clear answer: meters (models/meter.py)
and registers far outside the one a model learned (models/melody.prepare).

Run on the shipped models and real MIDI files written with mido."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pytest

from backline.models import registry
from backline.models.accompaniment import accompany
from backline.models.melody import prepare
from backline.models.meter import Meter, MeterError, parse_meter
from backline.models.notes import Note
from backline.models.voicing import accents

from .conftest import run_backline


def write_melody(path: Path, pitches: list[int], meter: tuple[int, int] | None, ticks: int = 240) -> Path:
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    if meter is not None:
        track.append(mido.MetaMessage("time_signature", numerator=meter[0], denominator=meter[1]))
    for pitch in pitches:
        track += [mido.Message("note_on", note=pitch, velocity=80, time=0),
                  mido.Message("note_off", note=pitch, time=ticks)]
    midi.tracks.append(track)
    midi.save(path)
    return path


# --------------------------------------------------------------------------- meters


@pytest.mark.parametrize("text, bar, beat, compound", [
    ("4/4", 4, 1, False), ("3/4", 3, 1, False), ("2/2", 4, 2, False),
    ("6/8", 3, 1.5, True), ("12/8", 6, 1.5, True), ("9/8", 4.5, 1.5, True),
])
def test_bar_and_felt_beat_in_quarter_notes(text, bar, beat, compound):
    meter = parse_meter(text)
    assert (float(meter.bar_beats), float(meter.beat_beats), meter.compound) == (bar, beat, compound)


def test_learned_meters_pass_compound_ones_are_explained_and_the_rest_refused():
    assert Meter(4, 4).reading("pop") is None and Meter(3, 4).reading("pop") is None
    assert "2 beats of three eighths" in Meter(6, 8).reading("pop")
    for odd in (Meter(5, 4), Meter(7, 8), Meter(5, 8)):
        with pytest.raises(MeterError, match="--meter 4/4"):
            odd.reading("pop")


@pytest.mark.parametrize("text", ["4/3", "fast", "0/4", "4/4/4", ""])
def test_a_meter_that_is_not_one_is_refused(text):
    with pytest.raises(MeterError, match="write it like 4/4"):
        parse_meter(text)


def test_six_eight_accents_fall_on_the_dotted_beats():
    steps = np.arange(12)  # one bar of 6/8 on a grid of 4 steps per quarter
    bar, beat = Meter(6, 8).steps(4)
    assert (bar, beat) == (12, 6)
    lean = accents(steps, 4, bar, beat)
    assert lean[0] > lean[6] > lean[2]  # downbeat, second dotted beat, an eighth
    assert lean[6] > lean[4]  # the third quarter of the bar is no beat in 6/8
    simple = accents(steps, 4, 12)  # the same bar read as 3/4
    assert simple[4] == simple[8] and simple[6] < simple[4]


def test_a_six_eight_melody_is_accompanied_with_a_note(tmp_path):
    melody = write_melody(tmp_path / "six-eight.mid", [67, 69, 71, 72, 71, 69] * 4, (6, 8))
    result = run_backline("accompany", str(melody), "-o", str(tmp_path / "out.mid"), "--model", "pop")
    assert result.returncode == 0, result.stderr
    assert "backline: note: the melody is in 6/8" in result.stderr
    assert (tmp_path / "out.mid").exists()


def test_a_seven_eight_melody_is_refused_in_one_line_and_meter_overrides(tmp_path):
    melody = write_melody(tmp_path / "seven-eight.mid", [67, 69, 71, 72, 71, 69, 67] * 4, (7, 8))
    out = tmp_path / "out.mid"
    refused = run_backline("accompany", str(melody), "-o", str(out))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("backline: error: the melody is in 7/8")
    assert not out.exists()
    forced = run_backline("accompany", str(melody), "-o", str(out), "--meter", "4/4")
    assert forced.returncode == 0, forced.stderr
    assert out.exists() and "note:" not in forced.stderr


# --------------------------------------------------------------------------- registers


def test_an_ordinary_melody_gets_no_notice():
    spec = registry.load("bach").spec
    melody = [Note(p, float(i), 1.0, 90) for i, p in enumerate([67, 69, 71, 72, 74, 72, 71, 69])]
    assert prepare(spec, melody).notices == ()


@pytest.mark.parametrize("model", ["bach", "pop"])
def test_a_melody_out_of_reach_is_moved_by_octaves_said_so_and_the_band_stays_in_range(model):
    generator = registry.load(model)
    melody = [Note(p, float(i), 1.0, 90) for i, p in enumerate([120, 122, 121, 120] * 4)]
    result = accompany(generator, melody)
    [notice] = result.notices
    assert "MIDI 120-122" in notice and "octaves higher than the register" in notice
    assert "kept in its instrument's range" in notice
    sounding = 0
    for track, notes in result.tracks:
        low, high = track.playable_range
        assert all(low <= n.pitch <= high for n in notes), (track.name, [n.pitch for n in notes])
        sounding += len(notes)
    assert sounding > 0


def test_a_low_melody_notice_says_it_was_moved_up():
    spec = registry.load("bach").spec
    melody = [Note(p, float(i), 1.0, 90) for i, p in enumerate([24, 26, 28, 26] * 4)]
    [notice] = prepare(spec, melody).notices
    assert "lower than the register" in notice and "octaves up" in notice and "MIDI 24-28" in notice
