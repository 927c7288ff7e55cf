"""MIDI reading and writing against real files written with mido."""

from __future__ import annotations

import os
from pathlib import Path

import mido
import numpy as np
import pytest

from backline.models.midi import (
    MidiError,
    MidiScore,
    MidiTrack,
    midi_bytes,
    pick_melody_track,
    read_midi,
    read_midi_bytes,
    write_midi,
)
from backline.models.notes import Note, notes_to_roll, roll_to_notes
from backline.models.spec import TrackSpec

MELODY = TrackSpec("Melody", program=73, channel=0)
BASS = TrackSpec("Bass", program=33, channel=1)
PIANO = TrackSpec("Piano", program=0, channel=2)
DRUMS = TrackSpec("Drums", program=0, channel=9, is_drum=True)


def _key(notes):
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def _save(path: Path, tracks: list[list[mido.Message | mido.MetaMessage]], *, type: int = 1,
          tpb: int = 480) -> Path:
    midi = mido.MidiFile(type=type, ticks_per_beat=tpb)
    for messages in tracks:
        midi.tracks.append(mido.MidiTrack(messages))
    midi.save(path)
    return path


def _on(note, time=0, channel=0, velocity=90):
    return mido.Message("note_on", note=note, velocity=velocity, time=time, channel=channel)


def _off(note, time=0, channel=0):
    return mido.Message("note_off", note=note, velocity=0, time=time, channel=channel)


def _line(pitches, channel=0, beat_ticks=480, name=None, program=None):
    """A monophonic track of one-beat notes."""
    messages = []
    if name is not None:
        messages.append(mido.MetaMessage("track_name", name=name))
    if program is not None:
        messages.append(mido.Message("program_change", channel=channel, program=program))
    for pitch in pitches:
        messages += [_on(pitch, channel=channel), _off(pitch, beat_ticks, channel=channel)]
    return messages


# ------------------------------------------------------------------------ round trips


def test_write_read_round_trip_is_exact(tmp_path):
    melody = [Note(72, 0.0, 1.0, 100), Note(74, 1.0, 0.5, 80), Note(76, 1.5, 1.5, 110)]
    bass = [Note(36, 0.0, 3.0, 70), Note(43, 3.0, 3.0, 64)]
    piano = [Note(60, 0.0, 3.0, 50), Note(64, 0.0, 3.0, 51), Note(67, 0.25, 2.75, 52)]
    path = tmp_path / "out.mid"
    write_midi(path, (MELODY, melody), [(BASS, bass), (PIANO, piano)], tempo_bpm=90.0,
               time_signature=(3, 4), tempo_changes=[(3.0, 100.0)])

    score = read_midi(path)
    assert score.tempo_bpm == 90.0
    assert score.time_signature == (3, 4)
    assert score.ticks_per_beat == 480
    assert score.tempo_changes == [(0.0, 90.0), (3.0, 100.0)]
    assert [(t.name, t.program, t.channel, t.is_drum) for t in score.tracks] == [
        ("Melody", 73, 0, False),
        ("Bass", 33, 1, False),
        ("Piano", 0, 2, False),
    ]
    assert score.tracks[0].notes == _key(melody)
    assert score.tracks[1].notes == _key(bass)
    assert score.tracks[2].notes == _key(piano)
    assert score.length_beats == 6.0

    raw = mido.MidiFile(path)
    assert raw.type == 1 and len(raw.tracks) == 4
    assert not any(m.type.startswith("note") for m in raw.tracks[0])

    # Writing back what was read gives the same file.
    write_midi(tmp_path / "again.mid", None,
               [(TrackSpec(t.name, t.program, t.channel, t.is_drum), t.notes)
                for t in score.tracks],
               score.tempo_bpm, score.time_signature, score.ticks_per_beat,
               score.tempo_changes)
    assert (tmp_path / "again.mid").read_bytes() == path.read_bytes()


