"""Multi-track training data (training/data): roles, the melody rule, meters, keys, drums,
windows, the split, the cache, the summary and bad input.

Real multi-track MIDI comes from the Debian package openttd-openmsx (a missing file fails
the test with the package to install); small mido files written into tmp_path set up the
precise situations. Every build caches into tmp_path, never into ~/.cache.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np
import pytest

from backline.models.errors import BacklineError
from backline.models.midi import read_midi
from backline.models.notes import Note
from backline.training.data import build
from backline.training.data.build import DataError, data_summary, load_data, load_training_data
from backline.training.data.genres import DRUM_PITCHES, DRUM_VOICES, GENRES, family_role, quartet_role
from backline.training.data.grid import LOWEST_PITCH, N_PITCHES, STEPS_PER_BEAT, PieceRolls, SkipPiece
from backline.training.data.melody import choose_melody, split_top_line
from backline.training.data.pieces import convert_score
from backline.training.data.split import is_validation, split_by_piece, validation_keys
from backline.training.data.windows import windows_from_pieces

from .conftest import run_backline
from .debian_music import openmsx

POP, SYMPHONY = GENRES["pop"], GENRES["symphony"]
C_MAJOR = {0, 2, 4, 5, 7, 9, 11}
# Six short openmsx songs; ttsong_iii has two segments (a 2/4 bar splits it).
SHORT_SONGS = ("coconut_run2.mid", "ultimate_run.mid", "train_filled_with_cash.mid", "ttsong_iv_imuh3.mid",
               "careless_perc_redfarn.mid", "ttsong_iii_imuh3.mid")




@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch, tmp_path):
    """Whatever a test forgets to pass, nothing lands in ~/.cache."""
    monkeypatch.setenv("BACKLINE_CACHE", str(tmp_path / "env-cache"))


# --------------------------------------------------------------------------- hand-made MIDI


@dataclass
class Part:
    name: str
    program: int
    channel: int
    notes: list  # (pitch, start beat, beats, velocity)


def write_mid(path: Path, parts: list[Part], *, meters=((0, 4, 4),), tempos=((0, 120.0),), tpb: int = 480) -> Path:
    """A type 1 file: a conductor track (meters, tempi), then one track per part."""
    midi = mido.MidiFile(type=1, ticks_per_beat=tpb)
    conductor = [(round(b * tpb), 0, mido.MetaMessage("time_signature", numerator=n, denominator=d))
                 for b, n, d in meters]
    conductor += [(round(b * tpb), 1, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))) for b, bpm in tempos]
    midi.tracks.append(_track(conductor))
    for part in parts:
        events = [(0, -2, mido.MetaMessage("track_name", name=part.name)),
                  (0, -1, mido.Message("program_change", channel=part.channel, program=part.program))]
        for pitch, start, beats, velocity in part.notes:
            events.append((round(start * tpb), 1, mido.Message("note_on", channel=part.channel, note=pitch,
                                                               velocity=velocity)))
            events.append((round((start + beats) * tpb), 0, mido.Message("note_off", channel=part.channel,
                                                                         note=pitch)))
        midi.tracks.append(_track(events))
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(str(path))
    return path


def _track(events) -> mido.MidiTrack:
    track, last = mido.MidiTrack(), 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - last))
        last = tick
    return track


# Eight bars of C F G C C F G C: a tune, bass roots, triads, a drum groove.
BARS = (0, 5, 7, 0, 0, 5, 7, 0)  # chord roots as pitch classes
TUNE = {0: (72, 76, 79, 76), 5: (72, 77, 81, 77), 7: (74, 79, 83, 79)}
TRIAD = {0: (48, 52, 55), 5: (53, 57, 60), 7: (55, 59, 62)}


def tune(shift: int = 0, velocities=(100, 70, 85, 60)) -> list:
    return [(p + shift, 4 * bar + beat, 1.0, velocities[beat])
            for bar, root in enumerate(BARS) for beat, p in enumerate(TUNE[root])]


def bass_line(shift: int = 0) -> list:
    return [(36 + root + shift, 4 * bar + half, 2.0, 90) for bar, root in enumerate(BARS) for half in (0, 2)]


def triads(shift: int = 0) -> list:
    return [(p + shift, 4 * bar, 4.0, 70) for bar, root in enumerate(BARS) for p in TRIAD[root]]


def groove(bars: int = 8, pitches=(36, 38, 42)) -> list:
    kick, snare, hat = pitches
    notes = []
    for bar in range(bars):
        for beat in range(4):
            notes.append((kick if beat % 2 == 0 else snare, 4 * bar + beat, 0.5, 110))
            notes += [(hat, 4 * bar + beat + h, 0.25, 80) for h in (0.0, 0.5)]
    return notes


def band_song(path: Path, shift: int = 0, **kwargs) -> Path:
    return write_mid(path, [
        Part("Flute", 73, 0, tune(shift)),
        Part("Bass", 33, 1, bass_line(shift)),
        Part("Piano", 0, 2, triads(shift)),
        Part("Kit", 0, 9, groove()),
    ], **kwargs)


def convert(path: Path, genre=POP, melody_track: str | None = None):
    return convert_score(read_midi(path, lenient=True), path.name, genre, melody_track)


def role_row(genre, key: str) -> int:
    """The row of a role in the rolls (the melody is row 0)."""
    return 1 + [r.key for r in genre.roles].index(key)


def cells(roll: np.ndarray) -> set[tuple[int, int]]:
    """(step, MIDI pitch) of every True cell of a `[T, P]` roll."""
    steps, columns = np.nonzero(roll)
    return {(int(s), int(c) + LOWEST_PITCH) for s, c in zip(steps, columns)}


def onset_cells(notes, shift: int = 0) -> set[tuple[int, int]]:
    return {(round(start * STEPS_PER_BEAT), pitch + shift) for pitch, start, *_ in notes}


# --------------------------------------------------------------------------- 1. roles


@pytest.mark.parametrize("program,role", [
    (0, "keys"), (4, "keys"), (8, "keys"), (13, "keys"), (16, "keys"), (21, "keys"),  # piano, chromatic, organ
    (24, "guitar"), (29, "guitar"), (104, "guitar"), (107, "guitar"),  # guitar, ethnic plucked
    (32, "bass"), (33, "bass"), (38, "bass"),
    (40, "pad"), (48, "pad"), (52, "pad"), (56, "pad"), (61, "pad"), (65, "pad"), (73, "pad"), (79, "pad"),
    (88, "pad"), (95, "pad"),  # strings, ensemble, brass, reed, pipe, synth pad
    (80, None), (81, None), (87, None),  # synth lead: a melody, never a role
    (96, None), (103, None),  # synth effects
    (112, None), (118, None), (119, None),  # percussive
    (120, None), (125, None), (127, None),  # sound effects
])
def test_family_role_of_every_gm_family(program, role):
    assert family_role(program) == role
    for genre in ("pop", "rock", "jazz", "band"):
        index = GENRES[genre].role_index(program, is_drum=False)
        assert (index is None) == (role is None)
        if role is not None:
            assert GENRES[genre].roles[index].key == role


def test_every_program_maps_by_its_family_alone():
    for program in range(128):
        family_start = program - program % 8
        assert family_role(program) == family_role(family_start), program


def test_drums_come_from_channel_10_whatever_the_program(tmp_path):
    for genre in ("pop", "rock", "jazz", "band"):
        roles = GENRES[genre].roles
        for program in (0, 16, 33, 81, 127):
            assert roles[GENRES[genre].role_index(program, is_drum=True)].key == "drums"
        assert roles[0].track.is_drum and roles[0].track.channel == 9
    # A bass program on channel 10 plays drums; the same program elsewhere plays bass.
    path = write_mid(tmp_path / "kit.mid", [
        Part("Flute", 73, 0, tune()),
        Part("Kit on a bass patch", 33, 9, groove()),
        Part("Bass", 33, 1, bass_line()),
    ])
    score = read_midi(path)
    assert [t.is_drum for t in score.tracks] == [False, True, False]
    piece = convert(path).segments[0]
    assert cells(piece.onsets[role_row(POP, "drums")]) == onset_cells(groove())
    assert cells(piece.onsets[role_row(POP, "bass")]) == onset_cells(bass_line(), piece.shift)


def test_quartet_mapping():
    assert [quartet_role(p) for p in (40, 41, 42, 43)] == ["violin2", "viola", "cello", "cello"]
    for program in (0, 24, 33, 44, 48, 56, 73, 81):
        assert quartet_role(program) is None and SYMPHONY.role_index(program, is_drum=False) is None
    assert SYMPHONY.role_index(0, is_drum=True) is None  # a quartet has no drums
    assert [t.name for t in SYMPHONY.tracks] == ["Violin II", "Viola", "Cello"]
    assert SYMPHONY.tracks[SYMPHONY.role_index(43, False)].name == "Cello"


def test_two_guitar_tracks_merge_into_one_guitar_role(tmp_path):
    rhythm = [(52, 4 * bar, 1.0, 90) for bar in range(8)]
    lead = [(59, 4 * bar + 2, 1.0, 90) for bar in range(8)]
    path = write_mid(tmp_path / "guitars.mid", [
        Part("Flute", 73, 0, tune()),
        Part("Rhythm Guitar", 24, 2, rhythm),
        Part("Clean Guitar", 27, 3, lead),
        Part("Bass", 33, 1, bass_line()),
    ])
    piece = convert(path).segments[0]
    assert piece.frames.shape[0] == 1 + len(POP.roles)
    assert cells(piece.onsets[role_row(POP, "guitar")]) == onset_cells(rhythm + lead, piece.shift)
    assert not piece.frames[role_row(POP, "keys")].any() and not piece.frames[role_row(POP, "pad")].any()


def test_the_melody_is_never_also_a_role(tmp_path):
    # The tune is a piano (a keys program) and a second piano plays chords: the tune must
    # be in the melody row only, the chords alone in the keys row.
    path = write_mid(tmp_path / "pianos.mid", [
        Part("Piano RH", 0, 0, tune()),
        Part("Piano LH", 0, 1, triads()),
        Part("Kit", 0, 9, groove()),
    ])
    conversion = convert(path)
    assert conversion.melody_name == "Piano RH" and conversion.melody.rule == "register"
    piece = conversion.segments[0]
    melody = onset_cells(tune(), piece.shift)
    assert cells(piece.onsets[0]) == melody
    assert cells(piece.onsets[role_row(POP, "keys")]) == onset_cells(triads(), piece.shift)
    for row in range(1, piece.onsets.shape[0]):
        assert not melody & cells(piece.onsets[row]), POP.roles[row - 1].key


# --------------------------------------------------------------------------- 2. the melody rule


def test_a_name_hint_wins_over_register(tmp_path):
    low_lead = [(p - 12, s, d, v) for p, s, d, v in tune()]
    path = write_mid(tmp_path / "lead.mid", [
        Part("Flute", 73, 0, tune()),
        Part("Lead Synth", 81, 1, low_lead),
        Part("Bass", 33, 2, bass_line()),
    ])
    score = read_midi(path)
    assert score.tracks[1].mean_pitch < score.tracks[0].mean_pitch
    choice = choose_melody(score)
    assert (choice.index, choice.rule) == (1, "name")
    conversion = convert(path)
    piece = conversion.segments[0]
    assert conversion.melody_name == "Lead Synth"
    assert cells(piece.onsets[0]) == onset_cells(low_lead, piece.shift)
    # The flute, no longer the melody, is accompaniment (pipe -> pad).
    assert cells(piece.onsets[role_row(POP, "pad")]) == onset_cells(tune(), piece.shift)
    # A synth lead that is not the melody plays in no role (synth leads carry tunes).
    piece = convert(path, melody_track="Flute").segments[0]
    assert cells(piece.onsets[0]) == onset_cells(tune(), piece.shift)
    lead = onset_cells(low_lead, piece.shift)
    for row in range(1, piece.onsets.shape[0]):
        assert not lead & cells(piece.onsets[row]), POP.roles[row - 1].key


def register_parts() -> list[Part]:
    return [
        Part("Chords", 0, 2, [(p + 28, s, d, v) for p, s, d, v in triads()]),  # high, but chords
        Part("Flute", 73, 0, tune()),  # the tune
        Part("Piccolo", 72, 3, [(88, 0, 1.0, 90), (86, 1, 1.0, 90)]),  # higher, but one bar of eight
        Part("Synth Bass", 38, 1, [(p + 48, s, d, v) for p, s, d, v in bass_line()]),  # higher, but a bass
        Part("Kit", 0, 9, [(81, b, 0.5, 90) for b in range(32)]),  # triangle: highest, but drums
    ]


def test_without_a_name_the_highest_monophonic_track_that_is_neither_drums_nor_bass(tmp_path):
    path = write_mid(tmp_path / "register.mid", register_parts())
    score = read_midi(path)
    flute = next(i for i, t in enumerate(score.tracks) if t.name == "Flute")
    assert all(t.mean_pitch > score.tracks[flute].mean_pitch for t in score.tracks if t.name != "Flute")
    choice = choose_melody(score)
    assert (choice.index, choice.rule) == (flute, "register")
    piece = convert(path).segments[0]
    assert cells(piece.onsets[0]) == onset_cells(tune(), piece.shift)


def test_a_chordal_only_file_falls_back_to_the_top_line(tmp_path):
    # A piano plays the tune as the top of three-note chords; nothing else but a bass.
    chords = [(p - d, s, 1.0, v) for p, s, _, v in tune() for d in (0, 5, 9)]
    path = write_mid(tmp_path / "chordal.mid", [Part("Piano", 0, 0, chords), Part("Bass", 33, 1, bass_line())])
    conversion = convert(path)
    assert conversion.melody.rule == "top line" and conversion.melody.top_line
    assert conversion.melody_name == "Piano"
    piece = conversion.segments[0]
    assert cells(piece.onsets[0]) == onset_cells(tune(), piece.shift)
    under = [n for n in chords if (n[0], n[1]) not in {(p, s) for p, s, *_ in tune()}]
    assert len(under) == 2 * len(tune())
    keys = cells(piece.onsets[role_row(POP, "keys")])
    assert keys == onset_cells(under, piece.shift)
    assert not keys & cells(piece.onsets[0])


def test_split_top_line_cuts_and_keeps_the_line_on_top():
    notes = [Note(72, 0.0, 4.0), Note(60, 0.0, 4.0), Note(64, 1.0, 1.0), Note(76, 2.0, 1.0), Note(74, 2.5, 1.0)]
    top, rest = split_top_line(notes)
    # 64 starts under the held 72: accompaniment. 76 starts higher: it cuts 72 short. 74
    # starts under the still sounding 76: accompaniment.
    assert top == [Note(72, 0.0, 2.0), Note(76, 2.0, 1.0)]
    assert sorted(rest) == sorted([Note(60, 0.0, 4.0), Note(64, 1.0, 1.0), Note(74, 2.5, 1.0)])


def test_melody_track_by_name_and_by_index(tmp_path):
    path = write_mid(tmp_path / "register.mid", register_parts())
    names = [t.name for t in read_midi(path).tracks]
    for override, expected in [("chords", "Chords"), ("PICC", "Piccolo"), ("1", names[1]), ("0", names[0])]:
        conversion = convert(path, melody_track=override)
        assert conversion.melody.rule == "override"
        assert conversion.melody_name == expected, override
    piece = convert(path, melody_track="Piccolo").segments[0]
    # (moved by whole octaves where the key's shift takes it off the model's grid)
    assert {(step, pitch % 12) for step, pitch in cells(piece.onsets[0])} == \
        {(0, (88 + piece.shift) % 12), (4, (86 + piece.shift) % 12)}
    # The flute, no longer the melody, plays in the pad (pipe family); the piccolo (pipe
    # too), now the melody, does not.
    assert cells(piece.onsets[role_row(POP, "pad")]) == onset_cells(tune(), piece.shift)
    for bad in ("Tuba", "9"):
        with pytest.raises(SkipPiece) as info:
            convert(path, melody_track=bad)
        assert info.value.reason == "no melody candidate" and bad in info.value.detail


def test_melody_track_reaches_the_build_and_its_report(tmp_path):
    folder = tmp_path / "data"
    write_mid(folder / "register.mid", register_parts())
    band_song(folder / "band.mid")
    by_name, _ = load_training_data([str(folder)], POP, melody_track="flute", cache_dir=tmp_path, progress=False)
    assert by_name.info["melody"] == {"band.mid": "'Flute' (by override)", "register.mid": "'Flute' (by override)"}
    # Only register.mid has a "chords" track: one usable piece is too few to hold one out.
    with pytest.raises(DataError, match="one usable piece"):
        load_training_data([str(folder)], POP, melody_track="chords", cache_dir=tmp_path, progress=False)
    report = build.BuildReport()
    sources, _, _ = build.path_sources([str(folder)])
    build.convert_sources(sources, POP, "chords", report, progress=False)
    assert report.melody == {"register.mid": "'Chords' (by override)"}
    [skipped] = report.skipped["no melody candidate"]
    assert skipped.startswith("band.mid (--melody-track 'chords' names no melodic track (tracks: 'Flute', ")
    plain, _ = load_training_data([str(folder)], POP, cache_dir=tmp_path, progress=False)
    assert plain.info["melody"] == {"band.mid": "'Flute' (by register)", "register.mid": "'Flute' (by register)"}
    assert by_name.info["cache"] != plain.info["cache"]


def test_drums_and_bass_only_is_no_melody_candidate(tmp_path):
    path = write_mid(tmp_path / "rhythm.mid", [Part("Bass", 33, 1, bass_line()), Part("Kit", 0, 9, groove())])
    with pytest.raises(SkipPiece) as info:
        convert(path)
    assert info.value.reason == "no melody candidate"
    assert "--melody-track" in info.value.detail


@pytest.fixture(scope="module")
def real_pop(tmp_path_factory):
    """(train, validation) for pop from six short openmsx songs, cached in tmp."""
    paths = [str(openmsx(name)) for name in SHORT_SONGS]
    return load_training_data(paths, POP, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_the_melody_of_real_songs_is_neither_drums_nor_bass(real_pop):
    train, _ = real_pop
    chosen = train.info["melody"]
    assert set(chosen) == set(SHORT_SONGS)
    for name in SHORT_SONGS:
        score = read_midi(openmsx(name), lenient=True)
        track_name, rule = chosen[name].rsplit(" (by ", 1)
        [track] = [t for t in score.tracks if repr(t.name) == track_name]
        assert not track.is_drum and not 32 <= track.program <= 39, (name, chosen[name])
        assert rule.rstrip(")") in ("name", "register", "top line")
        assert score.tracks[choose_melody(score).index] is track
    # ultimate_run: its bass (program 33) and a chordal synth (program 80) sit higher on
    # average than the guitar that plays the tune.
    assert chosen["ultimate_run.mid"] == "'Spår 2' (by register)"


# --------------------------------------------------------------------------- 3. windows and structure


def test_pop_windows_are_whole_bars_of_real_songs(real_pop):
    for data in real_pop:
        assert len(data) > 0
        assert data.frames.shape[1:] == (1 + len(POP.roles), 64, N_PITCHES) == data.onsets.shape[1:]
        assert (data.steps_per_bar == 16).all()
        assert (data.window_start % data.steps_per_bar == 0).all()
        assert not (data.onsets & ~data.frames).any()
        assert data.frames[:, 0].any(axis=(1, 2)).mean() > 0.5  # the melody is there


def meter_parts(bars_4: int = 8, bars_3: int = 8) -> list[Part]:
    """A string quartet: 4/4 bars, then 3/4 bars; every line ends on its last barline."""
    end4, end3 = 4 * bars_4, 4 * bars_4 + 3 * bars_3
    top = [((76, 77, 79)[b % 3], b, 1.0, 90) for b in range(end3)]
    second = [(67, b, 2.0, 80) for b in range(0, end4, 2)] + [(67, b, 3.0, 80) for b in range(end4, end3, 3)]
    viola = [(60, b, 4.0, 70) for b in range(0, end4, 4)] + [(60, b, 3.0, 70) for b in range(end4, end3, 3)]
    cello = [(48, b, 4.0, 70) for b in range(0, end4, 4)] + [(43, b, 3.0, 70) for b in range(end4, end3, 3)]
    return [Part("Violin I", 40, 0, top), Part("Violin II", 40, 1, second), Part("Viola", 41, 2, viola),
            Part("Cello", 42, 3, cello)]


def test_a_meter_change_splits_the_piece_pop_skips_3_4_symphony_keeps_it(tmp_path):
    path = write_mid(tmp_path / "meter.mid", meter_parts(), meters=((0, 4, 4), (32, 3, 4)))
    assert read_midi(path).time_signatures == [(0.0, 4, 4), (32.0, 3, 4)]

    pop = convert(path, POP)
    assert [(s.name, s.n_bars, s.steps_per_bar) for s in pop.segments] == [("meter.mid", 8, 16)]
    assert pop.skipped_bars == Counter({"3/4": 8})
    assert pop.segments[0].frames[role_row(POP, "pad")].any()  # the quartet's lower parts are strings

    quartet = convert(path, SYMPHONY)
    assert [(s.name, s.n_bars, s.steps_per_bar) for s in quartet.segments] == \
        [("meter.mid", 8, 16), ("meter.mid@32", 8, 12)]
    assert quartet.skipped_bars == Counter()
    three = quartet.segments[1]
    # The 3/4 segment starts at its own step 0: the melody's beat 32 is step 0 there.
    assert cells(three.onsets[0]) == {(4 * (b - 32), (76, 77, 79)[b % 3] + three.shift) for b in range(32, 56)}
    for key in ("violin2", "viola", "cello"):
        assert three.frames[role_row(SYMPHONY, key)].any(), key

    windows = windows_from_pieces(quartet.segments, SYMPHONY.window_beats * STEPS_PER_BEAT, 4)
    assert windows.frames.shape[2] == 48
    assert sorted(set(windows.steps_per_bar.tolist())) == [12, 16]
    assert (windows.window_start % windows.steps_per_bar == 0).all()
    # 8 bars of 4/4 hold 6 windows of 3 bars, 8 bars of 3/4 hold 5 of 4 bars.
    assert Counter(windows.steps_per_bar.tolist()) == Counter({16: 6, 12: 5})


def test_symphony_windows_from_a_build_are_48_steps_of_whole_bars(tmp_path):
    write_mid(tmp_path / "data" / "meter.mid", meter_parts(), meters=((0, 4, 4), (32, 3, 4)))
    write_mid(tmp_path / "data" / "waltz.mid", meter_parts(0, 12), meters=((0, 3, 4),))
    train, val = load_training_data([str(tmp_path / "data")], SYMPHONY, cache_dir=tmp_path, progress=False)
    assert train.info["kept"] == 2 and train.info["skipped_bars"] == {}
    total = 0
    for data in (train, val):
        total += len(data)
        assert data.frames.shape[1:] == (4, 48, N_PITCHES)
        assert (data.window_start % data.steps_per_bar == 0).all()
        assert set(data.steps_per_bar.tolist()) <= {12, 16}
    assert total == 6 + 5 + 9  # waltz: 12 bars of 3/4, windows of 4 bars


def test_a_tempo_change_does_not_move_notes_on_the_beat_grid(tmp_path):
    # An off-beat note in place of the tune's beat 10, after the tempo changes.
    notes = [n for n in tune() if n[1] != 10] + [(84, 10.5, 0.5, 90)]
    parts = [Part("Flute", 73, 0, notes), Part("Bass", 33, 1, bass_line())]
    steady = write_mid(tmp_path / "steady.mid", parts)
    moving = write_mid(tmp_path / "moving.mid", parts, tempos=((0, 120.0), (4, 60.0), (10.25, 200.0), (20, 90.0)))
    assert [bpm for _, bpm in read_midi(moving).tempo_changes] == [120.0, 60.0, 200.0, 90.0]
    a, b = convert(steady).segments[0], convert(moving).segments[0]
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.onsets, b.onsets)
    assert b.onsets[0, 42, 84 + b.shift - LOWEST_PITCH]  # beat 10.5 = step 42
    assert cells(b.onsets[0]) == onset_cells(notes, b.shift)


def test_key_normalisation_puts_d_major_in_c_and_leaves_the_drums(tmp_path):
    c_piece = convert(band_song(tmp_path / "c.mid")).segments[0]
    d_piece = convert(band_song(tmp_path / "d.mid", shift=2)).segments[0]
    assert (c_piece.key_tonic, c_piece.key_mode, c_piece.shift) == (0, "major", 0)
    assert (d_piece.key_tonic, d_piece.key_mode, d_piece.shift) == (2, "major", -2)
    for row in range(1 + len(POP.roles)):
        if row == role_row(POP, "drums"):
            continue
        assert {(p % 12) for _, p in cells(d_piece.frames[row])} <= C_MAJOR, row
        assert np.array_equal(d_piece.frames[row], c_piece.frames[row]), row
    drums = role_row(POP, "drums")
    assert {p for _, p in cells(d_piece.onsets[drums])} == {36, 38, 42}  # not moved to 34, 36, 40
    assert cells(d_piece.onsets[drums]) == onset_cells(groove())


def test_drum_notes_fold_onto_the_drum_voices_and_last_one_step(tmp_path):
    kit = [35, 37, 40, 44, 46, 41, 50, 52, 56, 59, 81, 60]  # 81 (triangle), 60 (bongo): no voice
    hits = [(p, 2 * i, 1.5, 100) for i, p in enumerate(kit)] + [(p, 2 * i + 1, 0.75, 100) for i, p in enumerate(kit)]
    path = write_mid(tmp_path / "kit.mid", [Part("Flute", 73, 0, tune()), Part("Kit", 0, 9, hits)])
    conversion = convert(path)
    assert conversion.dropped_notes == 4  # the pitched notes all fit the grid
    piece = conversion.segments[0]
    drums = role_row(POP, "drums")
    expected = {(round(s * STEPS_PER_BEAT), DRUM_VOICES[p]) for p, s, *_ in hits if p in DRUM_VOICES}
    assert cells(piece.onsets[drums]) == expected
    assert {p for _, p in cells(piece.frames[drums])} <= set(DRUM_PITCHES)
    assert np.array_equal(piece.frames[drums], piece.onsets[drums])  # every hit is one step long
    assert DRUM_VOICES[35] == 36 and DRUM_VOICES[37] == 38 and DRUM_VOICES[44] == 42


def test_identical_pieces_are_kept_once(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(openmsx("ultimate_run.mid"), folder / "one.mid")
    shutil.copy(openmsx("ultimate_run.mid"), folder / "two.mid")
    band_song(folder / "band_c.mid")
    band_song(folder / "band_d.mid", shift=2)  # the same music after key normalisation
    train, val = load_training_data([str(folder)], POP, cache_dir=tmp_path, progress=False)
    info = train.info
    assert info["files"] == 4 and info["kept"] == 2
    assert info["skipped"] == {"duplicate": ["band_d.mid (same music as band_c.mid)",
                                             "two.mid (same music as one.mid)"]}
    names = {n.split("@")[0] for n in train.piece_names + val.piece_names}
    assert names == {"band_c.mid", "one.mid"}


def test_no_file_is_on_both_sides_of_the_split(real_pop):
    train, val = real_pop
    assert len(val) > 0 and len(train) > 0

    def files(data):
        return {data.piece_names[i].split("@")[0] for i in np.unique(data.piece_index)}

    assert files(train).isdisjoint(files(val))
    assert files(train) | files(val) == set(SHORT_SONGS)
    segments = {n for n in train.piece_names + val.piece_names if n.startswith("ttsong_iii")}
    assert segments == {"ttsong_iii_imuh3.mid", "ttsong_iii_imuh3.mid@98"}
    assert len({name in train.piece_names for name in segments}) == 1


def _piece(name: str, melody_seed: int, band_seed: int) -> PieceRolls:
    melody = np.random.default_rng(melody_seed).random((1, 64, N_PITCHES)) < 0.03
    band = np.random.default_rng(1000 + band_seed).random((2, 64, N_PITCHES)) < 0.03
    frames = np.concatenate([melody, band])
    return PieceRolls(name, frames, frames.copy(), 4, 0, "major", 0)


def test_split_by_piece_keeps_segments_and_same_melodies_together():
    pieces = [_piece(f"song{i:02d}.mid", i, i) for i in range(12)]
    pieces += [_piece("song03.mid@64", 100, 100), _piece("zz_same_tune_as_song05.mid", 5, 99)]
    files = [p.name.split("@")[0] for p in pieces]
    for names in (files, None):
        train, val = split_by_piece(pieces, names)
        assert len(train) + len(val) == len(pieces) and val
    train, val = split_by_piece(pieces, files)
    side = {p.name: p in val for p in pieces}
    assert side["song03.mid@64"] == side["song03.mid"]
    assert side["zz_same_tune_as_song05.mid"] == side["song05.mid"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 20, 31, 200])
def test_validation_keys_hold_about_a_tenth(n):
    keys = [f"piece-{i}.mid" for i in range(n)]
    chosen = validation_keys(keys)
    assert chosen <= set(keys) and chosen == validation_keys(list(reversed(keys)))
    bucket = {k for k in keys if is_validation(k)}  # the chorales' hash bucket
    if n < 2:
        assert chosen == set()  # one piece cannot be trained on and held out
    else:
        assert len(chosen) >= max(1, round(n / 10)) and len(chosen) < n
        assert bucket <= chosen or bucket == set(keys)


def test_the_second_load_comes_from_the_cache_and_a_touched_file_rebuilds(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    song = band_song(folder / "band.mid")
    shutil.copy(openmsx("coconut_run2.mid"), folder / "coconut.mid")
    calls = []
    real_convert = build.convert_sources

    def counting(*args, **kwargs):
        calls.append(1)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(build, "convert_sources", counting)
    cache = tmp_path / "cache"

    def load():
        return load_training_data([str(folder)], POP, cache_dir=cache, progress=False)

    first = load()
    second = load()
    assert len(calls) == 1
    assert second[0].info["cache"] == first[0].info["cache"]
    assert Path(first[0].info["cache"]).parent == cache and not (tmp_path / "env-cache").exists()
    for a, b in zip(first, second):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.onsets, b.onsets)
        assert a.piece_names == b.piece_names and np.array_equal(a.window_start, b.window_start)

    stat = song.stat()
    os.utime(song, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched, same bytes
    third = load()
    assert len(calls) == 2 and third[0].info["cache"] != first[0].info["cache"]
    assert np.array_equal(third[0].frames, first[0].frames)

    band_song(song, shift=0, tempos=((0, 120.0), (8, 100.0)))  # other bytes, other size
    assert song.stat().st_size != stat.st_size
    load()
    assert len(calls) == 3
    load(), load()
    assert len(calls) == 3

    monkeypatch.setattr(build, "code_version", lambda: "other-rules")  # a changed rule rebuilds too
    load()
    assert len(calls) == 4


# --------------------------------------------------------------------------- 4. the summary


def test_the_summary_names_kept_and_skipped_files_and_bars_per_role(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("coconut_run2.mid", "ultimate_run.mid", "boogi_marabi_redfarn.mid"):
        shutil.copy(openmsx(name), folder / name)
    shutil.copy(openmsx("ultimate_run.mid"), folder / "zz_copy.mid")
    write_mid(folder / "meter.mid", meter_parts(), meters=((0, 4, 4), (32, 3, 4)))
    write_mid(folder / "rhythm.mid", [Part("Bass", 33, 1, bass_line()), Part("Kit", 0, 9, groove())])
    write_mid(folder / "drums.mid", [Part("Kit", 0, 9, groove())])
    (folder / "notes.txt").write_text("not music")
    train, val = load_training_data([str(folder)], POP, cache_dir=tmp_path, progress=False)
    text = data_summary(train, val, POP)
    lines = text.splitlines()
    assert lines[0].startswith(f"data: MIDI from {folder}")
    assert lines[1] == ("files: 7, kept 3, skipped 4 (duplicate: 1, meter not covered: 1, "
                        "no melody candidate: 1, unreadable: 1)")
    assert "  skipped, duplicate: zz_copy.mid (same music as ultimate_run.mid)" in lines
    assert "  skipped, meter not covered: boogi_marabi_redfarn.mid (3/4: 85 bars)" in lines
    assert any(line.startswith("  skipped, no melody candidate: rhythm.mid (") for line in lines)
    [unreadable] = [line for line in lines if line.startswith("  skipped, unreadable: ")]
    assert "drums.mid" in unreadable and "only has drums" in unreadable
    assert "notes.txt" not in text
    assert "  bars skipped in meters the model does not cover: 3/4 8" in lines
    assert "melody chosen by: register 3" in lines
    assert f"train: {len(train)} windows from {len(np.unique(train.piece_index))} segments" in lines
    assert f"validation: {len(val)} windows from {len(np.unique(val.piece_index))} segments" in lines

    # Bars per role, recounted from the kept files' own conversions.
    bars, with_notes = 0, np.zeros(1 + len(POP.roles), dtype=int)
    for name in ("coconut_run2.mid", "meter.mid", "ultimate_run.mid"):
        for segment in convert(folder / name).segments:
            bars += segment.n_bars
            per_bar = segment.frames.reshape(segment.frames.shape[0], segment.n_bars, -1).any(axis=2)
            with_notes += per_bar.sum(axis=1)
    names = ["Melody", "Drums", "Bass", "Guitar", "Piano", "Strings"]
    expected = f"bars: {bars}; with notes, per role: " + ", ".join(f"{n} {c}" for n, c in zip(names, with_notes))
    assert lines[-1] == expected
    assert with_notes[0] > 0 and with_notes[1] > 0 and with_notes[2] > 0


# --------------------------------------------------------------------------- 5. bad input


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message
    return message


def test_a_folder_without_usable_music_is_one_data_error_listing_why(tmp_path):
    folder = tmp_path / "data"
    write_mid(folder / "drums.mid", [Part("Kit", 0, 9, groove())])
    write_mid(folder / "rhythm.mid", [Part("Bass", 33, 1, bass_line()), Part("Kit", 0, 9, groove())])
    (folder / "readme.txt").write_text("just text")
    with pytest.raises(DataError) as info:
        load_training_data([str(folder)], POP, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(info.value, BacklineError)
    message = one_line(info.value)
    assert message.startswith(f"no usable music in {folder} (2 files; ")
    assert "no melody candidate: rhythm.mid" in message
    assert "unreadable: drums.mid" in message and "only has drums" in message
    assert "readme.txt" not in message
    assert "each piece needs a melody track and at least one accompanying track" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_data_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope"
    for call in (lambda: load_training_data([str(missing)], POP, cache_dir=tmp_path, progress=False),
                 lambda: load_data([str(missing)], "pop", cache_dir=tmp_path, progress=False)):
        with pytest.raises(DataError) as info:
            call()
        message = one_line(info.value)
        assert f"--data {missing}: no such file or folder" in message
        assert "give a MIDI file, a folder of MIDI" in message


def _wad(lumps: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(data for _, data in lumps)
    directory, offset = b"", 12
    for name, data in lumps:
        directory += struct.pack("<ii8s", offset, len(data), name.encode())
        offset += len(data)
    return struct.pack("<4sii", b"PWAD", len(lumps), 12 + len(body)) + body + directory


def test_a_corrupt_wad_among_good_files_is_skipped_as_unreadable(tmp_path):
    folder = tmp_path / "data"
    band_song(folder / "band.mid")
    shutil.copy(openmsx("coconut_run2.mid"), folder / "coconut.mid")
    (folder / "good.wad").write_bytes(_wad([("D_RUNNIN", openmsx("ultimate_run.mid").read_bytes())]))
    broken = _wad([("D_BROKEN", band_song(tmp_path / "lump.mid", shift=5).read_bytes())])
    (folder / "broken.wad").write_bytes(broken[:-20])  # cut off inside its directory
    train, val = load_training_data([str(folder)], POP, cache_dir=tmp_path / "cache", progress=False)
    info = train.info
    assert info["kept"] == 3 and info["files"] == 4
    assert sorted(info["melody"]) == ["band.mid", "coconut.mid", "good.wad:D_RUNNIN"]
    [entry] = info["skipped"]["unreadable"]
    assert entry.startswith("broken.wad (") and "damaged or truncated" in entry
    assert len(train) + len(val) > 0


def _cli_error(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("backline: error: ")
    return lines[0]


def test_the_train_command_reports_bad_data_in_one_line(tmp_path):
    folder = tmp_path / "data"
    write_mid(folder / "drums.mid", [Part("Kit", 0, 9, groove())])
    (folder / "readme.txt").write_text("just text")
    (tmp_path / "home").mkdir()
    env = {"BACKLINE_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    result = run_backline("train", "--data", folder, "--genre", "pop", "--out", tmp_path / "run",
                          "--no-progress", env=env, cwd=tmp_path)
    line = _cli_error(result)
    assert "no usable music in" in line and "drums.mid" in line and "only has drums" in line
    missing = tmp_path / "missing"
    result = run_backline("train", "--data", missing, "--genre", "pop", "--out", tmp_path / "run",
                          "--no-progress", env=env, cwd=tmp_path)
    line = _cli_error(result)
    assert f"--data {missing}: no such file or folder" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "home" / ".cache").exists()


def test_one_usable_file_is_one_data_error_not_a_traceback(tmp_path):
    """Validation holds whole pieces out: a single song cannot be both."""
    song = openmsx("coconut_run2.mid")
    with pytest.raises(DataError) as caught:
        load_training_data([str(song)], GENRES["pop"], cache_dir=tmp_path / "cache", progress=False)
    message = str(caught.value)
    assert "\n" not in message and "at least two files" in message