def test_drum_track_round_trip_and_muted_notes_skipped(tmp_path):
    path = tmp_path / "out.mid"
    kick = [Note(36, 0.0, 0.25, 120), Note(36, 1.0, 0.25, 120), Note(42, 0.5, 0.25, 60, True)]
    write_midi(path, (MELODY, [Note(70, 0.0, 2.0)]), [(DRUMS, kick)])
    drums = read_midi(path).tracks[1]
    assert (drums.name, drums.channel, drums.is_drum) == ("Drums", 9, True)
    assert drums.notes == [Note(36, 0.0, 0.25, 120), Note(36, 1.0, 0.25, 120)]


def test_repeated_notes_stay_apart(tmp_path):
    notes = [Note(60, 0.0, 1.0, 90), Note(60, 1.0, 1.0, 91), Note(60, 2.0, 0.5, 92)]
    path = tmp_path / "repeat.mid"
    write_midi(path, (MELODY, notes), [])
    assert read_midi(path).tracks[0].notes == notes

    # The note off of each note precedes the next note on at the same tick.
    kinds = [m.type for m in mido.MidiFile(path).tracks[1] if m.type.startswith("note")]
    assert kinds == ["note_on", "note_off", "note_on", "note_off", "note_on", "note_off"]


def test_bytes_variants_share_the_code_path(tmp_path):
    notes = [Note(65, 0.5, 1.5, 77)]
    data = midi_bytes((MELODY, notes), [], tempo_bpm=100.0)
    score = read_midi_bytes(data)
    assert score.tempo_bpm == 100.0
    assert score.tracks[0].notes == notes
    path = tmp_path / "x.mid"
    write_midi(path, (MELODY, notes), [], tempo_bpm=100.0)
    assert path.read_bytes() == data


def test_notes_roll_notes_exact_on_grid():
    notes = [
        Note(60, 0.0, 1.0), Note(60, 1.0, 1.0),  # repeated: kept apart by the onset
        Note(64, 0.25, 0.25), Note(64, 0.5, 0.75),
        Note(67, 0.0, 4.0), Note(72, 3.75, 0.25),
    ]
    roll = notes_to_roll(notes, n_steps=16, steps_per_beat=4, lowest_pitch=48, n_pitches=36)
    assert roll.frames[:, 60 - 48].sum() == 8
    assert np.flatnonzero(roll.onsets[:, 60 - 48]).tolist() == [0, 4]
    assert roll_to_notes(roll) == _key(notes)


def test_midi_to_roll_and_back(tmp_path):
    notes = [Note(62, 0.0, 0.5), Note(62, 0.5, 0.5), Note(66, 1.0, 2.0), Note(69, 1.0, 1.0)]
    path = tmp_path / "m.mid"
    write_midi(path, (MELODY, notes), [])
    read = read_midi(path).tracks[0].notes
    roll = notes_to_roll(read, n_steps=12, steps_per_beat=4, lowest_pitch=48, n_pitches=36)
    assert roll_to_notes(roll) == _key(notes)


# ------------------------------------------------------------------------ reading


def test_type0_splits_channels_into_tracks(tmp_path):
    messages = [
        mido.MetaMessage("track_name", name="Song"),
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(140)),
        mido.MetaMessage("time_signature", numerator=6, denominator=8),
        mido.Message("program_change", channel=0, program=40),
        mido.Message("program_change", channel=3, program=32),
        _on(76, channel=0), _on(40, channel=3), _on(36, channel=9),
        _off(36, 120, channel=9), _off(76, 360, channel=0), _off(40, 0, channel=3),
    ]
    score = read_midi(_save(tmp_path / "t0.mid", [messages], type=0, tpb=240))
    assert score.tempo_bpm == 140.0
    assert score.time_signature == (6, 8)
    assert [(t.name, t.channel, t.program, t.is_drum) for t in score.tracks] == [
        ("Song (Channel 1)", 0, 40, False),
        ("Song (Channel 4)", 3, 32, False),
        ("Song (Channel 10)", 9, 0, True),
    ]
    assert score.tracks[0].notes == [Note(76, 0.0, 2.0, 90)]
    assert score.tracks[1].notes == [Note(40, 0.0, 2.0, 90)]
    assert score.tracks[2].notes == [Note(36, 0.0, 0.5, 90)]


def test_note_on_velocity_zero_overlaps_and_unterminated_notes(tmp_path):
    messages = [
        _on(60), _on(60, 0, velocity=0),  # zero-length: dropped
        _on(62, 0), _on(62, 240),  # restruck before its note off: the first ends at 0.5
        _on(62, 240, velocity=0),  # ends the second
        _off(62, 0),  # no open note left: ignored
        _on(64, 0, velocity=70),  # never ended: runs to the end of the track
        mido.MetaMessage("end_of_track", time=960),
    ]
    score = read_midi(_save(tmp_path / "odd.mid", [messages]))
    (track,) = score.tracks
    assert (track.name, track.program) == ("Track 1", 0)
    assert track.notes == [Note(62, 0.0, 0.5, 90), Note(62, 0.5, 0.5, 90),
                           Note(64, 1.0, 2.0, 70)]
    assert score.tempo_bpm == 120.0 and score.time_signature == (4, 4)
    assert score.tempo_changes == []
    assert score.length_beats == 3.0


def test_program_from_another_track_and_fallback_names(tmp_path):
    setup = [mido.Message("program_change", channel=1, program=24)]
    path = _save(tmp_path / "p.mid", [setup, _line([60], channel=1), _line([50], channel=2)])
    score = read_midi(path)
    assert [(t.name, t.program) for t in score.tracks] == [("Track 2", 24), ("Track 3", 0)]


# ------------------------------------------------------------------------ melody choice


def _score(*tracks: MidiTrack) -> MidiScore:
    return MidiScore(list(tracks), 120.0, (4, 4), 480, [])


def _track(name, pitches, channel=0, is_drum=False):
    notes = [Note(p, float(i), 1.0) for i, p in enumerate(pitches)]
    return MidiTrack(name, 0, channel, is_drum, notes)


def test_pick_by_name(tmp_path):
    path = _save(tmp_path / "n.mid", [
        _line([40, 41], name="Bass Guitar"), _line([80], channel=1, name="Flute"),
        _line([60], channel=2, name="bass"),
    ])
    score = read_midi(path)
    assert pick_melody_track(score, "BASS").channel == 2  # exact match beats substring
    assert pick_melody_track(score, "guitar").name == "Bass Guitar"
    assert pick_melody_track(score, "flute").notes == [Note(80, 0.0, 1.0, 90)]


def test_pick_unknown_name_lists_tracks():
    score = _score(_track("Piano", [60]), _track("Strings", [70]))
    with pytest.raises(MidiError) as info:
        pick_melody_track(score, "violin")
    message = str(info.value)
    assert "'violin'" in message and "'Piano'" in message and "'Strings'" in message
    assert "--track" in message


def test_pick_by_rule():
    alto = _track("Alto", [70, 72])
    soprano = _track("Soprano", [65, 67])
    bass = _track("Bass", [40])
    drums = _track("Drums", [90, 90], channel=9, is_drum=True)
    # A melody-like name wins over a higher mean pitch.
    assert pick_melody_track(_score(bass, alto, soprano, drums)) is soprano
    # Without names: highest mean pitch; drums and empty tracks ignored.
    empty = MidiTrack("Lead", 0, 3, False, [])
    assert pick_melody_track(_score(bass, alto, drums, empty)) is alto
    # One melodic track: taken whatever its pitch.
    assert pick_melody_track(_score(bass, drums)) is bass
    # Equal mean pitch: more notes wins.
    few, many = _track("A", [60]), _track("B", [60, 60])
    assert pick_melody_track(_score(few, many)) is many


def test_pick_drums_only_and_drum_by_name():
    drums = _track("Drums", [36, 38], channel=9, is_drum=True)
    with pytest.raises(MidiError, match="only has drums"):
        pick_melody_track(_score(drums))
    with pytest.raises(MidiError, match="drum track"):
        pick_melody_track(_score(drums, _track("Keys", [60])), "drums")


# ------------------------------------------------------------------------ bad input


def _valid_file(tmp_path) -> Path:
    path = tmp_path / "good.mid"
    write_midi(path, (MELODY, [Note(60 + i % 12, i * 0.5, 0.5) for i in range(64)]), [])
    return path


def _error(path) -> str:
    with pytest.raises(MidiError) as info:
        read_midi(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and ";" in message
    return message


def test_missing_file(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope.mid")


def test_folder(tmp_path):
    assert "is a folder" in _error(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mid"
    path.write_bytes(b"")
    assert "empty (0 bytes)" in _error(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.mid"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    message = _error(path)
    assert "not a Standard MIDI File" in message and "export" in message


def test_truncated_file(tmp_path):
    path = _valid_file(tmp_path)
    data = path.read_bytes()
    for cut in (10, 30, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        assert "damaged MIDI file" in _error(path)


def test_bad_bytes_inside_a_track(tmp_path):
    path = _valid_file(tmp_path)
    data = bytearray(path.read_bytes())
    header_end = 14 + 8  # file header, then the first track's chunk header
    data[header_end:header_end + 4] = b"\xff\x51\x09\x00"  # tempo meta of a wrong length
    path.write_bytes(bytes(data))
    assert "damaged MIDI file" in _error(path)


def test_bytes_errors():
    with pytest.raises(MidiError, match="empty"):
        read_midi_bytes(b"")
    with pytest.raises(MidiError, match="bad header"):
        read_midi_bytes(b"RIFF1234")


def test_tracks_without_notes(tmp_path):
    path = _save(tmp_path / "silent.mid", [
        [mido.MetaMessage("set_tempo", tempo=500000)],
        [mido.MetaMessage("track_name", name="Piano"),
         mido.Message("program_change", program=3)],
    ])
    assert "contains no notes" in _error(path)


def test_zero_length_notes(tmp_path):
    path = _save(tmp_path / "zero.mid", [[_on(60), _off(60), _on(64), _on(64, velocity=0)]])
    assert "zero-length" in _error(path)


def test_drums_only(tmp_path):
    path = _save(tmp_path / "drums.mid", [_line([36, 38, 42], channel=9, name="Kit")])
    message = _error(path)
    assert "only has drums" in message and "channel 10" in message


def test_smpte_timing(tmp_path):
    path = _valid_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[12:14] = b"\xe7\x28"  # -25 fps, 40 ticks per frame
    path.write_bytes(bytes(data))
    assert "SMPTE" in _error(path)


# ------------------------------------------------------------------------ atomic write


def test_failed_write_leaves_existing_file_untouched(tmp_path):
    path = _valid_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_midi(path, (MELODY, [Note(60, 0.0, 1.0), Note(200, 1.0, 1.0)]), [])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["good.mid"]


def test_failure_while_saving_leaves_no_temp_file(tmp_path, monkeypatch):
    path = _valid_file(tmp_path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_midi(path, (MELODY, [Note(61, 0.0, 1.0)]), [])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["good.mid"]


def test_write_replaces_and_keeps_mode(tmp_path):
    path = _valid_file(tmp_path)
    os.chmod(path, 0o640)
    write_midi(path, (MELODY, [Note(61, 0.0, 1.0)]), [])
    assert read_midi(path).tracks[0].notes == [Note(61, 0.0, 1.0, 100)]
    assert path.stat().st_mode & 0o777 == 0o640
